"""The checkpointed loop shared by the commands that compute one row per photo (``extract``, ``quality``).

A run holds a lock on its output folder, lists and stamps the photos, opens (or resumes)
its checkpoint, computes the rows still missing batch by batch, writing a part every
``--checkpoint-every`` rows or every ``--checkpoint-seconds``, whichever comes first
(and what is computed when interrupted), then gathers the rows
in listing order for the final tables and removes the checkpoint. The commands differ
only in what computes the rows and which tables they write.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..storage.checkpoint import PART_ROWS, Checkpoint, Gathered, Rows, file_stamps, pending
from ..storage.output import progress_bar
from .common import CHECKPOINTED_ON_INTERRUPT, UsageError, positive_float, positive_int

# A part at least this often: at 50 photos/s on a CPU, 4,096 rows alone would be 80 s of work.
PART_SECONDS = 10.0


@dataclass
class Batch:
    """Rows for consecutive inputs from ``start``; ``errors`` holds ``(position, ImageLoadError)``.

    The fields of :meth:`~skimgfeat.CNNImageEmbedder.iter_transform`'s batches.
    """

    start: int
    features: np.ndarray
    errors: list = field(default_factory=list)


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """--resume, --restart, --checkpoint-every ROWS, --checkpoint-seconds S; Ctrl-C then points to --resume."""
    parser.set_defaults(resumable=True, on_interrupt=f"interrupted; {CHECKPOINTED_ON_INTERRUPT}")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run checkpointed in OUT")
    parser.add_argument("--restart", action="store_true", help="discard the checkpoint of an interrupted run in OUT")
    parser.add_argument("--checkpoint-every", type=positive_int, default=PART_ROWS, metavar="ROWS",
                        help="write a checkpoint part every ROWS images or every --checkpoint-seconds, whichever "
                             "comes first (default: %(default)s)")
    parser.add_argument("--checkpoint-seconds", type=positive_float, default=PART_SECONDS, metavar="SECONDS",
                        help="write a checkpoint part at least this often: a kill loses at most that much work at "
                             "any speed (default: %(default)s)")


def check_checkpoint_options(args: argparse.Namespace) -> None:
    """UsageError for --resume with --restart."""
    if args.resume and args.restart:
        raise UsageError("--resume and --restart exclude each other")


class CheckpointedRun:
    """One run of a command over ``paths`` into ``args.output_dir``, checkpointed in ``checkpoint_name``.

    Open it while holding the output folder's lock
    (:func:`~skimgfeat.storage.checkpoint.lock_output_folder`).
    """

    def __init__(self, args: argparse.Namespace, paths: list[Path], fingerprint: dict, checkpoint_name: str) -> None:
        self.args = args
        self.paths = paths
        self.relative = [path.relative_to(args.image_dir).as_posix() for path in paths]
        self.stamps = file_stamps(paths)  # before computing: a file replaced meanwhile is computed again next time
        self.checkpoint = Checkpoint.open(args.output_dir, fingerprint, resume=args.resume, restart=args.restart,
                                          name=checkpoint_name)
        self.todo = pending(self.relative, self.stamps, self.checkpoint.done())
        self.seconds = 0.0

    @property
    def n_resumed(self) -> int:
        """Rows taken from the checkpoint of an earlier run."""
        return len(self.paths) - len(self.todo)

    def compute(self, batches: Callable[[list[str]], Iterable[Batch]]) -> None:
        """Compute the missing rows with ``batches(paths)``, writing a part every ``--checkpoint-every`` rows."""
        unsaved: list[Rows] = []
        n_unsaved = 0
        started = last_part = time.perf_counter()
        with progress_bar(len(self.todo), enabled=not self.args.quiet and sys.stderr.isatty()) as bar:
            try:
                for batch in batches([str(self.paths[i]) for i in self.todo]):
                    unsaved.append(self._rows(batch))
                    n_unsaved += len(batch.features)
                    bar.update(len(batch.features))
                    due = time.perf_counter() - last_part >= getattr(self.args, "checkpoint_seconds", PART_SECONDS)
                    if n_unsaved >= self.args.checkpoint_every or due:
                        self.checkpoint.write_part(Rows.concat(unsaved))
                        unsaved, n_unsaved = [], 0
                        last_part = time.perf_counter()
            finally:
                if unsaved:  # on Ctrl-C too: what is computed is kept
                    self.checkpoint.write_part(Rows.concat(unsaved))
        self.seconds = time.perf_counter() - started

    @contextmanager
    def gathered(self, n_features: int, dtype=np.float32) -> Iterator[Gathered]:
        """Every row in listing order (each part read once); the checkpoint is removed when the block succeeds."""
        with self.checkpoint.gather(self.relative, n_features, dtype) as rows:
            yield rows
        self.checkpoint.remove()

    def _rows(self, batch: Batch) -> Rows:
        positions = [self.todo[batch.start + k] for k in range(len(batch.features))]
        failures = {position - batch.start: error for position, error in batch.errors}
        return Rows(
            paths=[self.relative[i] for i in positions],
            stamps=[self.stamps[i] for i in positions],
            reasons=[failures[k].reason if k in failures else "" for k in range(len(positions))],
            details=[failures[k].detail if k in failures else "" for k in range(len(positions))],
            features=batch.features,
        )
