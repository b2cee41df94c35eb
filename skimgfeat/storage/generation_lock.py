"""One writer at a time in an index folder, and readers that keep the generation they read.

Two kinds of advisory ``flock`` locks, both released by the kernel when their process
dies (a ``SIGKILL`` included), so no lock outlives its holder:

- :class:`WriterLock`: an exclusive lock on ``INDEX_DIR/LOCK``, held by a writer from
  the moment it reads the live generation until the new one is live. The file keeps
  the description of its holder (process id, host, command, since when), so a second
  writer that gives up can say who holds it.
- :func:`hold_generation`: a shared lock on ``gen-NNNNNN/READERS``, held by a reader
  for as long as it uses that generation. A writer removes an old generation only
  when it can take that lock exclusively, i.e. when no reader holds it.

Without ``fcntl`` (Windows) nothing is locked: two writers may then race, as before.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..exceptions import IndexDirectoryError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = "LOCK"
READERS_FILE = "READERS"
WAIT_ENV = "SKIMGFEAT_LOCK_WAIT"
DEFAULT_WAIT_SECONDS = 600.0  # a daily intake of tens of thousands of photos waits for another one to end
_POLL_SECONDS = (0.02, 0.5)
_held: set[str] = set()  # the folders whose writer lock this process holds


def holds_writer_lock(directory: str | os.PathLike) -> bool:
    """Whether this process holds the writer lock of ``directory`` (always True without locks)."""
    return fcntl is None or _key(directory) in _held


def _key(directory) -> str:
    return os.path.realpath(os.fspath(directory))


class WriterBusyError(IndexDirectoryError):
    """Another process holds the writer lock of the folder (for longer than we waited)."""


def default_wait() -> float:
    """Seconds a writer waits for another one: ``SKIMGFEAT_LOCK_WAIT``, else 600."""
    try:
        return float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_SECONDS))
    except ValueError:
        return DEFAULT_WAIT_SECONDS


class WriterLock:
    """The writer lock of ``directory``: a context manager.

    Parameters
    ----------
    directory : path
        The index (or archive) folder, created if needed.
    wait : float or None
        Seconds to wait for another writer; None: :func:`default_wait`. 0: fail at once.

    Raises
    ------
    WriterBusyError
        On entry, when another writer still holds the lock after ``wait`` seconds; the
        message names it.

    Examples
    --------
    >>> import tempfile
    >>> with WriterLock(tempfile.mkdtemp()) as lock:
    ...     lock.held
    True
    """

    def __init__(self, directory: str | os.PathLike, wait: float | None = None) -> None:
        self.directory = Path(directory)
        self.wait = default_wait() if wait is None else float(wait)
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        return self._descriptor is not None or fcntl is None

    def __enter__(self) -> WriterLock:
        if fcntl is None:
            return self
        if self.directory.exists() and not self.directory.is_dir():
            raise IndexDirectoryError(self.directory, "is a file, not a folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.wait
        pause = _POLL_SECONDS[0]
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                left = deadline - time.monotonic()
                if left <= 0:
                    holder = _holder(path)
                    os.close(descriptor)
                    raise WriterBusyError(
                        self.directory, f"is being changed by another process ({holder}); waited {self.wait:g} s "
                        f"(set {WAIT_ENV} to wait longer), run again when it has finished") from None
                time.sleep(min(pause, left))
                pause = min(2 * pause, _POLL_SECONDS[1])
        description = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
                       "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(description) + "\n").encode(), 0)
        self._descriptor = descriptor
        _held.add(_key(self.directory))
        return self

    def __exit__(self, *exc) -> None:
        if self._descriptor is not None:
            _held.discard(_key(self.directory))
            try:
                os.ftruncate(self._descriptor, 0)  # nobody holds it: no stale description
            except OSError:
                pass
            os.close(self._descriptor)  # releases the flock
            self._descriptor = None


@contextmanager
def writer_lock_held(directory: str | os.PathLike, wait: float | None = None) -> Iterator[None]:
    """Hold the writer lock of ``directory`` for the block, unless this process holds it already."""
    if holds_writer_lock(directory):
        yield
        return
    with WriterLock(directory, wait):
        yield


def _holder(path: Path) -> str:
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
        return f"process {description['pid']} on {description['host']} since {description['since']}: " \
               f"{description['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not described itself yet"


def hold_generation(folder: Path) -> int | None:
    """A descriptor holding a shared lock on the generation ``folder``; close it (:func:`release`) to let it go.

    None: no locks on this system, or a generation written before generations had a
    readers' lock (nothing to hold). FileNotFoundError: the generation was retired
    meanwhile (read ``CURRENT`` again).
    """
    if fcntl is None:
        return None
    path = folder / READERS_FILE
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if folder.is_dir() and not path.exists():
            return None
        raise
    fcntl.flock(descriptor, fcntl.LOCK_SH)  # waits while a writer retires it
    try:
        still_there = os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except OSError:
        still_there = False
    if not still_there:  # retired while we waited: the folder was renamed away
        os.close(descriptor)
        raise FileNotFoundError(path)
    return descriptor


def retire(folder: Path, trash: Path) -> bool:
    """Rename generation ``folder`` to ``trash`` if no reader holds it; whether it was.

    The exclusive lock is held across the rename: a reader that opened ``READERS`` just
    before waits, then finds the path gone and reads ``CURRENT`` again. The caller
    deletes ``trash``.
    """
    if fcntl is None:
        os.rename(folder, trash)
        return True
    try:
        descriptor = os.open(folder / READERS_FILE, os.O_RDONLY)
    except FileNotFoundError:
        os.rename(folder, trash)  # an older generation without readers' lock
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return False
    try:
        os.rename(folder, trash)
    finally:
        os.close(descriptor)
    return True


def release(descriptor: int | None) -> None:
    """Let a generation held by :func:`hold_generation` go."""
    if descriptor is not None:
        try:
            os.close(descriptor)
        except OSError:
            pass
