"""Checkpoints of long extraction runs: parts written as they are embedded, and resume.

A checkpoint is a folder ``OUTPUT_DIR/.skimgfeat-checkpoint`` holding

* ``manifest.json``: the fingerprint of the run (model, weights digest, preprocessing,
  image folder, pattern), so that a resume with other settings is refused instead of
  mixing features of two networks in one table;
* ``part-000000.npz``, ``part-000001.npz``, ...: the rows embedded so far, each part
  written to a temporary name, flushed, renamed, and its folder flushed too, so a
  ``kill -9`` or a power cut loses only the batches not yet in a part (on file
  systems that honour ``fsync``). A part holds, per image, its path relative to the
  image folder, the file's size and modification time (a file changed since is
  embedded again), the failure reason and detail (empty when it loaded), its feature
  row, and the run's fingerprint: a lost manifest is rebuilt from the parts, which are
  never deleted except by ``--restart``.

On ``--resume`` the images that failed are tried again (a file still being copied, a
network share that hiccupped); their new row replaces the failed one.

Parts are plain ``.npz`` arrays of numbers and fixed-width strings, loaded with
``allow_pickle=False``: a checkpoint can never run code.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .io import atomic_path, write_json

CHECKPOINT_DIR = ".skimgfeat-checkpoint"
MANIFEST = "manifest.json"
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint exists where it should not, or does not fit the run."""


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file: its size and modification time."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> FileStamp:
        """The stamp of ``path`` now; a file that vanished gets ``(-1, -1)`` (and fails to load as "missing")."""
        try:
            stat = os.stat(path)
        except OSError:
            return cls(-1, -1)
        return cls(stat.st_size, stat.st_mtime_ns)


@dataclass
class Rows:
    """Embedded rows: relative paths, stamps, failures and features, in one order."""

    paths: list[str]
    stamps: list[FileStamp]
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


class RowLocation(NamedTuple):
    """One checkpointed row: its file stamp, failure reason and detail, and where its features are."""

    stamp: FileStamp
    reason: str
    detail: str
    part: Path
    row: int


class Checkpoint:
    """The checkpoint folder of one output folder.

    Use :meth:`open` rather than the constructor: it decides between a fresh start, a
    resume and a refusal.

    Parameters
    ----------
    folder : Path
        ``OUTPUT_DIR/.skimgfeat-checkpoint``.
    fingerprint : dict
        JSON-serialisable description of everything that changes the features.
    """

    def __init__(self, folder: Path, fingerprint: dict) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        parts = self._part_files()
        self._next_part = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0

    @classmethod
    def open(cls, output_dir: str | os.PathLike, fingerprint: dict, *, resume: bool, restart: bool) -> Checkpoint:
        """Start, continue or refuse a checkpoint in ``output_dir``.

        An existing checkpoint is continued with ``resume``, discarded with ``restart``,
        and otherwise refused: forgetting ``--resume`` must not throw away hours of work.
        Continuing one made with another fingerprint raises :class:`CheckpointError`
        naming what differs. A checkpoint whose manifest was lost is recognised by its
        parts, and its manifest rebuilt from them.
        """
        folder = Path(output_dir) / CHECKPOINT_DIR
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
            "image_path": np.asarray(rows.paths, dtype=str),
            "size": np.asarray([stamp.size for stamp in rows.stamps], dtype=np.int64),
            "mtime_ns": np.asarray([stamp.mtime_ns for stamp in rows.stamps], dtype=np.int64),
            "reason": np.asarray(rows.reasons, dtype=str),
            "detail": np.asarray(rows.details, dtype=str),
            "features": np.asarray(rows.features, dtype=np.float32),
            "manifest": np.asarray(json.dumps(_manifest(self.fingerprint), default=str)),
        }
        with atomic_path(self.folder / f"part-{self._next_part:06d}.npz") as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
        self._next_part += 1

    def load(self, n_features: int) -> dict[str, tuple[FileStamp, str, str, np.ndarray]]:
        """Every row checkpointed so far: relative path -> (stamp, reason, detail, features).

        A path embedded twice (its file changed between runs) keeps its latest row.
        """
        index = self.index()
        features = self.read_features(list(index.values()), n_features)
        return {path: (at.stamp, at.reason, at.detail, row) for (path, at), row in zip(index.items(), features)}

    def index(self) -> dict[str, RowLocation]:
        """Where each checkpointed row is, without its features: relative path -> RowLocation.

        A path embedded twice (its file changed between runs) keeps its latest row. Only
        the small per-row arrays are read, so this stays cheap for millions of rows.
        """
        rows: dict[str, RowLocation] = {}
        for part in self._part_files():
            with np.load(part, allow_pickle=False) as npz:
                columns = zip(npz["image_path"].tolist(), npz["size"].tolist(), npz["mtime_ns"].tolist(),
                              npz["reason"].tolist(), npz["detail"].tolist())
                for row, (path, size, mtime_ns, reason, detail) in enumerate(columns):
                    rows[path] = RowLocation(FileStamp(size, mtime_ns), reason, detail, part, row)
        return rows

    def read_features(self, rows: Sequence[RowLocation], n_features: int) -> np.ndarray:
        """The feature rows at ``rows``, in that order; each part file is read once per call."""
        out = np.empty((len(rows), n_features), dtype=np.float32)
        by_part: dict[Path, list[int]] = {}
        for i, at in enumerate(rows):
            by_part.setdefault(at.part, []).append(i)
        for part, positions in by_part.items():
            with np.load(part, allow_pickle=False) as npz:
                features = npz["features"]
            if features.shape[1:] != (n_features,):
                raise CheckpointError(f"checkpoint part {part.name} has features of another width")
            out[positions] = features[[rows[i].row for i in positions]]
        return out

    def remove(self) -> None:
        """Delete the checkpoint: the run it belongs to is complete."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _part_files(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.npz"))


def pending(paths: Sequence[str], stamps: Sequence[FileStamp], done: dict) -> list[int]:
    """What is left to embed: positions of ``paths`` not in ``done`` with the same file
    stamp, or whose checkpointed row is a failure (tried again)."""
    return [
        i
        for i, (path, stamp) in enumerate(zip(paths, stamps))
        if path not in done or done[path][0] != stamp or done[path][1] != ""
    ]


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
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {os.fspath(folder)!r} has an unknown format; pass --restart to discard it")
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
