"""Embedding on a dask.distributed LocalCluster into a partitioned Parquet dataset, then an index from it.

The recipe for archives beyond one machine, measured on one: real photos (crops of
../shared images, resized to 64-96 px and re-encoded as JPEG; see benchmarks/_photos.py)
listed in a Dask Series, embedded by MobileNetV2 with the ImageNet weights of
../shared/weights (or $SKIMGFEAT_WEIGHTS) on a LocalCluster of worker processes, each
partition written by its worker with :func:`skimgfeat.distributed.write_partitioned_features`.
Then, when the command exists, ``skimgfeat index build FOLDER`` builds the index from the
folder of parts in a fresh process (trained on a sample, added part by part), and
``skimgfeat index info`` checks its row count. Reports images/s of the embedding (from
the first task submitted to the last file written, the cluster already started and the
embedder fitted), and the peak RSS and time of the index build.

    python benchmarks/dask_partitioned.py                     # 20,000 photos, 2 workers x 1 thread
    python benchmarks/dask_partitioned.py --photos 2000 --workdir /tmp/skimgfeat-dask
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _photos import SHARED, make_photos, photo_name


def weights_file() -> str:
    weights = os.environ.get("SKIMGFEAT_WEIGHTS") or SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
    if not Path(weights).is_file():
        raise SystemExit(f"needs the MobileNetV2 weights {weights} (see ../shared/README.md) or SKIMGFEAT_WEIGHTS")
    return os.fspath(weights)


def timed_cli(*arguments: str, cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of ``python -m skimgfeat ARGUMENTS`` in a fresh process."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "skimgfeat", *arguments], cwd=cwd, stdout=subprocess.PIPE,
                             text=True)
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"skimgfeat {' '.join(arguments)} failed (exit {os.waitstatus_to_exitcode(status)})")
    return time.perf_counter() - started, usage.ru_maxrss / 1024, stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=20_000)
    parser.add_argument("--rows-per-partition", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (default: 1)")
    parser.add_argument("--workdir", help="keep the photos here (default: a temporary folder)")
    args = parser.parse_args()

    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster

    from skimgfeat import CNNImageEmbedder
    from skimgfeat.distributed import write_partitioned_features

    with tempfile.TemporaryDirectory(prefix="skimgfeat-dask-") as tmp:
        work = Path(args.workdir or tmp)
        photos = make_photos(work / "photos", args.photos)
        paths = pd.Series([str(photos / photo_name(i)) for i in range(args.photos)])
        output = work / f"dask-features-{args.photos}"
        shutil.rmtree(output, ignore_errors=True)
        embedder = CNNImageEmbedder("mobilenet_v2", weights=weights_file(), on_error="nan").fit()
        load_before = os.getloadavg()[0]
        with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads, processes=True,
                          dashboard_address=None) as cluster, Client(cluster):
            lazy_paths = dd.from_pandas(paths, npartitions=max(1, args.photos // args.rows_per_partition))
            started = time.perf_counter()
            summary = write_partitioned_features(lazy_paths, embedder, output, image_dir=photos)
            seconds = time.perf_counter() - started
        load_after = os.getloadavg()[0]
        rows, failed = int(summary["rows"].sum()), int(summary["failed"].sum())
        table = pd.read_parquet(summary["file"].iloc[0])
        columns = [c for c in table.columns if c.startswith("img_feature_")]
        local = embedder.transform(list(paths[: min(64, len(table))]))
        mine = table[columns].to_numpy()[: len(local)]
        cosine = (mine * local).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(local, axis=1)
        print(f"load average (1 min) before {load_before:.1f}, after {load_after:.1f}; {os.cpu_count()} CPUs")
        print("| photos | partitions (files) | workers x threads | embed s | images/s | failed | "
              "min cosine vs local transform |")
        print("|---:|---:|---|---:|---:|---:|---:|")
        print(f"| {rows} | {len(summary)} | {args.workers} x {args.threads} | {seconds:.0f} | {rows / seconds:.1f} | "
              f"{failed} | {cosine.min():.6f} |", flush=True)

        from skimgfeat.cli import SUBCOMMANDS

        if not any(module.__name__.endswith(".index") for module in SUBCOMMANDS):
            print("skimgfeat index is not available in this version: index build skipped")
            return
        index_dir = work / f"dask-index-{args.photos}"
        shutil.rmtree(index_dir, ignore_errors=True)
        build_s, build_mb, _ = timed_cli("index", "build", os.fspath(output), "-o", os.fspath(index_dir), "-q",
                                         cwd=work)
        _, _, info = timed_cli("index", "info", os.fspath(index_dir), cwd=work)
        print(f"index build from the folder of {len(summary)} parts: {build_s:.1f} s, peak RSS {build_mb:.0f} MB")
        print(info.strip())


if __name__ == "__main__":
    main()
