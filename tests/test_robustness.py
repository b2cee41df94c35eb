"""End to end through CNNImageEmbedder: broken and odd files never cost rows, never misalign them.

Random weights (``weights=None, random_state=0``) so it runs anywhere; the same checks
run with the real ImageNet weights when ../shared has them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _corpus import BROKEN, GOOD, ODD, CorpusFile, build_corpus, source_from_fixtures
from PIL import Image

from skimgfeat import CNNImageEmbedder
from skimgfeat.exceptions import MISSING, ImageLoadError

# Different batch compositions may take different kernels: equal up to float rounding,
# measured against the size of the features themselves. A random-weight MobileNetV2 gives
# features of about 1e-8, so a fixed absolute tolerance (1e-5) would pass anything;
# test_the_comparison_tells_wrong_rows_rotations_and_black_backgrounds_apart shows this one cannot.
RELATIVE = 1e-4


def assert_same_features(actual, expected, err_msg: str = "") -> None:
    """Equal up to float rounding: every difference below 1e-4 of the largest feature of its row."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, err_msg
    scale = np.abs(expected).max(axis=-1, keepdims=True)
    assert np.isfinite(scale).all() and (scale > 0).all(), err_msg
    worst = (np.abs(actual - expected) / scale).max()
    assert worst <= RELATIVE, f"{err_msg}: largest difference {worst:.2e} of the row's largest feature"


@pytest.fixture(scope="module")
def source(request) -> np.ndarray:
    """A real shop photo when ../shared is present, a synthetic picture otherwise."""
    return source_from_fixtures(request, size=(128, 96))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, source) -> list[CorpusFile]:
    return build_corpus(tmp_path_factory.mktemp("corpus") / "mixed ünïcode 'dir'", source)


@pytest.fixture(scope="module")
def hand_converted(corpus, tmp_path_factory) -> dict[str, Path]:
    """Each valid file's expected picture, saved as a plain RGB PNG."""
    folder = tmp_path_factory.mktemp("hand")
    paths = {}
    for i, entry in enumerate(corpus):
        if entry.kind != BROKEN:
            paths[entry.name] = folder / f"{i}.png"
            Image.fromarray(entry.expected).save(paths[entry.name])
    return paths


@pytest.fixture(scope="module")
def embedder() -> CNNImageEmbedder:
    return CNNImageEmbedder(weights=None, random_state=0, batch_size=2, n_workers=2).fit()


def interleaved(corpus: list[CorpusFile]) -> list[CorpusFile]:
    """Broken files spread among valid ones, with runs of several bad files in a row."""
    valid = [entry for entry in corpus if entry.kind != BROKEN]
    broken = [entry for entry in corpus if entry.kind == BROKEN]
    order = [valid[0], broken[0], valid[1], *broken[1:4], *valid[2:9], *broken[4:], *valid[9:]]
    assert len(order) == len(corpus)
    return order


def transform(embedder: CNNImageEmbedder, paths, on_error: str) -> np.ndarray:
    embedder.set_params(on_error=on_error)
    try:
        return embedder.transform(paths)
    finally:
        embedder.set_params(on_error="raise")


# -- on_error="raise" ---------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 1, 3])
def test_raise_names_the_first_broken_file_and_its_reason(embedder, corpus, position):
    valid = [entry.path for entry in corpus if entry.kind != BROKEN][:3]
    for entry in (e for e in corpus if e.kind == BROKEN):
        paths = valid[:position] + [entry.path] + valid[position:]
        with pytest.raises(ImageLoadError) as caught:
            embedder.transform(paths)
        assert caught.value.reason == entry.reason, entry.name
        assert caught.value.path == str(entry.path)
        assert entry.path.name in str(caught.value)


def test_raise_is_the_default_and_zero_is_not_a_policy():
    assert CNNImageEmbedder().on_error == "raise"
    with pytest.raises(ValueError, match="on_error"):
        CNNImageEmbedder(weights=None, on_error="zero").fit()


# -- on_error="nan" -----------------------------------------------------------------


def test_nan_mode_puts_nan_exactly_at_broken_inputs_and_keeps_the_clean_rows(embedder, corpus):
    order = interleaved(corpus)
    features = transform(embedder, [entry.path for entry in order], "nan")

    assert features.shape == (len(order), embedder.n_features_out_)
    broken = np.array([entry.kind == BROKEN for entry in order])
    assert np.isnan(features[broken]).all()
    assert np.isfinite(features[~broken]).all()

    clean = embedder.transform([entry.path for entry in order if entry.kind != BROKEN])
    assert_same_features(features[~broken], clean)


def test_nan_mode_records_each_failure_with_its_path_and_reason_in_input_order(embedder, corpus):
    order = interleaved(corpus)
    transform(embedder, [entry.path for entry in order], "nan")
    recorded = [(error.path, error.reason) for error in embedder.errors_]
    assert recorded == [(str(entry.path), entry.reason) for entry in order if entry.kind == BROKEN]


def test_errors_are_reset_by_each_transform(embedder, corpus):
    broken = [entry.path for entry in corpus if entry.kind == BROKEN]
    transform(embedder, broken, "nan")
    assert len(embedder.errors_) == len(broken)
    transform(embedder, [corpus[0].path], "nan")
    assert embedder.errors_ == []


def test_a_batch_made_only_of_bad_files_still_yields_its_rows(embedder, corpus):
    """batch_size=2: the broken run fills whole batches, which must come back as NaN rows."""
    good = [entry.path for entry in corpus if entry.kind == GOOD]
    broken = [entry.path for entry in corpus if entry.kind == BROKEN]
    paths = [good[0], good[1], *broken, good[2]]

    batches = list(embedder.iter_transform(paths, on_error="nan"))
    assert [batch.start for batch in batches] == list(range(0, len(paths), 2))
    stacked = np.concatenate([batch.features for batch in batches])
    assert stacked.shape[0] == len(paths)
    assert [position for batch in batches for position, _ in batch.errors] == list(range(2, 2 + len(broken)))
    all_bad = [batch for batch in batches if all(2 <= batch.start + k < 2 + len(broken) for k in range(2))]
    assert all_bad and all(np.isnan(batch.features).all() for batch in all_bad)
    assert_same_features(stacked[[0, 1, -1]], embedder.transform([good[0], good[1], good[2]]))


def test_only_bad_files_give_an_all_nan_matrix(embedder, corpus):
    broken = [entry.path for entry in corpus if entry.kind == BROKEN]
    features = transform(embedder, broken + [None], "nan")
    assert features.shape == (len(broken) + 1, embedder.n_features_out_)
    assert np.isnan(features).all()
    assert embedder.errors_[0].reason == MISSING  # the None placeholder, first by design
    assert len(embedder.errors_) == len(broken) + 1


def test_one_decode_thread_or_two_give_the_same_rows_and_errors(embedder, corpus):
    paths = [entry.path for entry in interleaved(corpus)]
    results = []
    for workers in (1, 2):
        embedder.set_params(n_workers=workers)
        features = transform(embedder, paths, "nan")
        results.append((features, [(e.path, e.reason) for e in embedder.errors_]))
    embedder.set_params(n_workers=2)
    np.testing.assert_array_equal(np.isnan(results[0][0]), np.isnan(results[1][0]))
    finite = ~np.isnan(results[0][0]).any(axis=1)
    assert_same_features(results[0][0][finite], results[1][0][finite])
    assert results[0][1] == results[1][1]


# -- odd but valid: the same features as the picture converted by hand ---------------


def test_odd_images_embed_like_the_same_picture_converted_by_hand(embedder, corpus, hand_converted):
    odd = [entry for entry in corpus if entry.kind == ODD]
    features = embedder.transform([entry.path for entry in odd])
    reference = embedder.transform([hand_converted[entry.name] for entry in odd])
    assert np.isfinite(features).all()
    for row, entry in enumerate(odd):
        assert_same_features(features[row], reference[row], err_msg=entry.name)


def test_the_comparison_tells_wrong_rows_rotations_and_black_backgrounds_apart(embedder, corpus, tmp_path):
    """What the checks above must catch: each of these is a real loader bug, and must fail them."""
    good = [entry for entry in corpus if entry.kind == GOOD][:4]
    features = embedder.transform([entry.path for entry in good])
    assert_same_features(features, embedder.transform([entry.path for entry in good]))  # the same: passes
    with pytest.raises(AssertionError):  # rows misaligned by one
        assert_same_features(np.roll(features, 1, axis=0), features)
    rotated = tmp_path / "rotated.png"
    Image.fromarray(np.rot90(good[0].expected)).save(rotated)
    with pytest.raises(AssertionError):  # an EXIF orientation applied the wrong way
        assert_same_features(embedder.transform([rotated]), features[:1])
    rgba = next(entry for entry in corpus if entry.name == "RGBA png")
    alpha = np.asarray(Image.open(rgba.path))[..., 3:]
    on_black = tmp_path / "on-black.png"
    Image.fromarray(np.where(alpha == 0, 0, rgba.expected).astype(np.uint8)).save(on_black)
    with pytest.raises(AssertionError):  # transparency composited on black instead of white
        assert_same_features(embedder.transform([on_black]), embedder.transform([rgba.path]))


# -- awkward paths --------------------------------------------------------------------


def test_paths_with_spaces_quotes_and_non_ascii_work_in_every_input_form(embedder, corpus):
    awkward = [entry for entry in corpus if entry.kind == GOOD]
    assert any("'" in str(e.path) for e in awkward) and any(not str(e.path).isascii() for e in awkward)
    as_paths = embedder.transform([entry.path for entry in awkward])
    for form in (
        [str(entry.path) for entry in awkward],
        np.asarray([str(entry.path) for entry in awkward], dtype=object),
        pd.Series([str(entry.path) for entry in awkward], name="photo"),
        pd.DataFrame({"photo": [str(entry.path) for entry in awkward]}),
    ):
        np.testing.assert_array_equal(np.asarray(embedder.transform(form)), as_paths)
    assert np.isfinite(as_paths).all()


# -- the same with real ImageNet weights -------------------------------------------------


@pytest.mark.shared
def test_real_weights_nan_rows_and_hand_converted_equality(shared_weights, corpus, hand_converted):
    embedder = CNNImageEmbedder(weights=str(shared_weights), batch_size=4, on_error="nan").fit()
    order = interleaved(corpus)
    features = embedder.transform([entry.path for entry in order])
    broken = np.array([entry.kind == BROKEN for entry in order])
    assert np.isnan(features[broken]).all() and np.isfinite(features[~broken]).all()

    valid = [entry for entry in order if entry.kind != BROKEN]
    reference = embedder.transform([hand_converted[entry.name] for entry in valid])
    assert_same_features(features[~broken], reference)
