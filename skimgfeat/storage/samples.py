"""A small folder of item photos that needs no download, for demos and smoke tests.

scikit-learn ships two photos (``china.jpg``, ``flower.jpg``); each becomes an item
with several WebP photos named ``<item>_<n>.webp``, as auction listings are: the
photo itself, its mirror image and close-ups.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

from .io import atomic_path


def _whole(image: Image.Image) -> Image.Image:
    return image


def _close_up(fraction: float, horizontal: float) -> Callable[[Image.Image], Image.Image]:
    def crop(image: Image.Image) -> Image.Image:
        width, height = image.size
        w, h = int(width * fraction), int(height * fraction)
        left, top = int((width - w) * horizontal), (height - h) // 2
        return image.crop((left, top, left + w, top + h))

    return crop


VIEWS: tuple[Callable[[Image.Image], Image.Image], ...] = (
    _whole,
    ImageOps.mirror,
    _close_up(0.6, 0.5),
    _close_up(0.5, 0.0),
)


def write_sample_images(folder: str | os.PathLike, photos_per_item: int = 3, quality: int = 90) -> list[Path]:
    """Write scikit-learn's sample photos to ``folder`` as ``<item>_<n>.webp`` files.

    Parameters
    ----------
    folder : str or os.PathLike
        Created if needed; existing files of the same names are replaced.
    photos_per_item : int, default=3
        Views per photo, 1 to 4: the photo, its mirror image, a center close-up, a
        left close-up.
    quality : int, default=90
        WebP quality.

    Returns
    -------
    paths : list of Path
        The files written, sorted.
    """
    from sklearn.datasets import load_sample_images

    if not 1 <= photos_per_item <= len(VIEWS):
        raise ValueError(f"photos_per_item must be between 1 and {len(VIEWS)}, got {photos_per_item!r}")
    bunch = load_sample_images()
    written = []
    for pixels, filename in zip(bunch.images, bunch.filenames):
        item = Path(filename).stem
        photo = Image.fromarray(pixels)
        for number, view in enumerate(VIEWS[:photos_per_item], start=1):
            path = Path(folder) / f"{item}_{number}.webp"
            with atomic_path(path) as temporary:
                view(photo).save(temporary, format="WEBP", quality=quality)
            written.append(path)
    return sorted(written)
