"""The files ``skimgfeat serve`` hands out or takes in: archive photos, thumbnails, uploads.

Three rules keep the server from becoming a way into the rest of the disk or a way to
exhaust it:

* :func:`photo_under` serves a photo only when its name, taken as a path relative to one
  of the archive's photo folders, stays inside that folder once every ``..`` and
  symbolic link is resolved; anything else is "not found" (the page says 404, never why).
* :class:`UploadStore` takes an uploaded photo only up to a number of bytes and of
  pixels, and only when it decodes as an image; everything else is an
  :class:`UploadRefused` with a sentence for the user (the page says 400).
* :class:`ThumbnailCache` makes each thumbnail once, decoding JPEGs at a reduced DCT
  scale, and keeps it in a cache folder keyed by the photo's path, size and time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

from ..engine.image_loading import load_rgb_image
from ..exceptions import TOO_MANY_PIXELS, ImageLoadError
from ..storage.io import atomic_path

DEFAULT_MAX_UPLOAD_BYTES = 25 * 2**20
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000
THUMBNAIL_SIDE = 256
# Uploads kept for the pair view of a search; older ones are removed first.
KEPT_UPLOADS = 200


def photo_under(roots: Sequence[Path], name: str) -> Path | None:
    """The file ``name`` names inside one of ``roots``, or None.

    None when ``name`` is empty, absolute, holds a ``..`` part, a backslash or a NUL,
    when the file does not exist, is not a regular file, or resolves (through symbolic
    links) outside the root it was looked up in.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "a.jpg").write_bytes(b"x")
    >>> photo_under([root], "a.jpg") == (root / "a.jpg").resolve()
    True
    >>> photo_under([root], "../a.jpg") is None, photo_under([root], "/etc/passwd") is None
    (True, True)
    """
    if not name or "\x00" in name or "\\" in name:
        return None
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or name.startswith("~"):
        return None
    for root in roots:
        try:
            real_root = root.resolve(strict=True)
            candidate = (real_root / relative).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            continue
        if candidate.is_relative_to(real_root) and candidate.is_file():
            return candidate
    return None


class UploadRefused(ValueError):
    """An upload that is not taken: too large, too many pixels, or not an image. The message says which."""


class UploadStore:
    """Uploaded query photos, each checked and kept under its content hash for the pair view.

    Parameters
    ----------
    folder : Path
        Where the uploads are kept (at most :data:`KEPT_UPLOADS`, oldest removed first).
    max_bytes, max_pixels : int
        The largest upload taken, in bytes of the file and pixels of the picture.
    """

    def __init__(self, folder: Path, *, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._lock = threading.Lock()

    def take(self, data: bytes, filename: str = "") -> tuple[str, Path]:
        """Check ``data`` and keep it: ``(upload id, file)``; :class:`UploadRefused` naming the reason."""
        shown = filename or "the upload"
        if not data:
            raise UploadRefused(f"{shown} is empty: choose a photo")
        if len(data) > self.max_bytes:
            raise UploadRefused(f"{shown} has {len(data):,} bytes, more than the {self.max_bytes:,} taken")
        upload_id = hashlib.sha256(data).hexdigest()[:32]
        path = self.folder / f"{upload_id}.upload"
        with self._lock:
            if not path.is_file():
                self.folder.mkdir(parents=True, exist_ok=True)
                with atomic_path(path, durable=False) as temporary:
                    temporary.write_bytes(data)
                self._forget_old()
        try:
            self.check(path, shown)
        except UploadRefused:
            path.unlink(missing_ok=True)
            raise
        return upload_id, path

    def check(self, path: Path, shown: str) -> None:
        """Refuse a file that does not decode as an image of at most ``max_pixels``."""
        try:
            with load_rgb_image(path, max_pixels=self.max_pixels, draft_size=(64, 64)):
                pass
        except ImageLoadError as error:
            if error.reason == TOO_MANY_PIXELS:
                raise UploadRefused(f"{shown} is too large a picture: {error.detail}") from None
            detail = f" ({error.detail})" if error.detail else ""
            raise UploadRefused(f"{shown} is not a photo that can be read: {error.reason}{detail}") from None

    def path_of(self, upload_id: str) -> Path | None:
        """The kept file of an upload id, None if there is none (or the id is not one)."""
        if len(upload_id) != 32 or not all(c in "0123456789abcdef" for c in upload_id):
            return None
        path = self.folder / f"{upload_id}.upload"
        return path if path.is_file() else None

    def _forget_old(self) -> None:
        kept = sorted(self.folder.glob("*.upload"), key=lambda path: path.stat().st_mtime)
        for old in kept[:-KEPT_UPLOADS]:
            old.unlink(missing_ok=True)


class ThumbnailCache:
    """JPEG thumbnails of photos, made once and kept in ``folder``.

    The key is the photo's resolved path, size and modification time and the side, so
    a replaced photo gets a new thumbnail. JPEGs are decoded at the smallest DCT scale
    that still covers the side (Pillow's draft mode).
    """

    def __init__(self, folder: Path, side: int = THUMBNAIL_SIDE) -> None:
        self.folder = Path(folder)
        self.side = side
        self.made = 0  # thumbnails made by this process: what the cache saved shows in it

    def thumbnail(self, photo: Path) -> Path:
        """The thumbnail file of ``photo``; ImageLoadError if the photo cannot be read."""
        info = photo.stat()
        key = hashlib.sha256(f"{os.fspath(photo)}\0{info.st_size}\0{info.st_mtime_ns}\0{self.side}".encode())
        path = self.folder / key.hexdigest()[:2] / f"{key.hexdigest()}.jpg"
        if not path.is_file():
            with load_rgb_image(photo, draft_size=(self.side, self.side)) as image:
                small = ImageOps.contain(image, (self.side, self.side), Image.Resampling.BILINEAR)
            with atomic_path(path, durable=False) as temporary:  # a cache entry: made again if lost
                small.save(temporary, format="JPEG", quality=85)
            self.made += 1
        return path
