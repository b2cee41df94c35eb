"""The same object in new photos: a CNN shortlist re-ranked by geometric verification.

Global CNN features find photos of the same *kind* of object; they cannot tell this
DVD case from another one, nor a re-listed lot from a similar lot. An
:class:`ObjectMatcher` therefore takes the ``k`` nearest rows of a feature table by
cosine distance (the shortlist, :func:`~skimgfeat.uses.similarity.similar_items`),
verifies each candidate against the query with local features
(:mod:`skimgfeat.uses.verification`) and ranks the verified ones first, by inliers.
Each candidate gets a verdict:

* ``copy``: the same photo again (resized, recompressed, slightly cropped), see
  :func:`is_copy`;
* ``same_object``: another photo of the same physical object;
* ``different``: anything else, including a photo too plain or too small to verify.

The local features come from the sidecar folder ``skimgfeat extract --local-features``
writes beside the feature table (:class:`~skimgfeat.uses.local_features.LocalFeatureStore`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..aggregation import ITEM_ID, item_id_from_name
from .local_features import (
    LOCAL_FEATURES_DIR,
    LocalFeatures,
    LocalFeatureStore,
    detect_local_features,
)
from .similarity import IMAGE_PATH, SimilarityIndex, similar_items
from .verification import DEFAULT_MIN_INLIERS, PairVerification, is_same_object, verify_pair

COPY = "copy"
SAME_OBJECT = "same_object"
DIFFERENT = "different"
VERDICTS = (COPY, SAME_OBJECT, DIFFERENT)
MATCH_COLUMNS = ("query", "rank", "feature_distance", "inliers", "verdict")
DEFAULT_SHORTLIST = 100


def is_copy(feature_distance: float, verification: PairVerification) -> bool:
    """Whether a verified pair is a copy of one photo rather than a new photo of the object.

    A copy is a pair that :func:`~skimgfeat.uses.duplicates.find_duplicates` would group
    (cosine distance within its threshold) and whose geometry confirms it.
    """
    from .duplicates import DEFAULT_DUPLICATE_THRESHOLD

    return feature_distance <= DEFAULT_DUPLICATE_THRESHOLD and is_same_object(verification)


def verdict(feature_distance: float, verification: PairVerification, *, min_inliers: int = DEFAULT_MIN_INLIERS) -> str:
    """``copy``, ``same_object`` or ``different`` for one verified pair."""
    if not is_same_object(verification, min_inliers=min_inliers):
        return DIFFERENT
    return COPY if is_copy(feature_distance, verification) else SAME_OBJECT


def add_same_object_verdicts(
    pairs: pd.DataFrame,
    local_features: LocalFeatureStore,
    *,
    columns: tuple[str, str] = ("image_path_a", "image_path_b"),
    distance_column: str | None = None,
    copy_column: str | None = None,
    min_inliers: int = DEFAULT_MIN_INLIERS,
) -> pd.DataFrame:
    """Verify pairs of photos (e.g. the pairs ``duplicates`` links) and add their verdicts.

    Parameters
    ----------
    pairs : DataFrame
        One row per pair of photos, named by ``image_path`` in two columns.
    local_features : LocalFeatureStore
        The photos' stored local features.
    columns : (str, str), default=("image_path_a", "image_path_b")
        The two columns naming the photos.
    distance_column : str or None
        A column of cosine distances: with it, a verified pair within the duplicates
        threshold is a ``copy`` (:func:`is_copy`).
    copy_column : str or None
        A boolean column saying which pairs are copies (a copy check of the pixels):
        those are ``copy`` whatever their geometry.
    min_inliers : int, default=DEFAULT_MIN_INLIERS

    Returns
    -------
    DataFrame
        ``pairs`` with two more columns: ``inliers`` and ``verdict`` (``copy``,
        ``same_object`` or ``different``).

    Examples
    --------
    >>> import pandas as pd
    >>> pairs = pd.DataFrame({"image_path_a": ["a_1.jpg"], "image_path_b": ["b_1.jpg"]})
    >>> add_same_object_verdicts(pairs, LocalFeatureStore("out/local_features"))  # doctest: +SKIP
      image_path_a image_path_b  inliers    verdict
    0      a_1.jpg      b_1.jpg        0  different
    """
    first, second = columns
    inliers, verdicts = [], []
    for row in range(len(pairs)):
        verification = verify_pair(local_features[str(pairs[first].iloc[row])],
                                   local_features[str(pairs[second].iloc[row])])
        distance = float(pairs[distance_column].iloc[row]) if distance_column is not None else np.inf
        found = verdict(distance, verification, min_inliers=min_inliers)
        if copy_column is not None and bool(pairs[copy_column].iloc[row]):
            found = COPY
        inliers.append(verification.inliers)
        verdicts.append(found)
    return pairs.assign(inliers=np.asarray(inliers, dtype=int), verdict=verdicts)


class ObjectMatcher:
    """Find the photos (or items) of a feature table that show the same object as a query.

    Parameters
    ----------
    index : SimilarityIndex
        The shortlist's feature table (per photo, or per item with ``key="item_id"``).
    local_features : LocalFeatureStore
        The local features of the table's photos, keyed by ``image_path``.
    k : int, default=100
        Candidates per query taken from the CNN shortlist and verified.
    min_inliers : int, default=DEFAULT_MIN_INLIERS
        Inliers a ``same_object`` pair needs.

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
        min_inliers: int = DEFAULT_MIN_INLIERS,
    ) -> None:
        self.index = index
        self.local_features = local_features
        self.k = k
        self.min_inliers = min_inliers
        self._photos_of_item: dict[str, list[str]] | None = None

    @classmethod
    def read(
        cls,
        against: str | os.PathLike,
        *,
        by_item: bool = False,
        local_features: str | os.PathLike | None = None,
        image_dir: str | os.PathLike | None = None,
        **parameters,
    ) -> ObjectMatcher:
        """A matcher over a feature table file, or an ``extract`` output folder.

        ``local_features`` defaults to the ``local_features`` folder beside the table.
        """
        against = Path(against)
        table = against
        if against.is_dir():
            table = next((against / name for name in ("image_features_raw.parquet", "image_features_raw.csv")
                          if (against / name).is_file()), against / "image_features_raw.parquet")
        index = SimilarityIndex.read(table, by_item=by_item, image_dir=image_dir)
        folder = Path(local_features) if local_features is not None else table.parent / LOCAL_FEATURES_DIR
        return cls(index, LocalFeatureStore(folder), **parameters)

    # -- matching ---------------------------------------------------------------------

    def match(
        self,
        queries: Sequence[str | os.PathLike],
        k: int | None = None,
        *,
        weights: str | os.PathLike | None = None,
        embedder=None,
    ) -> pd.DataFrame:
        """Each query's shortlist, verified and re-ranked.

        Parameters
        ----------
        queries : sequence of str or os.PathLike
            Image files, or names of the index (an ``image_path``, or an ``item_id`` of
            an item index), as for :func:`~skimgfeat.uses.similarity.similar_items`.
        k : int or None
            Candidates per query (default: the matcher's ``k``).
        weights, embedder
            How query files are embedded for the shortlist, see ``similar_items``.

        Returns
        -------
        DataFrame
            ``query``, ``rank`` (1 = best: copies, then same-object photos by inliers,
            then the rest by feature distance), the key column (``image_path``, or
            ``item_id`` and the ``image_path`` of its best-matching photo),
            ``feature_distance`` (cosine), ``inliers`` and ``verdict``.
        """
        shortlist = similar_items(self.index, queries, k or self.k, weights=weights, embedder=embedder)
        key = self.index.key
        query_features = {label: self._query_features(label) for label in dict.fromkeys(shortlist["query"])}
        rows = []
        for query, name, distance in zip(shortlist["query"], shortlist[key], shortlist["distance"]):
            photo, verification = self._best_photo(query_features[query], name)
            rows.append((query, name, photo, float(distance), verification.inliers,
                         verdict(float(distance), verification, min_inliers=self.min_inliers)))
        table = pd.DataFrame(rows, columns=["query", key, "_photo", "feature_distance", "inliers", "verdict"])
        if key == ITEM_ID:
            table = table.rename(columns={"_photo": IMAGE_PATH})
        return _ranked(table, key)

    def verify(self, a: str | os.PathLike, b: str | os.PathLike) -> PairVerification:
        """Verify two photos: each an indexed ``image_path`` or an image file."""
        return verify_pair(self.features_of(a), self.features_of(b))

    def features_of(self, photo: str | os.PathLike) -> LocalFeatures:
        """The stored local features of an ``image_path``, else those of the image file."""
        name = os.fspath(photo)
        if name in self.local_features:
            return self.local_features[name]
        relative = self._relative(name)
        if relative is not None and relative in self.local_features:
            return self.local_features[relative]
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

    def _query_features(self, query: str) -> list[tuple[str, LocalFeatures]]:
        if self.index.key == ITEM_ID and query in self.index:
            return [(photo, self.local_features[photo]) for photo in self._photos(query)]
        return [(query, self.features_of(query))]

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

    def _photos(self, item: str) -> list[str]:
        if self._photos_of_item is None:
            self._photos_of_item = {}
            for path in sorted(self.local_features.paths()):
                self._photos_of_item.setdefault(item_id_from_name(path), []).append(path)
        return self._photos_of_item.get(str(item), [])

    def _relative(self, name: str) -> str | None:
        if self.index.image_dir is None or not os.path.isfile(name):
            return None
        try:
            return Path(name).resolve().relative_to(self.index.image_dir.resolve()).as_posix()
        except ValueError:
            return None


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


# -- the picture ------------------------------------------------------------------------

LINE_COLOUR = (30, 170, 60)
FRAME_COLOURS = {COPY: (40, 90, 200), SAME_OBJECT: (30, 170, 60), DIFFERENT: (200, 40, 40)}


def match_sheet(
    results: pd.DataFrame,
    matcher: ObjectMatcher,
    *,
    height: int = 240,
    max_matches: int = 3,
    max_lines: int = 80,
):
    """Draw each query beside its verified matches, with the inlier lines between them.

    One row per (query, match) pair: the query photo, the matched photo framed in the
    colour of its verdict (blue copy, green same object), and a line between each pair
    of inlier keypoints. A query without any verified match is shown beside its first
    candidate, framed in red.

    Parameters
    ----------
    results : DataFrame
        From :meth:`ObjectMatcher.match`.
    matcher : ObjectMatcher
        The matcher that made ``results``: it finds the photos and their features.
    height : int, default=240
        Height of each photo in pixels.
    max_matches : int, default=3
        Matches shown per query, best first.
    max_lines : int, default=80
        Inlier lines drawn per pair at most (an even sample of them).

    Returns
    -------
    PIL.Image.Image
        RGB; save it with ``.save("matches.png")``.
    """
    from PIL import Image, ImageFont

    font = ImageFont.load_default(size=max(10, height // 18))
    panels = []
    for _, group in results.groupby("query", sort=False):
        verified = group[group["verdict"] != DIFFERENT].head(max_matches)
        for _, row in (verified if len(verified) else group.head(1)).iterrows():
            panels.append(_pair_panel(matcher, row, height, max_lines, font))
    if not panels:
        return Image.new("RGB", (2 * height, height), (255, 255, 255))
    sheet = Image.new("RGB", (max(panel.width for panel in panels), sum(panel.height for panel in panels)),
                      (255, 255, 255))
    top = 0
    for panel in panels:
        sheet.paste(panel, (0, top))
        top += panel.height
    return sheet


def _pair_panel(matcher: ObjectMatcher, row, height: int, max_lines: int, font):
    from PIL import Image, ImageDraw

    from .contact_sheet import _label, _short

    query_file = matcher.photo_file(row["query"])
    match_file = matcher.photo_file(row[IMAGE_PATH])
    query, query_scale = _fitted(query_file, height)
    match, match_scale = _fitted(match_file, height)
    line = font.getbbox("Ag")[3] + 2
    panel = Image.new("RGB", (query.width + match.width + 8, height + 2 * line + 4), (255, 255, 255))
    panel.paste(query, (0, 0))
    left = query.width + 8
    panel.paste(match, (left, 0))
    draw = ImageDraw.Draw(panel)
    if query_file is not None and match_file is not None:
        verification = matcher.verify(query_file, row[IMAGE_PATH])
        step = max(1, verification.inliers // max_lines)
        for (xa, ya), (xb, yb) in zip(verification.points_a[::step], verification.points_b[::step]):
            draw.line((xa * query_scale, ya * query_scale, left + xb * match_scale, yb * match_scale),
                      fill=LINE_COLOUR, width=1)
    draw.rectangle((left, 0, left + match.width - 1, height - 1), outline=FRAME_COLOURS[row["verdict"]], width=3)
    _label(draw, (2, height + 2), [_short(Path(str(row["query"])).name, query.width, font), "query"], font, line)
    caption = f"#{row['rank']} {row['verdict']}  {row['inliers']} inliers  d={row['feature_distance']:.3f}"
    _label(draw, (left + 2, height + 2), [_short(Path(str(row[IMAGE_PATH])).name, match.width, font),
                                          _short(caption, max(match.width, 2 * height), font)], font, line)
    return panel


def _fitted(photo: Path | None, height: int):
    """The photo scaled to ``height`` and the scale used; a grey tile when it cannot be read."""
    from PIL import Image

    from ..engine.image_loading import load_rgb_image
    from ..exceptions import ImageLoadError

    try:
        if photo is None:
            raise ImageLoadError(None, "missing", "no photo")
        with load_rgb_image(photo) as image:
            scale = height / image.height
            return image.resize((max(1, round(image.width * scale)), height)), scale
    except ImageLoadError:
        return Image.new("RGB", (height, height), (225, 225, 225)), 1.0
