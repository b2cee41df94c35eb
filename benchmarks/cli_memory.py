"""Peak memory and checkpoint files of `skimgfeat extract` against the number of photos.

Generates tiny real photos once (64-96 px JPEG crops of ../shared images, three per item;
see benchmarks/_photos.py), then runs the CLI on the first N of them in a fresh process
for each N and reports that process's peak RSS, its wall time and the most checkpoint
parts its checkpoint folder held (polled while it runs; the folder is removed at the end).
Tiny photos keep decoding cheap so that 50,000 fit in a short run; every photo is still
resized to the network's input, so the network's cost per photo is that of any photo.
The network is a random ShuffleNetV2 x0.5 by default (no download; the measure is memory,
not features); --model mobilenet_v2 with SKIMGFEAT_WEIGHTS set measures the real one.

    python benchmarks/cli_memory.py                        # 5,000 and 50,000 photos
    python benchmarks/cli_memory.py --sizes 2000,20000 --workdir /tmp/skimgfeat-tiny
    python benchmarks/cli_memory.py --sizes 20000 --workdir /tmp/skimgfeat-tiny --resume   # after a Ctrl-C

Targets (issue 16): peak RSS at 50,000 within 1.2x of 5,000; at most 100 checkpoint files.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _photos import make_photos

CHECKPOINT_DIR = ".skimgfeat-checkpoint"


def run_cli(photos: Path, n: int, output: Path, model: str, resume: bool = False) -> tuple[float, float, int]:
    """Peak RSS (MB), wall seconds and most checkpoint parts of one ``skimgfeat extract`` on ``n`` photos."""
    weights = ["--weights", "none"] if model != "mobilenet_v2" else []
    command = [sys.executable, "-m", "skimgfeat", "extract", str(photos), "-o", str(output), "--pattern", "*.jpg",
               "--model", model, *weights, "--max-images", str(n), "-q", "--resume" if resume else "--restart"]
    started = time.perf_counter()
    # Run outside the repository: `python -m` puts the working folder first on sys.path,
    # and PYTHONPATH must decide which skimgfeat is measured.
    output.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(command, cwd=output.parent)
    most_parts = 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        try:
            most_parts = max(most_parts, sum(1 for _ in (output / CHECKPOINT_DIR).glob("part-*.npz")))
        except OSError:
            pass
        time.sleep(0.5)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"skimgfeat extract failed on {n} photos (exit {os.waitstatus_to_exitcode(status)})")
    return usage.ru_maxrss / 1024, time.perf_counter() - started, most_parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--model", default="shufflenet_v2_x0_5")
    parser.add_argument("--workdir", help="keep the generated photos here (default: a temporary folder)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the checkpoint an interrupted run left in WORKDIR/out-N (default: --restart)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="skimgfeat-memory-") as tmp:
        work = Path(args.workdir or tmp)
        photos = make_photos(work / "photos", max(sizes))
        print(f"load before: {os.getloadavg()[0]:.1f}")
        print("| photos | peak RSS MB | wall s | images/s | most checkpoint parts | raw table MB |")
        print("|---:|---:|---:|---:|---:|---:|")
        peaks = []
        for n in sizes:
            output = work / f"out-{n}"
            peak, seconds, parts = run_cli(photos, n, output, args.model, args.resume)
            peaks.append(peak)
            table_mb = (output / "image_features_raw.parquet").stat().st_size / 2**20
            print(f"| {n} | {peak:.0f} | {seconds:.0f} | {n / seconds:.0f} | {parts} | {table_mb:.0f} |", flush=True)
        print(f"peak RSS {sizes[-1]} vs {sizes[0]}: {peaks[-1] / peaks[0]:.2f}x; load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
