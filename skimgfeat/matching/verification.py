"""Geometric verification: do two photos show the same physical object?

Two photos of one object (a re-listed lot: new angle, light, background) share many
small patches that one perspective transform maps onto each other; two objects of the
same kind (two DVD cases) share only scattered patches (a studio logo, a rating box),
which no single transform explains. :func:`verify_pair` matches the AKAZE descriptors of
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

A pair with some inliers (8) is then matched again, guided by its homography (the classic
*guided matching*): every keypoint of the first photo is projected into the second and
paired with the most similar keypoint within a few pixels of where it lands, however
ambiguous its descriptor is elsewhere in the photo; the homography is fitted again on
those pairs. The ratio test throws away the keypoints of repeated or weak texture, and a
small or glared object keeps too few of them; guided by the geometry, they come back. The
third way to pass reads this guided match: many inliers, object-sized, and around the
centre of both photos (their hull contains it: the object photographed is at the centre
of both, even when glare or a plain area there leaves it without keypoints; a neighbouring
object in the scene, or the next lot in a stack, is beside it).

The thresholds are measured on the 50 objects of ``../shared/images/objects``: see
docs/object-matching.md and ``benchmarks/object_match.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .local_features import LocalFeatures, import_cv2

# How many CNN candidates a query verifies (ObjectMatcher, skimgfeat match): measured, see the docs.
DEFAULT_SHORTLIST = 20
# How many candidates of the instance index (local features, matching.instance_index) a query verifies: measured.
DEFAULT_INSTANCE_SHORTLIST = 50
# Query expansion: new candidates verified after searching the instance index with the object's region in the best
# verified matches, and how many of those matches it searches with (measured on objects 1-25, see the docs).
DEFAULT_EXPANSION_SHORTLIST = 20
DEFAULT_EXPANSION_PHOTOS = 3
DEFAULT_RATIO = 0.85
DEFAULT_MIN_INLIERS = 10
DEFAULT_MIN_SPREAD = 0.0
DEFAULT_MIN_CENTRED = 1.0
DEFAULT_MIN_CENTRAL_INLIERS = 2
# The second way to pass (a clean, object-sized match whose centres do not confirm it): measured, see the docs.
DEFAULT_MIN_INLIER_SHARE = 0.8
DEFAULT_OBJECT_AREA = (0.1, 0.2)
DEFAULT_MIN_CENTRED_OBJECT = 0.2
DEFAULT_REPROJECTION_ERROR = 5.0
# The guided match and the third way to pass: measured, see the docs.
DEFAULT_GUIDED_RADIUS = 4.0
DEFAULT_GUIDED_MAX_DISTANCE = 121  # of AKAZE's 486 bits (a quarter, as 64 of ORB's 256 were)
GUIDED_MIN_INLIERS = 8  # pairs with fewer first-pass inliers are not matched again (they stay different)
DEFAULT_MIN_GUIDED_INLIERS = 30
DEFAULT_MAX_SCALE_CHANGE = 8.0
# Position-free checks (measured on objects 1-25, see the docs). A shared scene: the matched region reaches more than
# this many sides of the photo's textured extent in both photos (a backdrop, a desk, a studio set around the lots).
DEFAULT_MAX_SHARED_REACH = 2
# A whole object seen off-centre: many guided inliers, the matched region inside the textured extent of both photos
# (reaching at most this many sides), under a well-conditioned homography.
DEFAULT_MIN_WHOLE_INLIERS = 30
DEFAULT_MAX_WHOLE_REACH = 1
DEFAULT_MAX_CONDITIONING = 3.0
DEFAULT_MIN_WHOLE_CENTRED = 0.8
DEFAULT_MIN_WHOLE_FILL = 0.3
REACH_MARGIN = 0.05  # a side is reached within this share of the keypoints' extent
MIN_CENTRE_MATCH_INLIERS = 5
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
    covers_centres : bool
        The inliers' convex hull contains the centre of both photos.
    reach : (int, int)
        Per photo (first, second), how many sides (0-4) of its keypoints' extent its
        inliers reach (within 5% of it). A shared scene (a backdrop or a desk around two
        different lots) reaches across both photos (3-4); an object seen whole lies
        inside (0-1).
    fill : (float, float)
        Per photo, the area of the inliers' convex hull over that of the keypoints'
        bounding box: near 1 where the object fills the photo (a catalogue photo).
    centre_match : (float, float)
        Per photo, :attr:`centred` of that photo alone (its central third's inlier share
        over its overall inlier share), 0 when fewer than 5 inliers lie in its central third.
    conditioning : float
        Condition number of the homography's linear part (1 for a similarity; large for
        a degenerate, nearly flattening fit).
    guided : PairVerification or None
        The pair matched again, guided by this homography (its ``n_matches`` are the
        guided pairs of keypoints, its ``guided`` is None); None when the first match had
        too few inliers for it, or it was turned off.
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
    covers_centres: bool = False
    reach: tuple[int, int] = (4, 4)
    centre_match: tuple[float, float] = (0.0, 0.0)
    fill: tuple[float, float] = (0.0, 0.0)
    conditioning: float = float("inf")
    guided: PairVerification | None = None

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
    guided_radius: float | None = DEFAULT_GUIDED_RADIUS,
    guided_max_distance: int = DEFAULT_GUIDED_MAX_DISTANCE,
) -> PairVerification:
    """Match two photos' local features and fit a homography with RANSAC, then match again guided by it.

    Parameters
    ----------
    a, b : LocalFeatures
        From :func:`~skimgfeat.matching.local_features.detect_local_features` or a
        :class:`~skimgfeat.matching.local_features.LocalFeatureStore`. Either may have no
        keypoints: the result then has no inliers.
    ratio : float, default=0.85
        Lowe's ratio test: a match is kept when its Hamming distance is below
        ``ratio`` times that of the second-best candidate.
    reprojection_error : float, default=5.0
        RANSAC's inlier tolerance, in pixels of the detection frame.
    max_scale_change : float, default=8.0
        A homography that shrinks or stretches any direction by more than this is
        implausible.
    guided_radius : float or None, default=4.0
        When the match has at least 8 inliers, every keypoint of ``a`` projected by the
        homography is paired with the most similar keypoint of ``b`` within this many
        pixels (detection frame), and the homography is fitted again on those pairs
        (twice): :attr:`PairVerification.guided`. None matches once only.
    guided_max_distance : int, default=121
        The largest Hamming distance (of AKAZE's 486 bits) of a guided pair.

    Returns
    -------
    PairVerification

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat.matching.local_features import detect_local_features
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
    first = _fitted(a, b, index_a, index_b, reprojection_error, max_scale_change)
    if first is None or guided_radius is None or first.inliers < GUIDED_MIN_INLIERS:
        return first or PairVerification.none(len(pairs))
    guided = first
    for _ in range(2):  # the second round starts from the homography the first one refined
        index_a, index_b = _guided_pairs(a, b, guided.homography, guided_radius, guided_max_distance)
        refined = _fitted(a, b, index_a, index_b, reprojection_error, max_scale_change) if len(index_a) >= 4 \
            else None
        if refined is None:
            break
        guided = refined
    return replace(first, guided=None if guided is first else guided)


def _fitted(a: LocalFeatures, b: LocalFeatures, index_a: np.ndarray, index_b: np.ndarray,
            reprojection_error: float, max_scale_change: float) -> PairVerification | None:
    """A homography fitted with RANSAC to the matched keypoints ``index_a`` of ``a`` and ``index_b`` of ``b``."""
    cv2 = import_cv2()
    points_a, points_b = a.points[index_a], b.points[index_b]
    # USAC (Raguram et al., TPAMI 2013) rather than plain RANSAC: its sequential test drops a bad model after a few
    # matches, so the many candidates that are other objects cost half as much; the verdicts are those of RANSAC
    # (measured on objects 1-25, see the docs).
    homography, mask = cv2.findHomography(points_a, points_b, cv2.USAC_DEFAULT, reprojection_error,
                                          maxIters=2000, confidence=0.995)
    if homography is None:
        return None
    inlier = mask.ravel().astype(bool)
    hull_a, hull_b = _hull(points_a[inlier]), _hull(points_b[inlier])
    return PairVerification(
        n_matches=len(index_a),
        inliers=int(inlier.sum()),
        spread=min(_hull_fraction(hull_a, a.image_size), _hull_fraction(hull_b, b.image_size)),
        centred=max(_centre_agreement(a, inlier, index_a), _centre_agreement(b, inlier, index_b)),
        central_inliers=min(int(_central(a)[index_a[inlier]].sum()), int(_central(b)[index_b[inlier]].sum())),
        plausible=_plausible(homography, max_scale_change),
        homography=homography,
        points_a=points_a[inlier] / a.scale,
        points_b=points_b[inlier] / b.scale,
        covers_centres=_covers_centre(hull_a, a.image_size) and _covers_centre(hull_b, b.image_size),
        reach=(_reach(points_a[inlier], a.points), _reach(points_b[inlier], b.points)),
        centre_match=(_centre_match(a, inlier, index_a), _centre_match(b, inlier, index_b)),
        fill=(_fill(hull_a, a.points), _fill(hull_b, b.points)),
        conditioning=_conditioning(homography),
    )


def _reach(inliers: np.ndarray, points: np.ndarray) -> int:
    """How many sides of the keypoints' extent (their bounding box) the inliers come within REACH_MARGIN of."""
    if len(inliers) < 3:
        return 4
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.maximum(high - low, 1e-6)
    gaps = np.concatenate([(inliers.min(axis=0) - low) / span, (high - inliers.max(axis=0)) / span])
    return int((gaps < REACH_MARGIN).sum())


def _centre_match(features: LocalFeatures, inlier: np.ndarray, matched: np.ndarray) -> float:
    """The photo's centre agreement, 0 when fewer than MIN_CENTRE_MATCH_INLIERS inliers lie in its central third."""
    if int(_central(features)[matched[inlier]].sum()) < MIN_CENTRE_MATCH_INLIERS:
        return 0.0
    return _centre_agreement(features, inlier, matched)


def _fill(hull: np.ndarray | None, points: np.ndarray) -> float:
    """The hull's area over that of the keypoints' bounding box."""
    if hull is None:
        return 0.0
    box = float(np.prod(points.max(axis=0) - points.min(axis=0)))
    return float(import_cv2().contourArea(hull)) / box if box > 0 else 0.0


def _conditioning(homography: np.ndarray) -> float:
    if not np.all(np.isfinite(homography)) or abs(homography[2, 2]) < 1e-12:
        return float("inf")
    return float(np.linalg.cond(homography[:2, :2] / homography[2, 2]))


def _guided_pairs(a: LocalFeatures, b: LocalFeatures, homography: np.ndarray, radius: float,
                  max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of ``a`` paired one to one with the most similar keypoint of ``b`` near where they map to."""
    from scipy.spatial import cKDTree

    cv2 = import_cv2()
    projected = cv2.perspectiveTransform(a.points[None].astype(np.float64), homography)[0]
    near = cKDTree(b.points).query_ball_point(projected, r=radius)
    counts = np.fromiter(map(len, near), dtype=np.int64, count=len(near))
    if not counts.sum():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    index_a = np.repeat(np.arange(len(a)), counts)
    index_b = np.fromiter((j for candidates in near for j in candidates), dtype=np.int64, count=int(counts.sum()))
    distance = _BITS[a.descriptors[index_a] ^ b.descriptors[index_b]].sum(axis=1, dtype=np.int32)
    closest = np.argsort(distance, kind="stable")
    closest = closest[distance[closest] <= max_distance]
    # One to one, the most similar first: each keypoint of a keeps its best partner, then each keypoint of b.
    for index in (index_a, index_b):
        _, first = np.unique(index[closest], return_index=True)
        closest = closest[np.sort(first)]
    return index_a[closest], index_b[closest]


_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)


def _hull(points: np.ndarray) -> np.ndarray | None:
    """The convex hull of at least 3 points (None for fewer)."""
    return import_cv2().convexHull(points.astype(np.float32)) if len(points) >= 3 else None


def _covers_centre(hull: np.ndarray | None, image_size: tuple[int, int]) -> bool:
    width, height = image_size
    return hull is not None and import_cv2().pointPolygonTest(hull, (width / 2, height / 2), False) >= 0


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
    min_guided_inliers: int | None = DEFAULT_MIN_GUIDED_INLIERS,
    max_shared_reach: int | None = DEFAULT_MAX_SHARED_REACH,
    min_whole_inliers: int | None = DEFAULT_MIN_WHOLE_INLIERS,
    max_whole_reach: int = DEFAULT_MAX_WHOLE_REACH,
    max_conditioning: float = DEFAULT_MAX_CONDITIONING,
    min_whole_centred: float = DEFAULT_MIN_WHOLE_CENTRED,
    min_whole_fill: float = DEFAULT_MIN_WHOLE_FILL,
) -> bool:
    """Whether a verified pair shows the same object: at the centre of both photos, in one clean match, or guided.

    The first two ways ask for ``min_inliers`` inliers under a plausible homography. The centre rules:
    at least ``min_central_inliers`` inliers in the central third of each photo, and the centre
    of one photo matching at least ``min_centred`` times as well as the whole. Otherwise the
    pair passes as a clean, object-sized match: at least ``min_inlier_share`` of its descriptor
    matches are inliers, their convex hull covers between ``object_area[0]`` and
    ``object_area[1]`` of the photo where it covers less (:attr:`PairVerification.spread`), and
    the centre of one photo matches at least ``min_centred_object`` times as well as the whole.
    ``min_inlier_share=None`` turns this second way off. ``min_spread`` (off by default) also
    asks the inliers' convex hull to cover that fraction of each photo, the first two ways.

    The third way reads the guided match (:attr:`PairVerification.guided`): at least
    ``min_guided_inliers`` inliers under a plausible homography, their convex hull around
    the centre of both photos and covering at most ``object_area[1]`` of the photo where it
    covers less, and the centre of one photo matching at least ``min_centred_object`` times
    as well as the whole. ``min_guided_inliers=None`` turns it off.

    The fourth way needs no centre in one of the photos: a whole object seen anywhere in
    it. The guided match (else the first) has at least ``min_whole_inliers`` inliers under
    a plausible homography of conditioning at most ``max_conditioning``; in one photo they
    reach at most ``max_whole_reach`` sides of the keypoints' extent
    (:attr:`PairVerification.reach`) while the other photo is *of* the object: its centre
    matches at least ``min_whole_centred`` times as well as its whole
    (:attr:`PairVerification.centre_match`) and the inliers' hull fills at least
    ``min_whole_fill`` of its keypoints' extent (:attr:`PairVerification.fill`), as in a
    catalogue photo. ``min_whole_inliers=None`` turns it off.

    Whatever way it passes, a pair whose matched region reaches more than
    ``max_shared_reach`` sides in *both* photos is a shared scene, not one object: two
    lots on one backdrop or desk, wherever the lots stand (``None`` turns this off).
    """
    best = verification.guided if verification.guided is not None else verification
    if max_shared_reach is not None and min(best.reach) > max_shared_reach:
        return False
    if _first_ways(verification, min_inliers, min_spread, min_centred, min_central_inliers, min_inlier_share,
                   object_area, min_centred_object):
        return True
    guided = verification.guided
    if (min_guided_inliers is not None and guided is not None
            and guided.plausible and guided.inliers >= min_guided_inliers
            and guided.covers_centres
            and guided.spread <= object_area[1]
            and guided.centred >= min_centred_object):
        return True
    if not (min_whole_inliers is not None and best.plausible and best.inliers >= max(min_whole_inliers, min_inliers)
            and best.conditioning <= max_conditioning):
        return False
    # Filling one photo and matching at its centre (a catalogue photo, a close-up aimed at the object), and seen
    # whole, anywhere, inside the other. Whole inside both photos but the subject of neither is what the next
    # case of a stack or a book on the same desk gives as well: not enough (measured).
    (reach_a, reach_b), (centre_a, centre_b), (fill_a, fill_b) = best.reach, best.centre_match, best.fill
    return ((centre_a >= min_whole_centred and fill_a >= min_whole_fill and reach_b <= max_whole_reach)
            or (centre_b >= min_whole_centred and fill_b >= min_whole_fill and reach_a <= max_whole_reach))


def _first_ways(verification: PairVerification, min_inliers: int, min_spread: float, min_centred: float,
                min_central_inliers: int, min_inlier_share: float | None, object_area: tuple[float, float],
                min_centred_object: float) -> bool:
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


def _hull_fraction(hull: np.ndarray | None, image_size: tuple[int, int]) -> float:
    width, height = image_size
    if hull is None or width * height == 0:
        return 0.0
    return float(import_cv2().contourArea(hull)) / (width * height)


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
