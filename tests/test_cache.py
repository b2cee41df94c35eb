"""The feature cache is never stale, embeds a photo once across processes, and can be seen and pruned."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from _launcher import run_cli
from PIL import Image

from skimgfeat import CNNImageEmbedder
from skimgfeat.engine.backends import onnx_graph_key
from skimgfeat.engine.embedding import embedder_cache
from skimgfeat.storage.artifact_cache import parameters_sha256
from skimgfeat.storage.cache import FeatureCache, cache_info, prune_cache
from skimgfeat.storage.file_lock import LOCKS_AVAILABLE


def _embedder(cache=None, **params) -> CNNImageEmbedder:
    return CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0, cache=cache, **params).fit()


@pytest.fixture
def photo(tmp_path):
    """A photo and a same-size, same-format edit of it (other pixels, same byte count)."""
    path = tmp_path / "photos" / "lot_1.png"
    path.parent.mkdir()
    _write_pixels(path, seed=0)
    return path


def _write_pixels(path, seed: int) -> None:
    # Stored (uncompressed) PNG: the file size depends on the dimensions only.
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=0)


def _fresh(path) -> np.ndarray:
    return _embedder().transform([path])


def test_a_same_size_edit_with_its_modification_time_restored_is_embedded_again(tmp_path, photo):
    cache = tmp_path / "cache"
    before = _embedder(cache).transform([photo])
    stat = os.stat(photo)
    _write_pixels(photo, seed=1)  # what `cp -p`, `rsync -t` or unzip leave: new content, old size and mtime
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(photo).st_size, os.stat(photo).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    after = _embedder(cache).transform([photo])
    np.testing.assert_array_equal(after, _fresh(photo))
    assert not np.array_equal(after, before)


def test_a_file_replaced_while_it_is_embedded_never_leaves_its_old_features_under_the_new_file(tmp_path, photo):
    cache_dir = tmp_path / "cache"
    embedder = _embedder(cache_dir)
    cache = embedder_cache(cache_dir, embedder.model_info_, embedder.max_pixels, embedder.decode_device)
    keys = cache.keys([photo])  # the run looks at the file ...
    old_features = _fresh(photo)  # ... decodes and embeds it ...
    replacement = photo.with_name("incoming.png")
    _write_pixels(replacement, seed=2)
    os.replace(replacement, photo)  # ... the file is replaced before the result is stored ...
    cache.put(keys[0], old_features[0])  # ... and stored under the key the run took

    np.testing.assert_array_equal(embedder.transform([photo]), _fresh(photo))
    assert embedder.n_embedded_ == 1


def test_a_file_replaced_between_transforms_is_embedded_again(tmp_path, photo):
    embedder = _embedder(tmp_path / "cache")
    embedder.transform([photo])
    replacement = photo.with_name("incoming.png")
    _write_pixels(replacement, seed=3)
    shutil.copystat(photo, replacement)
    os.replace(replacement, photo)
    np.testing.assert_array_equal(embedder.transform([photo]), _fresh(photo))


def test_max_pixels_is_part_of_the_key(tmp_path, photo):
    cache = tmp_path / "cache"
    _embedder(cache, on_error="nan").transform([photo])
    small = _embedder(cache, on_error="nan", max_pixels=100)
    assert np.isnan(small.transform([photo])).all()  # refused from its header, not served from the cache
    assert [error.reason for error in small.errors_] == ["too many pixels"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # multi_scale taps other layers of the same parameters: another width
        ({"multi_scale": 2, "backend": "eager"}, {"multi_scale": 3, "backend": "eager"}),
        ({"multi_scale": 3, "backend": "eager"}, {"multi_scale": 2, "backend": "eager"}),
        ({"resize_size": 64, "backend": "eager"}, {"resize_size": 80, "backend": "eager"}),
        ({"interpolation": "bilinear", "backend": "eager"}, {"interpolation": "bicubic", "backend": "eager"}),
    ],
    ids=["multi_scale 2 then 3", "multi_scale 3 then 2", "resize", "interpolation"],
)
def test_embedders_that_differ_in_what_changes_the_features_never_share_entries(tmp_path, photo, first, second):
    cache = tmp_path / "cache"
    small = {"resize_size": 64, "crop_size": 64}
    _embedder(cache, **{**small, **first}).transform([photo])
    other = _embedder(cache, **{**small, **second})
    features = other.transform([photo])
    assert other.n_embedded_ == 1  # a miss: computed, not served from the first embedder's entry
    np.testing.assert_array_equal(features, _embedder(**{**small, **second}).transform([photo]))


def test_multi_scale_networks_over_the_same_parameters_never_share_a_prepared_graph():
    # The ONNX graph is kept in the artifact cache under a key made from the parameters and the
    # module's repr: the taps must be in it, or multi_scale=3 would run multi_scale=2's graph.
    two, three = (_embedder(multi_scale=n, backend="eager") for n in (2, 3))
    assert parameters_sha256(two.model_) == parameters_sha256(three.model_)
    assert onnx_graph_key(two.model_, 224) != onnx_graph_key(three.model_, 224)


def test_hits_are_counted_and_the_cache_can_be_seen_and_pruned(tmp_path, synthetic_photos):
    cache = tmp_path / "cache"
    embedder = _embedder(cache)
    embedder.transform(synthetic_photos)
    assert embedder.n_embedded_ == len(synthetic_photos)
    embedder.transform(synthetic_photos)
    assert embedder.n_embedded_ == 0

    info = cache_info(cache)
    assert info.entries == len(synthetic_photos) and info.bytes > 0
    one_entry = info.bytes // info.entries
    assert prune_cache(cache, older_than=3600).entries == 0  # all used just now
    assert prune_cache(cache, max_bytes=2 * one_entry).entries == len(synthetic_photos) - 2
    assert cache_info(cache).entries == 2
    embedder.transform(synthetic_photos)
    assert embedder.n_embedded_ == len(synthetic_photos) - 2
    assert not list(cache.rglob("*.lock"))  # no lock file outlives its run


_FILL = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from skimgfeat import CNNImageEmbedder

    cache, ready, *paths = sys.argv[1:]
    embedder = CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0, cache=cache).fit().prepare()
    Path(ready, str(len(list(Path(ready).iterdir())))).touch()
    while len(list(Path(ready).iterdir())) < 2:  # start embedding together
        time.sleep(0.01)
    embedder.transform(paths)
    print(embedder.n_embedded_)
    """
)


def test_two_processes_filling_one_cache_embed_each_photo_once(tmp_path, synthetic_photos, traced_templates):
    cache, ready = tmp_path / "cache", tmp_path / "ready"
    ready.mkdir()
    photos = [str(p) for p in synthetic_photos]
    command = [sys.executable, "-c", _FILL, str(cache), str(ready), *photos]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    counts = [int(run.communicate(timeout=300)[0]) for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert sum(counts) == len(photos)
    assert cache_info(cache).entries == len(photos)
    np.testing.assert_array_equal(_embedder(cache).transform(photos), _fresh_many(photos))


def _fresh_many(paths) -> np.ndarray:
    return _embedder().transform(paths)


def test_a_cache_entry_is_used_again_by_its_last_use_time(tmp_path, synthetic_photos):
    cache = tmp_path / "cache"
    embedder = _embedder(cache)
    embedder.transform(synthetic_photos[:2])
    entries = sorted(cache.rglob("*.npy"))
    past = time.time() - 7200
    for entry in entries:
        os.utime(entry, (past, past))
    embedder.transform(synthetic_photos[:1])  # a hit marks its entry as used now
    assert prune_cache(cache, older_than=3600).entries == 1
    embedder.transform(synthetic_photos[:1])
    assert embedder.n_embedded_ == 0  # the entry in use survived


def test_the_cache_command_shows_and_prunes_the_folder(tmp_path, synthetic_photos):
    cache = tmp_path / "cache"
    _embedder(cache).transform(synthetic_photos[:3])

    def skimgfeat(*args):
        return run_cli("cache", cache, *args, timeout=120)

    shown = skimgfeat()
    assert shown.returncode == 0 and ": 3 entries" in shown.stdout
    pruned = skimgfeat("--max-size", "0")
    assert pruned.returncode == 0 and "removed 3 entries" in pruned.stdout and ": 0 entries" in pruned.stdout
    assert skimgfeat("--max-size", "lots").returncode == 2


def test_features_decoded_on_a_device_are_never_served_to_the_exact_decoder(tmp_path, synthetic_photos):
    cache = tmp_path / "cache"
    jpegs = [p for p in synthetic_photos if p.suffix == ".jpg"]
    _embedder(cache, decode_device="cpu").transform(jpegs)  # torchvision's decoder: not bit-exact
    exact = _embedder(cache)
    np.testing.assert_array_equal(exact.transform(jpegs), _fresh_many(jpegs))
    assert exact.n_embedded_ == len(jpegs)  # another namespace: nothing served across decoders


def test_a_zero_length_entry_counts_as_a_miss(tmp_path, synthetic_photos):
    cache = tmp_path / "cache"
    _embedder(cache).transform(synthetic_photos)
    for entry in cache.rglob("*.npy"):
        entry.write_bytes(b"")  # what a power cut can leave after a rename that was not made durable
    embedder = _embedder(cache)
    np.testing.assert_array_equal(embedder.transform(synthetic_photos), _fresh_many(synthetic_photos))
    assert embedder.n_embedded_ == len(synthetic_photos)
    assert all(entry.stat().st_size > 0 for entry in cache.rglob("*.npy"))  # and is written again


@pytest.mark.skipif(not LOCKS_AVAILABLE, reason="no advisory locks on this platform")
def test_waiting_for_an_entry_another_process_computes_gives_up_after_the_timeout(tmp_path, photo):
    cache = FeatureCache(tmp_path / "cache", "namespace")
    (key,) = cache.keys([photo])
    with cache.claim([key]) as claimed:  # held as by a stuck process
        assert claimed == {0}
        started = time.monotonic()
        assert cache.wait(key, timeout=0.3) is None
        assert 0.3 <= time.monotonic() - started < 10


@pytest.mark.skipif(not LOCKS_AVAILABLE, reason="no advisory locks on this platform")
def test_a_waiter_whose_lock_file_was_replaced_waits_for_the_new_holder(tmp_path, photo):
    cache = FeatureCache(tmp_path / "cache", "namespace")
    (key,) = cache.keys([photo])
    first = cache.claim([key])
    assert first.__enter__() == {0}  # process A computes the entry
    (lock,) = (tmp_path / "cache").rglob("*.lock")
    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault("vector", cache.wait(key, timeout=60)))
    waiter.start()
    time.sleep(0.3)  # the waiter has opened A's lock file
    lock.unlink()  # the file goes (a clean-up) ...
    second = cache.claim([key])
    assert second.__enter__() == {0}  # ... and process C locks a new one at the same path
    first.__exit__(None, None, None)  # A lets go of a lock that no longer guards the entry
    time.sleep(0.3)
    assert waiter.is_alive()  # the waiter must wait for C, not take A's orphaned lock as the entry's
    vector = np.arange(4, dtype=np.float32)
    cache.put(key, vector)
    second.__exit__(None, None, None)
    waiter.join(60)
    np.testing.assert_array_equal(result["vector"], vector)
