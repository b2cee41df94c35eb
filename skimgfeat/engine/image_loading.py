"""Open an image file and turn it into one RGB picture, or say exactly why not.

Every image the package embeds goes through :func:`load_rgb_image`, so the rules
for odd inputs live in one place:

* RGBA, LA, PA, RGBa, La and palette or grayscale images with a transparent colour
  are composited onto a **white** background (product photos are shot on white);
* CMYK, YCbCr, 1-bit, L and P are converted by Pillow;
* 16-bit (``I;16*``, ``I``) and float (``F``) grayscale are scaled to 8 bits;
* the EXIF orientation tag is applied;
* animated GIF/WebP/PNG contribute their first frame;
* an image with more pixels than the limit is refused from its header, before any
  pixel is decoded;
* a file that fails and starts with a JPEG/PNG/GIF/WebP signature but lacks that
  format's end (end-of-image marker, IEND chunk, trailer, RIFF length) is reported as
  ``"truncated"``, one with a complete but unreadable body as ``"corrupt"``.
"""

from __future__ import annotations

import os
import stat

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..exceptions import (
    CORRUPT,
    EMPTY,
    MISSING,
    NOT_A_FILE,
    NOT_AN_IMAGE,
    TOO_MANY_PIXELS,
    TRUNCATED,
    UNSUPPORTED,
    ImageLoadError,
)
from .inputs import is_missing_path

_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}
_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_WHITE = (255, 255, 255, 255)


def default_max_pixels() -> int | None:
    """Pillow's own decompression-bomb limit, read when needed so users can change it."""
    return Image.MAX_IMAGE_PIXELS


def load_rgb_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = None,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Load ``path`` as an RGB :class:`PIL.Image.Image`.

    Parameters
    ----------
    path : str or os.PathLike
        The image file.
    max_pixels : int or None
        Refuse images with more pixels than this (read from the header, never
        decoded). None means Pillow's ``Image.MAX_IMAGE_PIXELS``; 0 disables this check.
        Pillow's own hard stop at ``2 * Image.MAX_IMAGE_PIXELS`` still applies when
        the file is opened: to accept larger images, raise ``PIL.Image.MAX_IMAGE_PIXELS``.
    draft_size : (int, int) or None
        Let JPEG decode at a reduced scale that still covers this size (lossy, faster).

    Raises
    ------
    ImageLoadError
        Naming the file and one of the reasons in :data:`skimgfeat.exceptions.REASONS`.
    """
    if is_missing_path(path):
        raise ImageLoadError(None, MISSING, "no path given")
    try:
        name = os.fspath(path)
    except TypeError:
        raise ImageLoadError(repr(path), NOT_A_FILE, f"expected a path, got {type(path).__name__}") from None
    _check_file(name)
    limit = default_max_pixels() if max_pixels is None else max_pixels
    try:
        with open(name, "rb") as handle:
            try:
                return _decode(handle, name, limit, draft_size)
            except ImageLoadError as error:
                raise _refined(error, handle) from None
    except OSError as error:  # open() itself failed (permissions, vanished file); ours pass through
        raise ImageLoadError(name, MISSING, str(error)) from error


def _check_file(name: str) -> None:
    try:
        info = os.stat(name)
    except (OSError, ValueError) as error:
        raise ImageLoadError(name, MISSING, getattr(error, "strerror", None) or str(error)) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ImageLoadError(name, NOT_A_FILE, kind)
    if info.st_size == 0:
        raise ImageLoadError(name, EMPTY, "0 bytes")


def _decode(handle, name: str, limit: int | None, draft_size) -> Image.Image:
    try:
        image = Image.open(handle)
    except Image.DecompressionBombError as error:
        raise ImageLoadError(name, TOO_MANY_PIXELS, str(error)) from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, NOT_AN_IMAGE, "no image format recognises this file") from None
    except Exception as error:  # noqa: BLE001 - every decoder failure becomes ours
        raise ImageLoadError(name, _classify(error), _describe(error)) from None
    try:
        return _decode_opened(image, name, limit, draft_size)
    except ImageLoadError as error:
        raise ImageLoadError(name, error.reason, error.detail) from None  # to_rgb's error lacks the path


def _decode_opened(image: Image.Image, name: str, limit: int | None, draft_size) -> Image.Image:
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageLoadError(name, CORRUPT, f"header gives size {width}x{height}")
        if limit and width * height > limit:
            raise ImageLoadError(
                name, TOO_MANY_PIXELS, f"{width}x{height} = {width * height} pixels, limit {limit}"
            )
        try:
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", draft_size)
            image.load()
            orientation = exif_orientation(image)
            rgb = to_rgb(image)
        except ImageLoadError:
            raise
        except Image.DecompressionBombError as error:
            raise ImageLoadError(name, TOO_MANY_PIXELS, str(error)) from None
        except Exception as error:  # noqa: BLE001
            raise ImageLoadError(name, _classify(error), _describe(error)) from None
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    return rgb.transpose(transpose) if transpose is not None else rgb


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1 when absent or unreadable)."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
        return 1
    return value if isinstance(value, int) else 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB by the rules in this module's docstring."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_to_8bit(np.asarray(image), mode)).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        straight = image.convert("LA") if mode == "La" else image  # Pillow has no La -> RGBA conversion
        rgba = straight.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageLoadError(image.filename or "", UNSUPPORTED, f"mode {mode}: {error}") from None


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64))
    peak = values.max(initial=0.0)
    if mode.startswith("I;16") or (mode == "I" and peak > 255.0):
        values = values / 257.0  # 16-bit: 65535 -> 255
    elif mode == "F" and peak <= 1.0:
        values = values * 255.0  # float images in [0, 1]
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _refined(error: ImageLoadError, handle) -> ImageLoadError:
    """Settle "truncated" versus "corrupt" from the file itself when it is one of our formats.

    Pillow reports a cut-off header as "cannot identify", a cut-off WebP as "could not
    create decoder", and garbage inside a complete file sometimes as "truncated": the
    file's own signature and end marker tell the real story.
    """
    if error.reason not in (NOT_AN_IMAGE, CORRUPT, TRUNCATED):
        return error
    head, tail, size = _head_and_tail(handle)
    fmt = _signature_format(head)
    if fmt is None:
        return error
    if _cut_short(fmt, head, tail, size):
        if error.reason == TRUNCATED:
            return error
        return ImageLoadError(error.path, TRUNCATED, f"{fmt} file ends early ({size} bytes); {error.detail}")
    if error.reason == NOT_AN_IMAGE:
        return ImageLoadError(error.path, CORRUPT, f"{fmt} signature but its header cannot be read")
    if error.reason == TRUNCATED:
        return ImageLoadError(error.path, CORRUPT, f"complete {fmt} file with damaged data; {error.detail}")
    return error


_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
}
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def _head_and_tail(handle) -> tuple[bytes, bytes, int]:
    try:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(0)
        head = handle.read(16)
        handle.seek(max(0, size - 16))
        return head, handle.read(16), size
    except (OSError, ValueError):
        return b"", b"", 0


def _signature_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in _SIGNATURES.items() if head.startswith(magic)), None)


def _cut_short(fmt: str, head: bytes, tail: bytes, size: int) -> bool:
    if fmt == "WebP":
        declared = int.from_bytes(head[4:8], "little") + 8  # RIFF length counts what follows it
        return size < declared
    if fmt == "GIF":
        return not tail.rstrip(b"\0").endswith(b";")  # the trailer byte
    # Some encoders pad after the end marker: looking in the last 16 bytes tolerates that.
    return _END_MARKERS[fmt] not in tail


def _classify(error: BaseException) -> str:
    text = str(error).lower()
    if isinstance(error, EOFError) or "truncated" in text:
        return TRUNCATED
    if isinstance(error, NotImplementedError) or "not supported" in text or "unsupported" in text:
        return UNSUPPORTED
    return CORRUPT


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
