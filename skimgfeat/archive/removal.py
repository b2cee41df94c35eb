"""Remove photos from an archive (by identity, file name or item), and compact it.

A removal writes a new generation in which the rows are marked removed: they are never
returned again by any search, ``duplicates`` or ``match`` on it, and the vectors file is
shared with the previous generation (a hard link), so removing is quick at any size; the
instance index loses the photos in a new generation of its own, which the new archive
generation names. A compaction writes a generation without the removed rows at all,
deletes their photos and hashes, and rewrites the local-features parts that held them
(the old parts are deleted once the new generation is live); the instance index keeps its
vocabulary and names the rewritten parts as its source: it reclaims the space.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..matching.copy_check import HASHES_FILE, PhotoHashes
from ..matching.instance_index import INSTANCE_INDEX_DIR, InstanceIndex, instance_index_for, local_features_source
from ..matching.local_features import LOCAL_FEATURES_DIR, LocalFeatureStore, compact_local_features
from ..schema import ITEM_ID
from ..search.similarity import IMAGE_NAME, IMAGE_PATH, SimilarityIndex
from ..storage.generation_lock import WriterLock
from ..storage.kill_points import kill_point
from ..storage.vector_index import CURRENT
from .folder import (
    CONTENT_SHA256,
    INSTANCE_INDEX_PART,
    PARTS,
    PHOTOS_DIR,
    REMOVED_PHOTOS_FILE,
    RETIRED_LOCAL_FEATURES,
    carry_forward,
    delete_retired_parts,
    instance_generations_named,
    manifest,
    read_settings,
    removed_photos,
)


@dataclass
class RemoveResult:
    """What one removal (or compaction) did."""

    removed: list[str]
    not_found: list[str]
    n_rows: int
    generation: int | None
    compacted: int = 0


def read_name_list(path: str | os.PathLike) -> list[str]:
    """Names listed one per line in a text file (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{os.fspath(path)!r} is a folder: give a text file with one image_path, file name or "
                         "item id per line")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def rows_to_remove(index: SimilarityIndex, names: Sequence[str] = (), items: Sequence[str] = ()) -> \
        tuple[list[int], list[str]]:
    """Live row numbers named by identity (``image_path``) or file name (``image_name``: every intake's
    photo of that name), and by item id; and the names that match nothing."""
    removed = index.removed
    live = ~removed
    by_path = index._rows()
    image_names = index._identities.get(IMAGE_NAME)
    if image_names is None:  # (not a default of get(): that walked a million paths even when the column is there)
        image_names = np.asarray([Path(name).name for name in index.names], dtype=object)
    item_ids = index._identities.get(ITEM_ID)
    rows, missing = set(), []
    for name in names:
        name = str(name)
        if name in by_path:
            rows.add(by_path[name])
            continue
        found = np.flatnonzero(live & (image_names == name))
        if not len(found):
            missing.append(name)
        rows.update(found.tolist())
    for item in items:
        if item_ids is None:
            raise ValueError("this archive has no item_id column")
        found = np.flatnonzero(live & (item_ids == str(item)))
        if not len(found):
            missing.append(f"item {item}")
        rows.update(found.tolist())
    return sorted(rows), missing


def remove(archive: str | os.PathLike, names: Sequence[str] = (), *, items: Sequence[str] = (),
           compact: bool = False, wait: float | None = None) -> RemoveResult:
    """Remove photos from ``archive``: by identity or file name (``names``) and by item id (``items``).

    Removed photos are never returned again, and leave the instance index. ``compact=True``
    also rewrites the archive without any removed row (this one's and earlier ones'),
    deleting their photos, hashes and local features.
    A name that matches nothing is reported, not an error; nothing is written when
    nothing changes.
    """
    archive = Path(archive)
    if read_settings(archive) is None:
        SimilarityIndex.load(archive).close()  # a missing or broken folder says so
    with WriterLock(archive, wait):
        index = SimilarityIndex.load(archive)
        parts = manifest(index._info)
        delete_retired_parts(archive, parts)  # a compaction killed after its switch left them
        rows, missing = rows_to_remove(index, names, items)
        names_removed = [str(index.names[row]) for row in rows]
        index.remove_rows(rows)
        kill_point("rows-marked")
        n_compacted = int(index.removed.sum()) if compact else 0
        if not rows and not n_compacted:
            if compact:  # a compaction killed after its switch: finish deleting what it left
                _forget(archive, set(index.names[~index.removed].tolist()))
            result = RemoveResult([], missing, len(index), index.generation)
            index.close()
            return result
        previous = index._folder
        removed_before = removed_photos(previous)
        digests = index._identities.get(CONTENT_SHA256)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        removed_now = pd.DataFrame({IMAGE_PATH: names_removed,
                                    CONTENT_SHA256: ["" if digests is None else str(digests[row]) for row in rows],
                                    "removed_at": now})
        # The instance index, up to date with the local features before any is rewritten.
        instance = _instance_index(archive, parts.get(INSTANCE_INDEX_PART))
        retired: list[str] = []
        live: set[str] | None = None  # a compaction's: the photos that stay
        if compact:
            index = index.compacted()
            live = set(index.names.tolist())
            # Removed rows are never returned by the live generation either: their files can go first.
            _forget(archive, live)
            _, retired = compact_local_features(archive / LOCAL_FEATURES_DIR, live)
            kill_point("local-features-rewritten")
        parts.pop(RETIRED_LOCAL_FEATURES, None)
        if instance is not None:
            parts[INSTANCE_INDEX_PART] = _saved_without(archive, instance, names_removed, live, retired)
        if retired:
            parts[RETIRED_LOCAL_FEATURES] = retired

        def write_lots(folder: Path) -> None:
            if len(removed_now):
                pd.concat([removed_before, removed_now], ignore_index=True).to_parquet(
                    folder / REMOVED_PHOTOS_FILE, index=False)
            carry_forward(previous, folder)

        index.save(archive, extra_info={"relative_image_dir": PHOTOS_DIR, PARTS: parts, "last_change": {
            "action": "compact" if compact else "remove", "removed": len(rows), "compacted": n_compacted}},
            write_more=write_lots)
        delete_retired_parts(archive, parts)  # no generation from now on reads them
        return RemoveResult(names_removed, missing, len(index), index.generation, n_compacted)


def _instance_index(archive: Path, start: str | None):
    """The archive's instance index (from the generation ``start`` its live generation names), brought up to date
    with its local features; None if it has none yet (a removal does not train a vocabulary; the next intake does).
    """
    if not (archive / INSTANCE_INDEX_DIR / CURRENT).is_file() or not (archive / LOCAL_FEATURES_DIR).is_dir():
        return None
    return instance_index_for(LocalFeatureStore(archive / LOCAL_FEATURES_DIR), keep=instance_generations_named(archive),
                              start=start)


def _saved_without(archive: Path, instance: InstanceIndex, removed: list[str], live: set[str] | None,
                   retired: list[str]) -> str:
    """Take photos out of the archive's instance index and save it as a new generation (before the archive's
    switch); its name.

    A removal takes out the photos ``removed`` and shares the inverted lists with the generation before (hard
    links: quick at any size, the entries dropped at the next save that compacts). A compaction (``live`` given)
    takes out every photo not ``live`` and names the local-features parts that stay (the rewritten ones, not the
    ``retired``) as its source: the vocabulary and the other photos' entries are kept, and a later intake
    extends it rather than making it again.
    """
    if live is None:
        instance.remove(removed)
        source = instance.source_
    else:
        instance.remove([name for name in instance.names() if name not in live])
        source = local_features_source(LocalFeatureStore(archive / LOCAL_FEATURES_DIR), without=retired)
    instance.save(archive / INSTANCE_INDEX_DIR, source=source, keep=instance_generations_named(archive),
                  compact=live is not None)
    return instance.generation_


def _forget(archive: Path, live: set[str]) -> None:
    """Delete the hashes and photo files of every photo not in ``live`` (a compaction's).

    Idempotent: a compaction killed half-way through this finishes it when run again.
    Under the writer lock, so no intake is adding photos meanwhile.
    """
    hashes_file = archive / HASHES_FILE
    if hashes_file.is_file():
        hashes = PhotoHashes.read(hashes_file)
        keep = np.isin(hashes.names, list(live))
        if not keep.all():
            PhotoHashes(hashes.names[keep], hashes.hashes[keep], hashes.errors[keep]).write(hashes_file)
    kill_point("hashes-compacted")
    photos = archive / PHOTOS_DIR
    for path in sorted(photos.rglob("*")) if photos.is_dir() else []:
        if path.is_file() and path.relative_to(photos).as_posix() not in live:
            path.unlink()
