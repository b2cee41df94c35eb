"""An on-disk cache of per-image feature vectors.

One ``.npy`` file per (network, preprocessing, image file version). The key of an image
is its absolute path, size and modification time, so an edited photo is embedded
again. Files are written to a temporary name and renamed, so parallel workers (a
grid search with ``n_jobs``) never read a half-written vector; a cache that cannot be
written (disk full, read-only) costs a warning, never the computed features.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .io import atomic_path


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class FeatureCache:
    """Per-image feature vectors under ``directory``, separated by ``namespace``."""

    def __init__(self, directory: str | os.PathLike, namespace: str) -> None:
        self.root = Path(directory) / _digest(namespace)[:16]

    def _file(self, path) -> Path | None:
        try:
            absolute = os.path.abspath(os.fspath(path))
            info = os.stat(absolute)
        except (OSError, TypeError, ValueError):
            return None
        key = _digest(f"{absolute}\0{info.st_size}\0{info.st_mtime_ns}")
        return self.root / key[:2] / f"{key}.npy"

    def get_many(self, paths: list) -> dict[int, np.ndarray]:
        """Cached vectors by position in ``paths``; misses are absent."""
        found = {}
        for i, path in enumerate(paths):
            file = self._file(path)
            if file is not None and file.is_file():
                try:
                    found[i] = np.load(file, allow_pickle=False)
                except (OSError, ValueError):
                    continue  # a damaged entry is just a miss
        return found

    def put_many(self, items: Iterable[tuple[object, np.ndarray]]) -> None:
        """Store vectors; a cache that cannot be written warns once and is skipped."""
        for path, vector in items:
            file = self._file(path)
            if file is None:
                continue
            try:
                with atomic_path(file, durable=False) as temporary, open(temporary, "wb") as handle:
                    np.save(handle, np.asarray(vector, dtype=np.float32), allow_pickle=False)
            except OSError as error:
                warnings.warn(
                    f"feature cache {str(self.root)!r} cannot be written ({error}); these features are not cached",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return
