"""Files derived once per machine and reused by every later fit: prepared graphs, digests.

Preparing a network costs about as much as embedding a hundred photos (exporting it to
ONNX, checking it against eager, hashing its weights file), and a grid search, a clone
or an unpickled copy would pay it again every time. What it produces depends only on
inputs that are cheap to name, so it is kept on disk under that name:

* a prepared graph, under a digest of everything it depends on (the network's
  parameters and architecture, the input size, the export settings and the versions
  of torch, onnx and onnxruntime);
* the sha256 of a weights file, under the file's identity (absolute path, inode, size,
  modification and change times): a file replaced in any way has a new identity.

The folder is ``$SKIMGFEAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/skimgfeat``, else
``~/.cache/skimgfeat``; ``SKIMGFEAT_CACHE_DIR=off`` disables it. Entries are written
atomically and carry the sha256 of their content: a damaged or unreadable entry is a
miss, and a cache that cannot be written costs speed, never a result.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import file_lock
from .io import atomic_path

CACHE_DIR_ENV = "SKIMGFEAT_CACHE_DIR"
_DISABLED = "off"
_DIGEST_BYTES = 64  # an entry starts with the hex sha256 of the rest
# How long to wait for another process computing an entry before computing it here too.
COMPUTE_WAIT_SECONDS = 900.0


def cache_dir() -> Path | None:
    """The artifact folder, or None when ``SKIMGFEAT_CACHE_DIR=off``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return None if configured.lower() == _DISABLED else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "skimgfeat"


def digest(*parts: str | bytes) -> str:
    """sha256 of ``parts``, each length-prefixed so that no two lists collide.

    >>> digest("ab", "c") == digest("ab", "c") != digest("a", "bc")
    True
    """
    hasher = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else part.encode("utf-8", "surrogateescape")
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()


def load(kind: str, key: str) -> bytes | None:
    """The entry ``kind/key``, or None when absent, unreadable or damaged."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        raw = (folder / kind / key).read_bytes()
    except OSError:
        return None
    stored, content = raw[:_DIGEST_BYTES], raw[_DIGEST_BYTES:]
    if stored != hashlib.sha256(content).hexdigest().encode("ascii"):
        return None
    return content


def store(kind: str, key: str, content: bytes) -> None:
    """Write the entry ``kind/key``; silently skipped when the folder is not writable."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        with atomic_path(folder / kind / key, durable=False) as temporary:
            temporary.write_bytes(hashlib.sha256(content).hexdigest().encode("ascii") + content)
    except OSError:
        pass  # a read-only home or a full disk: the next fit prepares again


@contextmanager
def computing(kind: str, key: str) -> Iterator[None]:
    """Hold the entry ``kind/key``'s lock while it is computed and stored.

    Processes that prepare the same entry at once (grid-search jobs, Dask or pytest
    workers on one machine) then compute it once: the others wait here, and find it
    with :func:`load` when they get the lock. Without a writable folder: no wait.
    """
    folder = cache_dir()
    if folder is None:
        yield
        return
    with file_lock.holding(folder / kind / f"{key}.lock", COMPUTE_WAIT_SECONDS):
        yield


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's content, computed once per version of the file."""
    absolute = os.path.abspath(os.fspath(path))
    info = os.stat(absolute)
    identity = digest(absolute, *(str(n) for n in (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)))
    cached = load("file-sha256", identity)
    if cached is not None:
        return cached.decode("ascii")
    hasher = hashlib.sha256()
    with open(absolute, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    value = hasher.hexdigest()
    store("file-sha256", identity, value.encode("ascii"))
    return value


def parameters_sha256(module) -> str:
    """A digest of every tensor in a network's state dict: identifies the network exactly.

    Duck-typed on ``state_dict()`` and the tensors' own methods, so this layer needs no torch import.
    """
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
