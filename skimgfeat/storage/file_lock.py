"""Advisory locks between processes on one machine: an ``flock`` on a lock file, which its holder removes.

A holder unlinks its lock file when it is done, so a cache folder keeps no lock files; a
process that opened the file just before the unlink finds, after its ``flock``, that the
path now names another file, and tries again on the new one. Without ``fcntl`` (Windows)
nothing is locked: the callers then only risk computing the same thing twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCKS_AVAILABLE = fcntl is not None
_POLL_SECONDS = (0.01, 0.5)  # first and longest pause between tries of a held lock


def acquire(lock: Path, timeout: float) -> int | None:
    """An open descriptor holding ``lock``, or None (held elsewhere past ``timeout``, not writable, or no locks)."""
    if fcntl is None:
        return None
    deadline = time.monotonic() + timeout
    pause = _POLL_SECONDS[0]
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None  # a read-only folder: nothing to coordinate
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(pause, left))
            pause = min(2 * pause, _POLL_SECONDS[1])
            continue
        if _same_file(lock, descriptor):
            return descriptor
        # The holder unlinked the file between our open and our flock: this lock
        # guards nothing (a newcomer may hold the new file's). Try the new file.
        os.close(descriptor)


def release(lock: Path, descriptor: int) -> None:
    """Remove ``lock`` if it is still the file held, and release it."""
    try:
        if _same_file(lock, descriptor):
            lock.unlink()  # still ours: leave no lock file behind
    except OSError:
        pass
    os.close(descriptor)  # releases the flock


@contextmanager
def holding(lock: Path, timeout: float) -> Iterator[bool]:
    """Hold ``lock`` for the block, waiting up to ``timeout`` seconds; yields whether it is held."""
    descriptor = acquire(lock, timeout)
    try:
        yield descriptor is not None
    finally:
        if descriptor is not None:
            release(lock, descriptor)


def _same_file(path: Path, descriptor: int) -> bool:
    """Whether ``path`` still names the file open as ``descriptor``."""
    try:
        here, there = os.stat(path), os.fstat(descriptor)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
