"""Many real photos for scale benchmarks: crops of ../shared images, resized and re-encoded.

``make_photos(folder, n)`` writes ``n`` JPEGs named ``<item>_<k>.jpg`` (three photos per
item) whose pixels come from the real photos in ``../shared/images`` (grocery shop photos,
house listings, ImageNet classes): each is a random crop of one source photo, resized to
``min_side``-``max_side`` pixels, sometimes mirrored, and re-encoded at a random quality,
so no two files are the same bytes and every one decodes like a real photo. Sources are
decoded once (at a reduced size) and kept in memory; photos already in ``folder`` are
kept, so a larger run reuses a smaller one's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
PHOTOS_PER_ITEM = 3


def source_photos(limit: int = 1500, side: int = 192) -> list[Image.Image]:
    """Up to ``limit`` real photos from ../shared/images, decoded with a longer side of about ``side``."""
    images = SHARED / "images"
    if not images.is_dir():
        raise SystemExit(f"needs {images} (the project's shared photos; see ../shared/README.md)")
    files = sorted(images.rglob("*.jpg"))
    chosen = [files[i] for i in np.linspace(0, len(files) - 1, min(limit, len(files))).astype(int)]
    sources = []
    for path in chosen:
        with Image.open(path) as image:
            image.draft("RGB", (side, side))
            image = image.convert("RGB")
            image.thumbnail((side, side))
            sources.append(image)
    return sources


def photo_name(i: int) -> str:
    return f"{i // PHOTOS_PER_ITEM:07d}_{i % PHOTOS_PER_ITEM + 1}.jpg"


def make_photos(folder: str | os.PathLike, n: int, *, min_side: int = 64, max_side: int = 96, seed: int = 0) -> Path:
    """Write photos ``0 .. n-1`` into ``folder`` (those present are kept); return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(n) if not (folder / photo_name(i)).is_file()]
    if not missing:
        return folder
    sources = source_photos()
    for i in missing:
        rng = np.random.default_rng([seed, i])
        source = sources[int(rng.integers(len(sources)))]
        scale = rng.uniform(0.6, 1.0)
        width, height = max(8, int(source.width * scale)), max(8, int(source.height * scale))
        left, top = int(rng.integers(source.width - width + 1)), int(rng.integers(source.height - height + 1))
        photo = source.crop((left, top, left + width, top + height))
        side = int(rng.integers(min_side, max_side + 1))
        photo = photo.resize((side, max(8, round(side * height / width))), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        temporary = folder / f".{photo_name(i)}.tmp"
        photo.save(temporary, format="JPEG", quality=int(rng.integers(70, 95)))
        temporary.rename(folder / photo_name(i))  # a killed generation leaves no half photo
    return folder
