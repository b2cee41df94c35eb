"""The persistent index at archive scale: build, daily add and search on an N-row table.

Writes an N-row feature table in the exact layout of ``skimgfeat extract`` (``image_path``,
``image_name``, ``img_feature_0..1279`` float32, ``error``; Parquet row groups of 4,096
rows written by the same writer; the model info in the Parquet metadata): 2,000 clusters
of non-negative 1280-wide rows (ReLU-like: sparse exponential centres plus noise),
distinct rows at cosine distance >= 0.25 from each other as distinct photos are, and the
last 1% near-copies of the first 1% (a multiplicative jitter, cosine distance about 0.01).
The first 99% go to ``base.parquet``, the last 1% to ``new.parquet``. Then, each command
in a fresh process with its peak RSS (``os.wait4``):

1. ``skimgfeat index build base.parquet -o INDEX``
2. ``skimgfeat index add INDEX new.parquet``
3. ``skimgfeat similar Q1..Q5 --index INDEX -k 10`` (five image_path queries, loading
   the index included), recall@10 against exact search over the whole table
4. ``--archive``: the archive of the same rows (``skimgfeat.archive``), in a fresh process:
   the daily intake of 10,000 new photos (tiny PNG files standing for photos, their
   features near-copies of archived rows; the embedding is a lookup, so the time is the
   archive's own: listing, SHA-256, copies, copy-check hashes, the index add, the new
   generation, the report's copy search), then ``remove`` of 1,000 photos.
5. ``--pairs``: ``skimgfeat duplicates --index INDEX --no-copy-check --threshold T`` (the
   synthetic rows have no photos to hash: features alone decide), with the share of
   planted copies grouped with their original and the groups that join rows of
   different clusters.

    python benchmarks/scale.py --rows 200000
    python benchmarks/scale.py --rows 1000000 --pairs --workdir /tmp/scale   # ~5 GB of tables

Tables go to a temporary folder (or ``--workdir``, kept for a rerun with ``--reuse``; ``--reuse
--reuse-index --archive`` times only the archive steps on the index of an earlier run).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

N_FEATURES = 1280
N_CLUSTERS = 2000
CHUNK_ROWS = 4096  # extract's row group
MODEL_INFO = {
    "model_name": "efficientnet_b0", "weights": "IMAGENET1K_V1", "weights_sha256": "0" * 64,
    "parameters_sha256": "1" * 64, "n_features": N_FEATURES,
    "feature_names": f"img_feature_0 ... img_feature_{N_FEATURES - 1}", "output": "global average pool",
    "input_size": [3, 224, 224], "preprocessing": {"resize_mode": "square", "crop": 224},
    "params": {"model_name": "efficientnet_b0", "weights": "IMAGENET1K_V1"}, "precision": "float32",
    "device": "cpu", "image_dir": "/archive/photos", "note": "synthetic table of benchmarks/scale.py",
}


def cluster_centres(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.exponential(1.0, (N_CLUSTERS, N_FEATURES)).astype(np.float32)
    return centres * (rng.random((N_CLUSTERS, N_FEATURES)) < 0.35)


def rows_of_chunk(centres: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start..stop-1``: their cluster and vector, the same whatever the chunking."""
    rng = np.random.default_rng([1, start])
    clusters = rng.integers(0, N_CLUSTERS, stop - start)
    noise = rng.standard_normal((stop - start, N_FEATURES), dtype=np.float32)
    return clusters, np.maximum(centres[clusters] + noise, 0.0)


def near_copies(originals: np.ndarray, start: int) -> np.ndarray:
    rng = np.random.default_rng([2, start])
    jitter = np.exp(0.12 * rng.standard_normal(originals.shape, dtype=np.float32))
    return originals * jitter


def path_of(row: int) -> str:
    return f"lots/{row // 1000:05d}/{row}_1.jpg"


def write_tables(folder: Path, n_rows: int) -> dict:
    """base.parquet (first 99%) and new.parquet (last 1%, copies of the first 1%); cluster labels."""
    from skimgfeat.feature_tables import features_table
    from skimgfeat.storage.io import write_table_chunks

    centres = cluster_centres()
    n_copies = n_rows // 100
    n_base = n_rows - n_copies
    clusters = np.empty(n_rows, dtype=np.int32)
    originals = []

    def chunks(begin: int, end: int):
        for start in range(begin, end, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, end)
            if start >= n_base:  # copies of rows start - n_base ...
                source = np.concatenate(originals)[start - n_base:stop - n_base]
                vectors = near_copies(source, start)
                clusters[start:stop] = clusters[start - n_base:stop - n_base]
            else:
                clusters[start:stop], vectors = rows_of_chunk(centres, start, stop)
                if start < n_copies:
                    originals.append(vectors[: n_copies - start])
            table = features_table([path_of(row) for row in range(start, stop)], vectors, errors={})
            yield table

    write_table_chunks(chunks(0, n_base), folder / "base.parquet", model_info=MODEL_INFO)
    write_table_chunks(chunks(n_base, n_rows), folder / "new.parquet", model_info=MODEL_INFO)
    np.save(folder / "clusters.npy", clusters)
    return {"n_base": n_base, "n_copies": n_copies}


def run_measured(command: list[str], cwd: Path) -> dict:
    """Run a command in a fresh process: wall and CPU seconds, its own peak RSS (``wait4`` on it), output."""
    started = time.perf_counter()
    out = tempfile.TemporaryFile(mode="w+")
    err = tempfile.TemporaryFile(mode="w+")
    child = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed (exit {os.waitstatus_to_exitcode(status)}):\n{stderr}")
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_gb": usage.ru_maxrss / 2**20,
            "stdout": stdout, "stderr": stderr}


def exact_top(folders: list[Path], queries: np.ndarray, query_rows: np.ndarray, k: int) -> np.ndarray:
    """The k nearest rows of each query by exact cosine distance over the whole table, itself excluded."""
    from skimgfeat.storage.io import FeatureTableReader

    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best_distances = np.full((len(queries), 0), np.inf, dtype=np.float32)
    best_rows = np.empty((len(queries), 0), dtype=np.int64)
    offset = 0
    for folder in folders:
        for batch in FeatureTableReader(folder).batches():
            vectors = batch.features / np.linalg.norm(batch.features, axis=1, keepdims=True)
            distances = 1 - queries @ vectors.T
            rows = np.broadcast_to(np.arange(offset, offset + len(vectors)), distances.shape)
            distances = np.where(rows == query_rows[:, None], np.inf, distances)
            best_distances = np.concatenate([best_distances, distances], axis=1)
            best_rows = np.concatenate([best_rows, rows], axis=1)
            keep = np.argsort(best_distances, axis=1)[:, :k]
            best_distances = np.take_along_axis(best_distances, keep, axis=1)
            best_rows = np.take_along_axis(best_rows, keep, axis=1)
            offset += len(vectors)
    return best_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--workdir", type=Path, help="keep the tables and the index here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="reuse the tables already in --workdir")
    parser.add_argument("--kind", default="auto", help="index kind for `index build` (default: auto)")
    parser.add_argument("--pairs", action="store_true", help="also time `duplicates --index`")
    parser.add_argument("--archive", action="store_true", help="also time an archive's ingest and remove")
    parser.add_argument("--archive-step", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reuse-index", action="store_true",
                        help="with --reuse: keep the index of an earlier run (no build, add, nor --pairs on it)")
    parser.add_argument("--threshold", type=float, default=0.1, help="duplicates threshold for --pairs")
    args = parser.parse_args()
    if args.archive_step is not None:
        return archive_step(args.archive_step)
    with tempfile.TemporaryDirectory(prefix="skimgfeat-scale-") as temporary:
        work = args.workdir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()
        started = time.perf_counter()
        if not (args.reuse and (work / "clusters.npy").is_file()):
            write_tables(work, args.rows)
        clusters = np.load(work / "clusters.npy")
        n_rows = len(clusters)
        n_copies = n_rows // 100
        n_base = n_rows - n_copies
        print(f"{n_rows} rows written in {time.perf_counter() - started:.0f} s "
              f"({(work / 'base.parquet').stat().st_size / 2**30:.2f} GB + new.parquet); load {load}", flush=True)
        index_dir = work / "index"
        python = [sys.executable, "-m", "skimgfeat"]
        results = {}
        if not (args.reuse_index and (index_dir / "CURRENT").is_file()):
            if index_dir.exists():
                import shutil

                shutil.rmtree(index_dir)
            results["build"] = run_measured([*python, "index", "build", str(work / "base.parquet"), "-o",
                                             str(index_dir), "--kind", args.kind], work)
            print(f"index build: {results['build']['seconds']:.1f} s (CPU {results['build']['cpu_seconds']:.1f} s), "
                  f"{results['build']['peak_rss_gb']:.2f} GB "
                  f"({results['build']['stderr'].strip()})", flush=True)
            results["add"] = run_measured([*python, "index", "add", str(index_dir), str(work / "new.parquet")], work)
            print(f"index add {n_copies}: {results['add']['seconds']:.1f} s (CPU {results['add']['cpu_seconds']:.1f} "
                  f"s), {results['add']['peak_rss_gb']:.2f} GB", flush=True)
        rng = np.random.default_rng(7)
        query_rows = np.sort(rng.choice(n_base, 5, replace=False))
        results["similar"] = run_measured([*python, "similar", *map(path_of, query_rows), "--index", str(index_dir),
                                           "-k", "10"], work)
        found = pd.read_csv(io.StringIO(results["similar"]["stdout"]))
        from skimgfeat.storage.io import FeatureTableReader

        base = FeatureTableReader(work / "base.parquet")
        query_vectors = _rows(base, query_rows)
        exact = exact_top([work / "base.parquet", work / "new.parquet"], query_vectors, query_rows, 10)
        row_of_path = {path_of(row): row for row in range(n_rows)}
        recalls = []
        for query, expected in zip(query_rows, exact):
            got = {row_of_path[path] for path in found[found["query"] == path_of(query)]["image_path"]}
            recalls.append(len(got & set(expected.tolist())) / 10)
        nearest = found.groupby("query")["distance"].min()
        print(f"similar x5: {results['similar']['seconds']:.1f} s (CPU {results['similar']['cpu_seconds']:.1f} s), "
              f"{results['similar']['peak_rss_gb']:.2f} GB, "
              f"recall@10 {np.mean(recalls):.3f} {recalls}; nearest distinct row {nearest.min():.3f}", flush=True)
        summary = {"rows": n_rows, "added": n_copies, "load_before": load,
                   **{f"{name}_s": round(result["seconds"], 1) for name, result in results.items()},
                   **{f"{name}_cpu_s": round(result["cpu_seconds"], 1) for name, result in results.items()},
                   **{f"{name}_peak_rss_gb": round(result["peak_rss_gb"], 2) for name, result in results.items()},
                   "recall_at_10": float(np.mean(recalls)),
                   "index_info": json.loads(run_measured([*python, "index", "info", str(index_dir)], work)["stdout"])}
        if args.pairs and not args.reuse_index:
            duplicates = run_measured([*python, "duplicates", "--index", str(index_dir), "--no-copy-check",
                                       "--threshold", str(args.threshold)], work)
            groups = pd.read_csv(io.StringIO(duplicates["stdout"]))
            rows = groups["image_path"].map(row_of_path).to_numpy()
            group_of = dict(zip(rows.tolist(), groups["group"].tolist()))
            grouped = sum(group_of.get(original, -1) == group_of.get(copy, -2)
                          for original, copy in zip(range(n_copies), range(n_base, n_rows))) / n_copies
            mixed = int((pd.Series(clusters[rows]).groupby(groups["group"].to_numpy()).nunique() > 1).sum())
            print(f"duplicates --index (threshold {args.threshold}): {duplicates['seconds']:.1f} s "
                  f"(CPU {duplicates['cpu_seconds']:.1f} s), {duplicates['peak_rss_gb']:.2f} GB, "
                  f"{groups['group'].nunique()} groups of {len(groups)} rows, planted copies grouped with their "
                  f"original {grouped:.4f}, groups joining clusters {mixed}", flush=True)
            summary.update(duplicates_s=round(duplicates["seconds"], 1),
                           duplicates_cpu_s=round(duplicates["cpu_seconds"], 1),
                           duplicates_peak_rss_gb=round(duplicates["peak_rss_gb"], 2),
                           groups=int(groups["group"].nunique()), grouped_rows=len(groups),
                           planted_grouped=grouped, groups_joining_clusters=mixed)
        if args.archive:
            measured = run_measured([sys.executable, __file__, "--archive-step", str(work)], work)
            if not measured["stdout"].strip():
                raise SystemExit(f"the archive step failed: {measured['stderr']}")
            step = json.loads(measured["stdout"].strip().splitlines()[-1])
            print(f"archive: ingest of {step['new']} new photos {step['ingest_s']:.1f} s (CPU {step['ingest_cpu_s']} "
                  f"s, embedding excluded), remove of {step['removed']} {step['remove_s']:.1f} s (CPU "
                  f"{step['remove_cpu_s']} s), similar x5 {step['similar_s']:.2f} s; "
                  f"peak RSS {measured['peak_rss_gb']:.2f} GB", flush=True)
            summary.update({f"archive_{name}": value for name, value in step.items()},
                           archive_peak_rss_gb=round(measured["peak_rss_gb"], 2))
            # The commands against the archive after the intake and the removal, as against the index above.
            archived = run_measured([*python, "similar", *map(path_of, query_rows), "--index", str(work / "archive"),
                                     "-k", "10"], work)
            same = pd.read_csv(io.StringIO(archived["stdout"]))
            agree = np.mean([len(set(same[same["query"] == path_of(query)]["image_path"])
                                 & set(found[found["query"] == path_of(query)]["image_path"])) / 10
                             for query in query_rows])
            print(f"archive: similar x5 {archived['seconds']:.1f} s (CPU {archived['cpu_seconds']:.1f} s), "
                  f"{archived['peak_rss_gb']:.2f} GB, {agree:.2f} of the index's answers", flush=True)
            summary.update(archive_similar_cli_s=round(archived["seconds"], 1),
                           archive_similar_cli_cpu_s=round(archived["cpu_seconds"], 1), archive_similar_agree=agree)
            if args.pairs:
                pairs = run_measured([*python, "duplicates", "--index", str(work / "archive"), "--no-copy-check",
                                      "--threshold", str(args.threshold)], work)
                groups = pd.read_csv(io.StringIO(pairs["stdout"]))
                print(f"archive: duplicates --index {pairs['seconds']:.1f} s (CPU {pairs['cpu_seconds']:.1f} s), "
                      f"{pairs['peak_rss_gb']:.2f} GB, {groups['group'].nunique()} groups of {len(groups)} rows",
                      flush=True)
                summary.update(archive_duplicates_s=round(pairs["seconds"], 1),
                               archive_duplicates_cpu_s=round(pairs["cpu_seconds"], 1),
                               archive_duplicates_peak_rss_gb=round(pairs["peak_rss_gb"], 2),
                               archive_groups=int(groups["group"].nunique()))
        summary["load_after"] = os.getloadavg()
        print(json.dumps(summary, indent=1, default=str))


class _LookedUp:
    """An embedder whose features are known already: the archive's cost without the network's."""

    def __init__(self, vectors: dict, model_info: dict) -> None:
        self.vectors, self.model_info_, self.n_features_out_, self.errors_ = vectors, model_info, N_FEATURES, []

    def transform(self, paths) -> np.ndarray:
        return np.stack([self.vectors[Path(path).stem] for path in paths])


def archive_step(work: Path, n_new: int = 10_000, n_removed: int = 1_000) -> None:
    """An archive made of INDEX's rows; time an intake of ``n_new`` photos and a removal of ``n_removed``."""
    import shutil

    from PIL import Image

    from skimgfeat.archive import Archive, ingest, remove
    from skimgfeat.archive.folder import CONTENT_SHA256, INTAKE, PHOTOS_DIR, SOURCE, write_settings
    from skimgfeat.matching.copy_check import HASHES_FILE, N_HASHES, PhotoHashes
    from skimgfeat.schema import ITEM_ID, item_id_from_name
    from skimgfeat.search.similarity import SimilarityIndex
    from skimgfeat.storage.io import FeatureTableReader

    archive = work / "archive"
    shutil.rmtree(archive, ignore_errors=True)
    started = time.perf_counter()
    rng_hashes = np.random.default_rng(12)
    index = SimilarityIndex.load(work / "index")
    n_rows = len(index.names)
    identities = index._identities
    identities[ITEM_ID] = np.asarray([item_id_from_name(name) for name in index.names], dtype=object)
    for column, value in ((SOURCE, ""), (INTAKE, "base")):
        identities[column] = np.full(n_rows, value, dtype=object)
    identities[CONTENT_SHA256] = np.asarray([f"{row:064x}" for row in range(n_rows)], dtype=object)  # one each
    write_settings(archive, {"item_rule": None, "created_at": "benchmark"})
    # The balanced partition an index built by this release has (an older index gets it at its first add).
    partition_started = time.perf_counter()
    index._store.add_partition()
    partition_s = time.perf_counter() - partition_started
    index.save(archive, extra_info={"relative_image_dir": PHOTOS_DIR})
    # Every archived photo has its copy-check hashes, as an archive made by intakes has: the intake reads,
    # extends and writes them (random ones: no archived row is a copy by its hashes).
    PhotoHashes(index.names, rng_hashes.integers(0, 2**63, (n_rows, N_HASHES), dtype=np.uint64)).write(
        archive / HASHES_FILE)
    made = time.perf_counter() - started
    rng = np.random.default_rng(11)
    originals = _rows(FeatureTableReader(work / "base.parquet"), np.sort(rng.choice(n_rows // 2, n_new, replace=False)))
    new_vectors = originals * np.exp(0.12 * rng.standard_normal(originals.shape)).astype(np.float32)
    new_dir = work / "today"
    shutil.rmtree(new_dir, ignore_errors=True)
    new_dir.mkdir()
    for number in range(n_new):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(new_dir / f"new{number}_1.png")
    embedder = _LookedUp({f"new{number}_1": vector for number, vector in enumerate(new_vectors)}, index.model_info)
    index.close()
    started, cpu = time.perf_counter(), time.process_time()  # CPU seconds of every thread of this process
    steps: dict[str, float] = {}  # seconds from the start when each step of the intake last reported progress

    def note(step: str, count: int) -> None:
        steps[step] = round(time.perf_counter() - started, 1)

    result = ingest(new_dir, archive, embedder=embedder, intake="day", local_features=False, on_progress=note)
    ingest_s, ingest_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    steps["report written"] = round(ingest_s, 1)
    started, cpu = time.perf_counter(), time.process_time()
    removed = remove(archive, [f"day/new{number}_1.png" for number in range(n_removed)])
    remove_s, remove_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    started = time.perf_counter()
    with Archive.open(archive) as opened:
        opened.similar(opened.rows["image_path"][:5], k=10)
        similar_s = time.perf_counter() - started
        copy_search = copy_search_recall(opened.index, new_vectors[n_removed:n_removed + 500])
    print(json.dumps({"rows": n_rows, "made_s": round(made, 1), "new": result.statuses["added"],
                      "ingest_s": round(ingest_s, 1), "ingest_cpu_s": round(ingest_cpu_s, 1), "ingest_steps": steps,
                      "removed": len(removed.removed), "remove_s": round(remove_s, 2),
                      "remove_cpu_s": round(remove_cpu_s, 2),
                      "similar_s": round(similar_s, 2), "live": removed.n_rows,
                      "partition_made_s": round(partition_s, 1), **copy_search,
                      "report_copies": int((result.report["verdict"] == "copy").sum())}))


def copy_search_recall(index, queries: np.ndarray) -> dict:
    """Of every archived row within the report's copy radius of each query (exact, over the rows as stored),
    the share the report's range search returns, and the rows it compares per query."""
    from skimgfeat.matching.duplicates import DEFAULT_CANDIDATE_DISTANCE
    from skimgfeat.storage.balanced_partition import RANGE_SEARCH_PARTS
    from skimgfeat.storage.unit_vectors import normalise

    store = index._store
    queries = normalise(queries)
    within = [[] for _ in queries]
    for start in range(0, len(store), 65536):
        scores = queries @ store.reconstruct(start, min(start + 65536, len(store))).T
        for query, row in zip(*np.nonzero(scores >= 1.0 - DEFAULT_CANDIDATE_DISTANCE)):
            if not index.removed[start + row]:
                within[query].append(start + row)
    lims, _, rows = index.range_search(queries, DEFAULT_CANDIDATE_DISTANCE)
    found = sum(len(set(expected) & set(rows[lims[q]:lims[q + 1]].tolist())) for q, expected in enumerate(within))
    measured = {"copy_search_pairs": int(sum(map(len, within))),
                "copy_search_recall": round(found / max(sum(map(len, within)), 1), 4)}
    if store.partition is None:  # an exact index (below 50,000 rows) compares every row
        return {**measured, "copy_search_rows_per_query": len(store)}
    parts = store.partition.nearest(queries, RANGE_SEARCH_PARTS)
    sizes = np.bincount(store.partition.part_of_row, minlength=store.partition.n_parts)
    return {**measured, "copy_search_rows_per_query": int(sizes[parts].sum(axis=1).mean()),
            "largest_part": int(sizes.max()), "median_part": int(np.median(sizes))}


def _rows(reader, rows: np.ndarray) -> np.ndarray:
    """The feature vectors of the given rows of a table, read batch by batch."""
    wanted, found, offset = set(rows.tolist()), {}, 0
    for batch in reader.batches():
        for row in range(offset, offset + len(batch)):
            if row in wanted:
                found[row] = batch.features[row - offset]
        offset += len(batch)
    return np.stack([found[row] for row in rows.tolist()])


if __name__ == "__main__":
    main()
