"""Local features of large phone photos: full decoding against the reduced-scale JPEG decoding.

The issue's held-out photos go up to 1600 px; ../shared/images/objects holds them at 800 px.
This upscales phone photos of the shared cases to 1600 px JPEG (quality 90) in a temporary
folder and times, alternating photo by photo in one process on one thread, the detection of
their AKAZE features from a fully decoded photo and from the file itself (which decodes a
large JPEG at the smallest DCT scale that keeps the detection size).

    taskset -c 0 python benchmarks/local_features_large.py --photos 10 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from skimgfeat.engine.image_loading import load_rgb_image
from skimgfeat.matching.local_features import detect_local_features

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--side", type=int, default=1600)
    args = parser.parse_args()
    sources = sorted((SHARED / "images" / "objects").glob("*_canon.jpg"))[: args.photos]
    with tempfile.TemporaryDirectory() as folder:
        photos = [_enlarged(source, Path(folder), args.side) for source in sources]
        detect_local_features(photos[0])  # OpenCV's first call
        full = reduced = 0.0
        for _ in range(args.repeats):
            for photo in photos:
                full += _cpu_seconds(lambda path=photo: detect_local_features(_fully_decoded(path)))
                reduced += _cpu_seconds(lambda path=photo: detect_local_features(path))
    count = args.repeats * len(photos)
    print(f"{len(photos)} photos at {args.side} px, {args.repeats} repeats, load {os.getloadavg()[0]:.1f}: "
          f"full decoding {1000 * full / count:.1f} ms, reduced-scale decoding {1000 * reduced / count:.1f} ms "
          "per photo (decode + AKAZE, CPU time)")


def _enlarged(source: Path, folder: Path, side: int) -> Path:
    with Image.open(source) as opened:
        photo = opened.convert("RGB")
    factor = side / max(photo.size)
    target = folder / source.name
    photo.resize((round(photo.width * factor), round(photo.height * factor)), Image.LANCZOS).save(target, quality=90)
    return target


def _fully_decoded(path: Path) -> np.ndarray:
    with load_rgb_image(path) as photo:
        return np.asarray(photo.convert("L"))


def _cpu_seconds(work) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


if __name__ == "__main__":
    main()
