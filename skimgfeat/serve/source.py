"""What ``skimgfeat serve`` reads: one adapter over the ways an archive is kept on disk.

An :class:`ArchiveSource` gives the pages everything they need and nothing about where
it came from: the searchable index, the copy-check hashes, the local features, the
photo folders, the decisions, the lot table and the day's intake report. It opens

* an archive folder (``skimgfeat ingest``, :mod:`skimgfeat.archive`): its live generation,
  its own copies of the photos, its item rule, its lot table and its latest intake report;
* a feature table written by ``skimgfeat extract --hashes --local-features`` (the
  ``.parquet`` or ``.csv`` file, or the output folder holding it), its sidecars beside it;
* an index folder written by ``skimgfeat index build`` (sidecars inside it or beside it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from ..archive.folder import PHOTOS_DIR, REPORTS_DIR, Archive, item_of, read_settings
from ..embedder import fitted_embedder_from_model_info
from ..matching.copy_check import HASHES_FILE, PhotoHashes
from ..matching.instance_index import InstanceIndex, available_instance_index
from ..matching.local_features import LOCAL_FEATURES_DIR, LocalFeatureStore
from ..matching.object_match import ObjectMatcher
from ..schema import IMAGE_PATH, ITEM_ID, image_number, item_id_from_name
from ..search.similarity import SimilarityIndex
from ..storage.decisions import DecisionStore, decisions_file_of
from ..storage.io import read_table
from ..storage.vector_index import live_generation_number

TABLE_NAMES = ("image_features_raw.parquet", "image_features_raw.csv")
# Lot columns shown under a result at most (the lot table may have many).
SHOWN_LOT_COLUMNS = 6


@dataclass
class ArchiveSource:
    """An archive as the server sees it.

    Attributes
    ----------
    path : Path
        What was opened.
    index : SimilarityIndex
        One row per photo, keyed by ``image_path`` relative to ``photo_dirs[0]``.
    photo_dirs : list of Path
        The folders photos are served from (never anything outside them).
    hashes : PhotoHashes or None
        The copy-check hashes (``extract --hashes``); photos without are hashed when needed.
    local_features : LocalFeatureStore or None
        For ``same_object`` verdicts and the matched keypoints; without them a result is
        ``copy`` or ``similar``.
    decisions : DecisionStore
    lots : DataFrame or None
        The lot table, indexed by ``item_id`` (strings).
    report : DataFrame or None
        The intake report: pairs ``image_a`` (new), ``image_b`` (archived), ``verdict``
        and what else the report holds.
    weights : str or None
        The state-dict file embedding uploads offline (else the recorded weights).
    generation : int or None
        The generation of an archive folder that was opened; None for a feature table or an
        index folder, which the server does not follow.
    reopen : callable or None
        Opens the archive again with the same options (its newest generation).
    archive : Archive or None
        The generation of an archive folder that was opened (its instance index is the one
        written with it).
    """

    path: Path
    index: SimilarityIndex
    photo_dirs: list[Path]
    hashes: PhotoHashes | None = None
    local_features: LocalFeatureStore | None = None
    decisions: DecisionStore | None = None
    lots: pd.DataFrame | None = None
    report: pd.DataFrame | None = None
    weights: str | None = None
    item_rule: Callable[[str], str] = item_id_from_name
    generation: int | None = None
    reopen: Callable[[], ArchiveSource] | None = field(default=None, repr=False)
    archive: Archive | None = field(default=None, repr=False)
    # The archive's latest report is shown unless one was named: a later intake writes a newer one.
    follows_report: bool = False
    report_stamp: tuple | None = None  # the latest report's name and time when it was read
    _embedder: object = field(default=None, repr=False)
    _embedder_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _photos_of_item: dict | None = field(default=None, repr=False)

    # -- photos and items ---------------------------------------------------------------

    @property
    def matcher(self) -> ObjectMatcher | None:
        """An :class:`ObjectMatcher` over the archive (None without local features): draws pairs."""
        if self.local_features is None:
            return None
        return ObjectMatcher(self.index, self.local_features, hashes=self.hashes)

    def item_of(self, name: str) -> str:
        """The item id of an archived photo (the lot table's key), by the archive's item rule."""
        return self.item_rule(name)

    def photos_of(self, item_id: str) -> list[str]:
        """The archived photos of an item, in photo-number order."""
        if self._photos_of_item is None:
            grouped: dict[str, list[str]] = {}
            for name in self.index.names[~self.index.removed]:  # removed photos are never shown
                grouped.setdefault(self.item_of(name), []).append(str(name))
            self._photos_of_item = {item: sorted(names, key=image_number) for item, names in grouped.items()}
        return self._photos_of_item.get(str(item_id), [])

    def lot_of(self, name: str) -> dict:
        """The lot columns of an archived photo's item (empty without a lot table or row)."""
        if self.lots is None:
            return {}
        item = self.item_of(name)
        if item not in self.lots.index:
            return {}
        row = self.lots.loc[item]
        if isinstance(row, pd.DataFrame):  # an item listed twice: its first row
            row = row.iloc[0]
        return {str(column): _plain(value) for column, value in row.iloc[:SHOWN_LOT_COLUMNS].items()}

    def resolve_name(self, text: str) -> str | None:
        """An archived photo named by its ``image_path``, its file name, or an item id (its first photo)."""
        text = text.strip()
        if text in self.index:
            return text
        try:
            name = str(self.index.names[self.index.row_of_image_name(text)])
        except (KeyError, ValueError):
            name = None
        if name is not None and name in self.index:  # not a removed photo
            return name
        photos = self.photos_of(text)
        return photos[0] if photos else None

    def newer(self) -> ArchiveSource | None:
        """The archive folder opened again when a later intake or removal made a new generation; else None.

        The network already built for uploads carries over when the model is the same.
        """
        if self.reopen is None or self.generation is None:
            return None
        live = live_generation_number(self.path)
        # An intake writes its report after the switch to its generation: both are followed.
        report_changed = self.follows_report and _stamp(_latest_report(self.path)) != self.report_stamp
        if live is None or (live == self.generation and not report_changed):
            return None
        source = self.reopen()
        if source.index.model_info == self.index.model_info:
            with self._embedder_lock:
                source._embedder = self._embedder
        return source

    def close(self) -> None:
        """Let the opened generation go (a later writer may then delete it)."""
        if self.archive is not None:
            self.archive.close()
        self.index.close()

    def instance_index(self) -> InstanceIndex | None:
        """The same-object shortlist: an archive generation's own, else the one of the local features (made or
        brought up to date); None without local features."""
        if self.archive is not None:
            return self.archive.instance_index
        return available_instance_index(self.local_features) if self.local_features is not None else None

    def embedder(self):
        """The fitted network that made the archive's features, built once (thread-safe)."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = fitted_embedder_from_model_info(self.index.model_info, self.weights)
            return self._embedder


def open_source(
    path: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    lots: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    weights: str | None = None,
) -> ArchiveSource:
    """Open a feature table (file or ``extract`` folder) or an index folder for serving.

    Raises FileNotFoundError or ValueError naming the file and what to pass.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"archive {os.fspath(path)!r} does not exist")
    if path.is_dir() and read_settings(path) is not None:
        source = _open_archive_folder(path, image_dir=image_dir, lots=lots, report=report, weights=weights)
        source.reopen = partial(open_source, path, image_dir=image_dir, lots=lots, report=report, weights=weights)
        return source
    table = next((path / name for name in TABLE_NAMES if (path / name).is_file()), None) if path.is_dir() else path
    if table is not None:
        index = SimilarityIndex.read(table, image_dir=image_dir)
        places = [table.parent]
    else:
        index = SimilarityIndex.load(path)
        if image_dir is not None:
            index.image_dir = Path(image_dir)
        places = [path, path.parent]
    if index.key != IMAGE_PATH:
        raise ValueError(f"{os.fspath(path)!r} has one row per item: serve needs the per-photo table "
                         "(image_features_raw)")
    if index.image_dir is None or not Path(index.image_dir).is_dir():
        raise ValueError(f"the photo folder of {os.fspath(path)!r} is not known or does not exist "
                         f"({index.image_dir}): give --image-dir")
    hashes_file = next((place / HASHES_FILE for place in places if (place / HASHES_FILE).is_file()), None)
    features_dir = next((place / LOCAL_FEATURES_DIR for place in places if (place / LOCAL_FEATURES_DIR).is_dir()),
                        None)
    return ArchiveSource(
        path=path,
        index=index,
        photo_dirs=[Path(index.image_dir)],
        hashes=PhotoHashes.read(hashes_file) if hashes_file is not None else None,
        local_features=LocalFeatureStore(features_dir) if features_dir is not None else None,
        decisions=DecisionStore(decisions_file_of(table if table is not None else path)),
        lots=read_lots(lots) if lots is not None else None,
        report=read_report(report) if report is not None else None,
        weights=weights,
    )


def _open_archive_folder(path: Path, *, image_dir, lots, report, weights) -> ArchiveSource:
    """An archive folder's live generation (the server follows later ones: :meth:`ArchiveSource.newer`)."""
    archive = Archive.open(path)
    index = archive.index
    index.image_dir = Path(image_dir) if image_dir is not None else path / PHOTOS_DIR
    followed = report is None
    if followed:
        report = _latest_report(path)
    attached = archive.lots
    return ArchiveSource(
        path=path,
        index=index,
        photo_dirs=[Path(index.image_dir)],
        hashes=archive.hashes,
        local_features=archive.local_features,
        decisions=DecisionStore(decisions_file_of(path)),
        lots=read_lots(lots) if lots is not None else
        (_indexed_lots(attached, "the archive's lot table") if attached is not None else None),
        report=read_report(report) if report is not None else None,
        weights=weights,
        item_rule=partial(item_of, rule=archive.settings.get("item_rule")),
        generation=archive.generation,
        archive=archive,
        follows_report=followed,
        report_stamp=_stamp(report) if followed else None,
    )


def _latest_report(folder: Path) -> Path | None:
    """The archive's latest intake report (the last written), None before the first."""
    reports = sorted((folder / REPORTS_DIR).glob("*.csv"), key=lambda found: found.stat().st_mtime_ns)
    return reports[-1] if reports else None


def _stamp(report: Path | None) -> tuple | None:
    """A report file's name and time: what tells a later one apart."""
    return (report.name, report.stat().st_mtime_ns) if report is not None else None


def read_lots(path: str | os.PathLike) -> pd.DataFrame:
    """A lot table (CSV or Parquet) with an ``item_id`` column, indexed by it as strings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lot table {os.fspath(path)!r} does not exist")
    table = read_table(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path, dtype={ITEM_ID: str})
    return _indexed_lots(table, f"lot table {os.fspath(path)!r}")


def _indexed_lots(table: pd.DataFrame, what: str) -> pd.DataFrame:
    if ITEM_ID not in table.columns:
        raise ValueError(f"{what} has no {ITEM_ID!r} column (columns: {', '.join(map(str, table.columns[:8]))})")
    return table.assign(**{ITEM_ID: table[ITEM_ID].astype(str)}).set_index(ITEM_ID)


# The column pairs an intake report may name its two photos with: duplicates --pairs, duplicates --against,
# match, and the archive's intake report (image_path of the new photo, its match in the archive).
_REPORT_PAIRS = (("image_a", "image_b"), (IMAGE_PATH, "duplicate_of"), ("query", IMAGE_PATH),
                 (IMAGE_PATH, "match"))


def read_report(path: str | os.PathLike) -> pd.DataFrame:
    """An intake report: the pairs (new photo, archived photo) of ``duplicates --against --pairs`` or ``match``.

    Rows with the verdict ``different`` or ``unreadable`` are not findings and are left out.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"intake report {os.fspath(path)!r} does not exist")
    table = read_table(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path, dtype=str,
                                                                                 keep_default_na=False)
    columns = next((pair for pair in _REPORT_PAIRS if set(pair) <= set(table.columns)), None)
    if columns is None:
        raise ValueError(f"intake report {os.fspath(path)!r} names no pair of photos: it needs the columns "
                         "image_a,image_b (duplicates --pairs) or query,image_path (match)")
    table = table.rename(columns=dict(zip(columns, ("image_a", "image_b"))))
    if "verdict" in table.columns:
        table = table[table["verdict"].isin(["copy", "same_object"]) & (table["image_b"].astype(str) != "")]
    else:
        table = table.assign(verdict="copy")
    return table.reset_index(drop=True)


def _plain(value):
    """A JSON-friendly scalar (NaN as None)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
