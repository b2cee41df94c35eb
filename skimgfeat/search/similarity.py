"""Similar items and duplicate photos: nearest neighbours by cosine distance in a feature table.

A :class:`SimilarityIndex` holds the feature vectors of a table written by
``skimgfeat extract`` (one row per photo, keyed by ``image_path``, or one per item,
keyed by ``item_id``) and answers which rows are nearest to a query
(:meth:`SimilarityIndex.search`, :func:`similar_items`), which rows lie within a
distance (:meth:`SimilarityIndex.range_search`) and which pairs of rows are
near-copies (:meth:`SimilarityIndex.neighbour_pairs`, used by
:func:`skimgfeat.matching.duplicates.find_duplicates`). Small tables are searched exactly
in memory; :meth:`SimilarityIndex.build` makes a FAISS inverted-file index for
millions of rows, which :meth:`SimilarityIndex.save` keeps in an index directory that
:meth:`SimilarityIndex.load` opens without the feature table and
:meth:`SimilarityIndex.add` extends with new photos (see docs/millions-of-photos.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..aggregation import ItemAggregator
from ..embedder import fitted_embedder_from_model_info
from ..exceptions import IndexDirectoryError, ModelMismatchError
from ..schema import FEATURE_PREFIX, IMAGE_NAME, IMAGE_PATH, ITEM_ID, image_number, item_id_from_name
from ..storage.generation_lock import release, writer_lock_held
from ..storage.io import BATCH_ROWS, FeatureBatch, FeatureTableReader, model_mismatch
from ..storage.vector_index import (
    EXACT_MAX_ROWS,
    ROWS_FILE,
    VectorIndex,
    choose_kind,
    default_nlist,
    faiss_module,
    live_generation_number,
    normalise,
    open_generation,
    training_rows,
    write_generation,
)

KEY_COLUMNS = (IMAGE_PATH, ITEM_ID)
SEARCH_COLUMNS = ("query", "rank", "distance")
REMOVED_FILE = "removed.npy"  # the row numbers of removed photos (tombstones until a compaction)
class SimilarityIndex:
    """Named feature vectors searchable by cosine distance, in memory or in an index directory.

    Parameters
    ----------
    names : sequence of str
        One name per row: an ``image_path`` or an ``item_id``.
    vectors : array-like of shape (n_rows, n_features)
        Rows with a NaN (photos that failed to load) are left out of the index.
    key : {"image_path", "item_id"}, default="image_path"
        What the names are: the column of the result tables.
    model_info : dict or None, default=None
        What produced the vectors (a table's model info): needed to embed new photos
        as queries (see :func:`embedder_from_model_info`) and to refuse features of
        another model (:meth:`check_model`).
    photos : mapping from name to photo path, or None
        The photo that shows each name (for contact sheets). Relative paths are
        resolved against ``image_dir``.
    image_dir : str, os.PathLike or None
        The folder the table's ``image_path`` values are relative to.

    Attributes
    ----------
    names : ndarray of str
        The names of the indexed rows, in table order (a row's number is its position).
    vectors : ndarray of shape (n_rows, n_features)
        As given for an index made in memory; unit length (and decoded from 8-bit codes
        for ``ivf-sq8``) for one made by :meth:`build` or :meth:`load`.
    n_skipped : int
        Rows left out because their features were NaN.
    kind : str
        ``"flat"`` (exact), ``"ivf"``, ``"ivf-sq8"`` or ``"ivf-pq"``; see :meth:`build`.
    directory : Path or None
        The index directory it was loaded from or last saved to.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat.search.similarity import SimilarityIndex
    >>> index = SimilarityIndex(["a.jpg", "b.jpg", "c.jpg"], np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    >>> index.similar(["a.jpg"], k=2)
       query  rank image_path  distance
    0  a.jpg     1      b.jpg  0.006116
    1  a.jpg     2      c.jpg  1.000000
    """

    def __init__(
        self,
        names: Sequence[str],
        vectors,
        *,
        key: str = IMAGE_PATH,
        model_info: dict | None = None,
        photos: dict | None = None,
        image_dir: str | os.PathLike | None = None,
    ) -> None:
        if key not in KEY_COLUMNS:
            raise ValueError(f"key must be one of {KEY_COLUMNS}, got {key!r}")
        vectors = np.asarray(vectors, dtype=np.float32)
        names = np.asarray([str(name) for name in names], dtype=object)
        if vectors.ndim != 2 or len(vectors) != len(names):
            raise ValueError(f"need one 2-D feature row per name, got {len(names)} names and shape {vectors.shape}")
        valid = ~np.isnan(vectors).any(axis=1)
        store = VectorIndex(vectors.shape[1], "flat")
        store.add(vectors[valid])
        self._setup(store, {key: names[valid]}, key=key, model_info=model_info, image_dir=image_dir,
                    n_skipped=int((~valid).sum()), requested_kind="flat")
        self._raw = vectors[valid]
        if photos is not None:
            self.photos = dict(photos)

    def _setup(self, store: VectorIndex, identities: dict, *, key: str, model_info, image_dir, n_skipped: int,
               requested_kind: str, directory=None) -> None:
        self._store = store
        self.key = key
        self.names = identities[key]
        if key == IMAGE_PATH and IMAGE_NAME not in identities:
            identities[IMAGE_NAME] = np.asarray([Path(name).name for name in self.names], dtype=object)
        self._identities = identities
        self.model_info = model_info
        self.image_dir = None if image_dir is None else Path(image_dir)
        self.photos = {}
        self.n_skipped = n_skipped
        self.requested_kind = requested_kind
        self.directory = None if directory is None else Path(directory)
        self._raw = None
        self._row_of = None
        self._neighbours = None
        self._removed = np.zeros(len(self.names), dtype=bool)  # True: removed, never returned
        self.generation = None  # the generation number it was loaded from or saved as
        self._folder = None  # that generation's folder
        self._info = None
        self._lease = None  # holds the generation on disk while this index uses it

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_table(
        cls,
        table: pd.DataFrame,
        *,
        by_item: bool = False,
        model_info: dict | None = None,
        image_dir: str | os.PathLike | None = None,
    ) -> SimilarityIndex:
        """An index over a per-image or per-item feature table.

        Parameters
        ----------
        table : DataFrame
            ``img_feature_*`` columns and ``image_path`` (per image) or ``item_id``
            (per item), as written by ``skimgfeat extract``.
        by_item : bool, default=False
            Index items: a per-image table is first averaged per item
            (:class:`~skimgfeat.ItemAggregator`), each item shown by its first photo.
        model_info : dict or None
        image_dir : str, os.PathLike or None
            The folder of the photos, for contact sheets.
        """
        features = [column for column in table.columns if str(column).startswith(FEATURE_PREFIX)]
        if not features:
            raise ValueError(f"the table has no {FEATURE_PREFIX}* columns: not a skimgfeat feature table")
        key = next((column for column in KEY_COLUMNS if column in table.columns), None)
        if key is None:
            raise ValueError(f"the table has none of the columns {KEY_COLUMNS}: not a skimgfeat feature table")
        if by_item and key == IMAGE_PATH:
            photos = _first_photo_per_item(table[IMAGE_PATH].astype(str))
            items = ItemAggregator(method="mean").fit_transform(table[[IMAGE_PATH, *features]])
            return cls(items[ITEM_ID], items[features].to_numpy(), key=ITEM_ID, model_info=model_info,
                       photos=photos, image_dir=image_dir)
        photos = None
        if key == ITEM_ID and image_dir is not None:
            photos = _photos_of_items(Path(image_dir))
        index = cls(table[key].astype(str), table[features].to_numpy(), key=key, model_info=model_info,
                    photos=photos, image_dir=image_dir)
        if IMAGE_NAME in table.columns and key == IMAGE_PATH:  # as recorded, not re-derived
            valid = ~table[features].isna().any(axis=1).to_numpy()
            index._identities[IMAGE_NAME] = table[IMAGE_NAME].astype(str).to_numpy(dtype=object)[valid]
        return index

    @classmethod
    def read(
        cls, path: str | os.PathLike, *, by_item: bool = False, image_dir: str | os.PathLike | None = None
    ) -> SimilarityIndex:
        """An exact index over a table file written by ``skimgfeat extract`` (Parquet or CSV).

        The model info comes from the Parquet metadata, else from ``model_info.json``
        beside the table. ``image_dir`` defaults to the photo folder recorded there.
        """
        reader = FeatureTableReader(path)
        if image_dir is None:
            image_dir = (reader.model_info or {}).get("image_dir")
        if by_item and reader.key == IMAGE_PATH:
            from ..storage.io import read_table

            return cls.from_table(read_table(path), by_item=True, model_info=reader.model_info, image_dir=image_dir)
        index = cls.build(reader, kind="flat")
        if image_dir is not None:
            index.image_dir = Path(image_dir)
        if index.key == ITEM_ID and image_dir is not None:
            index.photos = _photos_of_items(Path(image_dir))
        return index

    @classmethod
    def build(
        cls,
        features,
        kind: str = "auto",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        pq_m: int | None = None,
        n_training_rows: int | None = None,
        batch_rows: int = BATCH_ROWS,
        model_info: dict | None = None,
        random_state: int = 0,
    ) -> SimilarityIndex:
        """An index over a feature table, read a batch at a time (never whole in memory).

        Parameters
        ----------
        features : str, os.PathLike, DataFrame or FeatureTableReader
            A table written by ``skimgfeat extract`` (``.parquet``, ``.csv``), a folder of
            Parquet parts (a partitioned dataset), or a table in memory.
        kind : {"auto", "flat", "ivf", "ivf-sq8", "ivf-pq"}, default="auto"
            ``"auto"``: exact (``"flat"``) up to 50,000 rows, else ``"ivf-sq8"``, an
            inverted file of 8-bit codes (a quarter of the memory of float32 vectors).
            An ``"auto"`` index turns into ``"ivf-sq8"`` when :meth:`add` takes it past
            50,000 rows.
        nlist, nprobe : int or None
            Inverted lists, and lists visited per query (inverted-file kinds); None:
            about the square root of the rows, and a 32nd of the lists (at least 8).
        pq_m : int or None
            Bytes per row of ``"ivf-pq"``.
        n_training_rows : int or None
            Rows the lists are trained on, drawn as whole Parquet row groups spread
            over the table; None: 64 per list, at least 20,000.
        batch_rows : int, default=16384
            Rows read and added at a time.
        model_info : dict or None
            For a table given in memory; files carry their own.
        random_state : int, default=0
            Which row groups train the lists.

        Returns
        -------
        SimilarityIndex

        Examples
        --------
        >>> import numpy as np, pandas as pd
        >>> from skimgfeat import SimilarityIndex
        >>> table = pd.DataFrame(np.eye(3) + 0.1, columns=["img_feature_0", "img_feature_1", "img_feature_2"])
        >>> table.insert(0, "image_path", ["shop/a.jpg", "shop/b.jpg", "c.jpg"])
        >>> index = SimilarityIndex.build(table)
        >>> index.kind, len(index), index.row_of_image_name("b.jpg")
        ('flat', 3, 1)
        """
        reader = _reader(features, model_info)
        chosen = choose_kind(reader.n_rows, kind)
        store = VectorIndex(reader.n_features, chosen, nlist=nlist, nprobe=nprobe, pq_m=pq_m)
        if chosen != "flat":
            lists = nlist or default_nlist(reader.n_rows)
            store.train(reader.sample(n_training_rows or training_rows(lists), seed=random_state),
                        n_rows=reader.n_rows)
        index = cls.__new__(cls)
        identities = {name: np.empty(0, dtype=object) for name in reader.identity_columns}
        index._setup(store, identities, key=reader.key, model_info=reader.model_info,
                     image_dir=(reader.model_info or {}).get("image_dir"), n_skipped=0, requested_kind=kind)
        index._append(reader.batches(batch_rows))
        return index

    @classmethod
    def load(cls, directory: str | os.PathLike, *, writable: bool = False) -> SimilarityIndex:
        """The index saved in ``directory`` (its live generation), without the feature table.

        The vectors are memory-mapped, so loading is quick and pages are read as queries
        touch them; ``writable=True`` reads them into memory (for :meth:`add`, which
        does so itself when needed).

        Raises
        ------
        IndexDirectoryError
            The folder is missing, truncated, or not a skimgfeat index.
        """

        folder, info, lease = open_generation(directory)
        try:
            return cls._from_generation(directory, folder, info, lease, writable)
        except BaseException:
            release(lease)
            raise

    @classmethod
    def _from_generation(cls, directory, folder: Path, info: dict, lease, writable: bool) -> SimilarityIndex:
        import pyarrow.parquet as pq

        try:
            store = VectorIndex.read(folder, info["index"], writable=writable)
        except ImportError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever FAISS or NumPy say about a damaged file
            raise IndexDirectoryError(folder, f"its vectors cannot be read ({type(error).__name__}: {error})") from None
        try:
            rows = pq.read_table(folder / ROWS_FILE)
        except Exception as error:  # noqa: BLE001
            raise IndexDirectoryError(folder / ROWS_FILE, f"unreadable ({error})") from None
        if rows.num_rows != len(store) or info.get("key") not in rows.column_names:
            raise IndexDirectoryError(folder / ROWS_FILE, f"holds {rows.num_rows} rows for {len(store)} vectors")
        identities = {name: rows.column(name).to_numpy(zero_copy_only=False).astype(object)
                      for name in rows.column_names}
        index = cls.__new__(cls)
        image_dir = info.get("image_dir")
        if image_dir is not None and not Path(image_dir).is_absolute():
            image_dir = Path(directory) / image_dir  # an archive's photos move with it
        index._setup(store, identities, key=info["key"], model_info=info.get("model_info"),
                     image_dir=image_dir, n_skipped=int(info.get("n_skipped", 0)),
                     requested_kind=info.get("requested_kind", store.kind), directory=directory)
        if (folder / REMOVED_FILE).is_file():
            removed = np.load(folder / REMOVED_FILE, allow_pickle=False)
            index._removed[removed] = True
        index.generation, index._folder, index._info, index._lease = int(info["generation"]), folder, info, lease
        if index.key == ITEM_ID and index.image_dir is not None:
            index.photos = _photos_of_items(index.image_dir)
        return index

    def save(self, directory: str | os.PathLike | None = None, *, extra_info: dict | None = None,
             write_more=None) -> Path:
        """Write the index as a new generation of ``directory`` (default: where it was loaded from).

        Atomic: the generation is complete on disk before ``CURRENT`` names it, so a
        save that is interrupted leaves the previous generation in use. Under the
        folder's writer lock; an index loaded from ``directory`` is refused
        (IndexDirectoryError) when another writer switched generations since it was
        loaded: its rows would be lost. ``extra_info`` adds keys to ``index.json``;
        ``write_more(folder)`` writes more files into the generation (an archive's).

        Returns
        -------
        Path
            The generation folder written.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        directory = self.directory if directory is None else Path(directory)
        if directory is None:
            raise ValueError("save needs a directory: this index was not loaded from one")
        extra = dict(extra_info or {})
        image_dir = None if self.image_dir is None else os.fspath(self.image_dir)
        if image_dir is not None and extra.get("relative_image_dir"):
            image_dir = extra.pop("relative_image_dir")
        extra.pop("relative_image_dir", None)

        def write_files(folder: Path) -> dict:
            self._store.write(folder)
            rows = pa.table({name: pa.array(values, type=pa.string()) for name, values in self._identities.items()})
            pq.write_table(rows, folder / ROWS_FILE)
            if self._removed.any():
                np.save(folder / REMOVED_FILE, np.flatnonzero(self._removed).astype(np.int64))
            if write_more is not None:
                write_more(folder)
            return {"index": self._store.parameters(), "requested_kind": self.requested_kind, "key": self.key,
                    "n_rows": len(self._store), "n_live": len(self), "n_skipped": self.n_skipped,
                    "model_info": self.model_info, "image_dir": image_dir, **extra}

        with writer_lock_held(directory):
            live = live_generation_number(directory)
            if self.generation is not None and Path(directory) == Path(self.directory) and live != self.generation:
                raise IndexDirectoryError(directory, f"was changed by another writer after this index was loaded "
                                                     f"(generation {live} is live, this one was loaded from "
                                                     f"{self.generation}); load it again and repeat the change")
            generation = write_generation(directory, write_files)
        self.directory = directory
        self.generation = int(generation.name[4:])
        return generation

    def add(self, features, *, batch_rows: int = BATCH_ROWS) -> SimilarityIndex:
        """Index more rows (new photos): each is then found exactly as if it had been built in.

        Parameters
        ----------
        features : str, os.PathLike, DataFrame or FeatureTableReader
            As for :meth:`build`: the same key column, embedded by the same model.

        Returns
        -------
        self

        Raises
        ------
        ModelMismatchError
            The features were embedded by another model than the index's.
        ValueError
            Another key column, another width, or rows already in the index.
        """
        reader = _reader(features, None)
        if reader.key != self.key:
            raise ValueError(f"the index is keyed by {self.key}, the new table by {reader.key}")
        if reader.n_features != self._store.n_features:
            raise ValueError(f"the new table has {reader.n_features} features, the index {self._store.n_features}")
        self.check_model(reader.model_info, what="the new table")
        self._make_writable()
        if self.requested_kind == "auto" and self._store.kind == "flat" and \
                len(self) + reader.n_rows > EXACT_MAX_ROWS:
            self._grow_into_inverted_file(reader)
        self._append(reader.batches(batch_rows), check_new=True)
        return self

    @classmethod
    def empty(cls, n_features: int, *, columns: Sequence[str] = (IMAGE_PATH, IMAGE_NAME),
              model_info: dict | None = None, image_dir=None, kind: str = "auto") -> SimilarityIndex:
        """An index of no rows yet, keyed by ``image_path``, with these identity ``columns``.

        Rows come with :meth:`add_rows`; an ``"auto"`` index turns into ``"ivf-sq8"``
        when it passes 50,000 rows.
        """
        index = cls.__new__(cls)
        identities = {name: np.empty(0, dtype=object) for name in dict.fromkeys([IMAGE_PATH, *columns])}
        index._setup(VectorIndex(int(n_features), "flat" if kind == "auto" else kind), identities, key=IMAGE_PATH,
                     model_info=model_info, image_dir=image_dir, n_skipped=0, requested_kind=kind)
        return index

    def add_rows(self, identities: dict, vectors) -> SimilarityIndex:
        """Index rows given in memory: ``identities`` maps each identity column to one string per row.

        Columns of the index missing from ``identities`` are filled (``image_name`` from
        the path, others empty). Rows already indexed (by key) are refused; NaN rows are
        skipped. Returns self.
        """
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        identities = {name: np.asarray([str(value) for value in values], dtype=object)
                      for name, values in identities.items()}
        if len(identities[self.key]) != len(vectors):
            raise ValueError(f"need one feature row per {self.key}, got {len(identities[self.key])} and "
                             f"{len(vectors)}")
        if not len(vectors):
            return self
        if vectors.shape[1] != self._store.n_features:
            raise ValueError(f"the rows have {vectors.shape[1]} features, the index {self._store.n_features}")
        self._make_writable()
        if self.requested_kind == "auto" and self._store.kind == "flat" and \
                len(self._store) + len(vectors) > EXACT_MAX_ROWS:
            self._grow_into_inverted_file(FeatureTableReader(_frame(identities, vectors, self.key)))
        self._append([FeatureBatch(identities, vectors)], check_new=True)
        return self

    def compacted(self) -> SimilarityIndex:
        """A copy without the removed rows (vectors, names and identities): what a compaction saves.

        An inverted file keeps its trained lists: its live rows are decoded and added again.
        """
        keep = np.flatnonzero(~self.removed)
        store = VectorIndex(self._store.n_features, self._store.kind, nlist=self._store.nlist,
                            nprobe=self._store.nprobe, pq_m=self._store.pq_m)
        if store.kind != "flat":
            faiss = faiss_module()
            source = self._store._faiss if not self._store.mapped else \
                VectorIndex.read(self._folder, self._info["index"], writable=True)._faiss
            store._faiss = faiss.clone_index(source)
            store._faiss.reset()
            store._faiss.make_direct_map()
        for start in range(0, len(keep), BATCH_ROWS):
            store.add(self._store.reconstruct_rows(keep[start:start + BATCH_ROWS]))
        if self._store.partition is not None:  # the kept rows' parts as they were (not of their decoded vectors)
            store.partition = self._store.partition.taken(keep)
        index = SimilarityIndex.__new__(SimilarityIndex)
        index._setup(store, {name: values[keep] for name, values in self._identities.items()}, key=self.key,
                     model_info=self.model_info, image_dir=self.image_dir, n_skipped=self.n_skipped,
                     requested_kind=self.requested_kind, directory=self.directory)
        index.photos = {name: photo for name, photo in self.photos.items() if name in set(index.names)}
        index.generation, index._folder, index._info = self.generation, self._folder, self._info
        return index

    # -- queries ------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._store.kind

    @property
    def nprobe(self) -> int | None:
        return self._store.nprobe

    @property
    def vectors(self) -> np.ndarray:
        return self._raw if self._raw is not None else self._store.vectors

    @property
    def identities(self) -> pd.DataFrame:
        """The identity columns of the rows (``image_path``, ``image_name``, ``item_id``), row by row."""
        return pd.DataFrame(self._identities)

    def __len__(self) -> int:
        """The rows that can be found (removed photos left out)."""
        return len(self.names) - int(self._removed.sum())

    @property
    def removed(self) -> np.ndarray:
        """A boolean mask over the row numbers: True for removed rows (never returned)."""
        return _padded(self._removed, len(self.names))

    def remove_rows(self, rows) -> int:
        """Remove rows by number: never returned again (their vectors stay until :meth:`compacted`).

        Returns how many were removed now (rows removed before are not counted).
        """
        rows = np.asarray(rows, dtype=np.int64)
        removed = self.removed.copy()
        before = int(removed.sum())
        removed[rows] = True
        self._removed = removed
        self._row_of = None
        self._neighbours = None
        return int(removed.sum()) - before

    def close(self) -> None:
        """Let the generation this index was loaded from go (a writer may then retire it)."""
        release(self._lease)
        self._lease = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit anything may be gone
            pass

    def __contains__(self, name) -> bool:
        return str(name) in self._rows()

    def row_of(self, name: str) -> int:
        """The row number of ``name`` (an ``image_path`` or ``item_id``); KeyError if not indexed."""
        try:
            return self._rows()[str(name)]
        except KeyError:
            raise KeyError(f"{name!r} is not a {self.key} of this table (or its features are NaN)") from None

    def row_of_image_name(self, image_name: str) -> int:
        """The row whose ``image_name`` (file name without folder) is ``image_name``.

        Raises KeyError if none is, ValueError if several are (name the photo by its
        ``image_path`` then).
        """
        names = self._identities.get(IMAGE_NAME)
        if names is None:
            raise KeyError(f"{image_name!r}: this index has no image_name column (it is keyed by {self.key})")
        rows = np.flatnonzero(names == str(image_name))
        if not len(rows):
            raise KeyError(f"{image_name!r} is not an image_name of this table")
        if len(rows) > 1:
            shown = ", ".join(repr(self.names[row]) for row in rows[:3])
            raise ValueError(f"image_name {image_name!r} is ambiguous: {len(rows)} rows, e.g. {shown}; "
                             "give the image_path")
        return int(rows[0])

    def vector(self, name: str) -> np.ndarray:
        """The feature vector of ``name``; KeyError if it is not indexed."""
        row = self.row_of(name)
        return self._raw[row] if self._raw is not None else self._store.reconstruct_rows([row])[0]

    def check_model(self, model_info: dict | None, what: str = "the query") -> None:
        """Refuse features embedded by another model than the index's (ModelMismatchError).

        Features without model info, or an index without it, are accepted. Both are
        compared as JSON holds them (a fitted embedder's tuples are a saved index's lists).
        """
        reason = model_mismatch(_as_json(self.model_info), _as_json(model_info))
        if reason is not None:
            raise ModelMismatchError(f"{what} was embedded by another model than the index: {reason}")

    def search_vectors(self, vectors, k: int = 5, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of each vector: ``(distances, rows)``, each (n_queries, k), nearest first.

        Cosine distances; where fewer than ``k`` rows exist the row is -1 and the
        distance ``inf``. ``nprobe`` overrides the lists visited (inverted-file kinds).
        """
        _check_k(k)
        n_rows, removed = len(self.names), self.removed  # what a concurrent add cannot change under us
        distances, rows = self._store.search(vectors, k, nprobe=nprobe, exclude=removed)
        return _within(distances, rows, n_rows)

    def range_search(
        self, vectors, max_distance: float, *, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row within ``max_distance`` of each vector: ``(lims, distances, rows)``.

        The rows found for query ``i`` are ``rows[lims[i]:lims[i + 1]]``, nearest first,
        with their cosine distances likewise. ``nprobe``: the balanced parts (inverted lists,
        for an index written before it kept parts) each query visits; see
        :meth:`VectorIndex.range_search <skimgfeat.storage.vector_index.VectorIndex.range_search>`.
        """
        _check_distance(max_distance)
        n_rows, removed = len(self.names), self.removed
        lims, distances, rows = self._store.range_search(vectors, max_distance, nprobe=nprobe, exclude=removed)
        if len(rows) and rows.max() >= n_rows:  # rows added by another thread after the names were read
            kept = rows < n_rows
            queries = np.repeat(np.arange(len(lims) - 1), np.diff(lims))[kept]
            lims = np.concatenate([[0], np.cumsum(np.bincount(queries, minlength=len(lims) - 1))]).astype(np.int64)
            distances, rows = distances[kept], rows[kept]
        return lims, distances, rows

    def neighbour_pairs(
        self, max_distance: float, *, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair of rows within ``max_distance``: ``(row_a, row_b, distance)`` with ``row_a < row_b``.

        Memory is that of a block and of the pairs found, never rows x rows. An exact
        index compares all rows a block at a time; an inverted file compares each row
        with the rows of its ``nprobe`` (default 2) nearest parts of about equal size
        (see :func:`~skimgfeat.storage.vector_index.pair_partition`), and with
        ``nprobe`` equal to its ``nlist`` finds what exact search finds.

        Examples
        --------
        >>> import numpy as np
        >>> index = SimilarityIndex(["a", "b", "c"], np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01]]))
        >>> first, second, distance = index.neighbour_pairs(0.01)
        >>> first.tolist(), second.tolist()
        ([0], [2])
        """
        _check_distance(max_distance)
        n_rows, removed = len(self.names), self.removed
        first, second, distance = self._store.neighbour_pairs(max_distance, nprobe=nprobe)
        kept = (second < n_rows) & ~removed[np.minimum(first, n_rows - 1)] & ~removed[np.minimum(second, n_rows - 1)]
        return first[kept], second[kept], distance[kept]

    def search(
        self,
        vectors,
        k: int = 5,
        *,
        labels: Sequence[str] | None = None,
        exclude: Sequence[str | None] | None = None,
        exclude_rows: Sequence[int | None] | None = None,
    ) -> pd.DataFrame:
        """The ``k`` nearest rows of each query vector, as a table.

        Parameters
        ----------
        vectors : array-like of shape (n_queries, n_features)
        k : int, default=5
        labels : sequence of str or None
            The ``query`` column of the result (default: ``"0"``, ``"1"``, ...).
        exclude : sequence of (str or None) or None
            Per query, a name never to return (the query itself when it is indexed).
        exclude_rows : sequence of (int or None) or None
            The same by row number.

        Returns
        -------
        DataFrame
            Columns ``query``, ``rank`` (1 = nearest), the key column and ``distance``
            (cosine distance, 0 for the same direction, 2 for opposite ones).
        """
        _check_k(k)
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        labels = [str(i) for i in range(len(vectors))] if labels is None else list(labels)
        if exclude_rows is None:
            exclude_rows = [None] * len(vectors) if exclude is None else \
                [None if name is None or name not in self else self.row_of(name) for name in exclude]
        result = []
        if len(self) and len(vectors):
            distances, rows = self.search_vectors(vectors, k + 1)
            for label, skip, row_distances, found in zip(labels, exclude_rows, distances, rows):
                kept = [(d, row) for d, row in zip(row_distances, found) if row >= 0 and row != skip][:k]
                result += [(label, rank, self.names[row], float(d)) for rank, (d, row) in enumerate(kept, start=1)]
        return pd.DataFrame(result, columns=["query", "rank", self.key, "distance"])

    def similar(self, names: Sequence[str], k: int = 5) -> pd.DataFrame:
        """The ``k`` nearest rows of indexed rows, each excluding itself; see :meth:`search`."""
        names = [str(name) for name in names]
        rows = [self.row_of(name) for name in names]
        return self.search(self._vectors_of(rows), k, labels=names, exclude_rows=rows)

    def photo_path(self, name: str) -> Path | None:
        """The photo showing ``name`` (resolved against ``image_dir``), None if unknown."""
        photo = self.photos.get(str(name))
        if photo is None and self.key == IMAGE_PATH and str(name) in self:
            photo = str(name)
        if photo is None:
            return None
        photo = Path(photo)
        return photo if photo.is_absolute() or self.image_dir is None else self.image_dir / photo

    def __repr__(self) -> str:
        where = f", directory={os.fspath(self.directory)!r}" if self.directory is not None else ""
        return f"SimilarityIndex({len(self)} rows by {self.key}, kind={self.kind!r}{where})"

    # -- internals ----------------------------------------------------------------

    def _vectors_of(self, rows: Sequence[int]) -> np.ndarray:
        if self._raw is not None:
            return self._raw[np.asarray(rows, dtype=np.int64)]
        return self._store.reconstruct_rows(rows)

    def _rows(self) -> dict:
        if self._row_of is None:
            removed = self.removed
            self._row_of = {name: row for row, name in enumerate(self.names) if not removed[row]}
        return self._row_of

    def _append(self, batches: Iterable[FeatureBatch], check_new: bool = False) -> None:
        """Add the rows of ``batches`` (NaN rows skipped) to the store, the identities and raw vectors."""
        known = self._rows() if check_new else None
        parts = {name: [values] for name, values in self._identities.items()}
        raw = [self._raw] if self._raw is not None else None
        for batch in batches:
            valid = ~np.isnan(batch.features).any(axis=1)
            if known is not None:
                valid &= ~self._already_indexed(batch, known)
            keys = batch.identities[self.key][valid]
            self._store.add(batch.features[valid])
            for name, values in parts.items():
                if name in batch.identities:
                    values.append(batch.identities[name][valid])
                elif name == IMAGE_NAME:
                    values.append(np.asarray([Path(path).name for path in keys], dtype=object))
                else:  # a column of an archive's rows that a plain table lacks
                    values.append(np.full(len(keys), "", dtype=object))
            if raw is not None:
                raw.append(batch.features[valid])
            self.n_skipped += int((~valid).sum())
        self._identities = {name: np.concatenate(values) for name, values in parts.items()}
        self.names = self._identities[self.key]
        if raw is not None:
            self._raw = np.concatenate(raw)
        self._row_of = None
        self._neighbours = None

    def _already_indexed(self, batch: FeatureBatch, known: dict) -> np.ndarray:
        """Which rows of ``batch`` are indexed already with the same features (an add run again: skipped).

        The same name with other features is refused: the photo changed, and its old
        row must be removed first (an archive's intake replaces it).
        """
        keys = batch.identities[self.key]
        repeated = np.asarray([name in known for name in keys], dtype=bool)
        if not repeated.any():
            return repeated
        rows = [known[name] for name in keys[repeated]]
        stored = normalise(self._store.reconstruct_rows(rows))
        given = normalise(batch.features[repeated])
        tolerance = 0.02 if self._store.kind == "ivf-pq" else 1e-3  # what the codes may change
        differ = np.flatnonzero(~(1.0 - np.einsum("ij,ij->i", stored, given) <= tolerance))
        if len(differ):
            name = keys[repeated][differ[0]]
            raise ValueError(f"{len(differ)} rows of the new table are already in the index with other features, "
                             f"e.g. {name!r}: add only new photos (a changed photo: remove its row first)")
        return repeated

    def _make_writable(self) -> None:
        """Read a memory-mapped store into memory before it changes."""
        if self._store.mapped and self._store.kind != "flat":  # a flat one copies itself on add
            # The generation it was loaded from, never the live one: another writer may
            # have switched since, and its rows would not match these names.
            self._store = VectorIndex.read(self._folder, self._info["index"], writable=True)
        # An inverted file written before it kept its balanced partition gets one now, once.
        self._store.add_partition()

    def _grow_into_inverted_file(self, reader: FeatureTableReader) -> None:
        """An ``auto`` index passing the exact limit: train an ``ivf-sq8`` one and move every row into it."""
        n_rows = len(self) + reader.n_rows
        old = self._store
        store = VectorIndex(old.n_features, choose_kind(n_rows))
        wanted = training_rows(default_nlist(n_rows))
        sample = np.concatenate([old.vectors[:wanted], reader.sample(max(wanted - len(old), 0))])
        store.train(sample, n_rows=n_rows)
        for start in range(0, len(old), BATCH_ROWS):
            store.add(old.reconstruct(start, start + BATCH_ROWS))
        self._store = store

    def _nearest(self):
        from sklearn.neighbors import NearestNeighbors

        if self._neighbours is None:
            self._neighbours = NearestNeighbors(metric="cosine", algorithm="brute").fit(self.vectors)
        return self._neighbours


def _as_json(value):
    return None if value is None else json.loads(json.dumps(value, default=str))


def _padded(mask: np.ndarray, n: int) -> np.ndarray:
    if len(mask) >= n:
        return mask[:n]
    return np.concatenate([mask, np.zeros(n - len(mask), dtype=bool)])


def _within(distances: np.ndarray, rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Search results without rows past ``n_rows`` (added by another thread after the names were read)."""
    beyond = rows >= n_rows
    if beyond.any():
        rows, distances = rows.copy(), distances.copy()
        rows[beyond], distances[beyond] = -1, np.inf
        order = np.argsort(beyond, axis=1, kind="stable")
        rows, distances = np.take_along_axis(rows, order, axis=1), np.take_along_axis(distances, order, axis=1)
    return distances, rows


def _frame(identities: dict, vectors: np.ndarray, key: str) -> pd.DataFrame:
    frame = pd.DataFrame(vectors, columns=[f"{FEATURE_PREFIX}{i}" for i in range(vectors.shape[1])])
    frame.insert(0, key, identities[key])
    return frame


def _reader(features, model_info: dict | None) -> FeatureTableReader:
    if isinstance(features, FeatureTableReader):
        return features
    return FeatureTableReader(features, model_info=model_info)


def _check_k(k) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")


def _check_distance(max_distance) -> None:
    if not 0 <= max_distance <= 2:
        raise ValueError(f"max_distance must be a cosine distance between 0 and 2, got {max_distance!r}")


def _first_photo_per_item(image_paths: pd.Series) -> dict[str, str]:
    """Item id -> its lowest-numbered photo (``_1`` before ``_2``)."""
    first: dict[str, str] = {}
    for path in sorted(image_paths, key=image_number):
        first.setdefault(item_id_from_name(path), path)
    return first


def _photos_of_items(image_dir: Path) -> dict[str, str]:
    """Item id -> its first photo among the files of ``image_dir`` and its sub-folders."""
    if not image_dir.is_dir():
        return {}
    files = (path.relative_to(image_dir).as_posix() for path in image_dir.rglob("*") if path.is_file())
    return _first_photo_per_item(pd.Series(list(files), dtype=object))


# -- queries given by users -----------------------------------------------------------


def similar_items(
    index: SimilarityIndex,
    queries: Sequence[str | os.PathLike],
    k: int = 5,
    *,
    weights: str | os.PathLike | None = None,
    embedder=None,
) -> pd.DataFrame:
    """The ``k`` nearest rows of each query: a row of the index or an image file.

    A query that names a row of the index (its ``image_path`` or ``item_id``, a file
    under the index's ``image_dir`` whose relative path is one, or a row's
    ``image_name`` when no file of that name exists) uses the row's vector and is left
    out of its own results. Any other query must be an image file: it is embedded by
    ``embedder``, by default the network recorded in the index's model info
    (:func:`embedder_from_model_info`, with ``weights`` replacing the recorded ones).

    Parameters
    ----------
    index : SimilarityIndex
    queries : sequence of str or os.PathLike
    k : int, default=5
    weights : str, os.PathLike or None
    embedder : fitted CNNImageEmbedder or None
        Refused (ModelMismatchError) if it is another model than the index's.

    Returns
    -------
    DataFrame
        ``query`` (as given), ``rank``, the key column, ``distance``; see
        :meth:`SimilarityIndex.search`.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat.search.similarity import SimilarityIndex, similar_items
    >>> index = SimilarityIndex(["7", "8", "9"], np.eye(3)[[0, 0, 1]] + 0.1, key="item_id")
    >>> similar_items(index, ["7"], k=1)
      query  rank item_id  distance
    0     7     1       8       0.0
    """
    labels = [os.fspath(query) for query in queries]
    rows = [_indexed_row(index, label) for label in labels]
    files = [label for label, row in zip(labels, rows) if row is None]
    for label in files:
        if os.path.isdir(label):
            raise FileNotFoundError(f"query {label!r} is a folder: pass its photos ({os.path.join(label, '*.jpg')}), "
                                    f"or names of the {index.key} column")
        if not os.path.isfile(label):
            names = f"{index.key} or image_name" if IMAGE_NAME in index._identities else index.key
            raise FileNotFoundError(f"query {label!r} is neither an image file nor a {names} of the table")
    embedded = {}
    if files:
        if embedder is not None:
            index.check_model(getattr(embedder, "model_info_", None), what="the query embedder")
        else:
            embedder = fitted_embedder_from_model_info(index.model_info, weights)
        embedded = dict(zip(files, np.asarray(embedder.transform(files), dtype=np.float32)))
    stored = index._vectors_of([row for row in rows if row is not None])
    stored_rows = iter(stored)
    vectors = [next(stored_rows) if row is not None else embedded[label] for label, row in zip(labels, rows)]
    matrix = np.stack(vectors) if vectors else np.empty((0, index._store.n_features), dtype=np.float32)
    return index.search(matrix, k, labels=labels, exclude_rows=rows)


def _indexed_row(index: SimilarityIndex, query: str) -> int | None:
    if query in index:
        return index.row_of(query)
    if os.path.isfile(query):
        if index.image_dir is None:
            return None
        try:
            relative = Path(query).resolve().relative_to(index.image_dir.resolve()).as_posix()
        except ValueError:
            return None
        return index.row_of(relative) if relative in index else None
    if IMAGE_NAME in index._identities and "/" not in query and os.sep not in query:
        try:
            return index.row_of_image_name(query)
        except KeyError:
            return None
    return None  # in an item search, a photo of an item is a new query: the item is not left out
