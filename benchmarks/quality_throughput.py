"""Images per second of ImageQualityFeatures, beside the CNN embedder on the same photos.

Input: real photos from ../shared/images re-encoded at auction size (1200 px long side,
quality 85) as JPEG and WebP, as benchmarks/throughput.py does. Each variant runs
``--repeats`` times in this process, alternating, on every photo once (distinct files:
nothing is cached). "CPU ms per image" is the process's CPU time (all threads) per
photo: it moves less than images/s when other programs share the machine. JPEG
decodes at a reduced DCT scale (Pillow's draft mode); WebP has no such mode and
decodes at full size, which is what the two formats' numbers show.

    python benchmarks/quality_throughput.py               # 160 photos per format
    python benchmarks/quality_throughput.py --images 400 --no-embedder
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import WEIGHTS, encode_inputs, machine  # noqa: E402

from skimgfeat import CNNImageEmbedder, ImageQualityFeatures  # noqa: E402


def variants(with_embedder: bool) -> dict:
    chosen = {
        "quality (working_size 512)": ImageQualityFeatures().fit(),
        "quality (working_size 256)": ImageQualityFeatures(working_size=256).fit(),
    }
    if with_embedder:
        chosen["CNN embedder (mobilenet_v2)"] = CNNImageEmbedder(weights=str(WEIGHTS) if WEIGHTS.exists() else None,
                                                                 random_state=0).fit()
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=160, help="distinct photos per format")
    parser.add_argument("--long-side", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-embedder", action="store_true", help="skip the CNN embedder for comparison")
    args = parser.parse_args()
    estimators = variants(not args.no_embedder)
    for estimator in estimators.values():
        estimator.transform([])  # prepares the network (export, session) outside the timing
    print(machine())
    print("| format | variant | images/s (runs) | CPU ms per image |")
    print("|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as temporary:
        for fmt in ("jpeg", "webp"):
            paths = [str(path) for path in encode_inputs(Path(temporary), fmt, args.images, args.long_side)]
            rates: dict[str, list[float]] = {name: [] for name in estimators}
            cpu_ms: dict[str, list[float]] = {name: [] for name in estimators}
            for _ in range(args.repeats):
                for name, estimator in estimators.items():
                    started, cpu_started = time.perf_counter(), time.process_time()
                    estimator.transform(paths)
                    rates[name].append(len(paths) / (time.perf_counter() - started))
                    cpu_ms[name].append(1000 * (time.process_time() - cpu_started) / len(paths))
            for name, runs in rates.items():
                shown = "/".join(f"{rate:.0f}" for rate in runs)
                print(f"| {fmt} | {name} | {statistics.median(runs):.1f} ({shown}) | "
                      f"{statistics.median(cpu_ms[name]):.1f} |")


if __name__ == "__main__":
    main()
