"""An on-disk cache of per-image feature vectors, never stale, shared safely by processes.

One ``.npy`` file per (namespace, image file version). The namespace
(:func:`feature_namespace`) holds everything that changes the output (the network's
parameters, the preprocessing, the precision and its calibration, the pixel limit, the
decoder: Pillow or a device); the key of an image is taken from ``stat`` **before** it is decoded:
absolute path, device, inode, size, modification and status-change times in
nanoseconds. So

* a file replaced while it is embedded stores its features under the key it had
  when the run looked at it, which no longer matches the new file;
* an edit that keeps the size and restores the modification time (``cp -p``,
  ``rsync -t``, unzip, ``os.utime``) still changes the status-change time, which no
  program can set back;
* a file moved over another one has another inode.

Entries are written to a temporary name and renamed, so a reader never sees half a
vector; an entry that is empty or damaged anyway (what a power cut can leave after a
rename that was not made durable) is a miss. The cache is a store; the embedding loop
(:func:`skimgfeat.engine.embedding.fill_through_cache`) asks it: read the hits
(:meth:`FeatureCache.get`), then, before computing a missing entry, take an exclusive
``flock`` on ``ENTRY.lock`` (:meth:`FeatureCache.claim`): parallel workers (grid-search
folds with ``n_jobs``, two runs at once) compute each photo once, the others wait for its
entry (:meth:`FeatureCache.wait`, at most ``WAIT_TIMEOUT`` seconds, then compute it
themselves) and it is stored with :meth:`FeatureCache.put`. Locks die with their process, so
a killed worker never blocks the others. A cache that cannot be written costs a
warning, never the computed features.

:func:`cache_info` and :func:`prune_cache` (also ``skimgfeat cache``) show and trim it.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import file_lock
from .io import atomic_path

ENTRY_SUFFIX = ".npy"
LOCK_SUFFIX = ".lock"
# Part of every namespace: entries of an older key scheme are never read.
# 3: the decoder (decode_device) is part of the namespace.
KEY_SCHEME = "3"
# Cache entries locked per claim: bounds the open lock files of one call.
CLAIM_CHUNK = 256
# How long to wait for another process computing an entry before computing it here.
WAIT_TIMEOUT = 600.0


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def feature_namespace(model_info: dict, *, max_pixels: int, decode_device: str | None) -> str:
    """Everything that changes a feature vector besides the image file: the cache namespace.

    ``model_info`` is a fitted embedder's ``model_info_`` (parameters sha256,
    preprocessing, precision, int8 calibration); ``max_pixels`` the effective pixel
    limit; ``decode_device`` None for the exact Pillow decoder, else the device that
    decodes JPEGs (not bit-exact, so never mixed with Pillow's vectors).

    >>> info = {"parameters_sha256": "ab", "preprocessing": {"crop": 224}, "precision": "float32"}
    >>> feature_namespace(info, max_pixels=100, decode_device=None) != feature_namespace(
    ...     info, max_pixels=100, decode_device="cuda")
    True
    """
    parts = [
        model_info["parameters_sha256"],
        repr(sorted(model_info["preprocessing"].items())),
        model_info["precision"],
        f"max_pixels={max_pixels}",
        f"decoder={'pillow' if decode_device is None else decode_device}",
    ]
    if "calibration" in model_info:
        parts.append(model_info["calibration"]["pixels_sha256"])
    return "|".join(parts)


def file_key(path) -> str | None:
    """What identifies this version of the file at ``path`` now; None when it cannot be read."""
    try:
        absolute = os.path.abspath(os.fspath(path))
        info = os.stat(absolute)
    except (OSError, TypeError, ValueError):
        return None
    fields = (absolute, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return _digest("\0".join(map(str, fields)))


class FeatureCache:
    """Per-image feature vectors under ``directory``, separated by ``namespace``.

    Parameters
    ----------
    directory : str or os.PathLike
        The cache folder, shared by any number of namespaces.
    namespace : str
        Everything that changes the features (see :class:`~skimgfeat.CNNImageEmbedder`).
    """

    def __init__(self, directory: str | os.PathLike, namespace: str) -> None:
        self.directory = Path(directory)
        self.root = self.directory / _digest(f"{KEY_SCHEME}|{namespace}")[:16]

    def keys(self, paths: Sequence) -> list[str | None]:
        """The entry key of each path as its file is now: take them before decoding."""
        return [file_key(path) for path in paths]

    def get_many(self, keys: Sequence[str | None]) -> dict[int, np.ndarray]:
        """Cached vectors by position in ``keys``; misses are absent."""
        found = {}
        for i, key in enumerate(keys):
            vector = self.get(key)
            if vector is not None:
                found[i] = vector
        return found

    def get(self, key: str | None) -> np.ndarray | None:
        if key is None:
            return None
        entry = self._entry(key)
        try:
            vector = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent, empty or damaged: a miss
        try:
            os.utime(entry)  # last use, for prune_cache's least-recently-used order
        except OSError:
            pass  # a read-only cache still serves hits
        return vector

    def put(self, key: str | None, vector: np.ndarray) -> bool:
        """Store one vector; False (with a warning) when the cache cannot be written."""
        if key is None:
            return True
        try:
            with atomic_path(self._entry(key), durable=False) as temporary, open(temporary, "wb") as handle:
                np.save(handle, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        except OSError as error:
            warnings.warn(
                f"feature cache {str(self.root)!r} cannot be written ({error}); these features are not cached",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        return True

    @contextmanager
    def claim(self, keys: Sequence[str | None]) -> Iterator[set[int]]:
        """Lock the entries of ``keys`` that no other process is computing; yield their positions.

        A position not yielded is being computed elsewhere: :meth:`wait` for it. An entry
        that appeared meanwhile is not claimed either (``get`` finds it). Without
        ``fcntl`` (Windows) every key is yielded.
        """
        held: dict[int, int] = {}
        try:
            for i, key in enumerate(keys):
                if key is None:
                    continue
                descriptor = self._lock(key, timeout=0.0)
                if descriptor is None:
                    continue
                if self._entry(key).is_file():  # finished by another process since we looked
                    self._unlock(key, descriptor)
                    continue
                held[i] = descriptor
            yield set(held) if file_lock.LOCKS_AVAILABLE else {i for i, key in enumerate(keys) if key is not None}
        finally:
            for i, descriptor in held.items():
                self._unlock(keys[i], descriptor)

    def wait(self, key: str | None, timeout: float = WAIT_TIMEOUT) -> np.ndarray | None:
        """Wait until no process computes ``key``'s entry; return it, None if it was not stored.

        After ``timeout`` seconds (a stuck process holding the lock) return what is
        stored, usually None: the caller then computes the entry itself.
        """
        if key is None:
            return None
        descriptor = self._lock(key, timeout=timeout)
        if descriptor is not None:
            self._unlock(key, descriptor)
        return self.get(key)

    def info(self) -> CacheInfo:
        """Entries and bytes of this namespace."""
        return _info_of(_entries(self.root))

    def prune(self, max_bytes: int | None = None, older_than: float | None = None) -> CacheInfo:
        """Trim this namespace: see :func:`prune_cache`."""
        return _prune(_entries(self.root), max_bytes, older_than)

    # -- internals -------------------------------------------------------------

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{ENTRY_SUFFIX}"

    def _lock(self, key: str, timeout: float) -> int | None:
        """An open descriptor holding the entry's lock, or None (held elsewhere past ``timeout``, or no locks)."""
        return file_lock.acquire(self._entry(key).with_suffix(LOCK_SUFFIX), timeout)

    def _unlock(self, key: str, descriptor: int) -> None:
        file_lock.release(self._entry(key).with_suffix(LOCK_SUFFIX), descriptor)


@dataclass(frozen=True)
class CacheInfo:
    """How much a feature cache holds (or how much a prune removed)."""

    entries: int
    bytes: int


def cache_info(directory: str | os.PathLike) -> CacheInfo:
    """Entries and bytes of every namespace in the cache folder ``directory``.

    >>> cache_info("no-such-cache")
    CacheInfo(entries=0, bytes=0)
    """
    return _info_of(_entries(Path(directory)))


def prune_cache(
    directory: str | os.PathLike, max_bytes: int | None = None, older_than: float | None = None
) -> CacheInfo:
    """Delete entries of the cache folder ``directory``; return what was removed.

    Parameters
    ----------
    directory : str or os.PathLike
    max_bytes : int or None
        Remove the least recently used entries (a hit counts as a use) until at most
        this many bytes remain. 0 empties the cache.
    older_than : float or None
        Remove entries not used for this many seconds.
    """
    return _prune(_entries(Path(directory)), max_bytes, older_than)


def _entries(root: Path) -> list[tuple[Path, os.stat_result]]:
    found = []
    for entry in root.rglob(f"*{ENTRY_SUFFIX}") if root.is_dir() else ():
        try:
            found.append((entry, entry.stat()))
        except OSError:
            continue  # removed meanwhile
    return found


def _info_of(entries: list[tuple[Path, os.stat_result]]) -> CacheInfo:
    return CacheInfo(len(entries), sum(info.st_size for _, info in entries))


def _prune(entries: list[tuple[Path, os.stat_result]], max_bytes: int | None, older_than: float | None) -> CacheInfo:
    oldest_first = sorted(entries, key=lambda item: item[1].st_mtime_ns)
    remaining = sum(info.st_size for _, info in entries)
    cutoff = None if older_than is None else time.time() - older_than
    removed = []
    for entry, info in oldest_first:
        too_old = cutoff is not None and info.st_mtime < cutoff
        too_big = max_bytes is not None and remaining > max_bytes
        if not (too_old or too_big):
            continue
        try:
            entry.unlink()
        except FileNotFoundError:
            pass
        remaining -= info.st_size
        removed.append((entry, info))
    return _info_of(removed)
