"""The same object in new photos: a CNN shortlist re-ranked by geometric verification.

Global CNN features find photos of the same *kind* of object; they cannot tell this
DVD case from another one, nor a re-listed lot from a similar lot. An
:class:`ObjectMatcher` therefore takes the ``k`` nearest rows of a feature table by
cosine distance (the shortlist, :func:`~skimgfeat.search.similarity.similar_items`),
with the photos the instance index ranks highest for the query's local features
(:mod:`skimgfeat.matching.instance_index`), verifies each candidate against the query with
local features (:mod:`skimgfeat.matching.verification`) and ranks the verified ones first,
by inliers. A query with verified matches is then *expanded* (Chum et al., "Total recall",
ICCV 2007): the instance index is searched again with the object's region in its best
matches, which show the object under other cameras and light, and the new candidates are
verified too: a phone photo whose own descriptors rank the catalogue photo low (a small
object in clutter) finds it through another photo of the object.
Each candidate gets a verdict:

* ``copy``: the same photo again (resized, recompressed, slightly cropped): the copy
  check of ``duplicates`` (perceptual hashes confirmed by the local features), see
  :func:`~skimgfeat.matching.duplicates.is_confirmed_copy`;
* ``same_object``: another photo of the same physical object;
* ``different``: anything else, including a photo too plain or too small to verify.

The local features come from the sidecar folder ``skimgfeat extract --local-features``
writes beside the feature table (:class:`~skimgfeat.matching.local_features.LocalFeatureStore`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..embedder import fitted_embedder_from_model_info
from ..schema import IMAGE_PATH, ITEM_ID, item_id_from_name
from ..search.similarity import SimilarityIndex, _indexed_row
from .copy_check import COPY, DIFFERENT, SAME_OBJECT, UNREADABLE
from .duplicates import DEFAULT_CANDIDATE_DISTANCE, is_confirmed_copy
from .instance_index import InstanceIndex, available_instance_index
from .local_features import (
    LOCAL_FEATURES_DIR,
    LocalFeatures,
    LocalFeatureStore,
    MissingLocalFeaturesError,
    detect_local_features,
    relative_key,
)
from .verification import (
    DEFAULT_EXPANSION_PHOTOS,
    DEFAULT_EXPANSION_SHORTLIST,
    DEFAULT_INSTANCE_SHORTLIST,
    DEFAULT_MIN_INLIERS,
    DEFAULT_SHORTLIST,
    PairVerification,
    is_same_object,
    verify_pair,
)

# A candidate whose local features were never stored: reported, not verified (the other candidates are).
UNVERIFIED = "unverified"
VERDICTS = (COPY, SAME_OBJECT, DIFFERENT, UNVERIFIED)
MATCH_COLUMNS = ("query", "rank", "feature_distance", "inliers", "verdict")


def verdict(verification: PairVerification, *, copy: bool = False, min_inliers: int = DEFAULT_MIN_INLIERS) -> str:
    """``copy`` (when the copy check says so), ``same_object`` or ``different`` for one verified pair."""
    if copy:
        return COPY
    return SAME_OBJECT if is_same_object(verification, min_inliers=min_inliers) else DIFFERENT


def add_same_object_verdicts(
    pairs: pd.DataFrame,
    local_features: LocalFeatureStore,
    *,
    columns: tuple[str, str] = ("image_a", "image_b"),
    min_inliers: int = DEFAULT_MIN_INLIERS,
) -> pd.DataFrame:
    """Verify pairs of photos (e.g. :func:`~skimgfeat.duplicate_pairs`) and say which are the same object.

    Parameters
    ----------
    pairs : DataFrame
        One row per pair of photos, named by ``image_path`` in two columns. A
        ``verdict`` column, when there is one, is kept where it says ``copy`` (the copy
        check of ``duplicates``); its other verdicts become ``same_object`` or
        ``different``.
    local_features : LocalFeatureStore
        The photos' stored local features.
    columns : (str, str), default=("image_a", "image_b")
        The two columns naming the photos (those of ``duplicate_pairs``).
    min_inliers : int, default=DEFAULT_MIN_INLIERS

    Returns
    -------
    DataFrame
        ``pairs`` with ``inliers`` and ``verdict`` (``copy``, ``same_object`` or
        ``different``; a photo that could not be read has no keypoints: ``different``;
        a pair with a photo whose local features were never stored: ``unverified``).

    Examples
    --------
    >>> from skimgfeat import LocalFeatureStore, SimilarityIndex, duplicate_pairs
    >>> pairs = duplicate_pairs(SimilarityIndex.read("out/image_features_raw.parquet"))  # doctest: +SKIP
    >>> add_same_object_verdicts(pairs, LocalFeatureStore("out/local_features"))  # doctest: +SKIP
          image_a      image_b  feature_distance  copy_score      verdict reason  inliers
    0  7_1.jpg       7_2.jpg          0.041002         2.0         copy              212
    1  7_1.jpg       9_1.jpg          0.251873        31.0  same_object               48
    """
    first, second = columns
    earlier = pairs["verdict"] if "verdict" in pairs.columns else pd.Series("", index=pairs.index)
    inliers, verdicts = [], []
    for a, b, said in zip(pairs[first].astype(str), pairs[second].astype(str), earlier):
        if said == UNREADABLE:  # its reason says which photo could not be read: nothing to verify
            inliers.append(0)
            verdicts.append(said)
            continue
        try:
            verification = verify_pair(local_features[a], local_features[b])
        except MissingLocalFeaturesError:  # reported as such; the other pairs are still verified
            inliers.append(0)
            verdicts.append(COPY if said == COPY else UNVERIFIED)
            continue
        inliers.append(verification.inliers)
        verdicts.append(verdict(verification, copy=said == COPY, min_inliers=min_inliers))
    return pairs.assign(verdict=verdicts, inliers=np.asarray(inliers, dtype=int))


class ObjectMatcher:
    """Find the photos (or items) of a feature table that show the same object as a query.

    Two shortlists are verified together: the ``k`` nearest rows by cosine distance of
    the CNN features (photos of the same kind, and copies), and the ``k_instance`` photos
    whose local features agree best with the query's in the instance index
    (:class:`~skimgfeat.matching.instance_index.InstanceIndex`: the same object under
    another camera, light and background, which the CNN features do not rank high).

    Parameters
    ----------
    index : SimilarityIndex
        The shortlist's feature table (per photo, or per item with ``key="item_id"``).
    local_features : LocalFeatureStore
        The local features of the table's photos, keyed by ``image_path``.
    k : int, default=DEFAULT_SHORTLIST
        Candidates per query taken from the CNN shortlist and verified.
    k_instance : int, default=DEFAULT_INSTANCE_SHORTLIST
        Candidates per query taken from the instance index and verified (0: none).
    k_expansion : int, default=DEFAULT_EXPANSION_SHORTLIST
        Query expansion: once a query has verified matches, the instance index is searched
        again with the descriptors of the object's region in its best ``expansion_photos``
        matches (the object under other cameras and light), and this many new candidates
        are verified (0: no expansion).
    expansion_photos : int, default=DEFAULT_EXPANSION_PHOTOS
        Verified matches (the most inliers first) whose object region the expansion searches with.
    instance_index : InstanceIndex or None
        The instance index of the table's photos; None: the CNN shortlist only.
    min_inliers : int, default=DEFAULT_MIN_INLIERS
        Inliers a ``same_object`` pair needs.
    hashes : PhotoHashes or None
        The copy-check hashes of the table's photos (``extract --hashes``); photos
        without are hashed when a candidate is close enough to be a copy.

    Attributes
    ----------
    unverified_ : list of str
        The candidates of the last :meth:`match` that had no stored local features (verdict ``unverified``).

    Examples
    --------
    >>> matcher = ObjectMatcher.read("out/image_features_raw.parquet")  # doctest: +SKIP
    >>> matcher.match(["new_photo.jpg"], k=20).head(3)  # doctest: +SKIP
              query  rank        image_path  feature_distance  inliers      verdict
    0  new_photo.jpg     1  dvd007_canon.jpg            0.2843      112  same_object
    """

    def __init__(
        self,
        index: SimilarityIndex,
        local_features: LocalFeatureStore,
        *,
        k: int = DEFAULT_SHORTLIST,
        k_instance: int = DEFAULT_INSTANCE_SHORTLIST,
        k_expansion: int = DEFAULT_EXPANSION_SHORTLIST,
        expansion_photos: int = DEFAULT_EXPANSION_PHOTOS,
        instance_index: InstanceIndex | None = None,
        min_inliers: int = DEFAULT_MIN_INLIERS,
        hashes=None,
    ) -> None:
        self.index = index
        self.local_features = local_features
        self.k = k
        self.k_instance = k_instance
        self.k_expansion = k_expansion
        self.expansion_photos = expansion_photos
        self.instance_index = instance_index
        self.min_inliers = min_inliers
        self.hashes = hashes
        self.unverified_: list[str] = []
        self._photos_of_item: dict[str, list[str]] | None = None

    @classmethod
    def read(
        cls,
        against: str | os.PathLike,
        *,
        by_item: bool = False,
        local_features: str | os.PathLike | None = None,
        image_dir: str | os.PathLike | None = None,
        instance: bool = True,
        **parameters,
    ) -> ObjectMatcher:
        """A matcher over a feature table file, an ``extract`` output folder or an index folder.

        ``local_features`` defaults to the ``local_features`` folder beside the table (for
        an index folder: inside it, else beside it); the copy-check hashes are read from
        ``image_hashes.parquet`` there when ``extract --hashes`` wrote them, else
        computed when needed. An index folder (``skimgfeat index build``) ranks the rows
        it was built from: ``by_item`` needs a feature table. With ``instance`` (the
        default), the instance index ``instance_index`` beside the local-features folder
        is used, made or brought up to date from the local features first.
        """
        from .copy_check import HASHES_FILE, PhotoHashes

        against = Path(against)
        table = _feature_table(against)
        if table is None:
            if by_item:
                raise ValueError("--by-item needs a feature table: an index ranks the rows it was built from (build "
                                 "one from the by-item table to match items)")
            index = SimilarityIndex.load(against)
            if image_dir is not None:
                index.image_dir = Path(image_dir)
            places = [against, against.parent]
        else:
            index = SimilarityIndex.read(table, by_item=by_item, image_dir=image_dir)
            places = [table.parent]
        if local_features is None:
            found = [place / LOCAL_FEATURES_DIR for place in places if (place / LOCAL_FEATURES_DIR).is_dir()]
            local_features = (found or [places[0] / LOCAL_FEATURES_DIR])[0]
        hashes = next((place / HASHES_FILE for place in places if (place / HASHES_FILE).is_file()), None)
        parameters.setdefault("hashes", PhotoHashes.read(hashes) if hashes is not None else None)
        store = LocalFeatureStore(local_features)
        if instance and parameters.get("k_instance", DEFAULT_INSTANCE_SHORTLIST) > 0:
            parameters.setdefault("instance_index", available_instance_index(store))
        return cls(index, store, **parameters)

    # -- matching ---------------------------------------------------------------------

    def match(
        self,
        queries: Sequence[str | os.PathLike],
        k: int | None = None,
        *,
        weights: str | os.PathLike | None = None,
        embedder=None,
    ) -> pd.DataFrame:
        """Each query's shortlists, verified and re-ranked.

        Parameters
        ----------
        queries : sequence of str or os.PathLike
            Image files, or names of the index (an ``image_path``, or an ``item_id`` of
            an item index), as for :func:`~skimgfeat.search.similarity.similar_items`.
        k : int or None
            Candidates per query from the CNN shortlist (default: the matcher's ``k``).
        weights, embedder
            How query files are embedded for the shortlist, see ``similar_items``.

        Returns
        -------
        DataFrame
            ``query``, ``rank`` (1 = best: copies, then same-object photos by inliers,
            then the rest by feature distance, then the unverified), the key column
            (``image_path``, or ``item_id`` and the ``image_path`` of its best-matching
            photo), ``feature_distance`` (cosine), ``inliers`` and ``verdict``. The
            candidates without stored local features are listed in :attr:`unverified_`.
        """
        labels = [os.fspath(query) for query in queries]
        vectors, own_rows = self._query_vectors(labels, weights, embedder)
        shortlist = self.index.search(vectors, k or self.k, labels=labels, exclude_rows=own_rows)
        key = self.index.key
        query_features = {label: self._query_features(label) for label in dict.fromkeys(labels)}
        candidates = {label: dict(zip(group[key], group["distance"]))
                      for label, group in shortlist.groupby("query", sort=False)}
        own_names = {}
        for label, vector, own in zip(labels, vectors, own_rows):
            found = candidates.setdefault(label, {})
            own_names[label] = None if own is None else self.index.names[own]
            descriptors = np.concatenate([features.descriptors for _, features in query_features[label]])
            for name in self._instance_candidates(descriptors, query_features[label], own_names[label],
                                                  self.k_instance, found):
                found[name] = _cosine_distance(vector, self.index.vector(name))
        hashes: dict[str, np.ndarray | None] = {}
        rows = []
        self.unverified_ = []
        vector_of = dict(zip(labels, vectors))
        for query in dict.fromkeys(labels):
            found = candidates.get(query, {})
            verified = self._verified(query, query_features[query], found, hashes)
            # Query expansion (Chum et al., ICCV 2007): the object's region in the photos just verified shows it
            # under other cameras and light; the instance index searched with it finds the photos of the object
            # that the query's own descriptors (a small object in a cluttered photo) rank too low.
            expansion = self._expansion_descriptors(verified)
            if expansion is not None:
                extra = {name: _cosine_distance(vector_of[query], self.index.vector(name))
                         for name in self._instance_candidates(expansion, query_features[query], own_names[query],
                                                               self.k_expansion, found)}
                verified += self._verified(query, query_features[query], extra, hashes)
            rows += [row[:6] for row in verified]
        table = pd.DataFrame(rows, columns=["query", key, "_photo", "feature_distance", "inliers", "verdict"])
        if key == ITEM_ID:
            table = table.rename(columns={"_photo": IMAGE_PATH})
        return _ranked(table, key)

    def verify(self, a: str | os.PathLike, b: str | os.PathLike) -> PairVerification:
        """Verify two photos: each an indexed ``image_path`` or an image file."""
        return verify_pair(self.features_of(a), self.features_of(b))

    def features_of(self, photo: str | os.PathLike) -> LocalFeatures:
        """The stored local features of an ``image_path``, else those of the image file.

        An indexed photo whose features were never stored raises
        :class:`~skimgfeat.matching.local_features.MissingLocalFeaturesError` naming the
        command that stores them.
        """
        name = os.fspath(photo)
        if name in self.local_features:
            return self.local_features[name]
        relative = self._relative(name)
        if relative is not None and relative in self.local_features:
            return self.local_features[relative]
        if name in self.index or (relative is not None and relative in self.index) or not os.path.isfile(name):
            return self.local_features[relative or name]  # raises, naming the command
        settings = self.local_features.settings
        return detect_local_features(name, max_keypoints=settings["max_keypoints"], max_side=settings["max_side"])

    def photo_file(self, photo: str | os.PathLike) -> Path | None:
        """The file of an image file or indexed ``image_path`` (resolved against the image folder)."""
        name = os.fspath(photo)
        if os.path.isfile(name) and name not in self.local_features:
            return Path(name)
        if self.index.key == ITEM_ID and name in self.index:
            return self.index.photo_path(name)
        if self.index.image_dir is not None and not Path(name).is_absolute():
            return self.index.image_dir / name
        return Path(name) if os.path.isfile(name) else None

    # -- internals --------------------------------------------------------------------

    def _query_vectors(self, labels: list[str], weights, embedder) -> tuple[np.ndarray, list[int | None]]:
        """Each query's CNN vector (stored for a row of the index, else embedded) and its row (None for a file)."""
        rows = [_indexed_row(self.index, label) for label in labels]
        files = [label for label, row in zip(labels, rows) if row is None]
        for label in files:
            if not os.path.isfile(label):
                raise FileNotFoundError(f"query {label!r} is neither an image file nor a {self.index.key} of the "
                                        "table")
        embedded = {}
        if files:
            if embedder is not None:
                self.index.check_model(getattr(embedder, "model_info_", None), what="the query embedder")
            else:
                embedder = fitted_embedder_from_model_info(self.index.model_info, weights)
            embedded = dict(zip(files, np.asarray(embedder.transform(files), dtype=np.float32)))
        vectors = [self.index.vector(self.index.names[row]) if row is not None else embedded[label]
                   for label, row in zip(labels, rows)]
        matrix = np.stack(vectors).astype(np.float32) if vectors else np.empty((0, 0), np.float32)
        return matrix, rows

    def _instance_candidates(self, descriptors: np.ndarray, query_features, own_name: str | None, k: int,
                             known) -> list[str]:
        """The ``k`` index names (photos, or their items) the instance index ranks highest for ``descriptors``,
        leaving out the query's own photos and the names already in ``known``."""
        if self.instance_index is None or not k:
            return []
        own_photos = {photo for photo, _ in query_features}
        found = []
        for photo in self.instance_index.search(descriptors, k + len(own_photos) + len(known))[0]:
            name = item_id_from_name(photo) if self.index.key == ITEM_ID else photo
            if photo in own_photos or name == own_name or name not in self.index or name in found or name in known:
                continue
            found.append(name)
        return found[:k]

    def _verified(self, query: str, query_features, candidates: dict, hashes: dict) -> list[tuple]:
        """Rows (query, name, photo, distance, inliers, verdict, photo's verification) of verified candidates."""
        rows = []
        for name, distance in candidates.items():
            try:
                photo, verification = self._best_photo(query_features, name)
            except MissingLocalFeaturesError:
                self.unverified_.append(name)
                rows.append((query, name, name, float(distance), 0, UNVERIFIED, None))
                continue
            copy = distance <= DEFAULT_CANDIDATE_DISTANCE and self._is_copy(
                query, query_features, photo, verification, hashes)
            rows.append((query, name, photo, float(distance), verification.inliers,
                         verdict(verification, copy=copy, min_inliers=self.min_inliers), verification))
        return rows

    def _expansion_descriptors(self, verified: list[tuple]) -> np.ndarray | None:
        """The descriptors of the object's region (its inliers' bounding box) in the best verified photos, or
        None when nothing was verified (or expansion is off)."""
        if self.instance_index is None or not self.k_expansion or not self.expansion_photos:
            return None
        hits = sorted((row for row in verified if row[5] in (COPY, SAME_OBJECT)), key=lambda row: -row[4])
        hits = hits[:self.expansion_photos]
        if not hits:
            return None
        # The strongest of each region (the store keeps them strongest first), as many in all as one photo has: the
        # second search costs no more than the first.
        share = -(-self.local_features.settings["max_keypoints"] // len(hits))
        blocks = [object_region(self.local_features[row[2]], (row[6].guided or row[6]).points_b).descriptors[:share]
                  for row in hits]
        return np.concatenate(blocks)

    def _query_features(self, query: str) -> list[tuple[str, LocalFeatures]]:
        if self.index.key == ITEM_ID and query in self.index:
            return [(photo, self.local_features[photo]) for photo in self._photos(query)]
        name = query
        if query not in self.local_features:
            relative = self._relative(query)
            name = relative if relative is not None else query
        return [(name, self.features_of(query))]

    def _best_photo(self, query_features, name: str) -> tuple[str, PairVerification]:
        photos = self._photos(name) if self.index.key == ITEM_ID else [name]
        best = (photos[0] if photos else "", PairVerification.none())
        for photo in photos:
            candidate = self.local_features[photo]
            for _, features in query_features:
                verification = verify_pair(features, candidate)
                if _better(verification, best[1]):
                    best = (photo, verification)
        return best

    def _is_copy(self, query: str, query_features, photo: str, verification: PairVerification,
                 known: dict) -> bool:
        """The copy check of ``duplicates`` on a query and a candidate photo: hashes, confirmed by content."""
        query_photo, features = query_features[0]
        return is_confirmed_copy(self._hashes(query, known), self._hashes(photo, known), features,
                                 self.local_features[photo], photo_a=self.photo_file(query_photo) or query,
                                 photo_b=self.photo_file(photo),
                                 verification=verification if len(query_features) == 1 else None)

    def _hashes(self, photo: str, known: dict) -> np.ndarray | None:
        """The copy-check hashes of an image file or ``image_path`` (None if it cannot be read)."""
        from ..exceptions import ImageLoadError
        from .copy_check import hash_photo

        if photo not in known:
            if self.hashes is not None and photo in self.hashes and not self.hashes.error(photo):
                known[photo] = self.hashes.rows([photo])[0]
            else:
                file = self.photo_file(photo)
                try:
                    known[photo] = hash_photo(file) if file else None
                except ImageLoadError:
                    known[photo] = None
        return known[photo]

    def _photos(self, item: str) -> list[str]:
        if self._photos_of_item is None:
            self._photos_of_item = {}
            for path in sorted(self.local_features.paths()):
                self._photos_of_item.setdefault(item_id_from_name(path), []).append(path)
        return self._photos_of_item.get(str(item), [])

    def _relative(self, name: str) -> str | None:
        """An image file's ``image_path`` under the index's image folder (links not followed), or None."""
        if self.index.image_dir is None or not os.path.isfile(name):
            return None
        try:
            return relative_key(name, self.index.image_dir)
        except ValueError:
            return None


def object_region(features: LocalFeatures, inliers: np.ndarray) -> LocalFeatures:
    """The keypoints of a photo inside the bounding box of its inliers (``inliers`` in the photo's own pixels, as
    :attr:`~skimgfeat.matching.verification.PairVerification.points_b` holds them): the matched object's region."""
    if not len(inliers) or not len(features):
        return LocalFeatures.empty()
    corners = np.asarray(inliers, dtype=np.float32) * features.scale
    inside = np.all((features.points >= corners.min(axis=0)) & (features.points <= corners.max(axis=0)), axis=1)
    return LocalFeatures(features.points[inside], features.descriptors[inside], features.image_size, features.scale)


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 - float(np.dot(a, b)) / norms if norms > 0 else 1.0


def _feature_table(against: Path) -> Path | None:
    """The feature table ``against`` names (a file, or an ``extract`` folder's raw table); None for an index."""
    if not against.is_dir():
        return against
    tables = [against / name for name in ("image_features_raw.parquet", "image_features_raw.csv")]
    return next((table for table in tables if table.is_file()), None)


def _better(new: PairVerification, old: PairVerification) -> bool:
    return (is_same_object(new), new.inliers) > (is_same_object(old), old.inliers)


def _ranked(table: pd.DataFrame, key: str) -> pd.DataFrame:
    order = {name: i for i, name in enumerate(VERDICTS)}
    table = table.assign(_verdict=table["verdict"].map(order), _first=~table["query"].duplicated())
    table["_query"] = table["query"].map({query: i for i, query in enumerate(dict.fromkeys(table["query"]))})
    same = table["verdict"] != DIFFERENT
    table["_inliers"] = np.where(same, -table["inliers"], 0)
    table = table.sort_values(["_query", "_verdict", "_inliers", "feature_distance"], kind="stable")
    table["rank"] = table.groupby("_query").cumcount() + 1
    columns = ["query", "rank", key, *([IMAGE_PATH] if key == ITEM_ID else []), "feature_distance", "inliers",
               "verdict"]
    return table[columns].reset_index(drop=True)
