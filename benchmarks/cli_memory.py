"""Peak memory of `skimgfeat extract` against the number of images.

Generates tiny JPEG photos (32x32, three per item) once into a folder, then runs the
CLI on the first N of them in a fresh process for each N and reports that process's
peak RSS. The network is a random ShuffleNetV2 x0.5 (no download; the measure is
memory, not features), so the run time stays reasonable on a small machine.

    python benchmarks/cli_memory.py                        # 20,000 and 200,000 images
    python benchmarks/cli_memory.py --sizes 2000,20000,60000 --workdir /tmp/skimgfeat-tiny
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_photos(folder: Path, n: int) -> None:
    """``n`` distinct 32x32 JPEGs named ``<item>_<k>.jpg`` under ``folder/<n>`` (kept between runs)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    existing = len(list(folder.glob("*.jpg")))
    rng = np.random.default_rng(existing)
    for i in range(existing, n):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i // 3:07d}_{i % 3 + 1}.jpg", quality=90)


def run_cli(photos: Path, n: int, output: Path) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of one ``skimgfeat extract`` on the first ``n`` photos."""
    command = [sys.executable, "-m", "skimgfeat", "extract", str(photos), "-o", str(output), "--pattern", "*.jpg",
               "--model", "shufflenet_v2_x0_5", "--weights", "none", "--max-images", str(n),
               "--checkpoint-every", "8", "-q", "--restart"]
    started = time.perf_counter()
    # Run outside the repository: `python -m` puts the working folder first on sys.path,
    # and PYTHONPATH must decide which skimgfeat is measured.
    child = subprocess.Popen(command, cwd=output.parent)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"skimgfeat extract failed on {n} images (exit {os.waitstatus_to_exitcode(status)})")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--workdir", help="keep the generated photos here (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="skimgfeat-memory-") as tmp:
        work = Path(args.workdir or tmp)
        photos = work / "photos"
        make_photos(photos, max(sizes))
        print("| images | peak RSS MB | wall s | raw table MB on disk |")
        print("|---:|---:|---:|---:|")
        for n in sizes:
            output = work / f"out-{n}"
            peak, seconds = run_cli(photos, n, output)
            table_mb = (output / "image_features_raw.parquet").stat().st_size / 2**20
            print(f"| {n} | {peak:.0f} | {seconds:.0f} | {table_mb:.0f} |", flush=True)


if __name__ == "__main__":
    main()
