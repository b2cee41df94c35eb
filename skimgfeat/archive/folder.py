"""An archive folder: one place for the photos, their features, hashes, local features and lot table.

Layout (an archive is an index folder, :mod:`skimgfeat.storage.vector_index`, with more
beside its generations)::

    ARCHIVE/ARCHIVE.json           format, item rule, when it was made
    ARCHIVE/LOCK                   the writer lock (one ingest or remove at a time) and its holder
    ARCHIVE/CURRENT                names the live generation
    ARCHIVE/gen-000007/            one generation, never changed once written:
        index.json                 kind, parameters, model info, counts, what the last change did, and
                                   its manifest ("parts"): the instance-index generation that goes
                                   with it, and the local-features parts a compaction retired
        vectors.npy | vectors.faiss  the CNN features (exact, or an inverted file past 50,000 rows)
        partition.npz              with an inverted file: the balanced parts a copy search visits
        rows.parquet               per row: image_path (the photo's identity), image_name, item_id,
                                   content_sha256, source (where it came from), intake
        removed.npy                rows removed since the last compaction (never returned)
        lots.parquet               the lot table, when one was attached (keyed by item_id)
        removed_photos.parquet     every photo removed (image_path, content_sha256, when): kept
                                   through compactions, so a later intake never brings one back
    ARCHIVE/photos/INTAKE/...      the photos themselves, copied in at intake
    ARCHIVE/image_hashes.parquet   the copy-check hashes of every photo (by image_path)
    ARCHIVE/local_features/        the local features of every photo (by image_path)
    ARCHIVE/instance_index/        the same-object shortlist over them, with its own generations
                                   (CURRENT, gen-000003/...): each archive generation names its own
    ARCHIVE/reports/INTAKE.csv     what each intake's photos are in the archive

A photo's identity (``image_path``) is ``INTAKE/relative path``: the intake's name
(default: the day, ``2026-12-07``) and the photo's path in the folder it came from,
so tomorrow's ``new_0001.jpg`` is another photo than today's. The archive keeps its own
copy of each photo under ``photos/`` by that identity: it never depends on the intake
folder staying where it was.

A change (ingest, remove, compaction) holds ``LOCK`` from its first read to the switch
of ``CURRENT``; the new generation is complete on disk before ``CURRENT`` names it.
The hashes, local features and photos outside the generation only ever gain entries
before the switch, so every generation finds what it needs there (a compaction deletes
what only removed photos used; the local-features parts it rewrote go after its switch).
The instance index is brought up to date (ingest) or has the removed photos taken out
(remove, compaction) as a new generation of its own before the switch, and the new
archive generation names it: a reader of an archive generation searches exactly the
instance index written with it. An instance-index generation stays on disk while an
archive generation on disk names it or a reader holds it. A reader opens one
generation (:meth:`Archive.open`) and keeps it until closed.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..aggregation import _regex_item_id
from ..exceptions import IndexDirectoryError
from ..matching.copy_check import HASHES_FILE, PhotoHashes
from ..matching.instance_index import INSTANCE_INDEX_DIR, InstanceIndex, available_instance_index
from ..matching.local_features import LOCAL_FEATURES_DIR, LocalFeatureStore, delete_parts
from ..schema import ITEM_ID, item_id_from_name
from ..search.similarity import IMAGE_NAME, IMAGE_PATH, SimilarityIndex
from ..storage.generation_lock import hold_generation, release
from ..storage.io import atomic_path
from ..storage.vector_index import CURRENT, INFO_FILE

SETTINGS_FILE = "ARCHIVE.json"
FORMAT = "skimgfeat-archive"
FORMAT_VERSION = 1
PHOTOS_DIR = "photos"
REPORTS_DIR = "reports"
LOTS_FILE = "lots.parquet"
REMOVED_PHOTOS_FILE = "removed_photos.parquet"  # every photo ever removed: a later intake never brings it back
CONTENT_SHA256 = "content_sha256"
SOURCE = "source"
INTAKE = "intake"
ROW_COLUMNS = (IMAGE_PATH, IMAGE_NAME, ITEM_ID, CONTENT_SHA256, SOURCE, INTAKE)
# The manifest of a generation (the "parts" of its index.json): the instance-index generation that goes with it,
# and the local-features part files its compaction rewrote (deleted once it is live).
PARTS = "parts"
INSTANCE_INDEX_PART = "instance_index"
RETIRED_LOCAL_FEATURES = "retired_local_features"


def today() -> str:
    """The default intake name: today's date (UTC), e.g. ``2026-12-07``."""
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def read_settings(folder: Path) -> dict | None:
    """The archive's ``ARCHIVE.json``; None when ``folder`` is no archive (yet)."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise IndexDirectoryError(path, f"unreadable ({error})") from None
    if settings.get("format") != FORMAT:
        raise IndexDirectoryError(path, "is not a skimgfeat archive description")
    if settings.get("format_version", 0) > FORMAT_VERSION:
        raise IndexDirectoryError(folder, f"was written by a newer skimgfeat (format {settings['format_version']})")
    return settings


def write_settings(folder: Path, settings: dict) -> None:
    """Replace ``ARCHIVE.json`` atomically."""
    settings = {"format": FORMAT, "format_version": FORMAT_VERSION, **settings}
    with atomic_path(Path(folder) / SETTINGS_FILE) as temporary:
        temporary.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def check_archive_folder(folder: Path) -> dict | None:
    """The settings of the archive ``folder``; None for a new or empty folder; IndexDirectoryError otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise IndexDirectoryError(folder, "is a file, not an archive folder")
    settings = read_settings(folder)
    if settings is not None:
        return settings
    if (folder / CURRENT).is_file():
        raise IndexDirectoryError(folder, "is an index folder (`skimgfeat index build`), not an archive: it keeps "
                                          "working with `similar --index`, `duplicates --against` and `index add`; "
                                          "make an archive with `skimgfeat ingest PHOTO_DIR --archive NEW_FOLDER`")
    if folder.is_dir() and any(not entry.name.startswith(".") and entry.name != "LOCK" for entry in folder.iterdir()):
        raise IndexDirectoryError(folder, "is a non-empty folder that is not a skimgfeat archive; choose a new or "
                                          "empty folder")
    return None


def removed_photos(generation_folder: Path | None) -> pd.DataFrame:
    """The photos ever removed from the archive, as of a generation: ``image_path``, ``content_sha256``,
    ``removed_at``."""
    path = None if generation_folder is None else Path(generation_folder) / REMOVED_PHOTOS_FILE
    if path is None or not path.is_file():
        return pd.DataFrame({IMAGE_PATH: pd.Series(dtype=str), CONTENT_SHA256: pd.Series(dtype=str),
                             "removed_at": pd.Series(dtype=str)})
    return pd.read_parquet(path)


def carry_forward(previous: Path | None, folder: Path, names=(LOTS_FILE, REMOVED_PHOTOS_FILE)) -> None:
    """Share the previous generation's unchanged files (lot table, removed photos) with a new one (hard links)."""
    if previous is None:
        return
    for name in names:
        if (Path(previous) / name).is_file() and not (folder / name).exists():
            os.link(Path(previous) / name, folder / name)


def manifest(info: dict | None) -> dict:
    """The manifest (``parts``) of a generation's ``index.json``: empty for a generation written before it."""
    parts = (info or {}).get(PARTS)
    return dict(parts) if isinstance(parts, dict) else {}


def instance_generations_named(folder: Path) -> set[int]:
    """The instance-index generations that the archive generations on disk name: none is deleted while they are."""
    numbers = set()
    for generation in Path(folder).glob("gen-*"):
        try:
            name = manifest(json.loads((generation / INFO_FILE).read_text(encoding="utf-8"))).get(INSTANCE_INDEX_PART)
        except (OSError, ValueError):
            continue  # retired meanwhile
        if isinstance(name, str) and name[4:].isdigit():
            numbers.add(int(name[4:]))
    return numbers


def named_instance_index(folder: Path, parts: dict, store: LocalFeatureStore | None) -> InstanceIndex | None:
    """The instance index an archive generation's manifest names; for a generation written before manifests
    named one (or if it was deleted by hand), the one of the local features, brought up to date."""
    name = parts.get(INSTANCE_INDEX_PART)
    if name:
        try:
            return InstanceIndex.load(Path(folder) / INSTANCE_INDEX_DIR, generation=name)
        except (ValueError, OSError):
            pass
    if store is None:
        return None
    return available_instance_index(store, keep=instance_generations_named(folder))  # (it may save a generation)


def delete_retired_parts(folder: Path, parts: dict) -> None:
    """Delete the local-features parts a live generation's compaction retired (a writer killed after the switch
    left them)."""
    retired = parts.get(RETIRED_LOCAL_FEATURES) or []
    if retired:
        delete_parts(Path(folder) / LOCAL_FEATURES_DIR, retired)


def item_of(name: str, rule: str | None) -> str:
    """The item id of a photo's file name: by the regular expression ``rule`` (its group ``item``, else its
    first group, else the whole match), or without one the stem up to the last underscore."""
    base = os.path.basename(name)
    return item_id_from_name(base) if not rule else _regex_item_id(re.compile(rule), base)


class Archive:
    """One generation of an archive folder, open for reading: rows, photos, vectors, hashes, lots.

    The generation stays whole on disk while the archive is open, whatever writers do
    meanwhile; :meth:`close` (or leaving a ``with`` block) lets it go. Open a new one to
    see later changes.

    Attributes
    ----------
    folder : Path
    generation : int
        The generation number read.
    index : SimilarityIndex
        The CNN features of every row (removed rows are never returned).
    settings : dict
        ``ARCHIVE.json``.
    parts : dict
        The generation's manifest: ``instance_index`` names the instance-index generation
        written with it (:attr:`instance_index` reads that one).

    Examples
    --------
    >>> with Archive.open("archive") as archive:  # doctest: +SKIP
    ...     archive.similar(["2026-12-07/lot17_1.jpg"], k=3)
    """

    def __init__(self, folder: Path, index: SimilarityIndex, settings: dict) -> None:
        self.folder = Path(folder)
        self.index = index
        self.settings = settings
        self.generation = index.generation
        self._hashes: PhotoHashes | None = None
        self._local_features: LocalFeatureStore | None = None
        self._lots: pd.DataFrame | None | bool = False
        self._instance_index: InstanceIndex | None | bool = False
        self.parts = manifest(index._info)
        self._instance_lease = None  # keeps the instance-index generation named on disk while this is open
        named = self.parts.get(INSTANCE_INDEX_PART)
        if named:
            try:
                self._instance_lease = hold_generation(self.folder / INSTANCE_INDEX_DIR / named)
            except OSError:
                pass  # deleted by hand: instance_index falls back

    @classmethod
    def open(cls, folder: str | os.PathLike) -> Archive:
        """The live generation of the archive ``folder`` (IndexDirectoryError if it is none)."""
        folder = Path(folder)
        settings = read_settings(folder)
        if settings is None:
            if not folder.exists():
                raise IndexDirectoryError(folder, "does not exist (make it with `skimgfeat ingest PHOTO_DIR "
                                                  "--archive FOLDER`)")
            check_archive_folder(folder)
            raise IndexDirectoryError(folder, "holds no archive yet (make it with `skimgfeat ingest PHOTO_DIR "
                                              "--archive FOLDER`)")
        if not (folder / CURRENT).is_file():
            raise IndexDirectoryError(folder, "holds no archive yet: its first intake did not finish (run it again)")
        return cls(folder, SimilarityIndex.load(folder), settings)

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Let the generation go (and the instance-index generation it names)."""
        release(self._instance_lease)
        self._instance_lease = None
        self.index.close()

    # -- rows -----------------------------------------------------------------------

    @property
    def rows(self) -> pd.DataFrame:
        """The live rows: ``image_path`` (identity), ``image_name``, ``item_id``, ``content_sha256``,
        ``source``, ``intake``, and ``row`` (its number in the index)."""
        table = self.index.identities
        table.insert(0, "row", np.arange(len(table)))
        return table[~self.index.removed].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, image_path) -> bool:
        return image_path in self.index

    def row(self, image_path: str) -> dict:
        """The row of one photo by identity (KeyError if absent or removed)."""
        number = self.index.row_of(image_path)
        return {"row": number, **{name: values[number] for name, values in self.index._identities.items()}}

    def rows_of_item(self, item_id: str) -> pd.DataFrame:
        """The live rows of one item."""
        rows = self.rows
        return rows[rows[ITEM_ID] == str(item_id)].reset_index(drop=True)

    def rows_named(self, image_name: str) -> pd.DataFrame:
        """The live rows whose file name is ``image_name`` (one per intake that brought such a name)."""
        rows = self.rows
        return rows[rows[IMAGE_NAME] == str(image_name)].reset_index(drop=True)

    def photo_path(self, image_path: str) -> Path:
        """Where the photo of a row lives (the archive's own copy)."""
        return self.folder / PHOTOS_DIR / image_path

    # -- searches -------------------------------------------------------------------

    def vectors(self, image_paths) -> np.ndarray:
        """The CNN features of rows by identity."""
        return self.index._vectors_of([self.index.row_of(name) for name in image_paths])

    def search(self, vectors, k: int = 5) -> pd.DataFrame:
        """The ``k`` nearest live rows of each query vector (see :meth:`SimilarityIndex.search`)."""
        return self.index.search(vectors, k)

    def similar(self, image_paths, k: int = 5) -> pd.DataFrame:
        """The ``k`` nearest live rows of archived photos, each leaving itself out."""
        return self.index.similar(list(image_paths), k)

    # -- sidecars -------------------------------------------------------------------

    @property
    def hashes(self) -> PhotoHashes | None:
        """The copy-check hashes of the photos (None if the archive was made without)."""
        if self._hashes is None and (self.folder / HASHES_FILE).is_file():
            self._hashes = PhotoHashes.read(self.folder / HASHES_FILE)
        return self._hashes

    @property
    def local_features(self) -> LocalFeatureStore | None:
        """The local features of the photos, by identity (None if the archive was made without)."""
        if self._local_features is None and (self.folder / LOCAL_FEATURES_DIR).is_dir():
            self._local_features = LocalFeatureStore(self.folder / LOCAL_FEATURES_DIR)
        return self._local_features

    @property
    def instance_index(self) -> InstanceIndex | None:
        """The same-object shortlist of this generation: the instance-index generation its manifest names.

        An archive written before generations named one uses the instance index of the
        local features, brought up to date. None without local features (or with too few
        descriptors for a vocabulary).
        """
        if self._instance_index is False:
            self._instance_index = named_instance_index(self.folder, self.parts, self.local_features)
        return self._instance_index

    @property
    def lots(self) -> pd.DataFrame | None:
        """The lot table of this generation, keyed by ``item_id`` (None if none was attached)."""
        if self._lots is False:
            path = self.index._folder / LOTS_FILE
            self._lots = pd.read_parquet(path) if path.is_file() else None
        return self._lots

    def __repr__(self) -> str:
        return f"Archive({os.fspath(self.folder)!r}, generation {self.generation}, {len(self)} photos)"
