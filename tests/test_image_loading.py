"""load_rgb_image: every mode and container becomes the right RGB picture; every failure is named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _corpus import BROKEN, CorpusFile, build_corpus, png_header_only, source_from_fixtures
from _launcher import run_python
from PIL import Image

from skimgfeat import CNNImageEmbedder, ImageFeatureExtractor
from skimgfeat.engine.image_loading import default_max_pixels, load_rgb_image, to_rgb
from skimgfeat.engine.inputs import is_missing_path
from skimgfeat.engine.preprocessing import Preprocessing
from skimgfeat.exceptions import (
    CORRUPT,
    EMPTY,
    MISSING,
    NOT_A_FILE,
    NOT_AN_IMAGE,
    REASONS,
    TOO_MANY_PIXELS,
    TRUNCATED,
    ImageLoadError,
)


@pytest.fixture(scope="module")
def source(request) -> np.ndarray:
    """A real shop photo when ../shared is present, a synthetic picture otherwise."""
    return source_from_fixtures(request)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, source) -> list[CorpusFile]:
    return build_corpus(tmp_path_factory.mktemp("corpus") / "files", source)


def by_kind(corpus: list[CorpusFile], *kinds: str) -> list[CorpusFile]:
    return [entry for entry in corpus if entry.kind in kinds]


# -- valid files: the picture the corpus computed by hand ----------------------------


def test_every_valid_file_loads_as_its_hand_converted_rgb_picture(corpus):
    for entry in by_kind(corpus, "good", "odd"):
        image = load_rgb_image(entry.path)
        assert image.mode == "RGB", entry.name
        np.testing.assert_array_equal(np.asarray(image), entry.expected, err_msg=entry.name)


def test_the_loaded_picture_outlives_the_file(corpus, tmp_path):
    """Pixels are read before the file is closed: moving the file away changes nothing."""
    original = next(entry for entry in corpus if entry.name == "animated gif")
    copy = tmp_path / "copy.gif"
    copy.write_bytes(original.path.read_bytes())
    image = load_rgb_image(copy)
    copy.unlink()
    np.testing.assert_array_equal(np.asarray(image), original.expected)


def test_rgba_half_transparent_pixel_is_blended_with_white(tmp_path):
    path = tmp_path / "half.png"
    Image.new("RGBA", (2, 2), (0, 0, 200, 128)).save(path)
    pixel = np.asarray(load_rgb_image(path))[0, 0].astype(int)
    # 128/255 of the colour plus 127/255 of white.
    np.testing.assert_allclose(pixel, [127, 127, 227], atol=1)


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I;16", np.array([[0, 257 * 100, 65535]], dtype=np.uint16), [0, 100, 255]),
        ("I", np.array([[0, 257 * 100, 65535]], dtype=np.int32), [0, 100, 255]),  # 16-bit data in a 32-bit mode
        ("I", np.array([[0, 100, 255]], dtype=np.int32), [0, 100, 255]),  # 8-bit data in a 32-bit mode
        ("F", np.array([[0.0, 100 / 255, 1.0]], dtype=np.float32), [0, 100, 255]),  # float in [0, 1]
        ("F", np.array([[0.0, 100.0, 300.0]], dtype=np.float32), [0, 100, 255]),  # float in [0, 255], clipped
    ],
)
def test_high_depth_grayscale_is_scaled_to_8_bits(tmp_path, mode, values, expected):
    path = tmp_path / f"{mode.replace(';', '_')}.tif"
    Image.fromarray(values).save(path)
    with Image.open(path) as stored:
        assert stored.mode == mode
    pixels = np.asarray(load_rgb_image(path))
    np.testing.assert_array_equal(pixels[0], np.repeat(np.asarray(expected, np.uint8)[:, None], 3, axis=1))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
                                  "HSV", "I;16", "I;16B", "I", "F"])
def test_to_rgb_accepts_every_pillow_mode(mode):
    assert to_rgb(Image.new(mode, (3, 2))).mode == "RGB"


def test_orientation_tags_1_to_8_all_give_the_upright_picture(tmp_path, source):
    """Each tag stores the picture transformed; loading must undo exactly that transform."""
    upright = source[:40, :60]
    stored_as = {
        1: upright,
        2: upright[:, ::-1],
        3: upright[::-1, ::-1],
        4: upright[::-1],
        5: upright.transpose(1, 0, 2),
        6: np.rot90(upright, k=1),
        7: np.rot90(upright, k=-1)[::-1],
        8: np.rot90(upright, k=-1),
    }
    for tag, stored in stored_as.items():
        exif = Image.Exif()
        exif[0x0112] = tag
        path = tmp_path / f"orientation-{tag}.png"
        Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif)
        np.testing.assert_array_equal(np.asarray(load_rgb_image(path)), upright, err_msg=f"tag {tag}")


def test_draft_decodes_a_large_jpeg_at_reduced_scale(tmp_path, source):
    path = tmp_path / "big.jpg"
    Image.fromarray(source).resize((1200, 900)).save(path)
    # The smallest DCT scale (1/2, 1/4, 1/8) that still covers 256x256.
    assert load_rgb_image(path, draft_size=(256, 256)).size == (600, 450)
    assert load_rgb_image(path).size == (1200, 900)


def test_the_embedder_decodes_a_camera_sized_jpeg_at_reduced_scale_and_stays_close_to_full_decoding(
    tmp_path, imagenet_dir, shared_weights
):
    photos = []
    for i, source in enumerate(sorted(imagenet_dir.glob("*.JPEG"))[::25]):  # 4 real photos, 3 MP each
        with Image.open(source) as image:
            photos.append(tmp_path / f"camera{i}.jpg")
            image.convert("RGB").resize((2048, 1536), Image.Resampling.BICUBIC).save(photos[-1], quality=92)
    recipe = Preprocessing(resize=256, crop=224, draft=True)
    assert load_rgb_image(photos[0], draft_size=recipe.draft_size).size == (1024, 768)  # 1/2: 2x the target kept
    assert load_rgb_image(photos[0], draft_size=(256, 256)).size == (512, 384)  # what 1x the target would allow
    reduced = CNNImageEmbedder(weights=shared_weights, backend="eager").fit().transform(photos)  # the default
    exact = CNNImageEmbedder(weights=shared_weights, backend="eager", draft=False).fit().transform(photos)
    original = ImageFeatureExtractor(weights=shared_weights).embedder.set_params(backend="eager").transform(photos)
    np.testing.assert_array_equal(original, exact)  # the original module's API decodes in full
    cosine = (reduced * exact).sum(axis=1) / np.linalg.norm(reduced, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosine.min() >= 0.995  # the documented bound (measured on 200 photos of 5-10 MP: docs/performance.md)
    assert not np.array_equal(reduced, exact)  # and it did decode differently


# -- broken files: the reason and the file are named ---------------------------------


def test_every_broken_file_is_refused_with_its_reason_and_name(corpus):
    for entry in by_kind(corpus, BROKEN):
        with pytest.raises(ImageLoadError) as caught:
            load_rgb_image(entry.path)
        assert caught.value.reason == entry.reason, entry.name
        assert caught.value.path == str(entry.path)
        assert str(entry.path) in str(caught.value) or repr(str(entry.path)) in str(caught.value)
        assert entry.reason in str(caught.value)


def test_image_load_error_is_a_value_error_and_pickles():
    import pickle

    error = ImageLoadError("/photos/a b'c.jpg", TRUNCATED, "cut at 10 bytes")
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.path, clone.reason, clone.detail, str(clone)) == (error.path, error.reason, error.detail, str(error))
    assert set(REASONS) >= {MISSING, NOT_A_FILE, EMPTY, TRUNCATED, CORRUPT, NOT_AN_IMAGE, TOO_MANY_PIXELS}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95])
def test_a_cut_off_download_is_truncated_in_every_format(tmp_path, source, fmt, fraction):
    whole = tmp_path / "whole"
    Image.fromarray(source).save(whole, format=fmt)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: max(12, int(len(data) * fraction))])
    with pytest.raises(ImageLoadError) as caught:
        load_rgb_image(cut)
    assert caught.value.reason == TRUNCATED, caught.value


def test_a_complete_file_with_garbage_inside_is_corrupt_not_truncated(tmp_path, source):
    path = tmp_path / "damaged.png"
    Image.fromarray(source).save(path)
    data = bytearray(path.read_bytes())
    data[100:140] = b"\x00" * 40  # inside the image data: its CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError) as caught:
        load_rgb_image(path)
    assert caught.value.reason == CORRUPT, caught.value


@pytest.mark.parametrize("placeholder", [None, float("nan"), np.float32("nan"), np.float64("nan")])
def test_missing_placeholders_are_missing(placeholder):
    assert is_missing_path(placeholder)
    with pytest.raises(ImageLoadError) as caught:
        load_rgb_image(placeholder)
    assert caught.value.reason == MISSING


def test_a_non_path_is_not_a_file():
    with pytest.raises(ImageLoadError) as caught:
        load_rgb_image(12345)
    assert caught.value.reason == NOT_A_FILE


def test_a_named_pipe_is_refused_without_blocking_on_open(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    fifo = tmp_path / "stream.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError) as caught:
        load_rgb_image(fifo)
    assert caught.value.reason == NOT_A_FILE


UNREADABLE_CHILD = """
import os, sys
from skimgfeat.engine.image_loading import load_rgb_image
from skimgfeat.exceptions import ImageLoadError
if os.geteuid() == 0:  # root reads any file: drop to nobody, as a deployment's service user would be
    os.setgid(65534)
    os.setuid(65534)
try:
    load_rgb_image(sys.argv[1])
except ImageLoadError as error:
    print(error.reason, error.path, str(error), sep="\\n")
"""


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="POSIX permissions")
def test_an_unreadable_file_is_named(source):
    # Under /tmp (world-traversable): the child, as another user, must reach the file and fail to open it.
    folder = Path(tempfile.mkdtemp(prefix="skimgfeat-unreadable-"))
    try:
        folder.chmod(0o755)
        path = folder / "locked.png"
        Image.fromarray(source).save(path)
        path.chmod(0)
        result = run_python(UNREADABLE_CHILD, str(path))
        assert result.returncode == 0, result.stderr
        reason, named, message = result.stdout.strip().split("\n")[-3:]
        assert (reason, named) == (MISSING, str(path))  # the reason open() failures carry
        assert "locked.png" in message and "Permission denied" in message
    finally:
        shutil.rmtree(folder)


def test_paths_may_be_str_pathlike_or_bytes(corpus):
    good = by_kind(corpus, "good")[0].path
    for form in (good, str(good), os.fsencode(good)):
        assert load_rgb_image(form).size == good_size(good)


def good_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


# -- too many pixels: refused from the header --------------------------------------


def test_the_default_limit_is_pillows_and_follows_it(monkeypatch):
    assert default_max_pixels() == Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1234)
    assert default_max_pixels() == 1234


def test_an_image_over_the_limit_is_refused_before_its_pixels_are_read(tmp_path):
    """The header claims 1000x1000 and there are no pixels at all: decoding would say "truncated"."""
    path = tmp_path / "promise.png"
    path.write_bytes(png_header_only(1000, 1000, idat=b""))
    with pytest.raises(ImageLoadError) as caught:
        load_rgb_image(path, max_pixels=999_999)
    assert caught.value.reason == TOO_MANY_PIXELS
    assert "1000x1000" in str(caught.value)
    with pytest.raises(ImageLoadError) as caught:
        load_rgb_image(path, max_pixels=1_000_000)
    assert caught.value.reason != TOO_MANY_PIXELS  # at the limit it is decoded, and found empty


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns, then we refuse
def test_the_limit_follows_pillows_setting_when_none_is_given(tmp_path, source, monkeypatch):
    path = tmp_path / "photo.png"
    Image.fromarray(source).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", source.shape[0] * source.shape[1] - 1)
    with pytest.raises(ImageLoadError) as caught:
        load_rgb_image(path)
    assert caught.value.reason == TOO_MANY_PIXELS
    assert load_rgb_image(path, max_pixels=0).size == (source.shape[1], source.shape[0])


def test_a_60000_square_header_is_refused_fast_without_allocating(tmp_path):
    """In a fresh process: refusing the bomb must not grow the resident memory by the ~10 GB decoding needs."""
    bomb = tmp_path / "bomb 60000x60000.png"
    bomb.write_bytes(png_header_only(60000, 60000))
    script = textwrap.dedent(
        """
        import resource, sys
        from skimgfeat.engine.image_loading import load_rgb_image
        from skimgfeat.exceptions import ImageLoadError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_rgb_image(sys.argv[1])
        except ImageLoadError as error:
            print(error.reason)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(bomb)], capture_output=True, text=True, timeout=60, check=True
    )
    reason, grown_mib = done.stdout.split("\n")[:2]
    assert reason == TOO_MANY_PIXELS
    assert int(grown_mib) < 50
