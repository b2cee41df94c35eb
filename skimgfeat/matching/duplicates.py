"""Duplicate photos: pairs and groups of rows of a feature table that are copies of each other.

Two stages. The CNN features propose *candidate* pairs: rows within a generous cosine
distance (:data:`DEFAULT_CANDIDATE_DISTANCE`), found by the index's own pair search
(:meth:`SimilarityIndex.neighbour_pairs`, :meth:`SimilarityIndex.range_search`: exact
in memory, or a FAISS index directory).
The copy check (:mod:`skimgfeat.matching.copy_check`) then compares the photos' perceptual
hashes: a harshly re-encoded copy keeps its structure, a re-shoot of the same shelf
moments later does not, although both sit as close in feature space. A hash match is
confirmed by the photos' content when their local features are at hand
(:func:`~skimgfeat.matching.copy_check.verify_copy`: two drawings behind one mat share their
hashes, not their keypoints); without them a stricter hash rule decides. Where the photo
files are at hand, the pixels must agree too, region by region once aligned
(:func:`~skimgfeat.matching.copy_check.compare_copy_pixels`: two flavours of one carton
design share hashes and keypoints, not the colour of their band). :func:`copy_decision`
holds this rule for ``duplicates``, ``match`` and ``serve``. Only pairs passing both
stages are duplicates. Without the copy check, one feature threshold decides
(:data:`DEFAULT_DUPLICATE_THRESHOLD`), as before.

Candidate pairs are judged :data:`DEFAULT_BLOCK_PAIRS` at a time
(:func:`iter_duplicate_pairs`): memory is the candidate rows and one block, whatever
the number of pairs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..exceptions import ImageLoadError
from .copy_check import (
    COPY,
    COPY_THRESHOLD,
    DIFFERENT,
    MAX_PIXEL_DIFFERENCE,
    MIN_KEYPOINTS,
    N_HASHES,
    SAME_OBJECT,
    UNREADABLE,
    CopyVerification,
    PhotoHashes,
    compare_copy_pixels,
    content_agrees,
    copy_distance,
    copy_match,
    copy_thresholds,
    verify_copy,
)
from .pixel_agreement import PixelComparison
from .verification import is_same_object, verify_pair

if TYPE_CHECKING:  # the index arrives built: importing it here would import torch for `skimgfeat --help`
    from ..search.similarity import SimilarityIndex
    from .local_features import LocalFeatures, LocalFeatureStore

# Chosen by benchmarks/duplicate_threshold.py on generated copies of real photos (see benchmarks/README.md).
DEFAULT_DUPLICATE_THRESHOLD = 0.1
DEFAULT_CANDIDATE_DISTANCE = 0.3
DEFAULT_BLOCK_PAIRS = 65536

PAIR_COLUMNS = ("image_a", "image_b", "feature_distance", "copy_score", "verdict", "reason")
LOCAL_COLUMNS = ("inliers", "copy_coverage", "copy_unmatched", "copy_pixels")
# How the reason of a pair decided without the content check ends ("X has 12 keypoints: hashes alone decided").
WITHOUT_CONTENT_CHECK = " decided"


def duplicate_pairs(
    index: SimilarityIndex,
    *,
    max_distance: float | None = None,
    copy_check: bool | PhotoHashes = True,
    copy_threshold: int = COPY_THRESHOLD,
    local_features: LocalFeatureStore | None = None,
    same_object: bool = False,
    n_workers: int | None = None,
) -> pd.DataFrame:
    """Every candidate pair of rows of ``index``, with the copy check's verdict.

    Parameters
    ----------
    index : SimilarityIndex
        Per-image rows; their photos are found by :meth:`SimilarityIndex.photo_path`.
    max_distance : float or None
        Cosine distance of the candidate pairs; default
        :data:`DEFAULT_CANDIDATE_DISTANCE` with the copy check,
        :data:`DEFAULT_DUPLICATE_THRESHOLD` without.
    copy_check : bool or PhotoHashes, default=True
        The photos' hashes (e.g. ``PhotoHashes.read("out/image_hashes.parquet")``); a
        photo they lack, or every photo when True, is hashed now. False: every
        candidate pair is a copy.
    copy_threshold : int, default=COPY_THRESHOLD
        Largest copy distance (bits) of a copy, for a photo of ordinary texture
        (:func:`~skimgfeat.matching.copy_check.copy_thresholds`).
    local_features : LocalFeatureStore or None
        The photos' local features (``extract --local-features``): a hash match is a
        copy only when the content agrees
        (:func:`~skimgfeat.matching.copy_check.verify_copy`). None, or a photo they lack: the
        stricter hash-only rule, said in ``reason``.
    same_object : bool, default=False
        With ``local_features``: verify the pairs that are not copies and call those
        showing one object ``same_object``.
    n_workers : int or None
        Threads hashing photos now.

    Returns
    -------
    DataFrame
        :data:`PAIR_COLUMNS`: the two names (table order), ``feature_distance``,
        ``copy_score`` (copy distance in bits, NaN without the check or when a photo
        is unreadable), ``verdict`` (``"copy"``, ``"different"``, ``"unreadable"``, and
        ``"same_object"`` with ``same_object``) and ``reason`` (why a photo could not be
        read, or why the hashes alone decided; else empty). With ``local_features``
        also :data:`LOCAL_COLUMNS`: ``inliers``, and for the pairs whose hashes matched
        ``copy_coverage`` (the share of the overlapping keypoints matched under one
        near-similarity transform, 0 when the transform is not one),
        ``copy_unmatched`` (the share of them in a patch where nothing matches) and
        ``copy_pixels`` (the worst block's colour difference once aligned, when the
        pixels were compared), else NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat import SimilarityIndex
    >>> index = SimilarityIndex(["a", "b", "c"], np.array([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0]]))
    >>> duplicate_pairs(index, copy_check=False)[["image_a", "image_b", "verdict"]]
      image_a image_b verdict
    0       a       b    copy
    """
    blocks = list(iter_duplicate_pairs(index, max_distance=max_distance, copy_check=copy_check,
                                       copy_threshold=copy_threshold, local_features=local_features,
                                       same_object=same_object, n_workers=n_workers))
    return pd.concat(blocks, ignore_index=True)


def iter_duplicate_pairs(
    index: SimilarityIndex,
    *,
    max_distance: float | None = None,
    copy_check: bool | PhotoHashes = True,
    copy_threshold: int = COPY_THRESHOLD,
    local_features: LocalFeatureStore | None = None,
    same_object: bool = False,
    n_workers: int | None = None,
    block_pairs: int = DEFAULT_BLOCK_PAIRS,
) -> Iterator[pd.DataFrame]:
    """:func:`duplicate_pairs` as tables of at most ``block_pairs`` pairs, in pair order.

    Memory is the candidate pairs' row numbers (20 bytes a pair), the hashes of the
    photos in them and one block of judged pairs: write each block away (``skimgfeat
    duplicates --pairs``) and keep only the copies to group them. At least one table
    is yielded (empty when there is no candidate).
    """
    max_distance = _radius(max_distance, copy_check)
    rows_a, rows_b, distances = _candidate_pairs(index, max_distance)
    if copy_check is False:
        for start in _block_starts(len(rows_a), block_pairs):
            stop = start + block_pairs
            yield _unchecked_pairs(index.names[rows_a[start:stop]], index.names[rows_b[start:stop]],
                                   distances[start:stop])
        return
    used = np.unique(np.concatenate([rows_a, rows_b]))
    hashes = _hashes_for(index, index.names[used], copy_check, n_workers)
    side = _Side.of_index(index, hashes, used, local_features)
    judge = _PairJudge(side, side, copy_threshold, same_object)
    for start in _block_starts(len(rows_a), block_pairs):
        stop = start + block_pairs
        yield judge(rows_a[start:stop], rows_b[start:stop], distances[start:stop])


def duplicate_groups(
    pairs: pd.DataFrame, key: str = "image_path", *, order: Sequence[str] | None = None
) -> pd.DataFrame:
    """Groups of the accepted pairs of :func:`duplicate_pairs`: their connected components.

    Parameters
    ----------
    pairs : DataFrame
        ``image_a``, ``image_b`` and ``verdict``; the ``"copy"`` pairs link their photos.
    key : str, default="image_path"
        The name of the member column.
    order : sequence of str or None
        The table's names in table order: members are listed in it and groups
        numbered by their first member. None: in order of first appearance in ``pairs``.

    Returns
    -------
    DataFrame
        ``group`` (numbered from 0), the key column and
        ``chained``: True for every member of a group in which some two photos are
        not themselves a copy pair (linked only through others, a chain to review).

    Examples
    --------
    >>> import pandas as pd
    >>> pairs = pd.DataFrame({"image_a": ["a", "b", "d"], "image_b": ["b", "c", "e"],
    ...                       "verdict": ["copy", "copy", "different"]})
    >>> duplicate_groups(pairs)
       group image_path  chained
    0      0          a     True
    1      0          b     True
    2      0          c     True
    """
    accepted = pairs[pairs["verdict"] == COPY]
    names = pd.unique(accepted[["image_a", "image_b"]].to_numpy().ravel())  # in order of first appearance
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        names = np.asarray(sorted(names, key=rank.__getitem__), dtype=object)
    position = {name: i for i, name in enumerate(names)}
    a = accepted["image_a"].map(position).to_numpy(dtype=np.int64)
    b = accepted["image_b"].map(position).to_numpy(dtype=np.int64)
    return _components(a, b, np.asarray(names, dtype=object), key)


def find_duplicates(
    index: SimilarityIndex,
    threshold: float | None = None,
    *,
    copy_check: bool | PhotoHashes = False,
    copy_threshold: int = COPY_THRESHOLD,
    local_features: LocalFeatureStore | None = None,
) -> pd.DataFrame:
    """Groups of duplicate photos: :func:`iter_duplicate_pairs` grouped by :func:`duplicate_groups`.

    Parameters
    ----------
    index : SimilarityIndex
    threshold : float or None
        Cosine distance of the candidate pairs; default
        :data:`DEFAULT_DUPLICATE_THRESHOLD` without the copy check (then every pair
        this close is a duplicate), :data:`DEFAULT_CANDIDATE_DISTANCE` with it.
    copy_check : bool or PhotoHashes, default=False
        False: features alone decide. True or the photos' hashes: the two-stage
        decision of ``skimgfeat duplicates`` (photos the hashes lack are hashed now).
    copy_threshold : int, default=COPY_THRESHOLD
    local_features : LocalFeatureStore or None
        Confirms hash matches by content, see :func:`duplicate_pairs`.

    Returns
    -------
    DataFrame
        Columns ``group`` (numbered from 0 in table order), the key column and
        ``chained`` (see :func:`duplicate_groups`), one row per member of a group.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat import SimilarityIndex, find_duplicates
    >>> vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.99, 0.02], [0.01, 1.0]])
    >>> find_duplicates(SimilarityIndex(["a", "b", "c", "d"], vectors), threshold=0.01)
       group image_path  chained
    0      0          a    False
    1      0          c    False
    2      1          b    False
    3      1          d    False
    """
    row_of = {name: row for row, name in enumerate(index.names)}
    first, second = [], []
    for block in iter_duplicate_pairs(index, max_distance=threshold, copy_check=copy_check,
                                      copy_threshold=copy_threshold, local_features=local_features):
        copies = block[block["verdict"] == COPY]
        first.append(copies["image_a"].map(row_of).to_numpy(dtype=np.int64))
        second.append(copies["image_b"].map(row_of).to_numpy(dtype=np.int64))
    return _components(np.concatenate(first), np.concatenate(second), index.names, index.key)


def find_copies_against(
    index: SimilarityIndex,
    names: Sequence[str],
    vectors,
    *,
    photos: Sequence[str | os.PathLike | None] | None = None,
    max_distance: float | None = None,
    copy_check: bool | PhotoHashes = True,
    archive_hashes: bool | PhotoHashes = True,
    copy_threshold: int = COPY_THRESHOLD,
    local_features: LocalFeatureStore | None = None,
    new_local_features: Callable[[int], LocalFeatures | None] | None = None,
    n_workers: int | None = None,
) -> pd.DataFrame:
    """Which new photos already exist in an archive: candidate pairs (new, archived) with verdicts.

    The archive is not regrouped: each new photo is searched in ``index`` alone.

    Parameters
    ----------
    index : SimilarityIndex
        The archive.
    names : sequence of str
        The new photos' names (``image_a`` of the result).
    vectors : array-like of shape (n_new, n_features)
        Their features, from the network that made the archive's. NaN rows are skipped.
    photos : sequence of path or None
        The new photos' files (default: ``names``), for hashing and for their local
        features. Hashes in ``copy_check`` are looked up by these paths (as strings), so
        two new photos of one name from different folders keep their own.
    max_distance : float or None
        See :func:`duplicate_pairs`.
    copy_check : bool or PhotoHashes, default=True
        The new photos' hashes, keyed by ``photos`` (else by ``names``); True to hash
        them now, False for features alone.
    archive_hashes : bool or PhotoHashes, default=True
        The archive's hashes (its ``image_hashes.parquet``); photos they lack are hashed now.
    copy_threshold : int, default=COPY_THRESHOLD
    local_features : LocalFeatureStore or None
        The archive's local features: with them a hash match is confirmed by content.
    new_local_features : callable or None
        The local features of new photo ``i`` (None if unknown); default: detected from
        its file when a hash match needs them.
    n_workers : int or None

    Returns
    -------
    DataFrame
        :data:`PAIR_COLUMNS` (and :data:`LOCAL_COLUMNS` with ``local_features``),
        ``image_a`` the new photo, ``image_b`` the archived one, nearest first for each
        new photo.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat import SimilarityIndex
    >>> archive = SimilarityIndex(["a", "b"], np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> find_copies_against(archive, ["new"], [[0.98, 0.05]], copy_check=False)[["image_a", "image_b", "verdict"]]
      image_a image_b verdict
    0     new       a    copy
    """
    names = np.asarray([str(name) for name in names], dtype=object)
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if len(vectors) != len(names):
        raise ValueError(f"need one feature row per new photo, got {len(names)} names and {len(vectors)} rows")
    photos = list(names) if photos is None else list(photos)
    keys = np.asarray([os.fspath(photo) if photo is not None else f"\0{name}" for photo, name in zip(photos, names)],
                      dtype=object)
    max_distance = _radius(max_distance, copy_check)
    valid = np.flatnonzero(~np.isnan(vectors).any(axis=1))
    queries, rows_b, distances = _range_pairs(index, vectors[valid], max_distance)
    rows_a = valid[queries]
    if copy_check is False:
        return _unchecked_pairs(names[rows_a], index.names[rows_b], distances)
    wanted = np.unique(rows_a)
    new_hashes = copy_check if isinstance(copy_check, PhotoHashes) else None
    if new_hashes is not None:  # hashes keyed by name (an archive's own sidecar) serve where the file's key is absent
        by_name = ~new_hashes.contains(keys) & new_hashes.contains(names)
        keys[by_name] = names[by_name]
    missing = [row for row in wanted if new_hashes is None or keys[row] not in new_hashes]
    computed = PhotoHashes.compute([photos[row] for row in missing], keys[missing], n_workers=n_workers)
    new_hashes = computed if new_hashes is None else new_hashes.merged(computed)
    archived = np.unique(rows_b)
    old_hashes = _hashes_for(index, index.names[archived], archive_hashes, n_workers)
    new_side = _Side(names, keys, new_hashes, wanted,
                     photo=lambda row: photos[row],
                     features=(new_local_features or _detected(photos, local_features))
                     if local_features is not None else None)
    archive_side = _Side.of_index(index, old_hashes, archived, local_features)
    return _PairJudge(new_side, archive_side, copy_threshold, same_object=False)(rows_a, rows_b, distances)


# -- the two stages -------------------------------------------------------------------


def is_confirmed_copy(hashes_a, hashes_b, features_a=None, features_b=None, *, photo_a=None, photo_b=None,
                      verification=None, copy_threshold: int = COPY_THRESHOLD) -> bool:
    """The copy verdict of one pair, decided as ``duplicates`` decides it (:func:`copy_decision`).

    ``match`` and ``serve`` call this, so a ``copy`` means the same everywhere.

    Parameters
    ----------
    hashes_a, hashes_b : ndarray of shape (N_HASHES,) or None
        The photos' hashes; None for a photo that could not be hashed (no copy).
    features_a, features_b : LocalFeatures or None
    photo_a, photo_b : path or None
        The photos' files: read for a mirrored pair (``photo_a``) and for the pixel check.
    verification : PairVerification or None
        ``verify_pair(features_a, features_b)`` when the caller has it already.
    copy_threshold : int, default=COPY_THRESHOLD
    """
    return copy_decision(hashes_a, hashes_b, features_a, features_b, photo_a=photo_a, photo_b=photo_b,
                         verification=verification, copy_threshold=copy_threshold).copy


@dataclass(frozen=True)
class CopyDecision:
    """The copy verdict of one pair and what decided it (:func:`copy_decision`).

    Attributes
    ----------
    copy : bool
    reason : str
        What the verdict rests on when it is not the whole rule ("NAME has 12 keypoints:
        hashes alone decided"), or why a hash match is no copy; "" otherwise.
    hash_match : bool
        The copy distance is within the pair's threshold.
    content : CopyVerification or None
        The local features' content check (None when it did not run).
    pixels : PixelComparison or None
        The pixel check (None when it did not run).
    verification : PairVerification or None
        The photos' own verification (not mirrored), for the same-object check.
    """

    copy: bool
    reason: str = ""
    hash_match: bool = False
    content: CopyVerification | None = None
    pixels: PixelComparison | None = None
    verification: object = field(default=None, compare=False, repr=False)


def copy_decision(hashes_a, hashes_b, features_a=None, features_b=None, *, photo_a=None, photo_b=None,
                  verification=None, copy_threshold: int = COPY_THRESHOLD, names: tuple[str, str] = ("a", "b"),
                  hash_match: bool | None = None, need_verification: bool = False) -> CopyDecision:
    """The copy rule, in one place: hashes propose, local features and pixels confirm.

    1. The copy distance must be within the pair's threshold
       (:func:`~skimgfeat.matching.copy_check.copy_thresholds`; the stricter hash-only one
       when the local features cannot confirm).
    2. When both photos' local features are at hand (with keypoints enough), the content
       must agree under one similarity
       (:func:`~skimgfeat.matching.copy_check.verify_copy`), on ``photo_a`` flipped when the
       hashes say the copy is mirrored.
    3. When both photo files can be read, the pixels must agree region by region once
       aligned (:func:`~skimgfeat.matching.copy_check.compare_copy_pixels`): two variants of
       one product design differ in one region (a flavour's name, picture or colour).

    Parameters
    ----------
    hashes_a, hashes_b, features_a, features_b, photo_a, photo_b, verification, copy_threshold
        As :func:`is_confirmed_copy`.
    names : (str, str)
        The photos' names, for ``reason``.
    hash_match : bool or None
        Whether the hashes match (step 1), when the caller computed it already.
    need_verification : bool
        Verify the photos' local features (not mirrored) even when they are no copy, for a
        same-object check.
    """
    if hashes_a is None or hashes_b is None:
        return CopyDecision(False)
    missing = _missing_features(features_a, features_b, names)
    if hash_match is None:
        hash_match = bool(copy_distance(hashes_a, hashes_b) <= copy_thresholds(hashes_a, hashes_b,
                                                                                copy_threshold=copy_threshold))
    if not missing and (need_verification or hash_match) and verification is None:
        verification = verify_pair(features_a, features_b)
    content = None
    if hash_match and not missing:
        mirrored = bool(copy_match(hashes_a, hashes_b)[1])
        flipped_a = _mirrored_features(photo_a, features_a) if mirrored else features_a
        if flipped_a is None:
            missing = f"no photo of {names[0]} to mirror"
        else:
            content = verify_copy(flipped_a, features_b, mirrored=mirrored,
                                  verification=None if mirrored else verification)
            if not content_agrees(content):
                return CopyDecision(False, "", True, content, verification=verification)
    if missing:  # no content check: the stricter hash-only threshold
        hash_match = hash_match and _strict_match(hashes_a, hashes_b, copy_threshold)
        if not hash_match:
            return CopyDecision(False, f"{missing}: hashes alone decided", verification=verification)
    if not hash_match:
        return CopyDecision(False, verification=verification)
    pixels = compare_copy_pixels(photo_a, photo_b, hashes_a, hashes_b, content) \
        if photo_a is not None and photo_b is not None else None
    compared = pixels is not None
    if compared and pixels.difference > MAX_PIXEL_DIFFERENCE:
        return CopyDecision(False, f"one region differs once aligned (pixel difference {pixels.difference:.0f} > "
                                   f"{MAX_PIXEL_DIFFERENCE:g})", True, content, pixels, verification)
    if missing:
        return CopyDecision(True, f"{missing}: {'hashes and pixels' if compared else 'hashes alone'} decided", True,
                            content, pixels, verification)
    return CopyDecision(True, "", True, content, pixels, verification)


def _strict_match(hashes_a, hashes_b, copy_threshold: int) -> bool:
    return copy_distance(hashes_a, hashes_b) <= copy_thresholds(hashes_a, hashes_b, copy_threshold=copy_threshold,
                                                                confirmed=False)


def _missing_features(features_a, features_b, names: tuple[str, str]) -> str:
    """What keeps the content check from running ("" when both photos' local features can confirm)."""
    for name, features in zip(names, (features_a, features_b)):
        if features is None:
            return f"no local features for {name}"
        if features.error:
            return f"{name} had no local features ({features.error})"
        if len(features) < MIN_KEYPOINTS:  # a thumbnail, a blank: nothing for the content check to read
            return f"{name} has {len(features)} keypoints"
    return ""


class _Side:
    """One side of the candidate pairs: names, hashes and (optionally) local features, by row.

    ``features(row)`` gives the row's stored local features (None when there are none);
    ``photo(row)`` its file (None when unknown), read for a mirrored pair.
    """

    def __init__(self, names: np.ndarray, keys: np.ndarray, hashes: PhotoHashes, used: np.ndarray, *,
                 photo: Callable[[int], str | os.PathLike | None],
                 features: Callable[[int], LocalFeatures | None] | None) -> None:
        self.names = names
        self.table = np.zeros((len(names), N_HASHES), dtype=np.uint64)
        self.errors = np.full(len(names), "", dtype=object)
        if len(used):
            self.table[used], self.errors[used] = hashes.lookup(keys[used])
        self.photo = photo
        self.features = features

    @classmethod
    def of_index(cls, index: SimilarityIndex, hashes: PhotoHashes, used: np.ndarray,
                 local_features: LocalFeatureStore | None) -> _Side:
        names = index.names

        def stored(row: int):
            name = names[row]
            return local_features[name] if name in local_features else None

        return cls(names, names, hashes, used, photo=lambda row: index.photo_path(names[row]),
                   features=stored if local_features is not None else None)


class _PairJudge:
    """The verdicts of blocks of candidate pairs ``(side_a row, side_b row)``."""

    def __init__(self, a: _Side, b: _Side, copy_threshold: int, same_object: bool) -> None:
        self.a, self.b = a, b
        self.copy_threshold = copy_threshold
        self.same_object = same_object and b.features is not None
        self.local = b.features is not None

    def __call__(self, rows_a: np.ndarray, rows_b: np.ndarray, distances: np.ndarray) -> pd.DataFrame:
        a, b = self.a, self.b
        errors_a, errors_b = a.errors[rows_a], b.errors[rows_b]
        readable = (errors_a == "") & (errors_b == "")
        scores = np.full(len(rows_a), np.nan)
        thresholds = np.zeros(len(rows_a), dtype=np.int64)
        strict_of = np.full(len(rows_a), -1, dtype=np.int64)
        if readable.any():
            hashes_a, hashes_b = a.table[rows_a[readable]], b.table[rows_b[readable]]
            scores[readable] = copy_match(hashes_a, hashes_b)[0]
            thresholds[readable] = copy_thresholds(hashes_a, hashes_b, copy_threshold=self.copy_threshold)
            strict_of[readable] = copy_thresholds(hashes_a, hashes_b, copy_threshold=self.copy_threshold,
                                                  confirmed=False)
        verdicts = np.full(len(rows_a), DIFFERENT, dtype=object)
        verdicts[~readable] = UNREADABLE
        reasons = np.full(len(rows_a), "", dtype=object)
        for i in np.flatnonzero(~readable):
            sides = ((a.names[rows_a[i]], errors_a[i]), (b.names[rows_b[i]], errors_b[i]))
            reasons[i] = "; ".join(f"{name}: {error}" for name, error in sides if error)
        inliers = np.zeros(len(rows_a), dtype=np.int64)
        coverage = np.full(len(rows_a), np.nan)
        unmatched = np.full(len(rows_a), np.nan)
        pixels = np.full(len(rows_a), np.nan)
        strict_match = readable & (scores <= strict_of)
        if not self.local:  # hashes alone: the stricter rule
            verdicts[strict_match] = COPY
        else:
            hash_match = readable & (scores <= thresholds)
            for i in np.flatnonzero(hash_match | (readable & self.same_object)):
                verdicts[i], reasons[i], inliers[i], coverage[i], unmatched[i], pixels[i] = self._one(
                    rows_a[i], rows_b[i], bool(hash_match[i]))
        table = _pair_table(a.names[rows_a], b.names[rows_b], distances, scores, verdicts, reasons)
        if self.local:
            table["inliers"] = inliers
            table["copy_coverage"] = coverage
            table["copy_unmatched"] = unmatched
            table["copy_pixels"] = pixels
        return table

    def _one(self, row_a: int, row_b: int, hash_match: bool):
        """(verdict, reason, inliers, copy coverage, copy unmatched, pixel difference) of one readable pair."""
        a, b = self.a, self.b
        decision = copy_decision(a.table[row_a], b.table[row_b], a.features(row_a), b.features(row_b),
                                 photo_a=a.photo(row_a), photo_b=b.photo(row_b), copy_threshold=self.copy_threshold,
                                 names=(a.names[row_a], b.names[row_b]), hash_match=hash_match,
                                 need_verification=self.same_object)
        content, verification = decision.content, decision.verification
        evidence = (content.coverage, content.unmatched) if content is not None else (np.nan, np.nan)
        pixels = decision.pixels.difference if decision.pixels is not None else np.nan
        if decision.copy:
            return COPY, decision.reason, content.inliers if content is not None else 0, *evidence, pixels
        if self.same_object and verification is not None and is_same_object(verification):
            return SAME_OBJECT, "", int(verification.inliers), *evidence, pixels
        # No copy: the content check's own inliers say why (the photos' verification's when it did not run).
        inliers = content.inliers if content is not None else verification.inliers if verification is not None else 0
        return DIFFERENT, decision.reason, int(inliers), *evidence, pixels


def _mirrored_features(photo, stored):
    """The local features of ``photo`` flipped left to right (detected now, with the stored ones' frame size)."""
    from PIL import ImageOps

    from ..engine.image_loading import load_rgb_image
    from .local_features import detect_local_features

    if photo is None:
        return None
    try:
        with load_rgb_image(photo) as image:
            flipped = ImageOps.mirror(image.convert("L"))
    except ImageLoadError:
        return None
    return detect_local_features(flipped, max_side=max(stored.image_size) or 512)


def _detected(photos: Sequence, store: LocalFeatureStore) -> Callable[[int], LocalFeatures | None]:
    """Local features of new photo files, detected once each when a pair needs them (store's settings)."""
    from .local_features import detect_local_features

    cache: dict[int, LocalFeatures | None] = {}
    settings = store.settings

    def features(row: int):
        if row not in cache:
            photo = photos[row]
            try:
                cache[row] = None if photo is None else detect_local_features(
                    photo, max_keypoints=settings["max_keypoints"], max_side=settings["max_side"])
            except ImageLoadError:
                cache[row] = None
        return cache[row]

    return features


def _block_starts(n_pairs: int, block_pairs: int) -> range:
    return range(0, max(n_pairs, 1), max(1, int(block_pairs)))


def _components(a: np.ndarray, b: np.ndarray, names: np.ndarray, key: str) -> pd.DataFrame:
    """Groups of the pairs ``(names[a], names[b])``: members in the order of ``names``, numbered by the first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    members = np.unique(np.concatenate([a, b]))
    if len(members) == 0:
        return pd.DataFrame({"group": pd.Series(dtype=int), key: pd.Series(dtype=object),
                             "chained": pd.Series(dtype=bool)})
    a, b = np.searchsorted(members, a), np.searchsorted(members, b)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(members), len(members)))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    links = np.bincount(labels[a], minlength=len(sizes))  # each accepted pair once, inside one component
    chained = links < sizes * (sizes - 1) // 2
    _, first = np.unique(labels, return_index=True)  # members are sorted: a label's first member is its first
    groups = np.argsort(np.argsort(first))[labels]
    order = np.argsort(groups, kind="stable")
    return pd.DataFrame({"group": groups[order], key: names[members[order]], "chained": chained[labels[order]]})


def _radius(max_distance: float | None, copy_check) -> float:
    if max_distance is None:
        return DEFAULT_DUPLICATE_THRESHOLD if copy_check is False else DEFAULT_CANDIDATE_DISTANCE
    if not 0 <= max_distance <= 2:
        raise ValueError(f"threshold must be a cosine distance between 0 and 2, got {max_distance!r}")
    return float(max_distance)


def _candidate_pairs(index: SimilarityIndex, max_distance: float):
    """(row_a, row_b, distance) of every pair of rows within ``max_distance``, row_a < row_b."""
    rows_a, rows_b, distances = index.neighbour_pairs(max_distance)
    return np.asarray(rows_a, dtype=np.int64), np.asarray(rows_b, dtype=np.int64), np.asarray(distances)


def _range_pairs(index: SimilarityIndex, vectors: np.ndarray, max_distance: float):
    """(query, row, distance) of every indexed row within ``max_distance`` of each query, nearest first."""
    if not len(vectors):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0)
    lims, distances, rows = index.range_search(vectors, max_distance)
    queries = np.repeat(np.arange(len(vectors)), np.diff(lims))
    order = np.lexsort((distances, queries))
    return queries[order], np.asarray(rows, dtype=np.int64)[order], np.asarray(distances)[order]


def _hashes_for(index: SimilarityIndex, names, given, n_workers) -> PhotoHashes:
    """Hashes of ``names``: from ``given`` where it has them, the rest computed from the index's photos now."""
    known = given if isinstance(given, PhotoHashes) else None
    names = np.asarray(names, dtype=object)
    todo = names if known is None else names[~known.contains(names)]
    computed = PhotoHashes.compute([index.photo_path(name) for name in todo], todo, n_workers=n_workers)
    return computed if known is None else known.merged(computed)


def _unchecked_pairs(names_a, names_b, distances) -> pd.DataFrame:
    """Without the copy check every candidate pair is a copy."""
    return _pair_table(names_a, names_b, distances, np.full(len(distances), np.nan),
                       np.full(len(distances), COPY, dtype=object), np.full(len(distances), "", dtype=object))


def _pair_table(names_a, names_b, distances, scores, verdicts, reasons) -> pd.DataFrame:
    return pd.DataFrame({
        "image_a": pd.Series(np.asarray(names_a, dtype=object), dtype=object),
        "image_b": pd.Series(np.asarray(names_b, dtype=object), dtype=object),
        "feature_distance": np.asarray(distances, dtype=float),
        "copy_score": np.asarray(scores, dtype=float),
        "verdict": pd.Series(np.asarray(verdicts, dtype=object), dtype=object),
        "reason": pd.Series(list(reasons), dtype=object),
    })
