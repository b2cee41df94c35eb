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

Dask is optional: ``pip install "skimgfeat[dask]"`` (``dask[distributed]`` for a cluster).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from .embedder import ON_ERROR, CNNImageEmbedder
from .storage.tables import ERROR


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
    meta = _features_frame(pd.Index([]), np.empty((0, embedder.n_features_out_), np.float32), {}, embedder)
    shared_embedder = dask.delayed(embedder, pure=False)
    return paths.map_partitions(_embed_partition, shared_embedder, on_error, meta=meta)


def _embed_partition(paths: pd.Series, embedder: CNNImageEmbedder, on_error: str) -> pd.DataFrame:
    features = np.empty((len(paths), embedder.n_features_out_), dtype=np.float32)
    errors: dict[int, str] = {}
    for batch in embedder.iter_transform(list(paths), on_error=on_error):
        features[batch.start : batch.start + len(batch.features)] = batch.features
        errors.update((position, str(error)) for position, error in batch.errors)
    return _features_frame(paths.index, features, errors, embedder)


def _features_frame(index: pd.Index, features: np.ndarray, errors: dict[int, str], embedder) -> pd.DataFrame:
    table = pd.DataFrame(features, index=index, columns=list(embedder.get_feature_names_out()), copy=False)
    table[ERROR] = pd.Series([errors.get(row, "") for row in range(len(features))], index=index, dtype=object)
    return table
