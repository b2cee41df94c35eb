"""The daily intake: new photos into an archive in one step, and a report of what they are in it.

:func:`ingest` copies the photos the archive does not have yet (by identity and by
content), embeds them, hashes them, stores their local features, adds them to the index
as one new generation, and reports for every photo of the intake folder its archived
copies and the archived photos of the same object. Whatever kills it, running it again
finishes the intake with no row lost or doubled: each step is skipped where its result
is already on disk, and the rows become visible all at once when ``CURRENT`` switches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..embedder import embedder_from_model_info
from ..feature_tables import list_images
from ..matching.copy_check import HASHES_FILE, SAME_OBJECT, PhotoHashes, hash_or_reason
from ..matching.duplicates import COPY, find_copies_against
from ..matching.instance_index import InstanceIndex, available_instance_index
from ..matching.local_features import LOCAL_FEATURES_DIR, LocalFeatureStore, write_local_features
from ..matching.object_match import ObjectMatcher
from ..schema import IMAGE_NAME, IMAGE_PATH, ITEM_ID
from ..search.similarity import SimilarityIndex
from ..storage.generation_lock import WriterLock
from ..storage.io import atomic_path
from ..storage.kill_points import kill_point
from ..storage.vector_index import CURRENT
from .folder import (
    CONTENT_SHA256,
    INSTANCE_INDEX_PART,
    INTAKE,
    LOTS_FILE,
    PARTS,
    PHOTOS_DIR,
    REPORTS_DIR,
    RETIRED_LOCAL_FEATURES,
    ROW_COLUMNS,
    SOURCE,
    carry_forward,
    check_archive_folder,
    delete_retired_parts,
    instance_generations_named,
    item_of,
    manifest,
    named_instance_index,
    removed_photos,
    today,
    write_settings,
)

# What happened to each photo of the intake folder.
ADDED, REPLACED, ARCHIVED, IDENTICAL, UNREADABLE, REMOVED = "added", "replaced", "already archived", \
    "identical file", "unreadable", "removed earlier"
REPORT_COLUMNS = (IMAGE_PATH, "source", "status", "match", "match_item_id", "verdict", "feature_distance",
                  "copy_score", "inliers")
DEFAULT_REPORT_K = 10
REPORT_NPROBE = 8  # inverted lists a new photo's copy search visits
PENDING_DIR = "pending"  # features embedded by an intake not finished yet
PENDING_CHUNK = 64  # photos embedded at a time
PENDING_ROWS, PENDING_SECONDS = 1024, 10.0  # a checkpoint part at least this often


@dataclass
class IngestResult:
    """What one intake did."""

    intake: str
    statuses: dict[str, int]
    report: pd.DataFrame
    report_path: Path | None
    generation: int | None
    n_rows: int
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_added(self) -> int:
        return self.statuses.get(ADDED, 0) + self.statuses.get(REPLACED, 0)


def list_photos(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` (sub-folders too), sorted by relative path; a clear error otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file: give the folder of the new photos" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"intake folder {os.fspath(folder)!r} {what}")
    # The command line's own listing (every type Pillow decodes here, any case), less hidden files.
    photos = [path for path in list_images(folder, None, recursive=True) if not path.name.startswith(".")]
    if not photos:
        raise FileNotFoundError(f"no photo (any type Pillow decodes) under {os.fspath(folder)!r}")
    return photos


def content_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ingest(
    new_dir: str | os.PathLike,
    archive: str | os.PathLike,
    *,
    embedder=None,
    weights: str | os.PathLike | None = None,
    intake: str | None = None,
    item_rule: str | None = None,
    lots: str | os.PathLike | pd.DataFrame | None = None,
    hashes: bool = True,
    local_features: bool = True,
    report: str | os.PathLike | None = None,
    report_k: int = DEFAULT_REPORT_K,
    wait: float | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> IngestResult:
    """Add the photos of ``new_dir`` the archive lacks, and report what each photo of it is in the archive.

    Parameters
    ----------
    new_dir : path
        The intake folder (sub-folders included).
    archive : path
        The archive folder; made by the first intake (new or empty folder).
    embedder : fitted CNNImageEmbedder or None
        Embeds the new photos. None: the network recorded in the archive (``weights``
        replacing its weights file). A new archive needs one.
    intake : str or None
        The intake's name, the first part of each new photo's identity
        (``INTAKE/relative path``). Default: today's date (UTC).
    item_rule : str or None
        A regular expression giving the item id of a file name (its group ``item``, else
        its first group, else the match); kept in the archive for later intakes.
        Default: the one kept, else the stem up to the last underscore.
    lots : path, DataFrame or None
        A lot table (CSV or Parquet) keyed by ``item_id``: attached to the archive (it
        replaces the one attached before) and joined to the report's matches.
    hashes, local_features : bool
        Store the copy-check hashes and the local features of the new photos (the
        report's ``copy`` and ``same_object`` verdicts need them; local features need
        OpenCV).
    report : path or None
        Where to write the report (CSV). Default: ``ARCHIVE/reports/INTAKE.csv``.
    report_k : int
        Archived photos verified per new photo for ``same_object``.
    wait : float or None
        Seconds to wait for another writer (default: ``SKIMGFEAT_LOCK_WAIT`` or 600).
    on_progress : callable or None
        Called with a step name and a count of photos done.

    Returns
    -------
    IngestResult
    """
    archive = Path(archive)
    photos = list_photos(new_dir)
    with WriterLock(archive, wait):
        return _ingest_locked(Path(new_dir), photos, archive, embedder=embedder, weights=weights,
                              intake=intake or today(), item_rule=item_rule, lots=lots, hashes=hashes,
                              local_features=local_features, report=report, report_k=report_k,
                              on_progress=on_progress or (lambda step, n: None))


def _ingest_locked(new_dir: Path, photos: list[Path], archive: Path, *, embedder, weights, intake, item_rule, lots,
                   hashes, local_features, report, report_k, on_progress) -> IngestResult:
    settings = check_archive_folder(archive)
    if "/" in intake or intake in ("", ".", ".."):
        raise ValueError(f"intake name {intake!r} must be one folder name (e.g. a date)")
    item_rule = item_rule or (settings or {}).get("item_rule")
    if item_rule:
        _check_rule(item_rule)
    lot_table = _read_lots(lots)
    if settings is None or (item_rule and settings.get("item_rule") != item_rule):
        # First of all: a folder that an interrupted first intake left is still known as an archive.
        write_settings(archive, {**(settings or {}), "item_rule": item_rule,
                                 "created_at": (settings or {}).get("created_at", today())})
        kill_point("settings-written")
    index = SimilarityIndex.load(archive) if (archive / CURRENT).is_file() else None
    parts = manifest(None if index is None else index._info)
    delete_retired_parts(archive, parts)  # a compaction killed after its switch left them
    if embedder is None:
        if index is None:
            raise ValueError(f"{os.fspath(archive)!r} is a new archive: say which network embeds its photos")
        embedder = _recorded_embedder(index.model_info, weights)
    model_info = json.loads(json.dumps(embedder.model_info_, default=str))  # as index.json will hold it
    if index is not None:
        index.check_model(model_info, what="the embedder")

    # What each photo is: new, a changed version of an archived one, or already there.
    sources = [path.relative_to(new_dir).as_posix() for path in photos]
    source_dir = new_dir.resolve()  # once: resolving each photo's path cost 0.2 ms a photo
    identities = [f"{intake}/{source}" for source in sources]
    digests = [content_sha256(path) for path in photos]
    on_progress("read", len(photos))
    live_rows = {} if index is None else index._rows()
    # Only this intake's digests are looked up: nothing per archived row runs in Python.
    archived_sha = {} if index is None else _live_digests(index, digests)
    row_sha = {} if index is None else _row_digests(index, identities, live_rows)
    taken_down = set(removed_photos(None if index is None else index._folder)[CONTENT_SHA256])
    status, replaced_rows, todo, todo_digests = {}, [], [], set()
    for number, (identity, digest) in enumerate(zip(identities, digests)):
        if identity in live_rows and row_sha.get(identity) == digest:
            status[identity] = ARCHIVED
        elif digest in taken_down:
            status[identity] = REMOVED  # removed on purpose: the same file never comes back
        elif digest in archived_sha and archived_sha[digest] != identity:
            status[identity] = IDENTICAL
        elif digest in todo_digests:
            status[identity] = IDENTICAL  # twice in this intake: the first is added
        else:
            status[identity] = REPLACED if identity in live_rows else ADDED
            if identity in live_rows:
                replaced_rows.append(live_rows[identity])
            todo.append(number)
            todo_digests.add(digest)

    # The archive's own copy of each new photo, and its copy-check hashes in the same pass (threads: both
    # wait on the disk or run in C). The kill points stay in this thread, one per photo, in order.
    copies = [archive / PHOTOS_DIR / identities[number] for number in todo]
    _remove_half_copies({copy.parent for copy in copies})
    hashed = []
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for result in pool.map(_copied_and_hashed, [photos[number] for number in todo], copies,
                               [digests[number] for number in todo], [hashes] * len(todo)):
            hashed.append(result)
            on_progress("copied", 1)
            kill_point("photo-copied")
    new_names = [identities[number] for number in todo]

    features = _embed_checkpointed(embedder, copies, [digests[number] for number in todo], archive / PENDING_DIR,
                                   model_info, on_progress)
    failures = _failures(embedder, new_names, features)
    failed = {name for name, _ in failures}
    for name in failed:
        status[name] = UNREADABLE

    stored_hashes = PhotoHashes.read(archive / HASHES_FILE) if (archive / HASHES_FILE).is_file() else None
    if hashes and copies:
        computed = PhotoHashes.from_results(new_names, hashed)
        stored_hashes = computed if stored_hashes is None else stored_hashes.merged(computed)
        stored_hashes.write(archive / HASHES_FILE)  # atomically
        on_progress("hashes stored", len(copies))
        kill_point("hashes-written")
    store = None
    if local_features and copies:
        write_local_features(copies, archive / LOCAL_FEATURES_DIR, image_dir=archive / PHOTOS_DIR,
                             on_progress=lambda n: on_progress("local features", n))
        kill_point("local-features-written")
    if (archive / LOCAL_FEATURES_DIR).is_dir():
        store = LocalFeatureStore(archive / LOCAL_FEATURES_DIR)

    # One new generation: the new rows, the replaced ones removed, the lot table, and the instance index brought
    # up to date with the new local features before it (the generation names the one that goes with it).
    changed = bool(todo) or lot_table is not None
    instance = None
    if changed and store is not None:
        # The instance index shortlists the same object across cameras and backdrops, where the CNN's
        # nearest photos rarely hold the catalogue photo.
        instance = available_instance_index(store, keep=instance_generations_named(archive),
                                            start=parts.get(INSTANCE_INDEX_PART))
        if instance is not None:
            parts[INSTANCE_INDEX_PART] = instance.generation_
    elif store is not None:
        instance = named_instance_index(archive, parts, store)
    if changed:
        parts.pop(RETIRED_LOCAL_FEATURES, None)  # deleted above: this generation retires nothing
        if index is None:
            index = SimilarityIndex.empty(features.shape[1], columns=ROW_COLUMNS, model_info=model_info,
                                          image_dir=archive / PHOTOS_DIR)
        index.remove_rows(replaced_rows)
        keep = [i for i, name in enumerate(new_names) if name not in failed]
        index.add_rows({
            IMAGE_PATH: [new_names[i] for i in keep],
            IMAGE_NAME: [Path(new_names[i]).name for i in keep],
            ITEM_ID: [item_of(new_names[i], item_rule) for i in keep],
            CONTENT_SHA256: [digests[todo[i]] for i in keep],
            SOURCE: [os.fspath(source_dir / sources[todo[i]]) for i in keep],
            INTAKE: [intake] * len(keep),
        }, features[keep])
        previous = index._folder

        def write_lots(folder: Path) -> None:
            if lot_table is not None:
                lot_table.to_parquet(folder / LOTS_FILE, index=False)
            carry_forward(previous, folder)

        if hasattr(os, "sync"):
            os.sync()  # the photos, hashes and local features on disk before a generation names them
        counts = {name: sum(1 for value in status.values() if value == name) for name in set(status.values())}
        index.save(archive, extra_info={"relative_image_dir": PHOTOS_DIR, PARTS: parts, "last_change": {
            "action": "ingest", "intake": intake, **counts}}, write_more=write_lots)
        index.image_dir = archive / PHOTOS_DIR
        on_progress("indexed", len(keep))

    shutil.rmtree(archive / PENDING_DIR, ignore_errors=True)  # in the index now (or nothing was to embed)
    statuses = {name: sum(1 for value in status.values() if value == name) for name in
                (ADDED, REPLACED, ARCHIVED, IDENTICAL, REMOVED, UNREADABLE)}
    table = intake_report(index, identities, [photo.as_posix() for photo in photos], status, digests,
                          hashes=stored_hashes, local_features=store, instance_index=instance, k=report_k,
                          lots=_lots_of(index, lot_table))
    report_path = Path(report) if report is not None else archive / REPORTS_DIR / f"{intake}.csv"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(report_path) as temporary:
        table.to_csv(temporary, index=False, float_format="%.6f")
    kill_point("report-written")
    return IngestResult(intake, statuses, table, report_path, None if index is None else index.generation,
                        0 if index is None else len(index), failures)


def _remove_half_copies(folders) -> None:
    """Delete the half-written copies (temporary files) that an intake killed while copying left in ``folders``.

    The copies run in threads: a kill stops one mid-file while another reaches its kill point. Under the writer
    lock no other intake is copying.
    """
    for folder in folders:
        for leftover in folder.glob(".*.tmp") if folder.is_dir() else []:
            leftover.unlink(missing_ok=True)


def _copied_and_hashed(source: Path, target: Path, digest: str, hash_it: bool):
    """Copy ``source`` into the archive as ``target`` unless a whole copy is there, then its hashes (or why it
    could not be hashed); None without ``hash_it``."""
    if not (target.is_file() and content_sha256(target) == digest):
        target.parent.mkdir(parents=True, exist_ok=True)
        # Not flushed one by one (two fsyncs a photo were most of an intake's time): a copy is checked
        # against its digest when an intake runs again, and everything is flushed once before the switch.
        # Atomic: a copy is whole or absent.
        with atomic_path(target, durable=False) as temporary:
            shutil.copy2(source, temporary)
    return hash_or_reason(target) if hash_it else None


def _embed_checkpointed(embedder, copies: list[Path], digests: list[str], folder: Path, model_info: dict,
                        on_progress, every_rows: int = PENDING_ROWS, every_seconds: float = PENDING_SECONDS):
    """The features of ``copies``, embedded a chunk at a time with a checkpoint part every ``every_rows`` rows or
    ``every_seconds``: an intake killed while embedding keeps what it embedded (keyed by content digest and
    network), and the rerun embeds only the rest. NaN rows (unreadable photos) are never kept."""
    n_features = int(embedder.n_features_out_)
    features = np.full((len(copies), n_features), np.nan, dtype=np.float32)
    network = str(model_info.get("parameters_sha256") or json.dumps(model_info, sort_keys=True, default=str))
    known = _read_pending(folder, network, n_features)
    todo = []
    for row, digest in enumerate(digests):
        if digest in known:
            features[row] = known[digest]
        else:
            todo.append(row)
    unsaved, last_part = [], time.monotonic()
    for start in range(0, len(todo), PENDING_CHUNK):
        rows = todo[start:start + PENDING_CHUNK]
        features[rows] = np.asarray(embedder.transform([os.fspath(copies[row]) for row in rows]), dtype=np.float32)
        unsaved += rows
        on_progress("embedded", len(rows))
        if len(unsaved) >= every_rows or time.monotonic() - last_part >= every_seconds or \
                start + PENDING_CHUNK >= len(todo):
            kept = [row for row in unsaved if not np.isnan(features[row]).any()]
            folder.mkdir(exist_ok=True)
            part = folder / f"part-{len(list(folder.glob('part-*.npz'))):06d}.npz"
            with atomic_path(part) as temporary, open(temporary, "wb") as handle:
                np.savez(handle, digests=np.asarray([digests[row] for row in kept], dtype=str),
                         features=features[kept], network=np.asarray(network))
            kill_point("embedded-part-written")
            unsaved, last_part = [], time.monotonic()
    return features


def _read_pending(folder: Path, network: str, n_features: int) -> dict[str, np.ndarray]:
    """Features embedded by an intake that was killed before its generation: digest -> vector."""
    known = {}
    for part in sorted(folder.glob("part-*.npz")) if folder.is_dir() else []:
        try:
            with np.load(part, allow_pickle=False) as npz:
                if str(npz["network"]) != network or npz["features"].shape[1:] != (n_features,):
                    continue  # another network's: not these features
                known.update(zip(npz["digests"].tolist(), npz["features"]))
        except (OSError, ValueError, KeyError):
            continue  # a part cut short is embedded again
    return known


def _check_rule(rule: str) -> None:
    try:
        re.compile(rule)
    except re.error as error:
        raise ValueError(f"item rule {rule!r} is not a regular expression: {error}") from None


def _recorded_embedder(model_info: dict | None, weights):
    return embedder_from_model_info(model_info or {}, weights, on_error="nan").fit()


def _failures(embedder, names: list[str], features: np.ndarray) -> list[tuple[str, str]]:
    """(identity, reason) of the photos the last transform could not read (their rows are NaN)."""
    reasons = {os.path.basename(str(getattr(error, "path", ""))): str(error) for error in
               getattr(embedder, "errors_", None) or []}
    failed = np.flatnonzero(np.isnan(features).any(axis=1)) if len(features) else []
    return [(names[row], reasons.get(os.path.basename(names[row]), "could not be read")) for row in failed]


def _live_digests(index: SimilarityIndex, digests: list[str]) -> dict[str, str]:
    """Content digest -> identity of the first live row with it, for the ``digests`` asked.

    The archive's column is matched against them in one vectorised pass: only the
    rows that hit are visited in Python, never the million others.
    """
    stored = index._identities.get(CONTENT_SHA256)
    if stored is None or not len(digests):
        return {}
    live = np.flatnonzero(~index.removed & (stored != ""))
    hits = live[pd.Index(list(dict.fromkeys(digests)), dtype=object).get_indexer(stored[live]) >= 0]
    found: dict[str, str] = {}
    for row in hits:  # in row order: the first live row of a digest wins
        found.setdefault(stored[row], index.names[row])
    return found


def _row_digests(index: SimilarityIndex, identities: list[str], live_rows: dict) -> dict[str, str]:
    """Identity -> stored content digest, for the ``identities`` of this intake that are live rows."""
    stored = index._identities.get(CONTENT_SHA256)
    if stored is None:
        return {}
    return {name: stored[live_rows[name]] for name in identities if name in live_rows}


def _read_lots(lots) -> pd.DataFrame | None:
    if lots is None:
        return None
    if isinstance(lots, pd.DataFrame):
        table = lots.copy()
    else:
        path = Path(lots)
        if path.is_dir():
            raise ValueError(f"lot table {os.fspath(path)!r} is a folder: give a CSV or Parquet file keyed by item_id")
        if not path.is_file():
            raise FileNotFoundError(f"lot table {os.fspath(path)!r} does not exist")
        table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path, dtype={ITEM_ID: str})
    if ITEM_ID not in table.columns:
        raise ValueError(f"the lot table has no {ITEM_ID} column (it has {', '.join(map(str, table.columns))})")
    table[ITEM_ID] = table[ITEM_ID].astype(str)
    return table.drop_duplicates(ITEM_ID, keep="last").reset_index(drop=True)


def _lots_of(index: SimilarityIndex | None, given: pd.DataFrame | None) -> pd.DataFrame | None:
    if given is not None:
        return given
    if index is None or index._folder is None or not (index._folder / LOTS_FILE).is_file():
        return None
    return pd.read_parquet(index._folder / LOTS_FILE)


def intake_report(index: SimilarityIndex | None, identities: list[str], sources: list[str], status: dict,
                  digests: list[str], *, hashes: PhotoHashes | None, local_features: LocalFeatureStore | None,
                  instance_index: InstanceIndex | None = None, k: int = DEFAULT_REPORT_K,
                  lots: pd.DataFrame | None = None) -> pd.DataFrame:
    """For each photo of an intake: its status, and the archived photos it is a ``copy`` of or shows the
    ``same_object`` as, with the feature distance, the copy score, the inliers and the match's lot columns.

    ``instance_index`` shortlists the same object (default: the one of ``local_features``,
    brought up to date). A photo with neither appears once, without a match. Built with the functions of
    ``duplicates --against`` (:func:`~skimgfeat.matching.duplicates.find_copies_against`) and
    ``match --against`` (:class:`~skimgfeat.matching.object_match.ObjectMatcher`).
    """
    rows = []
    in_index = [] if index is None else [name for name in identities if name in index]
    by_digest = {} if index is None else _live_digests(index, digests)
    if in_index and index._store.nprobe:
        # A copy lies in its original's list or a neighbouring one: the report visits fewer lists than a
        # search for similar photos (this index object is the intake's own: no other thread searches it).
        index._store.nprobe = min(index._store.nprobe, REPORT_NPROBE)
    if in_index:
        vectors = index._vectors_of([index.row_of(name) for name in in_index])
        # With the local features at hand the copy check confirms hashes by content, as `duplicates` does.
        copies = find_copies_against(index, in_index, vectors, photos=[index.photo_path(name) for name in in_index],
                                     copy_check=hashes if hashes is not None else False,
                                     archive_hashes=hashes if hashes is not None else True,
                                     local_features=local_features)
        copies = copies[(copies["image_a"] != copies["image_b"]) & (copies["verdict"] == COPY)]
        for pair in copies.itertuples(index=False):
            rows.append((pair.image_a, pair.image_b, COPY, pair.feature_distance, pair.copy_score, np.nan))
        if local_features is not None:
            if instance_index is None:
                instance_index = available_instance_index(local_features)
            rows += _same_object_rows(index, in_index, local_features, hashes, k, instance_index)
    found = pd.DataFrame(rows, columns=[IMAGE_PATH, "match", "verdict", "feature_distance", "copy_score",
                                        "inliers"])
    # One line per (photo, match): a copy found by both keeps the copy check's score and the inliers.
    found = found.sort_values([IMAGE_PATH, "match", "copy_score"], na_position="last")
    found = found.groupby([IMAGE_PATH, "match"], sort=False, as_index=False).agg(
        verdict=("verdict", lambda values: COPY if COPY in set(values) else SAME_OBJECT),
        feature_distance=("feature_distance", "min"), copy_score=("copy_score", "min"),
        inliers=("inliers", "max"))
    lines = []
    matches_of: dict[str, list] = {}
    for match in found.itertuples(index=False):  # once: a DataFrame per photo costs a millisecond each
        matches_of.setdefault(getattr(match, IMAGE_PATH), []).append(match)
    for identity, source, digest in zip(identities, sources, digests):
        state = status[identity]
        name = identity
        if state == IDENTICAL:
            name = by_digest.get(digest, identity)
            lines.append((identity, source, state, name, COPY, 0.0, 0.0, np.nan))
            continue
        matches = matches_of.get(identity, [])
        if not matches:
            lines.append((identity, source, state, "", "", np.nan, np.nan, np.nan))
        for match in matches:
            lines.append((identity, source, state, match.match, match.verdict, match.feature_distance,
                          match.copy_score, match.inliers))
    table = pd.DataFrame(lines, columns=[column for column in REPORT_COLUMNS if column != "match_item_id"])
    item_ids = None if index is None else index._identities.get(ITEM_ID)
    row_of = {} if item_ids is None else index._rows()  # the matches are live rows (the archive's own dict)
    table.insert(4, "match_item_id", [item_ids[row_of[match]] if match in row_of else "" for match in table["match"]])
    order = {COPY: 0, SAME_OBJECT: 1, "": 2}
    table = table.assign(_order=table["verdict"].map(order)).sort_values(
        [IMAGE_PATH, "_order", "feature_distance"], kind="stable").drop(columns="_order").reset_index(drop=True)
    if lots is not None:
        lot_columns = lots.rename(columns={column: f"lot_{column}" for column in lots.columns if column != ITEM_ID})
        table = table.merge(lot_columns.rename(columns={ITEM_ID: "match_item_id"}), on="match_item_id", how="left")
    return table


def _same_object_rows(index, names, local_features, hashes, k, instance_index) -> list[tuple]:
    """(photo, match, verdict, distance, copy score, inliers) of the verified matches of each photo."""
    matcher = ObjectMatcher(index, local_features, k=min(k, max(len(index) - 1, 1)), hashes=hashes,
                            instance_index=instance_index)
    rows = []
    for name in names:
        if name not in local_features:
            continue  # unreadable: no local features, no same-object answer
        try:
            matches = matcher.match([name])
        except FileNotFoundError:  # a candidate without local features: verify the others
            continue
        for match in matches.itertuples(index=False):
            if match.verdict in (COPY, SAME_OBJECT):
                rows.append((name, getattr(match, IMAGE_PATH), match.verdict, match.feature_distance, np.nan,
                             match.inliers))
    return rows
