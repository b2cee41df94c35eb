"""A corpus of good, odd-but-valid and broken image files, written into a folder.

Built from a real photo when one is available and from a synthetic picture otherwise.
Every odd file comes with the RGB picture it must load as, computed here *by hand*
with numpy (compositing, palette lookup, CMYK formula, rotation), not with the code
under test. Every broken file comes with the reason it must be refused for. Lossless
formats are used wherever the expected picture is derived from the source pixels;
for the lossy ones (CMYK and EXIF-rotated JPEG) it is derived from the decoded samples.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from skimgfeat.exceptions import EMPTY, MISSING, NOT_A_FILE, NOT_AN_IMAGE, TOO_MANY_PIXELS, TRUNCATED

GOOD, ODD, BROKEN = "good", "odd", "broken"
# Names that break naive shell or CSV handling: spaces, both quotes, non-ASCII.
AWKWARD_NAMES = ("shop photo 1.jpg", "l'étagère \"promo\".png", "商品 写真 ü.webp")


@dataclass(frozen=True)
class CorpusFile:
    """One file of the corpus.

    ``expected`` is the RGB picture an odd or good file must load as (None when a
    lossy encoding makes only "it loads" checkable); ``reason`` is the ImageLoadError
    reason a broken file must be refused with.
    """

    name: str
    path: Path
    kind: str
    expected: np.ndarray | None = None
    reason: str | None = None


def source_from_fixtures(request, size: tuple[int, int] = (96, 72)) -> np.ndarray:
    """A real shop photo when ../shared is present (the ``grocery_photos`` fixture), else synthetic."""
    import pytest

    try:
        photos = request.getfixturevalue("grocery_photos")
    except pytest.skip.Exception:
        return source_picture(None, size)
    return source_picture(photos[0], size)


def source_picture(photo: Path | None, size: tuple[int, int] = (96, 72)) -> np.ndarray:
    """An ``(h, w, 3)`` uint8 picture: a real photo resized, or a synthetic scene."""
    if photo is not None:
        with Image.open(photo) as image:
            return np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR))
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    red = 255 * x / (width - 1)
    green = 255 * y / (height - 1)
    blue = 128 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0)
    picture = np.stack([red, green, blue], axis=-1) + rng.normal(0, 12, (height, width, 3))
    return np.clip(picture, 0, 255).astype(np.uint8)


def build_corpus(folder: Path, source: np.ndarray) -> list[CorpusFile]:
    """Write every file into ``folder``; good files first, then odd, then broken."""
    folder.mkdir(parents=True, exist_ok=True)
    return _good_files(folder, source) + _odd_files(folder, source) + _broken_files(folder, source)


# -- good: plain RGB files, awkward names ---------------------------------------


def _good_files(folder: Path, source: np.ndarray) -> list[CorpusFile]:
    jpeg, png, webp = (folder / name for name in AWKWARD_NAMES)
    Image.fromarray(source).save(jpeg, quality=90)
    Image.fromarray(source).save(png)
    Image.fromarray(source).save(webp, lossless=True)
    return [
        CorpusFile("jpeg", jpeg, GOOD, _decoded_rgb(jpeg)),
        CorpusFile("png", png, GOOD, source),
        CorpusFile("webp lossless", webp, GOOD, source),
    ]


# -- odd but valid: each mode and container quirk, with its hand-made expectation --


def _odd_files(folder: Path, source: np.ndarray) -> list[CorpusFile]:
    makers = [
        _rgba_png,
        _la_png,
        _gray_png,
        _palette_png,
        _palette_transparent_png,
        _one_bit_png,
        _sixteen_bit_png,
        _cmyk_jpeg,
        _exif_rotated_jpeg,
        _animated_gif,
        _animated_webp,
        _one_pixel_png,
    ]
    return [maker(folder, source) for maker in makers]


def _binary_alpha(source: np.ndarray) -> np.ndarray:
    """Opaque except a transparent band and checkerboard: compositing is exact on 0/255."""
    height, width = source.shape[:2]
    y, x = np.mgrid[0:height, 0:width]
    transparent = (x < width // 4) | (((x // 8) + (y // 8)) % 2 == 0) & (y > height // 2)
    return np.where(transparent, 0, 255).astype(np.uint8)


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.where(alpha[..., None] == 0, 255, rgb).astype(np.uint8)


def _gray(source: np.ndarray) -> np.ndarray:
    # ITU-R 601-2 luma with Pillow's rounding is not what we test here: any gray will do.
    return (source.astype(np.uint16).sum(axis=-1) // 3).astype(np.uint8)


def _stack3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _rgba_png(folder: Path, source: np.ndarray) -> CorpusFile:
    alpha = _binary_alpha(source)
    # Transparent pixels hold saturated magenta: a loader that drops alpha shows it.
    colour = np.where(alpha[..., None] == 0, np.array([255, 0, 255], np.uint8), source)
    path = folder / "rgba.png"
    Image.fromarray(np.dstack([colour, alpha]), "RGBA").save(path)
    return CorpusFile("RGBA png", path, ODD, _on_white(colour, alpha))


def _la_png(folder: Path, source: np.ndarray) -> CorpusFile:
    gray, alpha = _gray(source), _binary_alpha(source)
    path = folder / "gray-alpha.png"
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(path)
    return CorpusFile("LA png", path, ODD, _on_white(_stack3(gray), alpha))


def _gray_png(folder: Path, source: np.ndarray) -> CorpusFile:
    gray = _gray(source)
    path = folder / "gray.png"
    Image.fromarray(gray, "L").save(path)
    return CorpusFile("L png", path, ODD, _stack3(gray))


def _palette(source: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """A P image of the source and the RGB picture its palette lookup gives (by numpy)."""
    paletted = Image.fromarray(source).quantize(colors=32)
    indices = np.asarray(paletted)
    table = np.asarray(paletted.getpalette()[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
    return paletted, table[indices]


def _palette_png(folder: Path, source: np.ndarray) -> CorpusFile:
    paletted, expected = _palette(source)
    path = folder / "palette.png"
    paletted.save(path)
    return CorpusFile("P png", path, ODD, expected)


def _palette_transparent_png(folder: Path, source: np.ndarray) -> CorpusFile:
    paletted, expected = _palette(source)
    indices = np.asarray(paletted)
    transparent_index = int(indices[0, 0])
    paletted.info["transparency"] = transparent_index
    path = folder / "palette-transparent.png"
    paletted.save(path, transparency=transparent_index)
    expected = np.where((indices == transparent_index)[..., None], 255, expected).astype(np.uint8)
    return CorpusFile("P png with transparency", path, ODD, expected)


def _one_bit_png(folder: Path, source: np.ndarray) -> CorpusFile:
    bits = _gray(source) > 127
    path = folder / "one-bit.png"
    Image.fromarray(bits).save(path)
    assert Image.open(path).mode == "1"
    return CorpusFile("1-bit png", path, ODD, _stack3(np.where(bits, 255, 0).astype(np.uint8)))


def _sixteen_bit_png(folder: Path, source: np.ndarray) -> CorpusFile:
    gray = _gray(source)
    path = folder / "gray-16bit.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(path)  # 8-bit g -> 16-bit g*257 exactly
    return CorpusFile("16-bit png", path, ODD, _stack3(gray))


def _cmyk_jpeg(folder: Path, source: np.ndarray) -> CorpusFile:
    path = folder / "cmyk.jpg"
    Image.fromarray(source).convert("CMYK").save(path, quality=95)
    with Image.open(path) as image:
        assert image.mode == "CMYK"
        cmyk = np.asarray(image).astype(np.int64)
    return CorpusFile("CMYK jpeg", path, ODD, cmyk_to_rgb(cmyk))


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """Naive CMYK -> RGB: ``(255 - c) * (255 - k) / 255`` with libImaging's rounding."""
    ink, black = cmyk[..., :3], cmyk[..., 3:]
    keep = 255 - black
    product = ink * keep + 128
    scaled = ((product >> 8) + product) >> 8
    return np.clip(keep - scaled, 0, 255).astype(np.uint8)


def _exif_rotated_jpeg(folder: Path, source: np.ndarray) -> CorpusFile:
    """Stored sideways with orientation 6 ("rotate 90 clockwise to view")."""
    path = folder / "exif-rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(source).save(path, quality=90, exif=exif)
    stored = _decoded_rgb(path)
    return CorpusFile("EXIF-rotated jpeg", path, ODD, np.rot90(stored, k=-1))


def _animated_gif(folder: Path, source: np.ndarray) -> CorpusFile:
    first, expected = _palette(source)
    second = Image.fromarray(255 - source).quantize(colors=32)
    path = folder / "animated.gif"
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    return CorpusFile("animated gif", path, ODD, expected)


def _animated_webp(folder: Path, source: np.ndarray) -> CorpusFile:
    path = folder / "animated.webp"
    frames = [Image.fromarray(source), Image.fromarray(255 - source)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    with Image.open(path) as image:
        assert getattr(image, "n_frames", 1) == 2
    return CorpusFile("animated webp", path, ODD, source)


def _one_pixel_png(folder: Path, source: np.ndarray) -> CorpusFile:
    path = folder / "one-pixel.png"
    Image.fromarray(source[:1, :1]).save(path)
    return CorpusFile("1x1 png", path, ODD, source[:1, :1])


# -- broken: each failure the loader must name ------------------------------------


def _broken_files(folder: Path, source: np.ndarray) -> list[CorpusFile]:
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    truncated = folder / "truncated download.jpg"
    whole = folder / "whole.jpg.bin"
    Image.fromarray(source).save(whole, format="JPEG", quality=90)
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    html = folder / "error page.png"
    html.write_text("<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>\n")
    bomb = folder / "bomb.png"
    bomb.write_bytes(png_header_only(60000, 60000))
    directory = folder / "looks like a photo.jpg"
    directory.mkdir()
    return [
        CorpusFile("empty", empty, BROKEN, reason=EMPTY),
        CorpusFile("truncated jpeg", truncated, BROKEN, reason=TRUNCATED),
        CorpusFile("html saved as png", html, BROKEN, reason=NOT_AN_IMAGE),
        CorpusFile("60000x60000 png header", bomb, BROKEN, reason=TOO_MANY_PIXELS),
        CorpusFile("directory named .jpg", directory, BROKEN, reason=NOT_A_FILE),
        CorpusFile("missing path", folder / "nowhere 'ø'.jpg", BROKEN, reason=MISSING),
    ]


def png_header_only(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A well-formed PNG whose header claims ``width x height``; the pixel data is a stub."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _decoded_rgb(path: Path) -> np.ndarray:
    """What Pillow's decoder makes of a plain RGB file (JPEG is lossy)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
