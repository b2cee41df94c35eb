"""Geometric verification: do two photos show the same physical object?

Two photos of one object (a re-listed lot: new angle, light, background) share many
small patches that one perspective transform maps onto each other; two objects of the
same kind (two DVD cases) share only scattered patches (a studio logo, a rating box),
which no single transform explains. :func:`verify_pair` matches the ORB descriptors of
two photos (mutual nearest neighbours that pass Lowe's ratio test both ways),
fits a homography with RANSAC, and counts the matches it explains (the inliers).
:func:`is_same_object` then asks for enough inliers, some of them at the centre of *both*
photos, the centre of at least one photo matching at least as well as the photo as a
whole (the photographed object is at the centre: two lots on one studio backdrop, or a
neighbouring object in the same scene, match around it), under a homography that a
camera can produce (no mirror, bounded scale). A pair whose centres do not confirm it (glare
or a plain area at the centre of a cover, a case photographed off-centre) is still the same
object when the match is clean and object-sized: nearly all descriptor matches are inliers,
their hull covers a share of each photo that one object fills (not a logo, not a whole
shared backdrop), and the centre of one photo is not left out entirely.

The thresholds are measured on the 50 objects of ``../shared/images/objects``: see
docs/object-matching.md and ``benchmarks/object_match.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .local_features import LocalFeatures, import_cv2

# How many CNN candidates a query verifies (ObjectMatcher, skimgfeat match): measured, see the docs.
DEFAULT_SHORTLIST = 100
DEFAULT_RATIO = 0.85
DEFAULT_MIN_INLIERS = 10
DEFAULT_MIN_SPREAD = 0.0
DEFAULT_MIN_CENTRED = 1.0
DEFAULT_MIN_CENTRAL_INLIERS = 2
# The second way to pass (a clean, object-sized match whose centres do not confirm it): measured, see the docs.
DEFAULT_MIN_INLIER_SHARE = 0.8
DEFAULT_OBJECT_AREA = (0.06, 0.2)
DEFAULT_MIN_CENTRED_OBJECT = 0.2
DEFAULT_REPROJECTION_ERROR = 5.0
DEFAULT_MAX_SCALE_CHANGE = 8.0
MIN_MATCHES = 10  # below this no homography is worth fitting (and no pair can be the same object)


@dataclass(frozen=True)
class PairVerification:
    """The outcome of matching two photos' local features.

    Attributes
    ----------
    n_matches : int
        Descriptor matches kept by the ratio test and the mutual check.
    inliers : int
        Matches the fitted homography explains (0 when none was fitted).
    spread : float
        The smaller, over both photos, of the area of the inliers' convex hull as a
        fraction of the photo: matches bunched on a logo spread little.
    centred : float
        How well the centre of the photos matches compared with the whole: per photo,
        the share of its keypoints in its central third (across and down) that are
        inliers, divided by the share of all its keypoints that are; the larger of the
        two photos. A photographed object is at the centre: two objects on one backdrop
        match around their centres, not at them.
    central_inliers : int
        The fewer, over both photos, of the inliers in the photo's central third:
        the object photographed is at the centre of each photo of it.
    plausible : bool
        The homography keeps orientation and changes scale by at most a bounded factor.
    homography : ndarray of shape (3, 3) or None
        Maps the first photo's detection frame onto the second's.
    points_a, points_b : ndarray of shape (inliers, 2)
        The inlier keypoints in each photo's own pixels (for drawing).
    """

    n_matches: int
    inliers: int
    spread: float
    centred: float
    central_inliers: int
    plausible: bool
    homography: np.ndarray | None
    points_a: np.ndarray
    points_b: np.ndarray

    @classmethod
    def none(cls, n_matches: int = 0) -> PairVerification:
        empty = np.empty((0, 2), np.float32)
        return cls(n_matches, 0, 0.0, 0.0, 0, False, None, empty, empty)


def verify_pair(
    a: LocalFeatures,
    b: LocalFeatures,
    *,
    ratio: float = DEFAULT_RATIO,
    reprojection_error: float = DEFAULT_REPROJECTION_ERROR,
    max_scale_change: float = DEFAULT_MAX_SCALE_CHANGE,
) -> PairVerification:
    """Match two photos' local features and fit a homography with RANSAC.

    Parameters
    ----------
    a, b : LocalFeatures
        From :func:`~skimgfeat.uses.local_features.detect_local_features` or a
        :class:`~skimgfeat.uses.local_features.LocalFeatureStore`. Either may have no
        keypoints: the result then has no inliers.
    ratio : float, default=0.85
        Lowe's ratio test: a match is kept when its Hamming distance is below
        ``ratio`` times that of the second-best candidate.
    reprojection_error : float, default=5.0
        RANSAC's inlier tolerance, in pixels of the detection frame.
    max_scale_change : float, default=8.0
        A homography that shrinks or stretches any direction by more than this is
        implausible.

    Returns
    -------
    PairVerification

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat.uses.local_features import detect_local_features
    >>> rng = np.random.default_rng(0)
    >>> photo = (rng.random((240, 320)) * 255).astype(np.uint8)
    >>> result = verify_pair(detect_local_features(photo), detect_local_features(photo[20:, 30:]))
    >>> result.inliers > 50, is_same_object(result)
    (True, True)
    """
    cv2 = import_cv2()
    if len(a) < 2 or len(b) < 2:
        return PairVerification.none()
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    forward = _distinctive(matcher.knnMatch(a.descriptors, b.descriptors, k=2), len(a), ratio)
    index_a = np.flatnonzero(forward >= 0)
    # Kept: distinctive both ways and each the other's nearest (symmetric, so a->b and b->a agree). The way back
    # is searched only from the keypoints of b that some keypoint of a chose: the same answer, for less time.
    chosen = np.unique(forward[index_a])
    backward = np.full(len(b), -1, dtype=np.int64)
    if len(chosen):
        backward[chosen] = _distinctive(matcher.knnMatch(b.descriptors[chosen], a.descriptors, k=2), len(chosen),
                                        ratio)
    index_a = index_a[backward[forward[index_a]] == index_a]
    pairs = list(zip(index_a.tolist(), forward[index_a].tolist()))
    if len(pairs) < MIN_MATCHES:
        return PairVerification.none(len(pairs))
    index_a, index_b = np.asarray(pairs).T
    points_a, points_b = a.points[index_a], b.points[index_b]
    homography, mask = cv2.findHomography(points_a, points_b, cv2.RANSAC, reprojection_error,
                                          maxIters=2000, confidence=0.995)
    if homography is None:
        return PairVerification.none(len(pairs))
    inlier = mask.ravel().astype(bool)
    spread = min(_hull_fraction(points_a[inlier], a.image_size), _hull_fraction(points_b[inlier], b.image_size))
    return PairVerification(
        n_matches=len(pairs),
        inliers=int(inlier.sum()),
        spread=spread,
        centred=max(_centre_agreement(a, inlier, index_a), _centre_agreement(b, inlier, index_b)),
        central_inliers=min(int(_central(a)[index_a[inlier]].sum()), int(_central(b)[index_b[inlier]].sum())),
        plausible=_plausible(homography, max_scale_change),
        homography=homography,
        points_a=points_a[inlier] / a.scale,
        points_b=points_b[inlier] / b.scale,
    )


def is_same_object(
    verification: PairVerification,
    *,
    min_inliers: int = DEFAULT_MIN_INLIERS,
    min_spread: float = DEFAULT_MIN_SPREAD,
    min_centred: float = DEFAULT_MIN_CENTRED,
    min_central_inliers: int = DEFAULT_MIN_CENTRAL_INLIERS,
    min_inlier_share: float | None = DEFAULT_MIN_INLIER_SHARE,
    object_area: tuple[float, float] = DEFAULT_OBJECT_AREA,
    min_centred_object: float = DEFAULT_MIN_CENTRED_OBJECT,
) -> bool:
    """Whether a verified pair shows the same object: at the centre of both photos, or in one clean match.

    Both ways ask for ``min_inliers`` inliers under a plausible homography. The centre rules:
    at least ``min_central_inliers`` inliers in the central third of each photo, and the centre
    of one photo matching at least ``min_centred`` times as well as the whole. Otherwise the
    pair passes as a clean, object-sized match: at least ``min_inlier_share`` of its descriptor
    matches are inliers, their convex hull covers between ``object_area[0]`` and
    ``object_area[1]`` of the photo where it covers less (:attr:`PairVerification.spread`), and
    the centre of one photo matches at least ``min_centred_object`` times as well as the whole.
    ``min_inlier_share=None`` turns this second way off. ``min_spread`` (off by default) also
    asks the inliers' convex hull to cover that fraction of each photo, either way.
    """
    if not (verification.plausible and verification.inliers >= min_inliers and verification.spread >= min_spread):
        return False
    if verification.centred >= min_centred and verification.central_inliers >= min_central_inliers:
        return True
    return (min_inlier_share is not None
            and verification.inliers >= min_inlier_share * verification.n_matches
            and object_area[0] <= verification.spread <= object_area[1]
            and verification.centred >= min_centred_object)


def _distinctive(knn_matches, n: int, ratio: float) -> np.ndarray:
    """Per keypoint, its nearest neighbour when that passes the ratio test, else -1."""
    nearest = np.full(n, -1, dtype=np.int64)
    for pair in knn_matches:
        if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance:
            nearest[pair[0].queryIdx] = pair[0].trainIdx
    return nearest


def _hull_fraction(points: np.ndarray, image_size: tuple[int, int]) -> float:
    cv2 = import_cv2()
    width, height = image_size
    if len(points) < 3 or width * height == 0:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(points.astype(np.float32)))) / (width * height)


def _central(features: LocalFeatures) -> np.ndarray:
    """Which keypoints lie in the central third of the photo (across and down)."""
    width, height = features.image_size
    x, y = features.points[:, 0], features.points[:, 1]
    return (np.abs(x - width / 2) < width / 6) & (np.abs(y - height / 2) < height / 6)


def _centre_agreement(features: LocalFeatures, inlier: np.ndarray, matched: np.ndarray) -> float:
    """Inlier share of the keypoints in the central third of the photo over that of all its keypoints."""
    central = _central(features)
    is_inlier = np.zeros(len(features), dtype=bool)
    is_inlier[matched[inlier]] = True
    overall = is_inlier.mean()
    if not central.any() or overall == 0:
        return 0.0
    return float(is_inlier[central].mean() / overall)


def _plausible(homography: np.ndarray, max_scale_change: float) -> bool:
    """A camera's homography: orientation kept (no mirror), each direction scaled within bounds."""
    if not np.all(np.isfinite(homography)) or abs(homography[2, 2]) < 1e-12:
        return False
    affine = homography[:2, :2] / homography[2, 2]
    if np.linalg.det(affine) <= 0:
        return False
    singular = np.linalg.svd(affine, compute_uv=False)
    return bool(singular[0] <= max_scale_change and singular[1] >= 1 / max_scale_change)
