"""Peak memory of ``CNNImageEmbedder(fine_tune="all").fit`` against the number of photos.

Makes small JPEG variants (random crop and flip, 64 px) of the shared grocery training
photos once, labelled with their product, then fine-tunes the whole shared MobileNetV2
on the first N of them in a fresh process for each N and reports that process's peak
RSS. Small photos and crops keep the run short; what grows with N is the same at any
size: the decoded photos (in a temporary file), the per-sample pooled probe features,
the validation pass and the batches.

    python benchmarks/finetune_memory.py                              # 2,000 / 10,000 / 20,000 photos
    python benchmarks/finetune_memory.py --sizes 2000 --workdir /tmp/skimgfeat-ft-photos
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

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GROCERY = SHARED / "images" / "grocery"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
SIDE = 64


def make_photos(folder: Path, n: int) -> None:
    """``n`` JPEG variants of the grocery training photos as ``<k>_<product>.jpg`` (kept between runs)."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    existing = len(list(folder.glob("*.jpg")))
    if existing >= n:
        return
    listing = [line.split(",") for line in (GROCERY / "train.txt").read_text().splitlines()]
    sources = []
    for relative, fine_id, _ in listing:
        with Image.open(GROCERY / relative.strip()) as image:
            sources.append((image.convert("RGB").resize((2 * SIDE, 2 * SIDE)), int(fine_id)))
    rng = np.random.default_rng(existing)
    for k in range(existing, n):
        image, product = sources[k % len(sources)]
        side = int(rng.integers(SIDE, 2 * SIDE + 1))
        left, top = (int(v) for v in rng.integers(0, 2 * SIDE - side + 1, 2))
        variant = image.crop((left, top, left + side, top + side)).resize((SIDE, SIDE))
        if rng.random() < 0.5:
            variant = ImageOps.mirror(variant)
        variant.save(folder / f"{k:06d}_{product}.jpg", quality=90)


def fit_once(folder: Path, n: int) -> None:
    """The measured process: one fine-tune of the whole network on the first ``n`` photos."""
    from skimgfeat import CNNImageEmbedder

    paths = sorted(str(path) for path in folder.glob("*.jpg"))[:n]
    products = [int(Path(path).stem.split("_")[1]) for path in paths]
    embedder = CNNImageEmbedder(
        weights=str(WEIGHTS), fine_tune="all", fine_tune_epochs=1, random_state=0, resize_size=SIDE, crop_size=SIDE,
        fine_tune_options={"source_size": SIDE, "train_size": 48},
    ).fit(paths, products)
    record = embedder.model_info_["fine_tuning"]
    print(f"trained on {record['n_images']} photos, {record['n_classes']} products, "
          f"validation {record['validation_metric']} {record['validation_score']:.3f}", file=sys.stderr)


def measure(folder: Path, n: int) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of :func:`fit_once` on ``n`` photos, in a fresh process."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--one", str(n), "--workdir", str(folder.parent)])
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"fine-tuning on {n} photos failed (exit {os.waitstatus_to_exitcode(status)})")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,10000,20000")
    parser.add_argument("--workdir", help="keep the generated photos here (default: a temporary folder)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the measured child process
    args = parser.parse_args()
    if args.one:
        fit_once(Path(args.workdir) / "photos", args.one)
        return
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="skimgfeat-ft-memory-") as tmp:
        folder = Path(args.workdir or tmp) / "photos"
        make_photos(folder, max(sizes))
        print("| photos | peak RSS MB | wall s |")
        print("|---:|---:|---:|")
        for n in sizes:
            peak, seconds = measure(folder, n)
            print(f"| {n} | {peak:.0f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
