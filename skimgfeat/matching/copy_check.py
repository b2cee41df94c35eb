"""Copy check: is one photo a copy of another (resized, recompressed, cropped, mirrored, framed)?

CNN features say what a photo shows; two shots of one shelf taken moments apart show the
same thing and sit as close as a harshly re-encoded copy. A perceptual hash looks at the
photo's structure instead: a copy keeps it, a re-shoot moves it. Each photo gets
:data:`N_HASHES` 64-bit DCT perceptual hashes (``imagehash.phash``), see
:func:`photo_hashes`: the whole photo; nine windows covering :data:`WINDOW_SIDE` of each
side on a 3 x 3 grid (a copy cropped from one corner); two centred windows
(:data:`CENTRED_SIDES`: a copy cropped around its middle); the photo with a plain border
(a mat, a margin) trimmed off; and the whole photo mirrored. The copy distance of two
photos is the smallest Hamming distance between any hash of one and any hash of the
other (:func:`copy_distance`).

Hashes alone cannot tell two drawings behind one mat apart, nor two small objects on one
studio backdrop: frame, mat and backdrop fill the picture and its hash. So a hash match
is a *candidate* copy and

* with the photos' local features (``extract --local-features``), it is a copy only when
  the content agrees (:func:`content_agrees`): the keypoints of both photos match under
  one similarity (a copy is resized, cropped or mirrored, never seen at an
  angle), and most keypoints where the photos overlap are among the matches: two
  drawings in one frame share the frame's keypoints, not the drawing's;
* without them, the hash rule is stricter (:func:`hash_only_threshold`): the threshold
  scales with how much the photo's own hashes move when the window moves (its texture),
  and it cannot tell look-alikes whose structure is all frame or backdrop apart;
* where the photo files are at hand, the pixels must agree too
  (:func:`compare_copy_pixels`, :mod:`~skimgfeat.matching.pixel_agreement`): aligned,
  with one exposure change fitted, no block of the picture may differ by more than
  :data:`MAX_PIXEL_DIFFERENCE`. Keypoints are grey and local: two flavours of one carton
  design share them, not the colour of their band or fruit.

:func:`~skimgfeat.matching.duplicates.copy_decision` applies these steps in order. The
functions here are what other modules call (:func:`copy_distance`, :func:`copy_thresholds`,
:func:`content_agrees`, :func:`compare_copy_pixels`, :data:`COPY_THRESHOLD`,
:class:`PhotoHashes`); the verdicts they share are :data:`COPY`, :data:`DIFFERENT` and
:data:`UNREADABLE`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..engine.image_loading import load_rgb_image
from ..exceptions import ImageLoadError
from ..schema import ERROR, IMAGE_PATH
from .pixel_agreement import PixelComparison, load_for_comparison, pixel_difference

# Chosen by benchmarks/duplicate_threshold.py on its tune split (see benchmarks/README.md).
COPY_THRESHOLD = 8
WINDOW_SIDE = 0.92
CENTRED_SIDES = (0.84, 0.76)
N_HASHES = 14
HASH_BITS = 64
HASHES_FILE = "image_hashes.parquet"
# Version 2: 14 hashes (centred windows, trimmed border, mirror); version 1 (no version recorded): 10.
HASHES_VERSION = 2

# Which hash is which (rows of photo_hashes).
WHOLE = 0
GRID = slice(1, 10)
CENTRED = slice(10, 12)
TRIMMED = 12
MIRRORED = 13

COPY = "copy"
DIFFERENT = "different"
UNREADABLE = "unreadable"
SAME_OBJECT = "same_object"  # another photo of the same object (local features, not a copy)

_HASH_COLUMNS = [f"phash_{i}" for i in range(N_HASHES)]
# Hashes look at a 32 x 32 grey picture: decoding past 128 pixels buys nothing.
_DECODE_SIZE = (128, 128)
# A border is plain when its pixels stay within this many grey levels of its median (after a light blur).
_BORDER_TOLERANCE = 14


class OutdatedHashesError(ValueError):
    """A hashes file written by an earlier version of skimgfeat (other hashes): hash again."""


def photo_hashes(image) -> np.ndarray:
    """The :data:`N_HASHES` perceptual hashes of one picture.

    Parameters
    ----------
    image : PIL.Image.Image

    Returns
    -------
    ndarray of shape (N_HASHES,), dtype uint64
        :data:`WHOLE` the whole picture; :data:`GRID` the nine windows row by row;
        :data:`CENTRED` the centred windows; :data:`TRIMMED` the picture without its
        plain border (the whole picture when it has none); :data:`MIRRORED` the whole
        picture flipped left to right.

    Examples
    --------
    >>> from PIL import Image
    >>> hashes = photo_hashes(Image.linear_gradient("L").resize((120, 90)))
    >>> hashes.shape, hashes.dtype.name
    ((14,), 'uint64')
    """
    from PIL import ImageOps

    grey = image.convert("L")
    pictures = [grey.crop(box) for box in hash_windows(grey)] + [ImageOps.mirror(grey)]
    return _phashes(pictures)


def hash_windows(grey) -> list[tuple[int, int, int, int]]:
    """The boxes (left, top, right, bottom) of a grey picture that its hashes before :data:`MIRRORED` look at."""
    width, height = grey.size
    window_w, window_h = max(1, round(width * WINDOW_SIDE)), max(1, round(height * WINDOW_SIDE))
    boxes = [(0, 0, width, height)]
    for top in np.linspace(0, height - window_h, 3).round().astype(int):
        for left in np.linspace(0, width - window_w, 3).round().astype(int):
            boxes.append((int(left), int(top), int(left) + window_w, int(top) + window_h))
    for side in CENTRED_SIDES:
        keep_w, keep_h = max(1, round(width * side)), max(1, round(height * side))
        left, top = (width - keep_w) // 2, (height - keep_h) // 2
        boxes.append((left, top, left + keep_w, top + keep_h))
    boxes.append(_content_box(grey))
    return boxes


# imagehash.phash's sizes: an 8 x 8 hash from the DCT of a 32 x 32 picture.
_PHASH_SIDE, _PHASH_PICTURE = 8, 32


def _phashes(pictures) -> np.ndarray:
    """``imagehash.phash`` of each grey picture, bit for bit, with one DCT for all of them.

    The same steps (a Lanczos resize to 32 x 32, a 2-D DCT-II, the 8 x 8 lowest
    frequencies against their median), but the DCT and the medians run once over the
    stack: per picture, imagehash spent most of its time in Python around two tiny
    transforms (1.9 ms a photo for the 14 hashes, 0.9 ms this way).
    """
    from PIL import Image
    from scipy.fftpack import dct

    size = (_PHASH_PICTURE, _PHASH_PICTURE)
    pixels = np.stack([np.asarray(picture.resize(size, Image.LANCZOS)) for picture in pictures])
    low = dct(dct(pixels, axis=1), axis=2)[:, :_PHASH_SIDE, :_PHASH_SIDE].reshape(len(pictures), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _content_box(grey) -> tuple[int, int, int, int]:
    """The box inside a plain border (a mat, a margin of one tone); the whole picture when there is none.

    The border's tone is the median of the outermost pixels; the box holds every pixel
    further from it than :data:`_BORDER_TOLERANCE` grey levels. A box under a quarter of
    the picture is noise on a plain picture, not content: the whole picture then.
    """
    from PIL import ImageFilter

    pixels = np.asarray(grey.filter(ImageFilter.BoxBlur(1)), dtype=np.int16)
    height, width = pixels.shape
    whole = (0, 0, width, height)
    if height < 8 or width < 8:
        return whole
    ring = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    tone = np.median(ring)
    if np.mean(np.abs(ring - tone) <= _BORDER_TOLERANCE) < 0.9:  # no plain border all round
        return whole
    content = np.abs(pixels - tone) > _BORDER_TOLERANCE
    rows, columns = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    if not len(rows):
        return whole
    box = (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)
    if (box[2] - box[0]) * (box[3] - box[1]) < 0.25 * width * height:
        return whole
    return box


def hash_photo(path: str | os.PathLike) -> np.ndarray:
    """:func:`photo_hashes` of an image file; :class:`~skimgfeat.ImageLoadError` naming it if it cannot be read."""
    with load_rgb_image(path, draft_size=_DECODE_SIZE) as image:
        image.thumbnail(_DECODE_SIZE)
        return photo_hashes(image)


def copy_distance(hashes_a, hashes_b) -> np.ndarray:
    """Smallest Hamming distance (bits) between any hash of one photo and any hash of the other.

    Parameters
    ----------
    hashes_a, hashes_b : array-like of shape (N_HASHES,) or (n_pairs, N_HASHES), uint64
        The hashes of :func:`photo_hashes` (or :attr:`PhotoHashes.hashes` rows), one
        photo of each pair per row.

    Returns
    -------
    int or ndarray of shape (n_pairs,)
        0 for the same picture; a copy is at most its :func:`copy_thresholds`.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros(N_HASHES, dtype=np.uint64)
    >>> b = np.full(N_HASHES, 2**64 - 1, dtype=np.uint64); b[3] = 0b1011  # one window of b is 3 bits from a
    >>> int(copy_distance(a, b))
    3
    """
    distance, _ = copy_match(hashes_a, hashes_b)
    return distance


def copy_match(hashes_a, hashes_b, *, block_pairs: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """:func:`copy_distance` and, per pair, whether its best match mirrors one photo.

    ``mirrored`` is True where a hash of one photo mirrored (:data:`MIRRORED`) matches
    better than any two hashes the same way round: a mirrored copy, whose local
    features only match once one photo is flipped. Pairs are scored ``block_pairs`` at a
    time (memory: a block's ``N_HASHES**2`` distances, never all pairs').
    """
    a, b = np.asarray(hashes_a, dtype=np.uint64), np.asarray(hashes_b, dtype=np.uint64)
    single = a.ndim == 1
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape != b.shape:
        raise ValueError(f"need the hashes of both photos of each pair, got {a.shape} and {b.shape}")
    distance = np.empty(len(a), dtype=np.int64)
    mirrored = np.empty(len(a), dtype=bool)
    one_mirrored = np.zeros((a.shape[1], a.shape[1]), dtype=bool)
    if a.shape[1] == N_HASHES:
        one_mirrored[MIRRORED, :] = one_mirrored[:, MIRRORED] = True
        one_mirrored[MIRRORED, MIRRORED] = False
    for start in range(0, len(a), block_pairs):
        stop = start + block_pairs
        bits = np.bitwise_count(a[start:stop, :, None] ^ b[start:stop, None, :])
        straight = np.where(one_mirrored, HASH_BITS, bits).min(axis=(1, 2))
        flipped = np.where(one_mirrored, bits, HASH_BITS).min(axis=(1, 2))
        distance[start:stop] = np.minimum(straight, flipped)
        mirrored[start:stop] = flipped < straight
    return (int(distance[0]), bool(mirrored[0])) if single else (distance, mirrored)


def hash_texture(hashes) -> np.ndarray:
    """How far a photo's hash moves when its window moves: median bits between the whole and the grid windows.

    A photo of fine detail changes many bits when the window shifts by 4 %; a plain one
    (a white-background product shot, a mat and frame, a studio backdrop) changes few, so
    two different such photos also agree within few bits.

    Parameters
    ----------
    hashes : array-like of shape (N_HASHES,) or (n_photos, N_HASHES), uint64

    Returns
    -------
    float or ndarray of shape (n_photos,)
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    single = hashes.ndim == 1
    hashes = np.atleast_2d(hashes)
    moved = np.bitwise_count(hashes[:, GRID] ^ hashes[:, WHOLE, None])
    texture = np.median(moved, axis=1)
    return float(texture[0]) if single else texture


def copy_thresholds(hashes_a, hashes_b, *, copy_threshold: int = COPY_THRESHOLD,
                    confirmed: bool = True) -> np.ndarray:
    """The largest copy distance of a copy, per pair: ``copy_threshold`` scaled by the plainer photo's texture.

    Parameters
    ----------
    hashes_a, hashes_b : array-like of shape (n_pairs, N_HASHES) or (N_HASHES,)
    copy_threshold : int, default=COPY_THRESHOLD
        The threshold of a photo of ordinary texture (:data:`TEXTURE_REFERENCE` bits).
    confirmed : bool, default=True
        Whether the local features will confirm the content (:func:`content_agrees`);
        False: the stricter rule of :func:`hash_only_threshold`.

    Returns
    -------
    int or ndarray of shape (n_pairs,)
    """
    texture = np.minimum(hash_texture(hashes_a), hash_texture(hashes_b))
    scale = np.clip(texture / TEXTURE_REFERENCE, TEXTURE_FLOOR, 1.0)
    limit = copy_threshold if confirmed else hash_only_threshold(copy_threshold)
    thresholds = np.floor(limit * scale).astype(np.int64)
    return int(thresholds) if np.ndim(thresholds) == 0 else thresholds


def hash_only_threshold(copy_threshold: int = COPY_THRESHOLD) -> int:
    """The threshold when hashes alone decide (no local features): :data:`HASH_ONLY_SHARE` of ``copy_threshold``."""
    return int(np.floor(copy_threshold * HASH_ONLY_SHARE))


def content_agrees(verification) -> bool:
    """Whether a verified pair of photos shows the same picture: the content check of a hash match.

    Parameters
    ----------
    verification : PairVerification
        From :func:`~skimgfeat.matching.verification.verify_pair` (its guided match is read
        when there is one), with :attr:`coverage` filled by :func:`verify_copy`.

    Returns
    -------
    bool
        At least :data:`MIN_COPY_INLIERS` inliers under one similarity (rotation, one
        scale, shift: within :data:`SIMILARITY_TOLERANCE` pixels) covering at least
        :data:`MIN_COPY_COVERAGE` of the keypoints where the photos overlap, and at
        most :data:`MAX_UNMATCHED` of those keypoints in a patch where nothing matches.
    """
    return verification is not None and verification.agrees


@dataclass(frozen=True)
class CopyVerification:
    """The content check of one pair of photos (:func:`verify_copy`).

    Attributes
    ----------
    inliers : int
        Keypoint matches explained by one transform (the guided match's, when there is one).
    coverage : float
        Inliers over the keypoints of the photo with fewer of them where the two overlap
        (each photo's keypoints that the transform carries inside the other); 0 when the
        similarity explains none.
    similarity : bool
        A similarity explains the matches: no mirror, both directions scaled alike,
        no perspective (a copy is resized and cropped, not photographed again at an angle).
    mirrored : bool
        One photo was flipped before matching (the hashes said it is a mirrored copy).
    unmatched : float
        The share of those keypoints lying in a patch where almost nothing matches
        (:func:`_unmatched_share`): another drawing in the same frame, another object
        on the same backdrop. 1 when no similarity explains the matches.
    transform : ndarray of shape (3, 3) or None
        The similarity, from the first photo's pixels (flipped when ``mirrored``) to the
        second's; None when no similarity explains the matches.
    """

    inliers: int
    coverage: float
    similarity: bool
    mirrored: bool = False
    unmatched: float = 1.0
    transform: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def agrees(self) -> bool:
        return (self.similarity and self.inliers >= MIN_COPY_INLIERS and self.coverage >= MIN_COPY_COVERAGE
                and self.unmatched <= MAX_UNMATCHED)

    @classmethod
    def none(cls, mirrored: bool = False) -> CopyVerification:
        return cls(0, 0.0, False, mirrored, 1.0)


def verify_copy(a, b, *, mirrored: bool = False, verification=None) -> CopyVerification:
    """Match two photos' local features and measure how much of their content one similarity explains.

    Parameters
    ----------
    a, b : LocalFeatures
        From :func:`~skimgfeat.matching.local_features.detect_local_features` or a
        :class:`~skimgfeat.matching.local_features.LocalFeatureStore`; for a mirrored pair,
        ``a`` detected on the flipped photo.
    mirrored : bool, default=False
        Recorded in the result.
    verification : PairVerification or None
        ``verify_pair(a, b)`` when the caller has it already.

    Returns
    -------
    CopyVerification

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat.matching.local_features import detect_local_features
    >>> rng = np.random.default_rng(0)
    >>> photo = (rng.random((240, 320)) * 255).astype(np.uint8)
    >>> content_agrees(verify_copy(detect_local_features(photo), detect_local_features(photo[20:, 30:])))
    True
    """
    from .verification import verify_pair

    verification = verify_pair(a, b) if verification is None else verification
    best = verification.guided if verification.guided is not None else verification
    if best.homography is None or best.inliers < 3:
        return CopyVerification(best.inliers, 0.0, False, mirrored, 1.0)
    # The matches the homography kept, refitted as a similarity (rotation, one scale, shift; no mirror): a copy is
    # resized, cropped and turned, never seen at another angle. Those the similarity explains are the copy's inliers.
    points_a, points_b = best.points_a * a.scale, best.points_b * b.scale
    similarity, kept = _similarity_inliers(points_a, points_b)
    if similarity is None or not kept.any():
        return CopyVerification(0, 0.0, False, mirrored, 1.0)
    forward = np.vstack([similarity, [0.0, 0.0, 1.0]])
    overlap_a = _inside(_mapped(a.points, forward), b.image_size)
    overlap_b = _inside(_mapped(b.points, np.linalg.inv(forward)), a.image_size)
    # The photo with fewer keypoints where the two overlap: the other's extra keypoints (finer detail of a larger
    # original) have no partner in a copy either.
    if overlap_a.sum() <= overlap_b.sum():
        features, overlap, inlier_points = a, overlap_a, points_a[kept]
    else:
        features, overlap, inlier_points = b, overlap_b, points_b[kept]
    points = features.points[overlap]
    inliers = int(kept.sum())
    coverage = min(1.0, inliers / max(1, len(points)))
    # In the photos' own pixels: the detection frames are the photos scaled by a.scale and b.scale.
    transform = np.diag([1 / b.scale, 1 / b.scale, 1.0]) @ forward @ np.diag([a.scale, a.scale, 1.0])
    return CopyVerification(inliers, coverage, True, mirrored, _unmatched_share(points, inlier_points), transform)


def compare_copy_pixels(photo_a, photo_b, hashes_a, hashes_b, verification: CopyVerification | None = None
                        ) -> PixelComparison | None:
    """Align two photo files as a copy would be aligned and measure their worst block's difference.

    The alignment is the content check's similarity (``verification``, from
    :func:`verify_copy`) when it found one; else it is read off the two hash windows that
    matched best (the copy distance's pair) and refined on the pixels. Mirrored as the
    hashes (or ``verification``) say.

    Parameters
    ----------
    photo_a, photo_b : path
    hashes_a, hashes_b : ndarray of shape (N_HASHES,)
    verification : CopyVerification or None

    Returns
    -------
    PixelComparison or None
        None when a file cannot be read; :meth:`PixelComparison.none` (an infinite
        difference) when the photos cannot be aligned.
    """
    if verification is not None and verification.transform is not None:
        mirrored, transform = verification.mirrored, verification.transform
    else:
        (first, second), mirrored = _best_windows(hashes_a, hashes_b)
        transform = None
    loaded_a, loaded_b = load_for_comparison(photo_a, mirrored=mirrored), load_for_comparison(photo_b)
    if loaded_a is None or loaded_b is None:
        return None
    (pixels_a, scale_a), (pixels_b, scale_b) = loaded_a, loaded_b
    if transform is None:  # a window of each (a mirror image's window is the whole photo, as loaded)
        transform = _box_transform(_window_box(pixels_a, first, flipped=mirrored), _window_box(pixels_b, second))
    else:
        transform = np.diag([scale_b, scale_b, 1.0]) @ transform @ np.diag([1 / scale_a, 1 / scale_a, 1.0])
    return pixel_difference(pixels_a, pixels_b, transform, refine=True)


def _best_windows(hashes_a, hashes_b) -> tuple[tuple[int, int], bool]:
    """The hashes ``(of a, of b)`` at the copy distance, and whether one of them is a mirror image."""
    bits = np.bitwise_count(np.asarray(hashes_a, np.uint64)[:, None] ^ np.asarray(hashes_b, np.uint64)[None, :])
    bits[MIRRORED, MIRRORED] = HASH_BITS + 1  # two mirror images: the photos as they are (WHOLE, WHOLE)
    first, second = np.unravel_index(int(np.argmin(bits)), bits.shape)
    return (int(first), int(second)), bool(first == MIRRORED or second == MIRRORED)


def _window_box(pixels: np.ndarray, window: int, *, flipped: bool = False) -> np.ndarray:
    """Box ``(left, top, right, bottom)`` in ``pixels`` of hash ``window`` of the photo as hashed.

    ``flipped``: ``pixels`` are the photo's mirror image (the box is the window's mirror image).
    """
    from PIL import Image

    height, width = pixels.shape[:2]
    if window in (WHOLE, MIRRORED):
        return np.array([0.0, 0.0, width, height])
    picture = Image.fromarray(np.ascontiguousarray(pixels[:, ::-1] if flipped else pixels).astype(np.uint8))
    picture.thumbnail(_DECODE_SIZE)
    box = np.array(hash_windows(picture.convert("L"))[window], dtype=np.float64)
    box *= np.array([width / picture.width, height / picture.height] * 2)
    return np.array([width - box[2], box[1], width - box[0], box[3]]) if flipped else box


def _box_transform(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """The scale-and-shift taking ``box_a`` onto ``box_b`` (3 x 3)."""
    scale = (box_b[2:] - box_b[:2]) / np.maximum(box_a[2:] - box_a[:2], 1e-6)
    shift = box_b[:2] - box_a[:2] * scale
    return np.array([[scale[0], 0.0, shift[0]], [0.0, scale[1], shift[1]], [0.0, 0.0, 1.0]])


def _similarity_inliers(points_a: np.ndarray, points_b: np.ndarray):
    """A similarity mapping ``points_a`` onto ``points_b`` (2 x 3, RANSAC) and which pairs it explains."""
    from .local_features import import_cv2

    cv2 = import_cv2()
    transform, mask = cv2.estimateAffinePartial2D(points_a.astype(np.float32), points_b.astype(np.float32),
                                                  method=cv2.RANSAC, ransacReprojThreshold=SIMILARITY_TOLERANCE)
    if transform is None or mask is None:
        return None, np.zeros(len(points_a), dtype=bool)
    return transform, mask.ravel().astype(bool)


def _unmatched_share(points: np.ndarray, inlier_points: np.ndarray) -> float:
    """The share of ``points`` in a patch where almost nothing matches: content that one photo has and the other not.

    A patch is a keypoint's :data:`PATCH_KEYPOINTS` nearest keypoints; it is unmatched
    when fewer than :data:`PATCH_MIN_MATCHED` of them are inliers. A copy loses detail
    evenly; another drawing behind the same mat, or another object on the same
    backdrop, leaves a patch of the picture where nothing matches.
    """
    from scipy.spatial import cKDTree

    if len(points) < PATCH_KEYPOINTS:
        return 0.0
    is_inlier = np.zeros(len(points), dtype=bool)
    if len(inlier_points):
        distance, nearest = cKDTree(points).query(inlier_points)
        is_inlier[nearest[distance < 0.5]] = True
    _, patches = cKDTree(points).query(points, k=PATCH_KEYPOINTS)
    return float(np.mean(is_inlier[patches].mean(axis=1) < PATCH_MIN_MATCHED))


def _mapped(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    if not len(points):
        return np.empty((0, 2))
    moved = np.c_[points, np.ones(len(points))] @ homography.T
    return moved[:, :2] / moved[:, 2:3]


def _inside(points: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Which points land inside the picture, away from its edges by :data:`EDGE_MARGIN` pixels.

    A keypoint by the edge of a crop lost part of its patch: its descriptor changed,
    however exact the copy.
    """
    width, height = image_size
    margin = EDGE_MARGIN
    return ((points[:, 0] >= margin) & (points[:, 0] < width - margin) & (points[:, 1] >= margin)
            & (points[:, 1] < height - margin))


# The pixel check: the largest difference (grey levels) of one block of a copy once aligned (chosen on the tune
# split of benchmarks/duplicate_threshold.py).
MAX_PIXEL_DIFFERENCE = 40.0
# The content check (chosen on the tune split of benchmarks/duplicate_threshold.py).
MIN_COPY_INLIERS = 8
MIN_COPY_COVERAGE = 0.2
MAX_UNMATCHED = 0.05
MIN_KEYPOINTS = 30  # a photo with fewer keypoints cannot confirm anything: the hash-only rule decides
PATCH_KEYPOINTS = 24
PATCH_MIN_MATCHED = 0.1
EDGE_MARGIN = 16  # pixels of the detection frame: about the size of an AKAZE descriptor's patch
SIMILARITY_TOLERANCE = 4.0  # pixels of the detection frame
# The texture scaling and the hash-only rule (chosen on the tune split, too).
TEXTURE_REFERENCE = 12.0
TEXTURE_FLOOR = 0.5
HASH_ONLY_SHARE = 0.75


class PhotoHashes:
    """The copy-check hashes of named photos, with the reason of each photo that could not be read.

    Written once per photo by ``skimgfeat extract --hashes`` as ``image_hashes.parquet``
    beside the feature table (:meth:`write`, :meth:`read`), or computed when needed
    (:meth:`compute`).

    Parameters
    ----------
    names : sequence of str
        One name per photo, as the feature table's ``image_path`` (a name given twice
        keeps its last hashes).
    hashes : array-like of shape (n_photos, N_HASHES), uint64
        Rows of unreadable photos are ignored.
    errors : sequence of str or None
        Per photo, why it could not be hashed; ``""`` when it was.

    Examples
    --------
    >>> import numpy as np
    >>> hashes = PhotoHashes(["a.jpg", "b.jpg"], np.zeros((2, N_HASHES), dtype=np.uint64), ["", "missing"])
    >>> hashes.error("b.jpg"), "a.jpg" in hashes
    ('missing', True)
    """

    def __init__(self, names: Sequence[str], hashes, errors: Sequence[str] | None = None) -> None:
        names = _strings(names)
        hashes = np.asarray(hashes, dtype=np.uint64).reshape(len(names), N_HASHES)
        errors = np.full(len(names), "", dtype=object) if errors is None else _strings(errors)
        index = pd.Index(names, dtype=object)
        if not index.is_unique:  # a name given twice: its last hashes, as merged() keeps
            last = ~index.duplicated(keep="last")
            names, hashes, errors = names[last], hashes[last], errors[last]
            index = pd.Index(names, dtype=object)
        self._set(names, hashes, errors, index)

    def _set(self, names: np.ndarray, hashes: np.ndarray, errors: np.ndarray, index: pd.Index) -> None:
        self.names, self.hashes, self.errors, self._index = names, hashes, errors, index

    @classmethod
    def _of_unique(cls, names: np.ndarray, hashes: np.ndarray, errors: np.ndarray) -> PhotoHashes:
        """Hashes of names known to be distinct strings already: nothing is converted or checked again (an
        archive's million names are hashed into the lookup table once, when first looked up)."""
        made = cls.__new__(cls)
        made._set(names, hashes, errors, pd.Index(names, dtype=object))
        return made

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name) -> bool:
        return str(name) in self._index

    def error(self, name: str) -> str:
        """Why ``name`` could not be hashed (``""`` when it was); KeyError if it is not here."""
        return self.errors[self._rows([name])[0]]

    def contains(self, names: Sequence[str]) -> np.ndarray:
        """Per name, whether it is here."""
        return self._index.get_indexer(pd.Index(names, dtype=object)) >= 0

    def lookup(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, errors) of ``names``, one row each (KeyError for a name that is not here)."""
        rows = self._rows(names)
        return self.hashes[rows], self.errors[rows]

    def rows(self, names: Iterable[str]) -> np.ndarray:
        """The hash rows of ``names`` (KeyError for a name that is not here)."""
        return self.hashes[self._rows(list(names))]

    def _rows(self, names) -> np.ndarray:
        rows = self._index.get_indexer(pd.Index(names, dtype=object))
        if (rows < 0).any():
            raise KeyError(f"no hashes for {list(np.asarray(names, dtype=object)[rows < 0][:3])}")
        return rows

    @classmethod
    def compute(
        cls,
        photos: Sequence[str | os.PathLike | None],
        names: Sequence[str] | None = None,
        *,
        n_workers: int | None = None,
    ) -> PhotoHashes:
        """Hash image files; a file that cannot be read gets its reason instead of hashes.

        Parameters
        ----------
        photos : sequence of path or None
            None: no photo is known for that name (reason ``"missing"``).
        names : sequence of str or None
            Default: the paths as given.
        n_workers : int or None
            Threads (default: one per core, at most 8).
        """
        names = [os.fspath(photo) for photo in photos] if names is None else list(names)
        workers = n_workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(hash_or_reason, photos))
        return cls.from_results(names, results)

    @classmethod
    def from_results(cls, names: Sequence[str], results: Sequence[np.ndarray | str]) -> PhotoHashes:
        """Hashes from :func:`hash_or_reason`'s results, one per name (a caller that reads each photo once for
        more than its hashes, as an archive's intake does)."""
        hashes = np.zeros((len(names), N_HASHES), dtype=np.uint64)
        errors = []
        for row, result in enumerate(results):
            if isinstance(result, str):
                errors.append(result)
            else:
                hashes[row] = result
                errors.append("")
        return cls(names, hashes, errors)

    def merged(self, other: PhotoHashes) -> PhotoHashes:
        """These hashes and ``other``'s (``other`` wins for a name in both)."""
        if not len(other):
            return self
        # The few names ``other`` replaces are looked up among these, not these million among other's.
        replaced = self._index.get_indexer(pd.Index(other.names, dtype=object))
        keep = np.ones(len(self), dtype=bool)
        keep[replaced[replaced >= 0]] = False
        return PhotoHashes._of_unique(np.concatenate([self.names[keep], other.names]),
                                      np.concatenate([self.hashes[keep], other.hashes]),
                                      np.concatenate([self.errors[keep], other.errors]))

    def write(self, path: str | os.PathLike) -> Path:
        """Write ``image_path, error, phash_0..`` as Parquet (hashes as signed 64-bit integers), atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..storage.io import atomic_path

        signed = self.hashes.view(np.int64)
        table = pa.table({IMAGE_PATH: pa.array(self.names, type=pa.string()),
                          ERROR: pa.array(self.errors, type=pa.string()),
                          **{column: signed[:, i] for i, column in enumerate(_HASH_COLUMNS)}})
        path = Path(path)
        with atomic_path(path) as temporary:
            pq.write_table(table, temporary)
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> PhotoHashes:
        """Hashes written by :meth:`write`; ValueError naming the file if it is not such a table."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"hashes file {os.fspath(path)!r} does not exist")
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{os.fspath(path)!r} is not a skimgfeat hashes file ({error})") from None
        columns = table.column_names
        if f"phash_{N_HASHES - 1}" not in columns and "phash_0" in columns:
            stored = sum(str(column).startswith("phash_") for column in columns)
            raise OutdatedHashesError(
                f"{os.fspath(path)!r} holds the hashes of an earlier skimgfeat ({stored} per photo, this version "
                f"uses {N_HASHES}): run `skimgfeat extract --hashes` again")
        missing = [column for column in (IMAGE_PATH, ERROR, *_HASH_COLUMNS) if column not in columns]
        if missing:
            raise ValueError(f"{os.fspath(path)!r} is not a skimgfeat hashes file: no column {missing[0]!r}")
        # Straight from Arrow: a pandas column of Arrow strings costs seconds a million names to walk.
        hashes = np.column_stack([table.column(column).to_numpy() for column in _HASH_COLUMNS])
        hashes = hashes.astype(np.int64, copy=False)
        errors = pc.fill_null(table.column(ERROR).cast(pa.string()), "")
        return cls(table.column(IMAGE_PATH).to_numpy(zero_copy_only=False), hashes.reshape(-1, N_HASHES).view(
            np.uint64), errors.to_numpy(zero_copy_only=False))


def _strings(values) -> np.ndarray:
    """``values`` as an object array of str: left as they are when they are all str already (one check in C),
    otherwise each converted (paths, numbers)."""
    if isinstance(values, (pd.Series, pd.Index)):
        values = values.to_numpy(dtype=object)
    elif not hasattr(values, "__len__"):
        values = list(values)
    array = np.empty(len(values), dtype=object)
    array[:] = list(values) if not isinstance(values, np.ndarray) else values
    if len(array) and pd.api.types.infer_dtype(array, skipna=False) != "string":
        array = np.asarray([str(value) for value in array], dtype=object)
    return array


def hash_or_reason(photo) -> np.ndarray | str:
    """:func:`hash_photo` of ``photo``, or why it cannot be hashed (a string; None: no photo known)."""
    if photo is None:
        return "missing (no photo known)"
    try:
        return hash_photo(photo)
    except ImageLoadError as error:
        return f"{error.reason} ({error.detail})" if error.detail else error.reason
