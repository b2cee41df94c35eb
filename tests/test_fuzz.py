"""Property: whatever bytes a file holds, load_rgb_image returns an RGB picture or raises ImageLoadError.

Nothing else may escape (no OSError, SyntaxError, struct.error, ValueError from a
decoder), and no input may hang: each example runs under a watchdog that dumps every
thread's stack and ends the process if one load takes longer than HANG_SECONDS.
"""

from __future__ import annotations

import faulthandler
import io
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from _corpus import source_from_fixtures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from skimgfeat.engine.image_loading import load_rgb_image
from skimgfeat.exceptions import REASONS, ImageLoadError

HANG_SECONDS = 30
# Mutated headers can claim any size; a 1 Mpx limit keeps a fuzzed "valid" image from
# allocating hundreds of MB on a small CI machine. The limit itself is tested elsewhere.
MAX_PIXELS = 1_000_000
FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,  # the watchdog is the hang guard; per-example timing varies on shared CI
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def seeds(request) -> dict[str, bytes]:
    """Small real encodings to mutate: JPEG, PNG with alpha, lossy WebP, animated GIF."""
    picture = source_from_fixtures(request, size=(48, 36))
    rgb = Image.fromarray(picture)
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.tile(np.arange(48, dtype=np.uint8) * 5, (36, 1))))
    encoded = {}
    for name, image, options in [
        ("jpg", rgb, {"format": "JPEG", "quality": 80}),
        ("png", rgba, {"format": "PNG"}),
        ("webp", rgb, {"format": "WEBP", "quality": 70}),
        ("gif", rgb, {"format": "GIF", "save_all": True, "append_images": [Image.fromarray(255 - picture)]}),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, **options)
        encoded[name] = buffer.getvalue()
    return encoded


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@contextmanager
def hang_guard():
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def assert_rgb_or_our_error(path: Path) -> None:
    with hang_guard():
        try:
            image = load_rgb_image(path, max_pixels=MAX_PIXELS)
        except ImageLoadError as error:
            assert error.reason in REASONS
            assert error.path == str(path)
            return
    assert image.mode == "RGB"
    assert image.width >= 1 and image.height >= 1
    assert np.asarray(image).shape == (image.height, image.width, 3)


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """Byte flips, overwrites (often in the header), a cut, or an inserted run."""
    mutated = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        operation = draw(st.sampled_from(["flip", "header", "cut", "insert", "delete"]))
        if not mutated:
            break
        at = draw(st.integers(0, len(mutated) - 1))
        if operation == "flip":
            mutated[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "header":
            at = draw(st.integers(0, min(len(mutated), 64) - 1))
            mutated[at] = draw(st.integers(0, 255))
        elif operation == "cut":
            del mutated[at:]
        elif operation == "insert":
            mutated[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del mutated[at : at + draw(st.integers(1, 64))]
    return bytes(mutated)


@FUZZ_SETTINGS
@given(data=st.binary(max_size=2048), extension=st.sampled_from(["jpg", "png", "webp", "gif", "bin"]))
def test_random_bytes_give_rgb_or_our_error(folder, data, extension):
    path = folder / f"random photo é.{extension}"
    path.write_bytes(data)
    assert_rgb_or_our_error(path)


@FUZZ_SETTINGS
@given(choice=st.data())
def test_mutated_real_images_give_rgb_or_our_error(folder, seeds, choice):
    fmt = choice.draw(st.sampled_from(sorted(seeds)))
    path = folder / f"mutated 'photo'.{fmt}"
    path.write_bytes(choice.draw(mutations(seeds[fmt])))
    assert_rgb_or_our_error(path)


@FUZZ_SETTINGS
@given(choice=st.data())
def test_a_signature_glued_to_random_bytes_gives_rgb_or_our_error(folder, seeds, choice):
    """The decoders' own code paths, reached with a plausible start and garbage after it."""
    fmt = choice.draw(st.sampled_from(sorted(seeds)))
    keep = choice.draw(st.integers(2, 48))
    path = folder / f"glued.{fmt}"
    path.write_bytes(seeds[fmt][:keep] + choice.draw(st.binary(max_size=1024)))
    assert_rgb_or_our_error(path)
