"""The persistent similarity index: exact and FAISS kinds agree, adds, saved folders, refusals, the commands."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _launcher import run_python, start_cli, start_forked_python
from test_cli import skimgfeat

from skimgfeat import IndexDirectoryError, ModelMismatchError, SimilarityIndex, similar_items
from skimgfeat.storage.balanced_partition import PARTITION_FILE
from skimgfeat.storage.io import FeatureTableReader, write_table
from skimgfeat.storage.unit_vectors import normalise
from skimgfeat.storage.vector_index import pair_partition, read_generation, write_generation

pytest.importorskip("faiss", reason="the inverted-file kinds need faiss-cpu (the [index] extra)")

N_FEATURES = 32
MODEL = {"model_name": "mobilenet_v2", "n_features": N_FEATURES, "parameters_sha256": "a" * 64,
         "preprocessing": {"resize_mode": "square", "crop": 224}}


def feature_table(n_rows: int, seed: int = 0, prefix: str = "shop") -> pd.DataFrame:
    """Rows in extract's layout: 40 clusters of non-negative vectors, every row at its own distance."""
    rng = np.random.default_rng(seed)
    centres = rng.random((40, N_FEATURES))
    vectors = np.abs(centres[rng.integers(0, 40, n_rows)] + rng.normal(0, 0.3, (n_rows, N_FEATURES)))
    table = pd.DataFrame(vectors.astype(np.float32), columns=[f"img_feature_{i}" for i in range(N_FEATURES)])
    paths = [f"{prefix}/{seed}-{i}/lot{seed}x{i}_1.jpg" for i in range(n_rows)]
    table.insert(0, "image_name", [path.rsplit("/", 1)[1] for path in paths])
    table.insert(0, "image_path", paths)
    table["error"] = ""
    return table


def features(table: pd.DataFrame) -> np.ndarray:
    return table.filter(like="img_feature_").to_numpy()


def exact_neighbours(table: pd.DataFrame, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: cosine distances to every row, the k smallest."""
    rows = features(table) / np.linalg.norm(features(table), axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    distances = 1 - queries @ rows.T
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "image_features_raw.parquet"
    write_table(feature_table(1200), path, model_info=MODEL)
    return path


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_an_inverted_file_visiting_every_list_finds_what_exact_search_finds(kind):
    table = feature_table(1200)
    index = SimilarityIndex.build(table, kind=kind, nlist=16)
    queries = features(feature_table(30, seed=1))
    distances, rows = index.search_vectors(queries, k=10, nprobe=16)
    expected_distances, expected_rows = exact_neighbours(table, queries, 10)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(distances, expected_distances, atol=1e-5)
    assert index.kind == kind


def test_eight_bit_codes_keep_the_nearest_rows_of_distinct_photos():
    table = feature_table(1200)
    index = SimilarityIndex.build(table, kind="ivf-sq8", nlist=16)
    queries = features(table.iloc[:50]) * 1.01  # each query is a copy of a row
    _, rows = index.search_vectors(queries, k=1, nprobe=16)
    assert rows[:, 0].tolist() == list(range(50))


def test_range_search_and_neighbour_pairs_are_those_of_brute_force():
    table = feature_table(600)
    copies = table.iloc[:20].copy()
    copies[copies.filter(like="img_feature_").columns] *= 1.0 + np.linspace(0, 0.02, N_FEATURES)
    copies["image_path"] = "copies/" + copies["image_path"]
    union = pd.concat([table, copies], ignore_index=True)
    vectors = features(union) / np.linalg.norm(features(union), axis=1, keepdims=True)
    within = np.triu(1 - vectors @ vectors.T <= 0.01, k=1)
    expected = set(zip(*np.nonzero(within)))
    assert len(expected) >= 20
    for kind in ("flat", "ivf"):
        index = SimilarityIndex.build(union, kind=kind, nlist=8)
        first, second, distance = index.neighbour_pairs(0.01, nprobe=8)
        assert set(zip(first.tolist(), second.tolist())) == expected
        assert (first < second).all() and (distance <= 0.01).all()
        lims, found_distances, found = index.range_search(vectors[:5], 0.01, nprobe=8)
        for query in range(5):
            hits = found[lims[query]:lims[query + 1]]
            assert set(hits.tolist()) == set(np.flatnonzero(1 - vectors @ vectors[query] <= 0.01).tolist())
            assert np.all(np.diff(found_distances[lims[query]:lims[query + 1]]) >= 0)


@pytest.mark.parametrize("kind", ["ivf", "ivf-sq8", "ivf-pq"])
def test_a_range_search_of_many_queries_list_by_list_finds_what_faiss_finds_query_by_query(kind, monkeypatch):
    # Many queries (an intake's report) are compared with each visited list in one matrix product, the
    # 8-bit codes scored without decoding them: the same rows at the same distances as FAISS's own scan.
    from skimgfeat.storage import vector_index

    table = feature_table(1500)
    store = SimilarityIndex.build(table, kind=kind, nlist=12, pq_m=8)._store
    store.partition = None  # an index written before it kept a balanced partition
    rng = np.random.default_rng(4)
    queries = features(table.iloc[:200]) * np.exp(0.05 * rng.standard_normal((200, N_FEATURES)))
    removed = np.zeros(len(table), dtype=bool)
    removed[rng.choice(len(table), 300, replace=False)] = True
    answers = []
    for by_list_from in (vector_index.BY_LIST_QUERIES, 10**9):  # by list, then FAISS query by query
        monkeypatch.setattr(vector_index, "BY_LIST_QUERIES", by_list_from)
        answers.append(store.range_search(queries, 0.15, nprobe=3, exclude=removed))
    (lims, distances, rows), (faiss_lims, faiss_distances, faiss_rows) = answers
    np.testing.assert_array_equal(lims, faiss_lims)
    assert len(rows) > 3 * len(queries) and not removed[rows].any()  # more than each query's own row
    for query in range(len(queries)):
        ours, theirs = slice(lims[query], lims[query + 1]), slice(faiss_lims[query], faiss_lims[query + 1])
        assert set(rows[ours].tolist()) == set(faiss_rows[theirs].tolist())
        np.testing.assert_allclose(np.sort(distances[ours]), np.sort(faiss_distances[theirs]), atol=2e-5)
        assert np.all(np.diff(distances[ours]) >= 0)


def test_a_range_search_visits_parts_of_about_equal_size_and_finds_every_near_copy():
    # Wide non-negative rows in 300 clusters: the inverted file's own lists are uneven, the balanced parts
    # are not. Visiting every part finds what brute force finds; the default parts find every near-copy.
    rng = np.random.default_rng(0)
    n_features = 128
    centres = rng.exponential(1.0, (300, n_features)) * (rng.random((300, n_features)) < 0.35)
    rows = np.maximum(centres[rng.integers(0, 300, 3000)] + rng.normal(0, 1.0, (3000, n_features)), 0)
    table = pd.DataFrame(rows.astype(np.float32), columns=[f"img_feature_{i}" for i in range(n_features)])
    table.insert(0, "image_path", [f"lots/{i}_1.jpg" for i in range(len(rows))])
    store = SimilarityIndex.build(table, kind="ivf-sq8", nlist=32)._store
    part_sizes = np.bincount(store.partition.part_of_row, minlength=32)
    list_sizes = np.asarray([store._faiss.invlists.list_size(number) for number in range(32)])
    assert part_sizes.max() < list_sizes.max() and part_sizes.max() <= 2.5 * len(rows) / 32

    copies = rows[:100] * np.exp(0.1 * rng.standard_normal((100, n_features)))
    removed = np.zeros(len(rows), dtype=bool)
    removed[100:400] = True
    distance = 1.0 - normalise(copies) @ store.reconstruct(0, len(rows)).T  # to the rows as stored (8-bit)
    exact = distance <= 0.25
    exact[:, removed] = False
    at_threshold = np.abs(distance - 0.25) < 1e-5  # float rounding may fall either side there
    for parts, expected in ((32, exact), (None, None)):  # every part, then the default few
        lims, distances, found = store.range_search(copies, 0.25, nprobe=parts, exclude=removed)
        got = np.zeros_like(exact)
        got[np.repeat(np.arange(len(copies)), np.diff(lims)), found] = True
        if expected is not None:
            np.testing.assert_array_equal(got[~at_threshold], expected[~at_threshold])
        assert got[np.arange(100), np.arange(100)].all()  # each copy finds its original
        assert all(np.all(np.diff(distances[lims[q]:lims[q + 1]]) >= 0) for q in range(len(copies)))


def test_an_inverted_file_written_without_a_partition_gets_one_at_its_next_add(tmp_path):
    table = feature_table(900)
    old = SimilarityIndex.build(table.iloc[:800], kind="ivf", nlist=8)
    old._store.partition = None  # written as an earlier release wrote it
    old.save(tmp_path / "index")
    assert not (read_generation(tmp_path / "index")[0] / PARTITION_FILE).exists()
    assert SimilarityIndex.load(tmp_path / "index")._store.partition is None
    SimilarityIndex.load(tmp_path / "index").add(table.iloc[800:]).save(tmp_path / "index")
    grown = SimilarityIndex.load(tmp_path / "index")
    assert len(grown._store.partition) == 900 and grown._store.partition.n_parts == 8


def test_a_compacted_inverted_file_keeps_the_parts_of_the_rows_it_keeps(tmp_path):
    table = feature_table(900)
    index = SimilarityIndex.build(table, kind="ivf-sq8", nlist=8)
    parts_before = index._store.partition.part_of_row.copy()
    index.remove_rows(range(0, 900, 9))  # every ninth row
    index.compacted().save(tmp_path / "index")
    compacted = SimilarityIndex.load(tmp_path / "index")
    kept = np.setdiff1d(np.arange(900), np.arange(0, 900, 9))
    assert compacted.names.tolist() == table["image_path"].iloc[kept].tolist()
    np.testing.assert_array_equal(compacted._store.partition.part_of_row, parts_before[kept])
    lims, _, rows = compacted.range_search(features(table.iloc[:20]), 0.01)
    assert [compacted.names[found].tolist() for found in np.split(rows, lims[1:-1])] == \
        [[] if number % 9 == 0 else [path] for number, path in enumerate(table["image_path"].iloc[:20])]


def test_near_copies_among_more_clusters_than_lists_are_paired_as_exact_search_pairs_them():
    """Duplicates on an inverted file: 300 clusters of wide non-negative rows in 16 lists, 40 planted copies."""
    rng = np.random.default_rng(0)
    n_features = 128
    centres = rng.exponential(1.0, (300, n_features)) * (rng.random((300, n_features)) < 0.35)
    rows = np.maximum(centres[rng.integers(0, 300, 2000)] + rng.normal(0, 1.0, (2000, n_features)), 0)
    copies = rows[:40] * np.exp(0.03 * rng.standard_normal((40, n_features)))
    vectors = np.vstack([rows, copies]).astype(np.float32)
    table = pd.DataFrame(vectors, columns=[f"img_feature_{i}" for i in range(n_features)])
    table.insert(0, "image_path", [f"lots/{i}_1.jpg" for i in range(len(vectors))])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = set(zip(*np.nonzero(np.triu(1 - unit @ unit.T <= 0.02, k=1))))
    assert {(i, 2000 + i) for i in range(40)} <= expected

    index = SimilarityIndex.build(table, kind="ivf", nlist=16)
    for nprobe in (None, 16):  # the default 2 parts a row, and every part: exact
        first, second, distance = index.neighbour_pairs(0.02, nprobe=nprobe)
        assert set(zip(first.tolist(), second.tolist())) == expected
        assert (first < second).all() and (distance <= 0.02).all()
    parts = np.bincount(pair_partition(index._store, 16, 2)[:, 0], minlength=16)
    assert parts.max() <= 1.5 * len(vectors) / 16  # parts of about equal size: the pair work stays linear


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_rows_added_later_are_found_as_if_they_had_been_built_in(kind, tmp_path):
    first, later = feature_table(900), feature_table(300, seed=2, prefix="new")
    union = pd.concat([first, later], ignore_index=True)
    write_table(later, tmp_path / "later.parquet", model_info=MODEL)
    built = SimilarityIndex.build(union, kind=kind, nlist=16)
    grown = SimilarityIndex.build(first, kind=kind, nlist=16, model_info=MODEL)
    grown.save(tmp_path / "index")
    grown = SimilarityIndex.load(tmp_path / "index").add(tmp_path / "later.parquet")
    queries = features(feature_table(20, seed=3))
    assert grown.names.tolist() == union["image_path"].tolist()
    np.testing.assert_array_equal(grown.search_vectors(queries, 8, nprobe=16)[1],
                                  built.search_vectors(queries, 8, nprobe=16)[1])
    assert grown.similar([later["image_path"][5]], k=3).equals(built.similar([later["image_path"][5]], k=3))
    assert len(grown.add(later.iloc[:3])) == 1200  # an add run again adds nothing
    changed = later.iloc[:3].copy()
    changed[changed.filter(like="img_feature_").columns] = changed.filter(like="img_feature_").to_numpy()[::-1]
    with pytest.raises(ValueError, match="already in the index with other features"):
        grown.add(changed)


def test_a_folder_of_parquet_parts_builds_the_index_of_the_whole_table(tmp_path):
    table = feature_table(1000)
    for part, start in enumerate(range(0, 1000, 300)):
        write_table(table.iloc[start:start + 300], tmp_path / "parts" / f"day={part}" / "part-0.parquet",
                    model_info=MODEL)
    reader = FeatureTableReader(tmp_path / "parts")
    assert (reader.n_rows, reader.key, reader.model_info) == (1000, "image_path", MODEL)
    from_parts = SimilarityIndex.build(tmp_path / "parts", kind="ivf", nlist=16)
    whole = SimilarityIndex.build(table, kind="ivf", nlist=16)
    assert from_parts.names.tolist() == table["image_path"].tolist()
    queries = features(table.iloc[::97])
    np.testing.assert_array_equal(from_parts.search_vectors(queries, 5, nprobe=16)[1],
                                  whole.search_vectors(queries, 5, nprobe=16)[1])


def test_features_of_another_model_are_refused(table_file, tmp_path):
    index = SimilarityIndex.build(table_file)
    other = dict(MODEL, parameters_sha256="b" * 64)
    write_table(feature_table(10, seed=5, prefix="x"), tmp_path / "other.parquet", model_info=other)
    with pytest.raises(ModelMismatchError, match="parameters_sha256"):
        index.add(tmp_path / "other.parquet")
    with pytest.raises(ModelMismatchError, match="model_name"):
        index.check_model(dict(MODEL, model_name="resnet18"))
    index.check_model(dict(MODEL, weights="file:/elsewhere/the-same-weights.pth"))  # where they lie is no matter
    index.save(tmp_path / "index")
    result = skimgfeat("index", "add", tmp_path / "index", tmp_path / "other.parquet")
    assert result.returncode == 2, result.stderr
    assert "another model" in result.stderr and "Traceback" not in result.stderr


def test_a_query_may_be_an_image_name_unless_two_rows_share_it():
    table = feature_table(50)
    index = SimilarityIndex.build(table)
    name, path = table["image_name"][7], table["image_path"][7]
    by_name = similar_items(index, [name], k=3)
    by_path = similar_items(index, [path], k=3)
    assert by_name.drop(columns="query").equals(by_path.drop(columns="query"))
    assert path not in set(by_name["image_path"])  # the row itself is left out
    twice = pd.concat([table, table.iloc[[7]].assign(image_path="other/" + name)], ignore_index=True)
    with pytest.raises(ValueError, match="ambiguous"):
        similar_items(SimilarityIndex.build(twice), [name])
    with pytest.raises(FileNotFoundError, match="image_name"):
        similar_items(index, ["nowhere.jpg"])
    with pytest.raises(FileNotFoundError, match="is a folder: pass its photos"):
        similar_items(index, [str(Path(__file__).parent)])


def test_the_saved_index_answers_the_same_in_a_new_process(table_file, tmp_path):
    built = skimgfeat("index", "build", table_file, "-o", tmp_path / "index", "--kind", "ivf-sq8", "--nlist", "16")
    assert built.returncode == 0, built.stderr
    index = SimilarityIndex.load(tmp_path / "index")
    assert (index.kind, index.nprobe, len(index)) == ("ivf-sq8", 8, 1200)
    queries = [index.names[3], index._identities["image_name"][10]]
    answered = skimgfeat("similar", *queries, "--index", tmp_path / "index", "-k", "4")
    assert answered.returncode == 0, answered.stderr
    expected = similar_items(index, queries, k=4)
    np.testing.assert_allclose(pd.read_csv(io.StringIO(answered.stdout))["distance"], expected["distance"], atol=1e-6)
    assert pd.read_csv(io.StringIO(answered.stdout))["image_path"].tolist() == expected["image_path"].tolist()
    info = skimgfeat("index", "info", tmp_path / "index")
    assert '"kind": "ivf-sq8"' in info.stdout and '"n_rows": 1200' in info.stdout


def test_an_interrupted_change_leaves_the_previous_generation_in_use(table_file, tmp_path):
    SimilarityIndex.build(table_file).save(tmp_path / "index")

    def fails_halfway(folder):
        (folder / "vectors.npy").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_generation(tmp_path / "index", fails_halfway)
    assert sorted(path.name for path in (tmp_path / "index").iterdir()) == ["CURRENT", "LOCK", "gen-000001"]
    assert len(SimilarityIndex.load(tmp_path / "index")) == 1200


def test_a_truncated_or_foreign_index_folder_is_a_clear_error_without_traceback(table_file, tmp_path):
    SimilarityIndex.build(table_file, kind="ivf", nlist=16).save(tmp_path / "index")
    vectors = next((tmp_path / "index").glob("gen-*/vectors.faiss"))
    vectors.write_bytes(vectors.read_bytes()[:1000])
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"not an index")
    for folder, reason in [(tmp_path / "index", "truncated"), (tmp_path / "photos", "not a skimgfeat index"),
                           (tmp_path / "nowhere", "does not exist")]:
        with pytest.raises(IndexDirectoryError, match=reason):
            SimilarityIndex.load(folder)
        result = skimgfeat("similar", "a.jpg", "--index", folder)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("skimgfeat: error: index directory") and reason in result.stderr
    refused = skimgfeat("index", "build", table_file, "-o", tmp_path / "photos")
    assert refused.returncode == 2 and "not a skimgfeat index" in refused.stderr


def test_exact_search_works_without_faiss(table_file):
    script = (
        "import sys; sys.modules['faiss'] = None\n"
        "from skimgfeat import SimilarityIndex\n"
        f"index = SimilarityIndex.build({str(table_file)!r})\n"
        "print(index.kind, index.similar([index.names[0]], k=2).shape)\n"
        f"SimilarityIndex.build({str(table_file)!r}, kind='ivf')\n"
    )
    result = run_python(script)
    assert result.stdout.strip() == "flat (2, 4)"
    assert "ImportError" in result.stderr and "skimgfeat[index]" in result.stderr


# -- one writer at a time, readers never broken ---------------------------------------


def test_two_index_adds_started_together_both_land(table_file, tmp_path):
    """The second writer waits for the first: before the lock, both exited 0 and one's rows were lost."""
    SimilarityIndex.build(table_file, kind="ivf", nlist=16).save(tmp_path / "index")
    for day in (1, 2):
        write_table(feature_table(400, seed=10 + day, prefix=f"day{day}"), tmp_path / f"day{day}.parquet",
                    model_info=MODEL)
    runs = [start_cli("index", "add", tmp_path / "index", tmp_path / f"day{day}.parquet") for day in (1, 2)]
    for run in runs:
        assert run.wait(120) == 0, run.output()[1]
    index = SimilarityIndex.load(tmp_path / "index")
    expected = set(pd.read_parquet(table_file)["image_path"])
    for day in (1, 2):
        expected |= set(pd.read_parquet(tmp_path / f"day{day}.parquet")["image_path"])
    assert len(index) == 2000 and set(index.names) == expected


def test_a_second_writer_that_gives_up_names_the_holder(table_file, tmp_path):
    from skimgfeat.storage.generation_lock import WriterLock

    SimilarityIndex.build(table_file).save(tmp_path / "index")
    write_table(feature_table(10, seed=9, prefix="late"), tmp_path / "late.parquet", model_info=MODEL)
    with WriterLock(tmp_path / "index"):
        refused = skimgfeat("index", "add", tmp_path / "index", tmp_path / "late.parquet",
                            env={"SKIMGFEAT_LOCK_WAIT": "0.3"})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"process {os.getpid()}" in refused.stderr and "SKIMGFEAT_LOCK_WAIT" in refused.stderr
    assert len(SimilarityIndex.load(tmp_path / "index")) == 1200


READER = r"""
import os, sys, time
import numpy as np
from skimgfeat import SimilarityIndex
folder, stop_file = sys.argv[1], sys.argv[2]

def read_until_stopped():
    kept = SimilarityIndex.load(folder)  # one generation held for the whole run, as a server would
    queries = np.random.default_rng(0).random((5, 32)).astype("float32")
    answers = 0
    while True:
        for index in (kept, SimilarityIndex.load(folder)):
            distances, rows = index.search_vectors(queries, 10)
            assert (rows < len(index.names)).all() and (rows >= 0).all(), rows
            names = set(index.names[rows.ravel()])
            assert len(index.similar([index.names[0]], k=3)) == 3
            answers += 1
        if os.path.exists(stop_file):
            return answers, len(kept), len(SimilarityIndex.load(folder))
        time.sleep(0.2)

"""


def test_readers_searching_while_a_writer_adds_generations_are_never_broken(table_file, tmp_path):
    """4 reader processes, each keeping the first generation and loading the live one again and again."""
    SimilarityIndex.build(table_file, kind="ivf", nlist=16).save(tmp_path / "index")
    for day in range(2):
        write_table(feature_table(50, seed=20 + day, prefix=f"d{day}"), tmp_path / f"d{day}.parquet",
                    model_info=MODEL)
    stop = tmp_path / "stop"
    readers = start_forked_python(READER, "read_until_stopped", 4, tmp_path / "index", stop)
    for day in range(2):  # each add writes a generation; the second would retire the first, which readers hold
        added = skimgfeat("index", "add", tmp_path / "index", tmp_path / f"d{day}.parquet")
        assert added.returncode == 0, added.stderr
    stop.touch()
    assert readers.wait(120) == 0, readers.output()[1]
    lines = readers.output()[0].split("\n")[:-1]
    assert len(lines) == 4, readers.output()
    for line in lines:
        answers, held, live = map(int, line.split())
        assert answers > 0 and held == 1200 and live == 1300
    # Generations no reader holds any more are retired by the next writer.
    write_table(feature_table(5, seed=40, prefix="last"), tmp_path / "last.parquet", model_info=MODEL)
    assert skimgfeat("index", "add", tmp_path / "index", tmp_path / "last.parquet").returncode == 0
    assert sorted(path.name for path in (tmp_path / "index").glob("gen-*")) == ["gen-000003", "gen-000004"]


def test_a_save_after_another_writer_switched_generations_is_refused(table_file, tmp_path):
    SimilarityIndex.build(table_file, kind="ivf", nlist=16).save(tmp_path / "index")
    slow = SimilarityIndex.load(tmp_path / "index", writable=True)
    SimilarityIndex.load(tmp_path / "index").add(feature_table(30, seed=3, prefix="fast")).save()
    slow.add(feature_table(30, seed=4, prefix="slow"))
    with pytest.raises(IndexDirectoryError, match="another writer"):
        slow.save()
    assert len(SimilarityIndex.load(tmp_path / "index")) == 1230


def test_a_search_while_rows_are_appended_never_returns_rows_past_the_names():
    index = SimilarityIndex.build(feature_table(300), kind="ivf", nlist=16)
    more = FeatureTableReader(feature_table(200, seed=6, prefix="more"), model_info=MODEL)
    seen = []

    def batches():
        for number, batch in enumerate(more.batches(100)):
            if number == 1:  # the first batch is in the vectors, not yet in the names
                seen.append(index.search_vectors(batch.features, 5, nprobe=16)[1])
                seen.append(index.range_search(batch.features, 0.01, nprobe=16)[2])
            yield batch

    index._append(batches())
    assert len(seen[0]) and (seen[0] < 300).all() and (seen[1] < 300).all()
    assert len(index) == 500


def test_nprobe_is_per_search_not_set_on_the_shared_index():
    import threading

    table = feature_table(1200)
    index = SimilarityIndex.build(table, kind="ivf", nlist=64, nprobe=1)
    queries = features(feature_table(40, seed=1))
    exact = exact_neighbours(table, queries, 5)[1]
    errors, stop = [], threading.Event()

    def narrow():
        while not stop.is_set():
            index.search_vectors(queries, 5, nprobe=1)

    thread = threading.Thread(target=narrow)
    thread.start()
    try:
        for _ in range(200):
            rows = index.search_vectors(queries, 5, nprobe=64)[1]
            errors.append(not np.array_equal(rows, exact))
    finally:
        stop.set()
        thread.join()
    assert not any(errors) and index._store._faiss.nprobe == 1


def test_an_inverted_file_at_the_default_nprobe_recalls_near_ties_of_wide_photo_features():
    """1280-wide non-negative features (MobileNetV2/EfficientNet width) in tight clusters: near-ties everywhere."""
    rng = np.random.default_rng(0)
    n_features, n_rows = 1280, 6000
    centres = rng.exponential(1.0, (60, n_features)) * (rng.random((60, n_features)) < 0.35)
    vectors = np.maximum(centres[rng.integers(0, 60, n_rows)] + rng.normal(0, 0.6, (n_rows, n_features)), 0)
    table = pd.DataFrame(vectors.astype(np.float32), columns=[f"img_feature_{i}" for i in range(n_features)])
    table.insert(0, "image_path", [f"lots/{i}_1.jpg" for i in range(n_rows)])
    index = SimilarityIndex.build(table, kind="ivf")  # default nlist (77) and nprobe (8)
    queries = vectors[:100] * np.exp(0.05 * rng.standard_normal((100, n_features)))
    _, found = index.search_vectors(queries, 10)
    _, expected = exact_neighbours(table, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, expected)])
    assert (index.nprobe, index._store.nlist) == (8, 77)
    assert found[:, 0].tolist() == list(range(100))  # each query's own photo first
    assert recall >= 0.9, recall


def test_sampling_a_dataset_of_many_parts_opens_one_part_at_a_time(tmp_path):
    """1,000 Dask parts exceeded the usual limit of 1,024 open files: here 160 parts under a limit of 64."""
    table = feature_table(320)
    for part in range(160):
        write_table(table.iloc[2 * part:2 * part + 2], tmp_path / "parts" / f"part-{part:04d}.parquet",
                    model_info=MODEL)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "from skimgfeat.storage.io import FeatureTableReader\n"
        "print(len(FeatureTableReader(sys.argv[1]).sample(300)))\n"
    )
    result = run_python(script, tmp_path / "parts")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "300"
