"""Checkpoints of long runs over a folder of photos: parts written as rows are computed, and resume.

A checkpoint is a folder ``OUTPUT_DIR/.skimgfeat-checkpoint`` (one name per command)
holding

* ``manifest.json``: the format version and the fingerprint of the run (model, weights
  digest, preprocessing, image folder, pattern), so that a resume with other settings is
  refused instead of mixing features of two networks in one table;
* ``part-000000.npz``, ``part-000001.npz``, ...: the rows computed so far, a few
  thousand per part (``--checkpoint-every``), so a million photos make a few hundred
  files. Each part is written to a temporary name, flushed, renamed, and its folder
  flushed too, so a ``kill -9`` or a power cut loses only the rows not yet in a part (on
  file systems that honour ``fsync``). A part holds, per image, its path relative to the
  image folder, the file's stamp (the feature cache's :func:`~skimgfeat.storage.cache.file_key`:
  device, inode, size, modification and status-change times, so a file replaced since,
  even by ``cp -p`` or ``rsync -t``, is computed again), the failure reason and detail
  (empty when it loaded), its row of values, and the run's fingerprint: a lost manifest
  is rebuilt from the parts, which are never deleted except by ``--restart``.

On ``--resume`` the images that failed are tried again (a file still being copied, a
network share that hiccupped); their new row replaces the failed one. At the end
:meth:`Checkpoint.gather` reads every part once, in part order, and lays the rows out in
listing order in one flat file beside them, from which the final tables are streamed a
chunk at a time: memory stays that of one part whatever the number of photos.

Parts are plain ``.npz`` arrays of numbers and fixed-width strings, loaded with
``allow_pickle=False``: a checkpoint can never run code. While a run writes into an
output folder it holds a lock on that folder (:func:`lock_output_folder`): a second run
into the same folder is refused instead of mixing its parts with the first one's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..schema import IMAGE_PATH
from .cache import file_key
from .io import atomic_path, write_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two runs into one folder are not detected there
    fcntl = None

CHECKPOINT_DIR = ".skimgfeat-checkpoint"
MANIFEST = "manifest.json"
# 3: rows per part instead of batches per part, and the feature cache's file key as stamp.
FORMAT_VERSION = 3
PART_ROWS = 4096
_GATHERED = "gathered.bin"


class CheckpointError(ValueError):
    """A checkpoint exists where it should not, or does not fit the run."""


class OutputFolderBusy(CheckpointError):
    """Another run is writing into the same output folder."""


@contextmanager
def lock_output_folder(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Create ``output_dir`` and hold an exclusive lock on it; :class:`OutputFolderBusy` if another run holds it.

    The lock is an ``flock`` on the folder itself: it leaves no file behind and dies with
    its process, so a killed run never blocks the next one.
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield folder
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputFolderBusy(
                f"output folder {os.fspath(output_dir)!r} is in use by another skimgfeat run; "
                "wait for it to finish or write to another folder"
            ) from None
        yield folder
    finally:
        os.close(descriptor)  # releases the lock


def file_stamps(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The stamp of each file now (the feature cache's key); "" for a file that cannot be read."""
    return [file_key(path) or "" for path in paths]


@dataclass
class Rows:
    """Computed rows: relative paths, file stamps, failures and values, in one order."""

    paths: list[str]
    stamps: list[str]
    reasons: list[str]
    details: list[str]
    features: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        return cls(
            [path for part in parts for path in part.paths],
            [stamp for part in parts for stamp in part.stamps],
            [reason for part in parts for reason in part.reasons],
            [detail for part in parts for detail in part.details],
            np.concatenate([part.features for part in parts]),
        )


class Gathered:
    """The checkpointed rows of a listing, in listing order: failures in memory, values on disk.

    Made by :meth:`Checkpoint.gather`; :meth:`read` returns the values of any rows, a
    chunk at a time. Close it (or use it as a context manager) to delete its file.
    """

    def __init__(self, path: Path, n_features: int, dtype: np.dtype, reasons: list[str], details: list[str]) -> None:
        self.path = path
        self.n_features = n_features
        self.dtype = np.dtype(dtype)
        self.reasons = reasons
        self.details = details
        self._row_bytes = n_features * self.dtype.itemsize
        self._descriptor = os.open(path, os.O_RDONLY)

    def read(self, positions: Sequence[int]) -> np.ndarray:
        """The rows at ``positions`` (listing positions), in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.n_features), dtype=self.dtype)
        order = np.argsort(positions, kind="stable")
        wanted = positions[order]
        for start, stop in _runs(wanted):
            size = (stop - start) * self._row_bytes
            offset = int(wanted[start]) * self._row_bytes
            data = _read_at(self._descriptor, size, offset, self.path)
            out[order[start:stop]] = np.frombuffer(data, dtype=self.dtype).reshape(-1, self.n_features)
        return out

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Gathered:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Checkpoint:
    """The checkpoint folder of one output folder.

    Use :meth:`open` rather than the constructor: it decides between a fresh start, a
    resume and a refusal.

    Parameters
    ----------
    folder : Path
        ``OUTPUT_DIR/.skimgfeat-checkpoint`` (or another name given to :meth:`open`).
    fingerprint : dict
        JSON-serialisable description of everything that changes the rows.
    """

    def __init__(self, folder: Path, fingerprint: dict) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        parts = self.part_files()
        self._next_part = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0

    @classmethod
    def open(
        cls,
        output_dir: str | os.PathLike,
        fingerprint: dict,
        *,
        resume: bool,
        restart: bool,
        name: str = CHECKPOINT_DIR,
    ) -> Checkpoint:
        """Start, continue or refuse the checkpoint ``output_dir/name``.

        An existing checkpoint is continued with ``resume``, discarded with ``restart``,
        and otherwise refused: forgetting ``--resume`` must not throw away hours of work.
        Continuing one made with another fingerprint, or by a skimgfeat whose checkpoint
        format differs, raises :class:`CheckpointError` saying what differs. A checkpoint
        whose manifest was lost is recognised by its parts, and its manifest rebuilt from them.
        """
        folder = Path(output_dir) / name
        manifest = folder / MANIFEST
        if folder.exists() and restart:
            shutil.rmtree(folder)
        saved = _saved_manifest(folder) if folder.exists() else None
        if saved is not None and not resume:
            raise CheckpointError(
                f"{os.fspath(output_dir)!r} holds the checkpoint of an interrupted run; "
                "pass --resume to continue it or --restart to discard it"
            )
        if saved is not None:
            _check_fingerprint(saved, fingerprint, folder)
            if not manifest.is_file():
                write_json(saved, manifest)  # rebuilt from the parts
            return cls(folder, fingerprint)
        folder.mkdir(parents=True, exist_ok=True)  # killed before its manifest and first part: nothing to keep
        write_json(_manifest(fingerprint), manifest)
        return cls(folder, fingerprint)

    def write_part(self, rows: Rows) -> None:
        """Add ``rows`` to the checkpoint as one part, atomically."""
        if not rows.paths:
            return
        arrays = {
            IMAGE_PATH: np.asarray(rows.paths, dtype=str),
            "stamp": np.asarray(rows.stamps, dtype=str),
            "reason": np.asarray(rows.reasons, dtype=str),
            "detail": np.asarray(rows.details, dtype=str),
            "features": np.asarray(rows.features),
            "manifest": np.asarray(json.dumps(_manifest(self.fingerprint), default=str)),
        }
        with atomic_path(self.folder / f"part-{self._next_part:06d}.npz") as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
        self._next_part += 1

    def done(self) -> dict[str, tuple[str, str]]:
        """What is checkpointed so far, without the values: relative path -> (stamp, failure reason).

        A path computed twice (its file changed between runs) keeps its latest row. Only
        the small per-row arrays are read.
        """
        done: dict[str, tuple[str, str]] = {}
        for part in self.part_files():
            with np.load(part, allow_pickle=False) as npz:
                done.update(zip(npz[IMAGE_PATH].tolist(), zip(npz["stamp"].tolist(), npz["reason"].tolist())))
        return done

    def gather(self, relative: Sequence[str], n_features: int, dtype=np.float32) -> Gathered:
        """The rows of the paths ``relative``, in that order, reading each part once.

        The values go to a flat file in the checkpoint folder (its size: one float per
        value), written part by part; a later row of the same path replaces an earlier
        one. :class:`CheckpointError` if a part has another width or a path has no row.
        """
        position_of = {path: i for i, path in enumerate(relative)}
        n_rows, dtype = len(relative), np.dtype(dtype)
        reasons: list[str | None] = [None] * n_rows
        details: list[str | None] = [None] * n_rows
        row_bytes = n_features * dtype.itemsize
        path = self.folder / _GATHERED
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(descriptor, n_rows * row_bytes)
            for part in self.part_files():
                with np.load(part, allow_pickle=False) as npz:
                    paths, features = npz[IMAGE_PATH].tolist(), npz["features"]
                    part_reasons, part_details = npz["reason"].tolist(), npz["detail"].tolist()
                if features.shape[1:] != (n_features,):
                    raise CheckpointError(f"checkpoint part {part.name} has rows of another width")
                rows = [row for row, one in enumerate(paths) if one in position_of]
                positions = np.asarray([position_of[paths[row]] for row in rows], dtype=np.int64)
                for row, position in zip(rows, positions.tolist()):
                    reasons[position], details[position] = part_reasons[row], part_details[row]
                order = np.argsort(positions, kind="stable")
                values = np.ascontiguousarray(features[np.asarray(rows, dtype=np.int64)[order]], dtype=dtype)
                positions = positions[order]
                for start, stop in _runs(positions):
                    _write_at(descriptor, memoryview(values[start:stop]).cast("B"), int(positions[start]) * row_bytes)
        finally:
            os.close(descriptor)
        missing = [relative[i] for i, reason in enumerate(reasons) if reason is None]
        if missing:
            path.unlink(missing_ok=True)
            raise CheckpointError(f"checkpoint {os.fspath(self.folder)!r} has no row for {len(missing)} images, "
                                  f"e.g. {missing[0]!r}")
        return Gathered(path, n_features, dtype, reasons, details)

    def remove(self) -> None:
        """Delete the checkpoint: the run it belongs to is complete."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def part_files(self) -> list[Path]:
        """The parts, oldest first."""
        return sorted(self.folder.glob("part-*.npz"))


def pending(paths: Sequence[str], stamps: Sequence[str], done: dict[str, tuple[str, str]]) -> list[int]:
    """What is left to compute: positions of ``paths`` not in ``done`` with the same file
    stamp, whose file cannot be read (no stamp), or whose checkpointed row is a failure (tried again)."""
    return [
        i
        for i, (path, stamp) in enumerate(zip(paths, stamps))
        if path not in done or not stamp or done[path] != (stamp, "")
    ]


def _read_at(descriptor: int, size: int, offset: int, path) -> bytearray:
    data = bytearray(size)
    view = memoryview(data)
    done = 0
    while done < size:  # a read may return less than asked (at most about 2 GB on Linux)
        got = os.preadv(descriptor, [view[done:]], offset + done)
        if got == 0:
            raise CheckpointError(f"{os.fspath(path)!r} ends early: it was changed during the run")
        done += got
    return data


def _write_at(descriptor: int, data: memoryview, offset: int) -> None:
    while len(data):  # a write may take less than given (at most about 2 GB on Linux)
        written = os.pwrite(descriptor, data, offset)
        data, offset = data[written:], offset + written


def _runs(sorted_positions: np.ndarray) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` index ranges of ``sorted_positions`` whose values are consecutive integers."""
    if not len(sorted_positions):
        return
    breaks = np.flatnonzero(np.diff(sorted_positions) != 1) + 1
    bounds = [0, *breaks.tolist(), len(sorted_positions)]
    yield from zip(bounds[:-1], bounds[1:])


def _manifest(fingerprint: dict) -> dict:
    return {"format_version": FORMAT_VERSION, "fingerprint": fingerprint}


def _saved_manifest(folder: Path) -> dict | None:
    """The manifest of the checkpoint in ``folder``, rebuilt from its parts when it is lost; None: no checkpoint."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text(encoding="utf-8"))
    parts = sorted(folder.glob("part-*.npz"))
    if not parts:
        return None
    try:
        with np.load(parts[-1], allow_pickle=False) as npz:
            return json.loads(str(npz["manifest"]))
    except (KeyError, OSError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {os.fspath(folder)!r} lost its manifest and its parts do not say which run they belong "
            f"to ({type(error).__name__}: {error}); pass --restart to discard them"
        ) from None


def _check_fingerprint(manifest: dict, fingerprint: dict, folder: Path) -> None:
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {os.fspath(folder)!r} was written by another version of skimgfeat (checkpoint format "
            f"{version!r}, this version reads {FORMAT_VERSION}) and cannot be resumed; pass --restart to discard it"
        )
    saved = manifest.get("fingerprint", {})
    fingerprint = json.loads(json.dumps(fingerprint, default=str))  # tuples compare as the lists JSON gives back
    differences = [
        f"{key}: {saved.get(key)!r} then, {fingerprint.get(key)!r} now"
        for key in sorted(set(saved) | set(fingerprint))
        if saved.get(key) != fingerprint.get(key)
    ]
    if differences:
        raise CheckpointError(
            "cannot resume: the checkpoint was made with other settings ("
            + "; ".join(differences)
            + "); rerun with the same settings, or pass --restart to discard it"
        )
