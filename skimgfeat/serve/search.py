"""Search by photo: the nearest archived photos of a query, each with its verdict.

A query is an archived photo (named by its ``image_path``, file name or item id) or an
uploaded file. Its ``k`` nearest photos by cosine distance (the CNN shortlist) each get a
verdict, the vocabulary of ``skimgfeat match``:

* ``copy``: the same picture again, by the copy check of ``duplicates`` (perceptual
  hashes, stored by ``extract --hashes`` or computed now);
* ``same_object``: another photo of the same object: enough inliers of one perspective
  transform between the two photos' local features (``extract --local-features``);
* ``similar``: anything else, shown with its distance.

Verifying one pair costs about 16 ms of CPU, so a :class:`Searcher` verifies the top
``verify`` candidates only, and remembers each pair it verified; the pages of a search
by name verify the rest one tile at a time (:meth:`Searcher.verify_pair`). Reviewers'
decisions are honoured as in ``match``: a pair decided "not the same" is not shown.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..exceptions import ImageLoadError
from ..matching.copy_check import COPY, SAME_OBJECT, copy_distance, hash_photo
from ..matching.duplicates import DEFAULT_CANDIDATE_DISTANCE, is_confirmed_copy
from ..matching.local_features import LocalFeatures, MissingLocalFeaturesError, detect_local_features
from ..matching.verification import PairVerification, is_same_object, verify_pair
from ..storage.decisions import NOT_SAME, pair_key
from .source import ArchiveSource

SIMILAR = "similar"
DEFAULT_K = 12
# Photos the instance index adds to an upload's CNN candidates (each verified: ~16 ms).
INSTANCE_K = 8
# Verified pairs remembered (a verification is a few numbers and two point lists).
_REMEMBERED_PAIRS = 20_000


@dataclass
class Hit:
    """One archived photo found for a query."""

    rank: int
    image_path: str
    item_id: str
    distance: float
    verdict: str
    verified: bool
    inliers: int | None = None
    copy_score: int | None = None
    decision: str = ""
    lot: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Query:
    """What was searched: an archived photo (``name``) or an upload (``upload_id`` and its file)."""

    label: str
    name: str | None = None
    upload_id: str | None = None
    file: Path | None = None

    @property
    def key(self) -> str:
        """What identifies the query in remembered pairs."""
        return self.name if self.name is not None else f"upload:{self.upload_id}"


class Searcher:
    """Searches of one archive, sharing the network, the verified pairs and the query features.

    Parameters
    ----------
    source : ArchiveSource
    """

    def __init__(self, source: ArchiveSource) -> None:
        self.source = source
        self._pairs: OrderedDict[tuple[str, str], tuple[PairVerification | None, int | None, bool]] = OrderedDict()
        self._query_features: OrderedDict[str, LocalFeatures | None] = OrderedDict()
        self._query_hashes: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._lock = threading.Lock()
        self._instance = None  # the instance index, once asked for (False: there is none)

    # -- searching ----------------------------------------------------------------------

    def search(self, query: Query, k: int = DEFAULT_K, verify: int | None = None) -> list[Hit]:
        """The ``k`` nearest archived photos of ``query``, the first ``verify`` (default all) verified.

        Verified copies come first, then same-object photos by inliers, then the rest by
        distance; unverified candidates keep their distance order after them.
        """
        index = self.source.index
        vector = self._vector(query)
        exclude = [query.name] if query.name is not None else None
        found = index.search(vector[None, :], k + 1 if exclude else k, exclude=exclude)
        decided = self.source.decisions.in_force() if self.source.decisions is not None else {}
        hits = []
        for name, distance in zip(found[index.key].astype(str), found["distance"].astype(float)):
            decision = decided.get(pair_key(query.key, name), "") if query.name is not None else ""
            if decision == NOT_SAME:
                continue
            hits.append(Hit(0, name, self.source.item_of(name), round(distance, 6), SIMILAR, False,
                            decision=decision, lot=self.source.lot_of(name)))
        hits = hits[:k]
        if verify is None:  # an upload: the instance index adds the photos of the same object the CNN misses
            hits += self._instance_hits(query, vector, {hit.image_path for hit in hits} | set(exclude or []), decided)
        for hit in hits[: len(hits) if verify is None else verify]:
            self._judge(query, hit)
        return _ranked(hits)

    def verify_pair(self, query: Query, name: str) -> Hit:
        """One candidate of a search, verified (as a tile of the page asks for it)."""
        index = self.source.index
        if name not in index:
            raise KeyError(f"{name!r} is not a photo of the archive")
        distance = _cosine_distance(self._vector(query), index.vector(name))
        hit = Hit(0, name, self.source.item_of(name), round(distance, 6), SIMILAR, False, lot=self.source.lot_of(name))
        self._judge(query, hit)
        return hit

    def pair_verification(self, query: Query, name: str) -> PairVerification:
        """The verification of a pair (remembered), for the side-by-side view."""
        return self._verification(query, name)[0]

    # -- internals ----------------------------------------------------------------------

    def _instance_hits(self, query: Query, vector: np.ndarray, shown: set, decided: dict) -> list[Hit]:
        """The archived photos the instance index ranks highest for the query and the CNN did not offer."""
        index, instance = self.source.index, self._instance_index()
        features = self._features_of_query(query)
        if instance is None or features is None or not len(features):
            return []
        hits = []
        for name in instance.search(features, INSTANCE_K + len(shown))[0]:
            if name in shown or name not in index or len(hits) == INSTANCE_K:
                continue
            if query.name is not None and decided.get(pair_key(query.key, name), "") == NOT_SAME:
                continue
            distance = _cosine_distance(vector, index.vector(name))
            hits.append(Hit(0, name, self.source.item_of(name), round(distance, 6), SIMILAR, False,
                            lot=self.source.lot_of(name)))
        return hits

    def _instance_index(self):
        """The instance index of the archive (the one its generation names), read once."""
        with self._lock:
            if self._instance is None:
                self._instance = self.source.instance_index() or False
            return self._instance or None

    def _vector(self, query: Query) -> np.ndarray:
        index = self.source.index
        if query.name is not None:
            return np.asarray(index.vector(query.name), dtype=np.float32)
        embedder = self.source.embedder()
        with self.source._embedder_lock:  # one network, one batch at a time
            vector = np.asarray(embedder.transform([str(query.file)]), dtype=np.float32)[0]
        if np.isnan(vector).any():
            raise ImageLoadError(str(query.file), "corrupt", "the network could not embed it")
        return vector

    def _judge(self, query: Query, hit: Hit) -> None:
        verification, score, copy = self._verification(query, hit.image_path, hit.distance)
        hit.copy_score = score
        if copy:
            hit.verdict = COPY
        elif verification is not None and is_same_object(verification):
            hit.verdict = SAME_OBJECT
        hit.inliers = verification.inliers if verification is not None else None
        hit.verified = True

    def _verification(self, query: Query, name: str, distance: float = 0.0):
        key = (query.key, name)
        with self._lock:
            if key in self._pairs:
                self._pairs.move_to_end(key)
                return self._pairs[key]
        verification = None
        features = self._features_of_query(query)
        stored = self._stored_features(name)
        if features is not None and stored is not None:
            verification = verify_pair(features, stored)
        score, copy = None, False
        if distance <= DEFAULT_CANDIDATE_DISTANCE:  # the copy check of `duplicates`: hashes confirmed by content
            first, second = self._query_hashes_of(query), self._hashes(name, None)
            if first is not None and second is not None:
                score = int(copy_distance(first, second))
                copy = is_confirmed_copy(first, second, features, stored, photo_a=self._file_of(query),
                                         photo_b=self.source.index.photo_path(name), verification=verification)
        with self._lock:
            self._pairs[key] = (verification, score, copy)
            while len(self._pairs) > _REMEMBERED_PAIRS:
                self._pairs.popitem(last=False)
        return verification, score, copy

    def _stored_features(self, name: str) -> LocalFeatures | None:
        store = self.source.local_features
        if store is None:
            return None
        try:
            return store[name]
        except MissingLocalFeaturesError:  # a photo stored without them: judged by the copy check alone
            return None

    def _features_of_query(self, query: Query) -> LocalFeatures | None:
        if query.name is not None:
            return self._stored_features(query.name)
        with self._lock:
            if query.key in self._query_features:
                return self._query_features[query.key]
        store = self.source.local_features
        features = None
        if store is not None:
            settings = store.settings
            features = detect_local_features(query.file, max_keypoints=settings["max_keypoints"],
                                             max_side=settings["max_side"])
        with self._lock:
            self._query_features[query.key] = features
            while len(self._query_features) > 64:
                self._query_features.popitem(last=False)
        return features

    def _query_hashes_of(self, query: Query):
        with self._lock:
            if query.key in self._query_hashes:
                return self._query_hashes[query.key]
        hashes = self._hashes(query.name, query.file)
        with self._lock:
            self._query_hashes[query.key] = hashes
            while len(self._query_hashes) > 64:
                self._query_hashes.popitem(last=False)
        return hashes

    def _file_of(self, query: Query) -> Path | None:
        return query.file if query.file is not None else self.source.index.photo_path(query.name)

    def _hashes(self, name: str | None, file: Path | None):
        hashes = self.source.hashes
        if name is not None and hashes is not None and name in hashes:
            return None if hashes.error(name) else hashes.rows([name])[0]
        photo = file if file is not None else self.source.index.photo_path(name)
        try:
            return hash_photo(photo) if photo is not None else None
        except ImageLoadError:
            return None


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ranked(hits: list[Hit]) -> list[Hit]:
    order = {COPY: 0, SAME_OBJECT: 1, SIMILAR: 2}

    def rank(hit: Hit):
        if not hit.verified:
            return (3, 0, hit.distance)
        return (order[hit.verdict], -(hit.inliers or 0) if hit.verdict != SIMILAR else 0, hit.distance)

    hits = sorted(hits, key=rank)
    for number, hit in enumerate(hits, start=1):
        hit.rank = number
    return hits
