"""Copy check: is one photo a copy of another (resized, recompressed, cropped, re-exposed)?

CNN features say what a photo shows; two shots of one shelf taken moments apart show the
same thing and sit as close as a harshly re-encoded copy. A perceptual hash looks at the
photo's structure instead: a copy keeps it, a re-shoot moves it. Each photo gets
:data:`N_HASHES` 64-bit DCT perceptual hashes (``imagehash.phash``): the whole photo and
nine windows covering :data:`WINDOW_SIDE` of each side on a 3 x 3 grid of offsets, so a
copy cropped by a few percent still lines up with one window of its original. The copy
distance of two photos is the smallest Hamming distance between any hash of one and any
hash of the other; at most :data:`COPY_THRESHOLD` bits means a copy.

The functions here are what other modules call (:func:`copy_distance`,
:data:`COPY_THRESHOLD`, :class:`PhotoHashes`); the verdicts they share are
:data:`COPY`, :data:`DIFFERENT` and :data:`UNREADABLE`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..engine.image_loading import load_rgb_image
from ..exceptions import ImageLoadError
from ..schema import ERROR, IMAGE_PATH

# Chosen by benchmarks/duplicate_threshold.py (see benchmarks/README.md): copies and re-shoots of real photos.
COPY_THRESHOLD = 8
WINDOW_SIDE = 0.92
N_HASHES = 10
HASH_BITS = 64
HASHES_FILE = "image_hashes.parquet"

COPY = "copy"
DIFFERENT = "different"
UNREADABLE = "unreadable"

_HASH_COLUMNS = [f"phash_{i}" for i in range(N_HASHES)]
# Hashes look at a 32 x 32 grey picture: decoding past 128 pixels buys nothing.
_DECODE_SIZE = (128, 128)


def photo_hashes(image) -> np.ndarray:
    """The :data:`N_HASHES` perceptual hashes of one picture.

    Parameters
    ----------
    image : PIL.Image.Image

    Returns
    -------
    ndarray of shape (N_HASHES,), dtype uint64
        The whole picture first, then the nine windows row by row.

    Examples
    --------
    >>> from PIL import Image
    >>> hashes = photo_hashes(Image.linear_gradient("L").resize((120, 90)))
    >>> hashes.shape, hashes.dtype.name
    ((10,), 'uint64')
    """
    import imagehash

    grey = image.convert("L")
    width, height = grey.size
    window_w, window_h = max(1, round(width * WINDOW_SIDE)), max(1, round(height * WINDOW_SIDE))
    boxes = [(0, 0, width, height)]
    for top in np.linspace(0, height - window_h, 3).round().astype(int):
        for left in np.linspace(0, width - window_w, 3).round().astype(int):
            boxes.append((int(left), int(top), int(left) + window_w, int(top) + window_h))
    bits = np.stack([imagehash.phash(grey.crop(box)).hash.ravel() for box in boxes])
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def hash_photo(path: str | os.PathLike) -> np.ndarray:
    """:func:`photo_hashes` of an image file; :class:`~skimgfeat.ImageLoadError` naming it if it cannot be read."""
    with load_rgb_image(path, draft_size=_DECODE_SIZE) as image:
        image.thumbnail(_DECODE_SIZE)
        return photo_hashes(image)


def copy_distance(hashes_a, hashes_b) -> np.ndarray:
    """Smallest Hamming distance (bits) between any hash of one photo and any hash of the other.

    Parameters
    ----------
    hashes_a, hashes_b : array-like of shape (N_HASHES,) or (n_pairs, N_HASHES), uint64
        The hashes of :func:`photo_hashes` (or :attr:`PhotoHashes.hashes` rows), one
        photo of each pair per row.

    Returns
    -------
    int or ndarray of shape (n_pairs,)
        0 for the same picture; a copy is at most :data:`COPY_THRESHOLD`.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros(N_HASHES, dtype=np.uint64)
    >>> b = a.copy(); b[3] = 0b1011  # one window of b differs from every hash of a by 3 bits
    >>> b[[0, 1, 2, 4, 5, 6, 7, 8, 9]] = np.uint64(2**64 - 1)
    >>> int(copy_distance(a, b))
    3
    """
    a, b = np.asarray(hashes_a, dtype=np.uint64), np.asarray(hashes_b, dtype=np.uint64)
    single = a.ndim == 1
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    distances = np.bitwise_count(a[:, :, None] ^ b[:, None, :]).min(axis=(1, 2)).astype(int)
    return distances[0] if single else distances


class PhotoHashes:
    """The copy-check hashes of named photos, with the reason of each photo that could not be read.

    Written once per photo by ``skimgfeat extract --hashes`` as ``image_hashes.parquet``
    beside the feature table (:meth:`write`, :meth:`read`), or computed when needed
    (:meth:`compute`).

    Parameters
    ----------
    names : sequence of str
        One name per photo, as the feature table's ``image_path``.
    hashes : array-like of shape (n_photos, N_HASHES), uint64
        Rows of unreadable photos are ignored.
    errors : sequence of str or None
        Per photo, why it could not be hashed; ``""`` when it was.

    Examples
    --------
    >>> import numpy as np
    >>> hashes = PhotoHashes(["a.jpg", "b.jpg"], np.zeros((2, N_HASHES), dtype=np.uint64), ["", "missing"])
    >>> hashes.error("b.jpg"), "a.jpg" in hashes
    ('missing', True)
    """

    def __init__(self, names: Sequence[str], hashes, errors: Sequence[str] | None = None) -> None:
        self.names = np.asarray([str(name) for name in names], dtype=object)
        self.hashes = np.asarray(hashes, dtype=np.uint64).reshape(len(self.names), N_HASHES)
        self.errors = np.asarray([""] * len(self.names) if errors is None else [str(e) for e in errors], dtype=object)
        self._index = pd.Index(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name) -> bool:
        return str(name) in self._index

    def error(self, name: str) -> str:
        """Why ``name`` could not be hashed (``""`` when it was); KeyError if it is not here."""
        return self.errors[self._rows([name])[0]]

    def contains(self, names: Sequence[str]) -> np.ndarray:
        """Per name, whether it is here."""
        return self._index.get_indexer(pd.Index(names, dtype=object)) >= 0

    def lookup(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, errors) of ``names``, one row each (KeyError for a name that is not here)."""
        rows = self._rows(names)
        return self.hashes[rows], self.errors[rows]

    def rows(self, names: Iterable[str]) -> np.ndarray:
        """The hash rows of ``names`` (KeyError for a name that is not here)."""
        return self.hashes[self._rows(list(names))]

    def _rows(self, names) -> np.ndarray:
        rows = self._index.get_indexer(pd.Index(names, dtype=object))
        if (rows < 0).any():
            raise KeyError(f"no hashes for {list(np.asarray(names, dtype=object)[rows < 0][:3])}")
        return rows

    @classmethod
    def compute(
        cls,
        photos: Sequence[str | os.PathLike | None],
        names: Sequence[str] | None = None,
        *,
        n_workers: int | None = None,
    ) -> PhotoHashes:
        """Hash image files; a file that cannot be read gets its reason instead of hashes.

        Parameters
        ----------
        photos : sequence of path or None
            None: no photo is known for that name (reason ``"missing"``).
        names : sequence of str or None
            Default: the paths as given.
        n_workers : int or None
            Threads (default: one per core, at most 8).
        """
        names = [os.fspath(photo) for photo in photos] if names is None else list(names)
        workers = n_workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(_hash_or_reason, photos))
        hashes = np.zeros((len(names), N_HASHES), dtype=np.uint64)
        errors = []
        for row, result in enumerate(results):
            if isinstance(result, str):
                errors.append(result)
            else:
                hashes[row] = result
                errors.append("")
        return cls(names, hashes, errors)

    def merged(self, other: PhotoHashes) -> PhotoHashes:
        """These hashes and ``other``'s (``other`` wins for a name in both)."""
        if not len(other):
            return self
        keep = ~other.contains(self.names)
        return PhotoHashes(np.concatenate([self.names[keep], other.names]),
                           np.concatenate([self.hashes[keep], other.hashes]),
                           np.concatenate([self.errors[keep], other.errors]))

    def write(self, path: str | os.PathLike) -> Path:
        """Write ``image_path, error, phash_0..`` as Parquet (hashes as signed 64-bit integers)."""
        from ..storage.io import write_table

        table = pd.DataFrame(self.hashes.view(np.int64), columns=_HASH_COLUMNS)
        table.insert(0, ERROR, self.errors)
        table.insert(0, IMAGE_PATH, self.names)
        return write_table(table, Path(path))

    @classmethod
    def read(cls, path: str | os.PathLike) -> PhotoHashes:
        """Hashes written by :meth:`write`; ValueError naming the file if it is not such a table."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"hashes file {os.fspath(path)!r} does not exist")
        table = pd.read_parquet(path)
        missing = [column for column in (IMAGE_PATH, ERROR, *_HASH_COLUMNS) if column not in table.columns]
        if missing:
            raise ValueError(f"{os.fspath(path)!r} is not a skimgfeat hashes file: no column {missing[0]!r}")
        hashes = table[_HASH_COLUMNS].to_numpy(dtype=np.int64).view(np.uint64)
        return cls(table[IMAGE_PATH].astype(str), hashes, table[ERROR].fillna("").astype(str))


def _hash_or_reason(photo) -> np.ndarray | str:
    if photo is None:
        return "missing (no photo known)"
    try:
        return hash_photo(photo)
    except ImageLoadError as error:
        return f"{error.reason} ({error.detail})" if error.detail else error.reason
