"""The archive folder: three days of intake replayed, with every answer of duplicates, match and similar checked.

Real phone photos of DVD cases (../shared/images/objects), at 320 px so that a day's
intake takes a second; the network is MobileNetV2 with the real ImageNet weights,
fitted once for the module and passed to :func:`skimgfeat.archive.ingest` (the command
line does the same with the archive's recorded network: see test_archive_kills.py).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skimgfeat import IndexDirectoryError
from skimgfeat.archive import Archive, ingest, read_name_list, remove
from skimgfeat.matching.duplicates import find_copies_against
from skimgfeat.matching.instance_index import instance_index_for
from skimgfeat.matching.local_features import LocalFeatureStore
from skimgfeat.matching.object_match import ObjectMatcher
from skimgfeat.search.similarity import similar_items

pytest.importorskip("cv2", reason="local features need OpenCV (the match extra)")

OBJECTS = "images/objects"


def photo(source: Path, target: Path, size: int = 320, quality: int = 90) -> Path:
    """``source`` at ``size`` px on its long side, as a JPEG at ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        image.save(target, quality=quality)
    return target


@pytest.fixture(scope="module")
def embedder(shared_weights):
    from skimgfeat import CNNImageEmbedder

    return CNNImageEmbedder("mobilenet_v2", str(shared_weights), on_error="nan", n_workers=1).fit()


@pytest.fixture(scope="module")
def objects(shared_dir) -> Path:
    return shared_dir / OBJECTS


def answers(archive: Path, queries: list[Path], embedder) -> dict:
    """What duplicates --against, match --against and similar say about ``queries`` (image files)."""
    names = [query.as_posix() for query in queries]
    vectors = embedder.transform(names)
    with Archive.open(archive) as opened:
        matcher = ObjectMatcher(opened.index, opened.local_features, k=len(opened), hashes=opened.hashes)
        matches = matcher.match(names, embedder=embedder)
        copies = find_copies_against(opened.index, names, vectors, archive_hashes=opened.hashes)
        similar = similar_items(opened.index, names, k=len(opened), embedder=embedder)
    return {
        "copies": {(Path(a).name, b) for a, b, verdict in zip(copies["image_a"], copies["image_b"],
                                                              copies["verdict"]) if verdict == "copy"},
        "same_object": {(Path(q).name, b) for q, b, verdict in zip(matches["query"], matches["image_path"],
                                                                   matches["verdict"]) if verdict == "same_object"},
        "similar": set(similar["image_path"]),
    }


def test_three_days_of_intake_replayed(tmp_path, objects, embedder):
    archive = tmp_path / "archive"
    lots = pd.DataFrame({"item_id": ["dvd001", "dvd002", "dvd003"], "price": [12.0, 30.0, 7.5],
                         "sale": ["spring", "spring", "autumn"]})
    lots.to_csv(tmp_path / "lots.csv", index=False)

    # Day 1: three cases and a smaller, recompressed copy of the first.
    day1 = tmp_path / "day1"
    for case in ("dvd001", "dvd002", "dvd003"):
        photo(objects / f"{case}_canon.jpg", day1 / f"{case}_canon.jpg")
    photo(objects / "dvd001_canon.jpg", day1 / "dvd001_copy.jpg", size=260, quality=60)
    result = ingest(day1, archive, embedder=embedder, intake="day1", lots=tmp_path / "lots.csv")
    assert result.statuses["added"] == 4 and result.n_rows == 4
    report = result.report
    copy = report[(report["image_path"] == "day1/dvd001_copy.jpg") & (report["verdict"] == "copy")]
    assert copy["match"].tolist() == ["day1/dvd001_canon.jpg"] and copy["lot_price"].tolist() == [12.0]
    assert (report[report["image_path"] == "day1/dvd002_canon.jpg"]["verdict"] == "").all()
    assert pd.read_csv(archive / "reports" / "day1.csv", keep_default_na=False).shape[0] == len(report)
    again = ingest(day1, archive, embedder=embedder, intake="day1")  # running it twice adds nothing
    assert again.statuses["already archived"] == 4 and again.generation == result.generation

    # Day 2: the same object photographed again, a byte-identical copy of an archived photo under
    # another name, and yesterday's name dvd003_canon.jpg reused for another case.
    day2 = tmp_path / "day2"
    photo(objects / "dvd001_palm.jpg", day2 / "dvd001_palm.jpg")
    day2.mkdir(exist_ok=True)
    shutil.copy(day1 / "dvd002_canon.jpg", day2 / "lot_b.jpg")
    photo(objects / "dvd004_canon.jpg", day2 / "dvd003_canon.jpg")
    result = ingest(day2, archive, embedder=embedder, intake="day2")
    status = dict(zip(result.report["image_path"], result.report["status"]))
    assert status == {"day2/dvd001_palm.jpg": "added", "day2/lot_b.jpg": "identical file",
                      "day2/dvd003_canon.jpg": "added"}
    report = result.report
    palm = report[report["image_path"] == "day2/dvd001_palm.jpg"]
    assert {"day1/dvd001_canon.jpg", "day1/dvd001_copy.jpg"} <= set(palm[palm["verdict"] == "same_object"]["match"])
    assert (palm["inliers"].dropna() >= 10).all() and set(palm["lot_sale"].dropna()) == {"spring"}
    assert report[report["image_path"] == "day2/lot_b.jpg"]["match"].tolist() == ["day1/dvd002_canon.jpg"]
    assert result.n_rows == 6
    seen = answers(archive, [day2 / "dvd001_palm.jpg", day2 / "dvd003_canon.jpg"], embedder)
    assert ("dvd001_palm.jpg", "day1/dvd001_canon.jpg") in seen["same_object"]
    assert not {pair for pair in seen["copies"] if pair[0] == "dvd003_canon.jpg"} - {
        ("dvd003_canon.jpg", "day2/dvd003_canon.jpg")}  # the reused name is no copy of day 1's photo
    with Archive.open(archive) as opened:
        assert opened.rows_named("dvd003_canon.jpg")["image_path"].tolist() == ["day1/dvd003_canon.jpg",
                                                                                   "day2/dvd003_canon.jpg"]
        assert opened.photo_path("day2/dvd003_canon.jpg").is_file()
        assert opened.lots["price"].tolist() == [12.0, 30.0, 7.5]  # kept from day 1

    # Day 3: a takedown of day 1's dvd002, a resized copy of it arrives, and day 1's dvd003 is re-shot.
    (tmp_path / "takedowns.txt").write_text("# takedown requests\nday1/dvd002_canon.jpg\n")
    before = Archive.open(archive)  # a reader of the generation before the takedown
    removed = remove(archive, read_name_list(tmp_path / "takedowns.txt"))
    assert removed.removed == ["day1/dvd002_canon.jpg"] and removed.n_rows == 5
    with Archive.open(archive) as opened:  # out of the instance index the new generation names
        instance = opened.instance_index
        assert "day1/dvd002_canon.jpg" not in instance and len(instance) == 5
        assert "day1/dvd002_canon.jpg" not in instance.search(opened.local_features["day1/dvd002_canon.jpg"])[0]
        # Its inverted lists are the generation's before (hard links), as the vectors are: quick at any size.
        assert (archive / "instance_index" / opened.parts["instance_index"] / "postings_signature.npy").stat(
            ).st_nlink > 1
    day3 = tmp_path / "day3"
    photo(day1 / "dvd002_canon.jpg", day3 / "dvd002_again.jpg", size=300, quality=70)
    result = ingest(day3, archive, embedder=embedder, intake="day3")
    assert "day1/dvd002_canon.jpg" not in set(result.report["match"])  # removed: never returned again
    photo(objects / "dvd005_canon.jpg", day1 / "dvd003_canon.jpg")  # the file changed: re-embedded
    result = ingest(day1, archive, embedder=embedder, intake="day1")
    status = dict(zip(result.report["image_path"], result.report["status"]))
    assert status["day1/dvd003_canon.jpg"] == "replaced" and status["day1/dvd001_canon.jpg"] == "already archived"
    assert status["day1/dvd002_canon.jpg"] == "removed earlier"  # a takedown is not undone by the next intake
    # Two intakes later, the reader opened before the takedown still searches its own instance index.
    assert before.instance_index.search(before.local_features["day1/dvd002_canon.jpg"], k=1)[0] == [
        "day1/dvd002_canon.jpg"]
    before.close()
    seen = answers(archive, [day1 / "dvd003_canon.jpg", day3 / "dvd002_again.jpg"], embedder)
    assert "day1/dvd002_canon.jpg" not in seen["similar"]
    assert ("dvd003_canon.jpg", "day1/dvd003_canon.jpg") in seen["copies"]  # the new version
    with Archive.open(archive) as opened:
        assert len(opened) == 6 and len(opened.index.names) == 8  # the removed and the replaced rows wait
        new_vector = opened.vectors(["day1/dvd003_canon.jpg"])[0]
        old_vector = embedder.transform([objects / "dvd003_canon.jpg"])[0]
        assert 1 - new_vector @ old_vector / np.linalg.norm(new_vector) / np.linalg.norm(old_vector) > 0.1
    reader = LocalFeatureStore(archive / "local_features")  # opened before the compaction rewrites its parts
    compacted = remove(archive, compact=True)
    assert len(reader["day1/dvd001_canon.jpg"]) > 100  # it reads the rewritten part
    assert compacted.compacted == 2 and compacted.n_rows == 6
    with Archive.open(archive) as opened:
        assert len(opened.index.names) == 6 and not (archive / "photos" / "day1" / "dvd002_canon.jpg").exists()
        assert opened.photo_path("day1/dvd003_canon.jpg").is_file()  # the replacement keeps its file
        assert set(opened.hashes.names) == set(opened.rows["image_path"])
        assert opened.similar(["day1/dvd003_canon.jpg"], k=5)["image_path"].isin(opened.rows["image_path"]).all()
        # The removed and the replaced photos' local features are gone (from the part files too), the instance
        # index holds the archive's photos, and names the rewritten parts: brought up to date, it stays as it is.
        assert sorted(opened.local_features.paths()) == sorted(opened.instance_index.names()) == sorted(
            opened.rows["image_path"])
        assert sum(len(np.load(part)["image_path"]) for part in (archive / "local_features").glob("part-*")) == 6
        assert instance_index_for(opened.local_features).generation_ == opened.parts["instance_index"]
        matcher = ObjectMatcher(opened.index, opened.local_features, hashes=opened.hashes,
                                instance_index=opened.instance_index)
        found = matcher.match(["day2/dvd001_palm.jpg"])
        assert "day1/dvd001_canon.jpg" in set(found[found["verdict"] == "same_object"]["image_path"])
    assert ingest(day1, archive, embedder=embedder, intake="day1").statuses["removed earlier"] == 1


def test_an_index_folder_or_a_foreign_folder_is_not_taken_for_an_archive(tmp_path, synthetic_photos):
    from skimgfeat import SimilarityIndex

    SimilarityIndex(["a.jpg"], np.ones((1, 4))).save(tmp_path / "index")
    with pytest.raises(IndexDirectoryError, match="is an index folder .* not an archive"):
        ingest(synthetic_photos[0].parent, tmp_path / "index")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(IndexDirectoryError, match="non-empty folder that is not a skimgfeat archive"):
        ingest(synthetic_photos[0].parent, tmp_path / "notes")
    with pytest.raises(FileNotFoundError, match="is a file: give the folder"):
        ingest(synthetic_photos[0], tmp_path / "archive")


def recipe_commands() -> list[list[str]]:
    """The commands of the daily-intake recipe in docs/millions-of-photos.md, as written."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "docs" / "millions-of-photos.md").read_text(encoding="utf-8")
    block = text.split("## The daily intake", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("skimgfeat ")]


def test_the_daily_intake_recipe_of_the_docs_runs_as_written(tmp_path, objects, shared_weights, monkeypatch):
    """Every answer of the recipe checked (tests/test_docs_commands.py runs the page's commands too)."""
    from test_cli import skimgfeat

    for name, source in [("90001_1", "dvd001_canon"), ("90001_2", "dvd001_palm"), ("90002_1", "dvd002_canon")]:
        photo(objects / f"{source}.jpg", tmp_path / "today" / f"{name}.jpg", size=320)
    photo(objects / "dvd001_canon.jpg", tmp_path / "new_photo.jpg", size=240, quality=60)
    pd.DataFrame({"item_id": ["90001", "90002"], "price": [120, 80]}).to_csv(tmp_path / "lots.csv", index=False)
    outputs = {}
    monkeypatch.chdir(tmp_path)
    for command in recipe_commands():
        result = skimgfeat(*command[1:], env={"SKIMGFEAT_WEIGHTS": str(shared_weights)})
        assert result.returncode == 0, (command, result.stderr)
        outputs.setdefault(command[1], []).append(result.stdout)
    assert [len(runs) for runs in outputs.values()] == [2, 1, 1, 1, 2, 1]
    report = pd.read_csv(tmp_path / "archive" / "reports" / "2026-12-07.csv", keep_default_na=False)
    assert set(report["status"]) == {"already archived"}  # the second run of the same intake
    first = report[report["image_path"] == "2026-12-07/90001_1.jpg"]
    assert "2026-12-07/90001_2.jpg" in set(first[first["verdict"] == "same_object"]["match"])
    assert float(first["lot_price"].tolist()[0]) == 120
    similar = pd.read_csv(io.StringIO(outputs["similar"][0]))
    assert similar["image_path"].tolist()[0] == "2026-12-07/90001_2.jpg"  # the same case, another phone
    copies = pd.read_csv(io.StringIO(outputs["duplicates"][0]))
    assert copies[["image_path", "duplicate_of"]].values.tolist() == [["new_photo.jpg", "2026-12-07/90001_1.jpg"]]
    with Image.open(tmp_path / "copies.png") as sheet:  # the archive's photo drawn, not a grey "no photo"
        tile = np.asarray(sheet.convert("L"))[:, sheet.width // 2:]
        assert tile.std() > 30
    matched = pd.read_csv(io.StringIO(outputs["match"][0]))
    assert matched["verdict"].tolist()[:2] == ["copy", "same_object"]
    info = json.loads(outputs["index"][0])
    assert (info["n_live"], info["n_rows"]) == (1, 1)  # 90001_1 only, after the takedown and the compaction
    refused = skimgfeat("duplicates", "today/", "--against", "archive/")
    assert refused.returncode == 2 and "is a folder: pass its photos" in refused.stderr
