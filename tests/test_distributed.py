"""Dask: partitions embedded in separate worker processes equal a local transform, row for row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skimgfeat import CNNImageEmbedder, ImageLoadError
from skimgfeat.distributed import embed_partitions

dd = pytest.importorskip("dask.dataframe", reason="dask is a test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def embedder():
    return CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0, on_error="nan").fit()


@pytest.fixture
def listing(synthetic_photos, tmp_path) -> pd.Series:
    empty = tmp_path / "empty photo.jpg"
    empty.write_bytes(b"")
    paths = [str(p) for p in synthetic_photos[:3]] + [str(empty)] + [str(p) for p in synthetic_photos[3:]]
    return pd.Series(paths, index=pd.Index([f"lot-{i}" for i in range(len(paths))], name="lot"))


def test_worker_processes_give_the_local_features_and_report_bad_files(embedder, listing):
    lazy = embed_partitions(dd.from_pandas(listing, npartitions=3), embedder)
    table = lazy.compute(scheduler="processes", num_workers=2)

    local = embedder.transform(list(listing))
    assert list(table.index) == list(listing.index)
    assert list(table.columns) == [*embedder.get_feature_names_out(), "error"]
    np.testing.assert_allclose(table.drop(columns="error").to_numpy(), local, rtol=1e-5, atol=1e-6)
    assert np.isnan(table.loc["lot-3"].drop("error").to_numpy(dtype=float)).all()
    assert "empty photo.jpg" in table.loc["lot-3", "error"] and "empty" in table.loc["lot-3", "error"]
    assert (table.drop(index="lot-3")["error"] == "").all()


def test_raise_fails_the_computation_naming_the_file(embedder, listing):
    lazy = embed_partitions(dd.from_pandas(listing, npartitions=2), embedder, on_error="raise")
    with pytest.raises(ImageLoadError, match="empty photo.jpg"):
        lazy.compute(scheduler="sync")


def test_a_single_column_frame_is_accepted_and_other_inputs_are_refused(embedder, listing):
    frame = dd.from_pandas(listing.to_frame("photo"), npartitions=1)
    assert embed_partitions(frame, embedder).npartitions == 1
    with pytest.raises(TypeError, match="dask Series"):
        embed_partitions(list(listing), embedder)
    with pytest.raises(ValueError, match="one column"):
        embed_partitions(dd.from_pandas(pd.DataFrame({"a": ["x"], "b": ["y"]}), npartitions=1), embedder)
    with pytest.raises(ValueError, match="on_error"):
        embed_partitions(frame, embedder, on_error="zero")
