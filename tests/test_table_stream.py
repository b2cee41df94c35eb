"""The CLI's final tables streamed from checkpoint parts equal the tables built in memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from skimgfeat.extractor import aggregate_features_by_item, features_table
from skimgfeat.storage import table_stream
from skimgfeat.storage.checkpoint import Checkpoint, Rows
from skimgfeat.storage.io import read_model_info, read_table, write_table_chunks

WIDTH = 4


def photo_names() -> list[str]:
    """Listing order (sorted paths) that interleaves items: b_1 and b_2 are split by b_1x_1."""
    return sorted(["a_1.jpg", "a_2.jpg", "a_10.jpg", "b_1.jpg", "b_1x_1.jpg", "b_2.jpg", "sub/a_3.jpg", "c.jpg",
                   "d_1.jpg", "d_2.jpg", "e_1.jpg"])


def checkpoint_out_of_order(folder, names: list[str], rng) -> tuple[Checkpoint, np.ndarray]:
    """Parts written in another order than the listing, one row re-embedded later (latest wins)."""
    features = rng.normal(size=(len(names), WIDTH)).astype(np.float32)
    features[names.index("c.jpg")] = np.nan
    checkpoint = Checkpoint.open(folder, {}, resume=False, restart=False)
    order = rng.permutation(len(names))
    for chunk in np.array_split(order, 4):
        stale = features[chunk] + 100
        checkpoint.write_part(rows([names[i] for i in chunk], stale, names))
    for chunk in np.array_split(order, 3):
        checkpoint.write_part(rows([names[i] for i in chunk], features[chunk], names))
    return checkpoint, features


def rows(paths: list[str], features: np.ndarray, names: list[str]) -> Rows:
    failed = ["corrupt" if path == "c.jpg" else "" for path in paths]
    return Rows(paths, ["stamp"] * len(paths), failed, [""] * len(paths), features)


@pytest.mark.parametrize("chunk_rows", [1, 3, 4096])
def test_streamed_tables_equal_the_in_memory_ones(tmp_path, monkeypatch, chunk_rows):
    monkeypatch.setattr(table_stream, "CHUNK_ROWS", chunk_rows)
    names = photo_names()
    checkpoint, features = checkpoint_out_of_order(tmp_path, names, np.random.default_rng(0))
    gathered = checkpoint.gather(names, WIDTH)
    messages = {names.index("c.jpg"): "corrupt"}
    assert gathered.reasons == ["corrupt" if name == "c.jpg" else "" for name in names]

    raw = pd.concat(table_stream.raw_table_chunks(gathered, names, messages, features_table))
    expected_raw = features_table(names, features, messages)
    pd.testing.assert_frame_equal(raw.reset_index(drop=True), expected_raw)

    for method in ("mean", "max", "first"):
        chunks = table_stream.item_table_chunks(gathered, names, features_table,
                                                lambda table, m=method: aggregate_features_by_item(table, method=m))
        by_item = pd.concat(chunks).reset_index(drop=True)
        pd.testing.assert_frame_equal(by_item, aggregate_features_by_item(expected_raw, method=method))


def test_running_statistics_match_numpy(tmp_path, monkeypatch):
    monkeypatch.setattr(table_stream, "CHUNK_ROWS", 2)
    names = photo_names()
    checkpoint, features = checkpoint_out_of_order(tmp_path, names, np.random.default_rng(1))
    stats = table_stream.FeatureStatistics(WIDTH)
    columns = [f"img_feature_{i}" for i in range(WIDTH)]
    messages = {names.index("c.jpg"): "corrupt"}
    for chunk in table_stream.raw_table_chunks(checkpoint.gather(names, WIDTH), names, messages, features_table):
        stats.add(chunk, columns, (chunk["error"] == "").to_numpy())
    good = features[~np.isnan(features).any(axis=1)].astype(np.float64)
    assert stats.count == len(good)
    np.testing.assert_allclose(stats.per_feature_mean(), good.mean(axis=0))
    np.testing.assert_allclose(stats.per_feature_std(), good.std(axis=0), rtol=1e-9)
    assert stats.overall_std() == pytest.approx(good.std())
    assert (stats.minimum, stats.maximum) == (good.min(), good.max())
    assert stats.sample["image_name"].tolist() == [n.split("/")[-1] for n in names if n != "c.jpg"][:3]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_chunks_are_written_as_one_table(tmp_path, suffix):
    table = features_table([f"{i}_1.jpg" for i in range(10)], np.arange(30, dtype=np.float32).reshape(10, 3))
    path = write_table_chunks((table.iloc[i : i + 4] for i in range(0, 10, 4)), tmp_path / f"t{suffix}",
                              model_info={"model_name": "m"})
    pd.testing.assert_frame_equal(read_table(path), table, check_dtype=suffix == ".parquet")  # CSV: float64
    if suffix == ".parquet":
        assert pq.ParquetFile(path).num_row_groups == 3
        assert read_model_info(path) == {"model_name": "m"}
