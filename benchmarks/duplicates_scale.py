"""``skimgfeat duplicates`` at archive scale with the copy check on: time and peak memory at N rows.

Uses the synthetic table of ``benchmarks/scale.py`` (N rows of 1280 features in 2,000
clusters, the last 1 % near-copies of the first 1 %) and its ANN index, and writes the
copy check's sidecar as ``extract --hashes`` does, ``image_hashes.parquet``: the rows have
no photos, so each gets 14 random 64-bit hashes, and each planted copy its original's
hashes with 0-4 bits flipped in each (a re-encoded copy), a few planted copies mirrored
(only their mirrored hash agrees). Then, in a fresh process with its peak RSS:

    skimgfeat duplicates --index INDEX --hashes image_hashes.parquet --pairs pairs.parquet

with the default candidate radius (0.30) and copy threshold; there are no local features,
so the stricter hash-only rule decides. Reported: wall and CPU seconds, peak RSS, candidate
pairs, the planted copies grouped with their original, and groups joining different clusters.

    python benchmarks/scale.py --rows 1000000 --workdir /tmp/scale   # once: tables and index (or --reuse)
    python benchmarks/duplicates_scale.py --workdir /tmp/scale
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import path_of, run_measured, write_tables  # noqa: E402

from skimgfeat.matching.copy_check import MIRRORED, N_HASHES, PhotoHashes  # noqa: E402


def synthetic_hashes(n_rows: int, seed: int = 3) -> PhotoHashes:
    """Random hashes per row; the last 1 % (copies of the first 1 %) their original's with 0-4 bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=(n_rows, N_HASHES), dtype=np.int64).view(np.uint64)
    hashes ^= rng.integers(0, 2, size=(n_rows, N_HASHES), dtype=np.int64).view(np.uint64) << np.uint64(63)
    n_copies = n_rows // 100
    copies = hashes[:n_copies].copy()
    for _ in range(4):  # up to four single-bit flips per hash (a flip may repeat: 0-4 bits)
        bit = rng.integers(0, 64, size=copies.shape).astype(np.uint64)
        copies ^= np.where(rng.random(copies.shape) < 0.5, np.uint64(1) << bit, np.uint64(0))
    mirrored = rng.random(n_copies) < 0.05  # a mirrored copy: its mirrored hash is the original's whole hash
    shuffled = rng.integers(0, 2**63, size=(int(mirrored.sum()), N_HASHES), dtype=np.int64).view(np.uint64)
    shuffled[:, MIRRORED] = copies[mirrored, 0]
    copies[mirrored] = shuffled
    hashes[n_rows - n_copies:] = copies
    return PhotoHashes([path_of(row) for row in range(n_rows)], hashes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True,
                        help="the folder of `benchmarks/scale.py --workdir` (its tables and index)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to write when the folder has none")
    parser.add_argument("--kind", default="auto", help="index kind when the index is built here (default: auto)")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    python = [sys.executable, "-m", "skimgfeat"]
    if not (work / "clusters.npy").is_file():
        started = time.perf_counter()
        write_tables(work, args.rows)
        print(f"tables written in {time.perf_counter() - started:.0f} s", flush=True)
    index = work / "index"
    if not (index / "index.json").is_file():
        run_measured([*python, "index", "build", str(work / "base.parquet"), "-o", str(index), "--kind", args.kind],
                     work)
        run_measured([*python, "index", "add", str(index), str(work / "new.parquet")], work)
    clusters = np.load(work / "clusters.npy")
    n_rows = len(clusters)
    started = time.perf_counter()
    hashes_file = synthetic_hashes(n_rows).write(work / "image_hashes.parquet")
    print(f"{n_rows} rows; hashes written in {time.perf_counter() - started:.0f} s", flush=True)
    load = os.getloadavg()[0]
    result = run_measured([*python, "duplicates", "--index", str(index), "--hashes", str(hashes_file),
                           "--pairs", str(work / "pairs.parquet")], work)
    groups = pd.read_csv(io.StringIO(result["stdout"]))
    row_of = {path_of(row): row for row in range(n_rows)}
    rows = groups["image_path"].map(row_of).to_numpy()
    n_copies = n_rows // 100
    group_of = dict(zip(rows, groups["group"]))
    found = sum(group_of.get(row) is not None and group_of.get(row) == group_of.get(n_rows - n_copies + row)
                for row in range(n_copies))
    joining = groups.assign(cluster=clusters[rows]).groupby("group")["cluster"].nunique().gt(1).sum()
    n_pairs = len(pd.read_parquet(work / "pairs.parquet", columns=["verdict"]))
    print(f"duplicates --index --hashes (copy check on, default radius and threshold), load {load:.1f} at start: "
          f"{result['seconds']:.1f} s wall, {result['cpu_seconds']:.1f} CPU s, {result['peak_rss_gb']:.2f} GB peak "
          f"RSS; {n_pairs} candidate pairs; {found} of {n_copies} planted copies grouped with their original; "
          f"{groups['group'].nunique()} groups, {joining} joining different clusters; load at end "
          f"{os.getloadavg()[0]:.1f}")
    print(result["stderr"].strip())
    subprocess.run(["du", "-sh", str(work / "pairs.parquet")], check=False)


if __name__ == "__main__":
    main()
