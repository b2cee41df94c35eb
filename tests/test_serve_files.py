"""What ``skimgfeat serve`` hands out and takes in, without a server: photo paths, uploads, thumbnails."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="skimgfeat serve needs the serve extra")

from skimgfeat.serve.files import ThumbnailCache, UploadRefused, UploadStore, photo_under  # noqa: E402


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    (folder / "2026-12-07").mkdir(parents=True)
    pixels = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "2026-12-07" / "lot7_1.jpg", quality=90)
    (tmp_path / "secret.txt").write_text("not for the web")
    os.symlink(tmp_path / "secret.txt", folder / "link_out.jpg")
    os.symlink(folder / "2026-12-07" / "lot7_1.jpg", folder / "link_in.jpg")  # stays inside: served
    return folder


def test_a_photo_is_served_only_from_inside_the_folder(photo_folder):
    inside = (photo_folder / "2026-12-07" / "lot7_1.jpg").resolve()
    assert photo_under([photo_folder], "2026-12-07/lot7_1.jpg") == inside
    assert photo_under([photo_folder], "link_in.jpg") == inside
    outside = str(photo_folder.parent / "secret.txt")
    for name in ("../secret.txt", "2026-12-07/../../secret.txt", "link_out.jpg", outside, "/etc/passwd",
                 "2026-12-07", "", "..\\secret.txt", "lot7_1.jpg\x00.png", "~/secret.txt", "nothing.jpg"):
        assert photo_under([photo_folder], name) is None, name


def test_an_upload_is_refused_with_the_reason_in_a_sentence(tmp_path):
    store = UploadStore(tmp_path / "uploads", max_bytes=50_000, max_pixels=100_000)
    buffer = io.BytesIO()
    Image.new("RGB", (200, 150), (120, 30, 40)).save(buffer, format="JPEG")
    upload_id, path = store.take(buffer.getvalue(), "lot.jpg")
    assert store.path_of(upload_id) == path and store.path_of("../" + upload_id[3:]) is None
    refusals = {
        b"": "lot.jpg is empty",
        b"\xff" * 50_001: "more than the 50,000 taken",
        b"lot 7: two cases, boxed\n" * 20: "lot.jpg is not a photo that can be read: not an image",
    }
    big = io.BytesIO()
    Image.new("L", (400, 300)).save(big, format="PNG")  # 120,000 pixels in a few hundred bytes
    refusals[big.getvalue()] = "too large a picture: 400x300 = 120000 pixels, limit 100000"
    for data, reason in refusals.items():
        with pytest.raises(UploadRefused, match=reason):
            store.take(data, "lot.jpg")
    assert list((tmp_path / "uploads").glob("*.upload")) == [path]  # nothing refused is kept


def test_a_thumbnail_is_made_once_at_reduced_scale_and_again_when_the_photo_changes(photo_folder, tmp_path):
    cache = ThumbnailCache(tmp_path / "thumbnails", side=64)
    photo = photo_folder / "2026-12-07" / "lot7_1.jpg"
    first = cache.thumbnail(photo)
    assert cache.thumbnail(photo) == first and cache.made == 1
    with Image.open(first) as thumbnail:
        assert thumbnail.size == (64, 48)
    os.utime(photo, ns=(0, 0))  # the photo replaced under the same name
    assert cache.thumbnail(photo) != first and cache.made == 2
