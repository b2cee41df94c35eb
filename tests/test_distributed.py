"""Dask: partitions embedded in separate worker processes equal a local transform, row for row."""

from __future__ import annotations

from pathlib import Path

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


def test_a_partitioned_dataset_holds_extracts_layout_and_reads_back_as_one_table(embedder, listing, tmp_path):
    from skimgfeat.distributed import write_partitioned_features
    from skimgfeat.storage.io import read_model_info

    image_dir = Path(listing.iloc[0]).parent
    photos = listing[listing.map(lambda path: Path(path).parent == image_dir)]
    summary = write_partitioned_features(dd.from_pandas(photos, npartitions=3), embedder, tmp_path / "features",
                                         image_dir=image_dir)

    files = sorted((tmp_path / "features").glob("part-*.parquet"))
    assert summary["file"].tolist() == [str(path) for path in files] and len(files) == 3
    assert summary["rows"].sum() == len(photos) and summary["failed"].sum() == 0
    table = pd.read_parquet(tmp_path / "features")
    assert list(table.columns) == ["image_path", "image_name", *embedder.get_feature_names_out(), "error"]
    assert table["image_path"].tolist() == [Path(path).name for path in photos]  # relative to image_dir
    np.testing.assert_allclose(table[embedder.get_feature_names_out()].to_numpy(), embedder.transform(list(photos)),
                               rtol=1e-5, atol=1e-6)
    info = read_model_info(files[-1])
    assert info["parameters_sha256"] == embedder.model_info_["parameters_sha256"]
    assert info["image_dir"] == str(image_dir.resolve())

    with pytest.raises(ValueError, match="already holds 3 partition files; pass overwrite=True"):
        write_partitioned_features(dd.from_pandas(photos, npartitions=1), embedder, tmp_path / "features")
    write_partitioned_features(dd.from_pandas(photos, npartitions=1), embedder, tmp_path / "features", overwrite=True)
    assert len(list((tmp_path / "features").glob("part-*.parquet"))) == 1
