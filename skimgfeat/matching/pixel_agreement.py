"""Pixel agreement: after aligning two photos, does every region of one show what the same region of the other shows?

A copy is the same pixels up to one geometric change of the whole picture (resized,
cropped, mirrored, inside a border) and one photometric change of the whole picture
(re-exposed, more or less contrast, re-encoded). Two variants of one product line (one
carton design in two flavours, two peppers of one shape in two colours, the same
packshot of another fruit) share their layout, their hashes and most of their keypoints,
but one region of them differs: the flavour's name, its fruit picture, its colour band.

:func:`pixel_difference` aligns the first photo onto the second (from the similarity the
local features found, or else from the hash windows that matched, as
:func:`~skimgfeat.matching.copy_check.compare_copy_pixels` reads them; refined by
maximising their correlation, :func:`cv2.findTransformECC`), fits one gain and one offset
for all colour channels over the overlap (a change of exposure or contrast; predicting
the brighter photo from the darker, so that highlights a brighter copy clipped stay
explained), blurs away what re-encoding changes, and measures the fitted colours'
difference block by block: the largest block's mean difference is the pair's pixel
difference. A copy's blocks differ by its re-encoding only; a variant's differ where its
design does.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from ..engine.image_loading import load_rgb_image
from ..exceptions import ImageLoadError

# The side (pixels) of the frame the photos are compared in: coarse enough that re-encoding and a pixel of
# misalignment vanish, fine enough that a flavour's name or picture fills blocks of its own.
WORK_SIDE = 128
BLOCKS = 12  # blocks across the compared frame's longer side: a flavour's name or fruit fills one
MIN_BLOCK_OVERLAP = 0.75  # a block is compared when this much of it lies inside both photos
SATURATED = 250  # a target pixel this bright may have been clipped: left out of the photometric fit
BLUR = 1.5  # Gaussian sigma (pixels of the compared frame): a resized, re-encoded copy keeps no finer detail
ERODE = 4  # pixels of the overlap's edge left out (blurred and interpolated against the outside)


@dataclass(frozen=True)
class PixelComparison:
    """How two aligned photos differ (:func:`pixel_difference`).

    Attributes
    ----------
    difference : float
        The largest mean colour difference (grey levels, 0-255) of one block after the
        global photometric fit; ``inf`` when the photos could not be aligned or overlap
        in too few blocks.
    blocks : int
        Blocks compared.
    """

    difference: float
    blocks: int

    @classmethod
    def none(cls) -> PixelComparison:
        return cls(float("inf"), 0)


def load_for_comparison(photo, *, mirrored: bool = False) -> tuple[np.ndarray, float] | None:
    """An image file as RGB pixels (uint8) of long side at most ``2 * WORK_SIDE``, and its scale against the photo.

    Returns None where the file cannot be read. ``scale`` is pixels of the result per pixel of
    the photo (as the local features' ``scale``); ``mirrored``: flipped left to right. The
    pixels are read-only: the last files read are kept (one photo takes part in many pairs).
    """
    if photo is None:
        return None
    try:
        stat = os.stat(photo)
    except (OSError, TypeError, ValueError):
        return None
    return _loaded(os.fspath(photo), stat.st_mtime_ns, stat.st_size, bool(mirrored))


@functools.lru_cache(maxsize=256)  # at most 110 kB a photo
def _loaded(path: str, modified: int, size: int, mirrored: bool) -> tuple[np.ndarray, float] | None:
    from .local_features import _stored_size

    stored = _stored_size(path)
    draft = None
    if stored is not None:
        long_side = max(*stored, 1)
        draft = tuple(max(1, -(-side * 2 * WORK_SIDE // long_side)) for side in stored)
    try:
        with load_rgb_image(path, draft_size=draft) as image:
            image.thumbnail((2 * WORK_SIDE, 2 * WORK_SIDE))
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except ImageLoadError:
        return None
    if mirrored:
        pixels = pixels[:, ::-1]
    scale = 1.0 if stored is None else max(pixels.shape[:2]) / max(*stored, 1)
    pixels = np.ascontiguousarray(pixels)
    pixels.flags.writeable = False
    return pixels, scale


def pixel_difference(pixels_a: np.ndarray, pixels_b: np.ndarray, transform: np.ndarray, *,
                     refine: bool = False) -> PixelComparison:
    """Align ``pixels_a`` onto ``pixels_b`` and measure how much the worst block differs.

    Parameters
    ----------
    pixels_a, pixels_b : ndarray of shape (height, width, 3)
        RGB pixels (0-255).
    transform : ndarray of shape (2, 3) or (3, 3)
        Maps pixel positions of ``pixels_a`` onto those of ``pixels_b`` (an approximate one
        with ``refine``).
    refine : bool, default=False
        Refine ``transform`` by maximising the correlation of the two grey pictures (an
        affine :func:`cv2.findTransformECC`; kept as given when that fails): a transform
        read off matching hash windows is right within a few percent, a keypoint similarity
        within a few pixels of the detection frame, both more than a block's edge tolerates.

    Returns
    -------
    PixelComparison

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> photo = np.repeat(np.repeat(rng.random((12, 16, 3)) * 255, 16, axis=0), 16, axis=1)
    >>> half = photo[::2, ::2] * 0.8 + 10  # resized and darkened
    >>> pixel_difference(photo, half, np.array([[0.5, 0, 0], [0, 0.5, 0]])).difference < 5
    True
    """
    from .local_features import import_cv2

    cv2 = import_cv2()
    transform = np.vstack([np.asarray(transform, dtype=np.float64)[:2], [0.0, 0.0, 1.0]])
    small_a, shrink_a = _shrunk(cv2, pixels_a)
    small_b, shrink_b = _shrunk(cv2, pixels_b)
    # a's compared frame -> b's compared frame
    forward = np.diag([shrink_b, shrink_b, 1.0]) @ transform @ np.diag([1 / shrink_a, 1 / shrink_a, 1.0])
    if not np.isfinite(forward).all() or abs(np.linalg.det(forward[:2, :2])) < 1e-6:
        return PixelComparison.none()
    height, width = small_b.shape[:2]
    if refine:
        forward = _refined(cv2, small_a, small_b, forward)
    inverse = np.linalg.inv(forward)[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(small_a, inverse, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0)
    inside = cv2.warpAffine(np.ones(small_a.shape[:2], np.uint8), inverse, (width, height), flags=cv2.INTER_NEAREST
                            | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = cv2.erode(inside, np.ones((2 * ERODE + 1, 2 * ERODE + 1), np.uint8)).astype(bool)
    if not inside.any():
        return PixelComparison.none()
    residual = _fitted_residual(cv2.GaussianBlur(warped, (0, 0), BLUR), cv2.GaussianBlur(small_b, (0, 0), BLUR), inside)
    return _worst_block(residual, inside)


def _shrunk(cv2, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """The pixels with a long side of at most :data:`WORK_SIDE` (area averaging), and the factor applied."""
    height, width = pixels.shape[:2]
    shrink = min(1.0, WORK_SIDE / max(height, width, 1))
    if shrink >= 1.0:
        return pixels.astype(np.float32), 1.0
    size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    return cv2.resize(pixels.astype(np.float32), size, interpolation=cv2.INTER_AREA), shrink


def _refined(cv2, small_a: np.ndarray, small_b: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """``forward`` refined by an affine ECC fit of the grey pictures; ``forward`` as it was when the fit fails."""
    grey_a = cv2.cvtColor(small_a, cv2.COLOR_RGB2GRAY)
    grey_b = cv2.cvtColor(small_b, cv2.COLOR_RGB2GRAY)
    warp = np.linalg.inv(forward)[:2].astype(np.float32)  # b's frame -> a's frame, as ECC wants it
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
    try:
        _, warp = cv2.findTransformECC(grey_b, grey_a, warp, cv2.MOTION_AFFINE, criteria, None, 5)
    except cv2.error:
        return forward
    return np.linalg.inv(np.vstack([warp.astype(np.float64), [0.0, 0.0, 1.0]]))


def _fitted_residual(warped: np.ndarray, target: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Per pixel, the largest colour channel's difference after one gain and one offset for all channels.

    One gain and offset is a change of exposure or contrast, what a copy goes through; a
    gain or offset per channel would also turn an orange fruit pink (clipping at white
    absorbs any offset there). The brighter photo is predicted from the darker: a copy made
    brighter clipped its highlights, a function of the darker photo's pixels, not the other
    way round.
    """
    source, goal = (warped, target) if warped[inside].mean() <= target[inside].mean() else (target, warped)
    x, y = source[inside].ravel(), goal[inside].ravel()
    fit = y < SATURATED
    if fit.sum() >= 8 and np.ptp(x[fit]) > 1:
        gain, offset = np.polyfit(x[fit], y[fit], 1)
    else:
        gain, offset = 1.0, float(np.mean(y - x))
    predicted = np.clip(gain * source + offset, 0, 255)
    return np.abs(predicted - goal).max(axis=2)


def _worst_block(residual: np.ndarray, inside: np.ndarray) -> PixelComparison:
    height, width = residual.shape
    side = max(2, int(np.ceil(max(height, width) / BLOCKS)))
    worst, blocks = 0.0, 0
    for top in range(0, height, side):
        for left in range(0, width, side):
            cell = inside[top:top + side, left:left + side]
            if cell.size == 0 or cell.sum() < MIN_BLOCK_OVERLAP * side * side:
                continue
            blocks += 1
            worst = max(worst, float(residual[top:top + side, left:left + side][cell].mean()))
    return PixelComparison(worst, blocks) if blocks else PixelComparison.none()
