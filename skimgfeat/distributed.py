"""Past one machine: embed a Dask collection of image paths, partition by partition.

A fitted :class:`~skimgfeat.CNNImageEmbedder` pickles with its network as CPU tensors
and rebuilds its fast backend on first use, so it travels to Dask workers (processes on
this machine or a ``dask.distributed`` cluster) as one object of the task graph. With
Dask's default threaded scheduler, or several threads per worker, the partitions of one
process share that one embedder: it is prepared once, and its decode and inference
threads are sized to the worker's ``threads_per_worker`` (see
:func:`skimgfeat.engine.threads.cpu_budget`). Each
partition is embedded with ``iter_transform`` (threaded decoding, batched inference) and
comes back as a table with the partition's index, so features stay aligned with
whatever else the collection holds.

For archives beyond one machine, :func:`write_partitioned_features` writes the features
as a partitioned Parquet dataset, one file per partition, in the layout of ``skimgfeat
extract``'s raw table: each worker writes its own file, nothing is gathered on the client,
and the folder reads back as one table (``pandas.read_parquet(folder)``).

Dask is optional: ``pip install "skimgfeat[dask]"`` (``dask[distributed]`` for a cluster).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from .embedder import ON_ERROR, CNNImageEmbedder
from .feature_tables import ERROR, features_table, run_model_info
from .storage.io import write_table

PART_PATTERN = "part-*.parquet"


def embed_partitions(paths, embedder: CNNImageEmbedder, on_error: str | None = None):
    """Embed every path of a Dask Series, one partition per task.

    Parameters
    ----------
    paths : dask.dataframe.Series or single-column dask.dataframe.DataFrame
        Image paths, e.g. ``dask.dataframe.read_parquet("listings/")["photo_path"]``.
    embedder : CNNImageEmbedder
        A fitted embedder; it is put in the graph once and shared by all partitions.
    on_error : {"raise", "nan"} or None, default=None
        None follows ``embedder.on_error``. With ``"nan"`` a file that cannot be read
        costs its row only: NaN features and the reason in the ``error`` column. With
        ``"raise"`` the computation fails with the first bad file's ImageLoadError.

    Returns
    -------
    features : dask.dataframe.DataFrame
        Lazy; same partitions and index as ``paths``; columns ``img_feature_0 ...
        img_feature_{N-1}`` (float32) and ``error`` ("" for images that loaded).

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd
    >>> from skimgfeat import CNNImageEmbedder
    >>> from skimgfeat.distributed import embed_partitions
    >>> paths = dd.from_pandas(pd.Series(["a.jpg", "b.jpg"]), npartitions=2)
    >>> embedder = CNNImageEmbedder(weights=None, random_state=0, on_error="nan").fit()
    >>> lazy = embed_partitions(paths, embedder)  # nothing runs until .compute()
    >>> lazy.npartitions, list(lazy.columns[-2:])
    (2, ['img_feature_1279', 'error'])
    """
    import dask

    paths, on_error = _checked(paths, embedder, on_error)
    meta = _features_frame(pd.Index([]), np.empty((0, embedder.n_features_out_), np.float32), {}, embedder)
    shared_embedder = dask.delayed(embedder, pure=False)
    return paths.map_partitions(_embed_partition, shared_embedder, on_error, meta=meta)


def write_partitioned_features(
    paths,
    embedder: CNNImageEmbedder,
    output_dir: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    on_error: str | None = "nan",
    overwrite: bool = False,
) -> pd.DataFrame:
    """Embed a Dask Series of image paths into a partitioned Parquet dataset, one file per partition.

    Each partition is embedded and written by the worker that holds it
    (``OUTPUT_DIR/part-00000.parquet``, ...), atomically, with the columns of ``skimgfeat
    extract``'s raw table (``image_path``, ``image_name``, ``img_feature_*``, ``error``)
    and the embedder's model info in every file's metadata. Only a small summary comes
    back to the client, so the dataset may be far larger than its memory.

    Parameters
    ----------
    paths : dask.dataframe.Series or single-column dask.dataframe.DataFrame
        Image paths, as for :func:`embed_partitions`.
    embedder : CNNImageEmbedder
        A fitted embedder.
    output_dir : str or os.PathLike
        Created if needed. A folder that already holds ``part-*.parquet`` files is
        refused (ValueError) unless ``overwrite``, which deletes them first.
    image_dir : str, os.PathLike or None, default=None
        ``image_path`` is relative to this folder (POSIX separators), as in ``extract``'s
        tables; None keeps the paths as given.
    on_error : {"raise", "nan"} or None, default="nan"
        As in :func:`embed_partitions`; with ``"nan"`` a bad file costs its row only.
    overwrite : bool, default=False

    Returns
    -------
    summary : DataFrame
        One row per file: ``file``, ``rows``, ``failed``.

    Examples
    --------
    >>> import tempfile, dask.dataframe as dd, pandas as pd
    >>> from skimgfeat import CNNImageEmbedder
    >>> from skimgfeat.distributed import write_partitioned_features
    >>> from skimgfeat.storage.samples import write_sample_images
    >>> photos = write_sample_images(tempfile.mkdtemp(), photos_per_item=1)
    >>> embedder = CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0).fit()
    >>> out = tempfile.mkdtemp()
    >>> summary = write_partitioned_features(dd.from_pandas(pd.Series(photos), npartitions=2), embedder, out)
    >>> summary["rows"].tolist(), pd.read_parquet(out).shape
    ([1, 1], (2, 1027))
    """
    import dask

    paths, on_error = _checked(paths, embedder, on_error)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob(PART_PATTERN))
    if existing and not overwrite:
        raise ValueError(f"{os.fspath(output_dir)!r} already holds {len(existing)} partition files; "
                         "pass overwrite=True to replace them")
    for old in existing:
        old.unlink()
    model_info = run_model_info(embedder)
    if image_dir is not None:
        model_info["image_dir"] = os.fspath(Path(image_dir).resolve())
    meta = pd.DataFrame({"file": pd.Series([], dtype=object), "rows": pd.Series([], dtype=np.int64),
                         "failed": pd.Series([], dtype=np.int64)})
    written = paths.map_partitions(_write_partition, dask.delayed(embedder, pure=False), on_error, folder,
                                   image_dir, model_info, meta=meta)
    return written.compute().reset_index(drop=True)


def _checked(paths, embedder: CNNImageEmbedder, on_error: str | None):
    import dask.dataframe as dd

    check_is_fitted(embedder, "model_")
    on_error = embedder.on_error if on_error is None else on_error
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR} or None, got {on_error!r}")
    if isinstance(paths, dd.DataFrame):
        if len(paths.columns) != 1:
            raise ValueError(f"expected one column of paths, got {len(paths.columns)}: {list(paths.columns)}")
        paths = paths[paths.columns[0]]
    if not isinstance(paths, dd.Series):
        raise TypeError(
            f"paths must be a dask Series (e.g. dask.dataframe.from_pandas(series, npartitions=...)), "
            f"got {type(paths).__name__}; for in-memory paths use embedder.transform"
        )
    return paths, on_error


def _embedded(paths: list[str], embedder: CNNImageEmbedder, on_error: str) -> tuple[np.ndarray, dict[int, str]]:
    features = np.empty((len(paths), embedder.n_features_out_), dtype=np.float32)
    errors: dict[int, str] = {}
    for batch in embedder.iter_transform(paths, on_error=on_error):
        features[batch.start : batch.start + len(batch.features)] = batch.features
        errors.update((position, str(error)) for position, error in batch.errors)
    return features, errors


def _embed_partition(paths: pd.Series, embedder: CNNImageEmbedder, on_error: str) -> pd.DataFrame:
    features, errors = _embedded(list(paths), embedder, on_error)
    return _features_frame(paths.index, features, errors, embedder)


def _write_partition(paths: pd.Series, embedder, on_error: str, folder: Path, image_dir, model_info: dict,
                     partition_info: dict | None = None) -> pd.DataFrame:
    features, errors = _embedded(list(paths), embedder, on_error)
    shown = list(paths) if image_dir is None else [Path(p).relative_to(image_dir).as_posix() for p in paths]
    number = partition_info["number"] if partition_info else 0
    target = write_table(features_table(shown, features, errors), folder / f"part-{number:05d}.parquet",
                         model_info=model_info)
    return pd.DataFrame({"file": [os.fspath(target)], "rows": [len(paths)], "failed": [len(errors)]})


def _features_frame(index: pd.Index, features: np.ndarray, errors: dict[int, str], embedder) -> pd.DataFrame:
    table = pd.DataFrame(features, index=index, columns=list(embedder.get_feature_names_out()), copy=False)
    table[ERROR] = pd.Series([errors.get(row, "") for row in range(len(features))], index=index, dtype=object)
    return table
