"""Turn what users pass as X into samples, each a list of image paths.

Accepted: a list/tuple/1-D array/Series of paths (one photo per sample); a
single-column DataFrame or ``(n, 1)`` array (what ColumnTransformer passes); a
DataFrame or 2-D array with several columns, or a sequence of sequences (several
photos per sample). Missing entries (None, NaN) inside a multi-photo sample are
padding, not photos.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import MISSING, ImageLoadError
from .ragged import RaggedPhotos


def is_missing_path(path: Any) -> bool:
    """True for the placeholders that mean "no photo here": None, NaN, pandas NA."""
    if path is None:
        return True
    if isinstance(path, (float, np.floating)) and math.isnan(path):
        return True
    return type(path).__name__ in {"NAType", "NaTType"}


@dataclass(frozen=True)
class ImageInput:
    """X, normalised.

    Attributes
    ----------
    samples : list of list
        One list of paths per sample. In single mode each list has exactly one entry
        (which may be a missing marker, reported as a failed image).
    multi : bool
        Several photos per sample: transform returns their rows grouped by sample
        (:class:`~skimgfeat.RaggedPhotos`).
    index : pandas.Index or None
        The input's index, for pandas output.
    """

    samples: list[list]
    multi: bool
    index: pd.Index | None

    def unique_paths(self) -> list:
        """Distinct paths in first-seen order (a photo listed twice is embedded once)."""
        seen: dict = {}
        for sample in self.samples:
            for path in sample:
                if not is_missing_path(path):
                    seen.setdefault(_key(path), path)
        return list(seen.values())

    def missing_path_errors(self) -> list[ImageLoadError]:
        """One error per sample without a path (single mode; in multi mode they are padding)."""
        if self.multi:
            return []
        return [
            ImageLoadError(None, MISSING, f"no path given for sample {i}")
            for i, (path,) in enumerate(self.samples)
            if path_key(path) is None
        ]

    def layout(self, paths: list, width: int, dtype=np.float32) -> Layout:
        """The NaN-filled result array and where each of ``paths`` (:meth:`unique_paths`) goes in it.

        Single mode: ``(n_samples, width)``. Multi mode: one row per listed photo, sample
        after sample (``Layout.offsets`` says where each sample starts), so memory follows
        the photos, never samples x largest sample. Missing paths stay NaN rows.
        """
        if self.multi:
            counts = np.fromiter((len(sample) for sample in self.samples), dtype=np.intp, count=len(self.samples))
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.intp)
            out = np.full((int(offsets[-1]), width), np.nan, dtype=dtype)
            slot_of = _ragged_slots(offsets)
        else:
            offsets = None
            out = np.full((len(self.samples), width), np.nan, dtype=dtype)
            slot_of = _single_slots
        first: dict = {}
        copies: list[tuple[int, int]] = []
        for i, sample in enumerate(self.samples):
            for j, path in enumerate(sample):
                key = path_key(path)
                if key is None:
                    continue
                slot = slot_of(i, j)
                if key in first:
                    copies.append((first[key], slot))  # a photo listed twice is embedded once
                else:
                    first[key] = slot
        rows = np.asarray([first[path_key(path)] for path in paths], dtype=np.intp)
        source, target = (np.asarray(side, dtype=np.intp) for side in zip(*copies)) if copies else (rows[:0],) * 2
        return Layout(out, rows, source, target, offsets)


def _single_slots(sample: int, photo: int) -> int:
    return sample


def _ragged_slots(offsets: np.ndarray):
    return lambda sample, photo: int(offsets[sample]) + photo


@dataclass(frozen=True)
class Layout:
    """A result array and where the vector of each unique path goes in it.

    ``rows``: the row of ``out`` for each unique path; once they are filled,
    :meth:`complete` copies the vectors of photos listed more than once to their other places.
    """

    out: np.ndarray
    rows: np.ndarray
    copy_from: np.ndarray
    copy_to: np.ndarray
    offsets: np.ndarray | None = None  # multi mode: where each sample's rows start in ``out``

    def complete(self) -> np.ndarray | RaggedPhotos:
        """The filled result: ``out``, or (multi mode) its rows grouped by sample."""
        self.out[self.copy_to] = self.out[self.copy_from]
        return self.out if self.offsets is None else RaggedPhotos(self.out, self.offsets)


def _key(path) -> str:
    return os.fspath(path)


def path_key(path) -> str | None:
    """The dictionary key of a path, None for a missing marker."""
    return None if is_missing_path(path) else _key(path)


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike)) or is_missing_path(value)


def _is_photo_list(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray, pd.Series))


def _photos(value) -> list:
    if _is_photo_list(value):
        return [path for path in value if not is_missing_path(path)]
    return [] if is_missing_path(value) else [value]


def parse_image_input(X) -> ImageInput:
    """Normalise X; raise TypeError/ValueError with the accepted forms otherwise."""
    if isinstance(X, (str, bytes, os.PathLike)):
        raise TypeError(
            f"X must be a sequence of image paths, got a single path {X!r}; wrap it in a list"
        )
    index = X.index if isinstance(X, (pd.Series, pd.DataFrame)) else None
    if isinstance(X, pd.DataFrame):
        X = X.to_numpy(dtype=object)
    elif isinstance(X, pd.Series):
        X = X.to_numpy(dtype=object)
    elif not isinstance(X, np.ndarray):
        try:
            X = list(X)
        except TypeError:
            raise TypeError(f"X must be a sequence of image paths, got {type(X).__name__}") from None
    if isinstance(X, np.ndarray) and X.ndim == 2:
        if X.shape[1] == 1:
            X = X[:, 0]
        else:
            return ImageInput([_photos(row) for row in X], True, index)
    elif isinstance(X, np.ndarray) and X.ndim != 1:
        raise ValueError(f"X must be 1-D or 2-D, got an array of shape {X.shape}")
    rows = list(X)
    if any(_is_photo_list(row) for row in rows):
        return ImageInput([_photos(row) for row in rows], True, index)
    for row in rows:
        if not _is_path(row):
            raise TypeError(
                f"X must hold image paths (str or os.PathLike) or lists of them, got {type(row).__name__}: {row!r}"
            )
    return ImageInput([[row] for row in rows], False, index)
