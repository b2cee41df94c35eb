"""Atomic writers for feature tables (Parquet, CSV) and JSON files; a float32 reader of feature columns.

Every file is written to a temporary name in its own folder, flushed to disk and then
renamed onto its final name (``os.replace`` is atomic on POSIX and Windows), so a
reader never sees a half-written table under a final name, whatever kills the writer.

:class:`FeatureTableReader` reads the feature columns of a table (one file, or a folder
of Parquet parts) straight from Arrow into float32 blocks, a record batch at a time,
so a table of a million rows is never held whole, nor as a wide pandas frame.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..schema import FEATURE_PREFIX, IDENTITY_COLUMNS

TABLE_FORMATS = {".parquet": "parquet", ".csv": "csv"}
MODEL_INFO_KEY = b"skimgfeat.model_info"


def table_format(path: str | os.PathLike) -> str:
    """``"parquet"`` or ``"csv"`` from the suffix of ``path``; ValueError otherwise.

    >>> table_format("out/image_features_raw.parquet")
    'parquet'
    """
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise ValueError(
            f"cannot tell the table format of {os.fspath(path)!r}: its suffix must be .parquet or .csv"
        )
    return TABLE_FORMATS[suffix]


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name written as ``\\xNN``.

    On POSIX a file name is bytes; Python carries bytes that are not UTF-8 as lone
    surrogates, which Parquet, CSV and pandas' string columns refuse. Valid text is
    returned unchanged.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from a file name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    Parent folders are created. On failure the temporary file is removed and ``path``
    is left as it was. ``durable`` flushes the file to disk before the rename and the
    folder after it, so the new name survives a power cut too (off for data that can be
    recomputed, such as cache entries).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive the rename; writers create the file with the umask.
    temporary = final.parent / f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield temporary
        if durable:
            _fsync(temporary)
        os.replace(temporary, final)
        if durable:
            _fsync_folder(final.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_table(table: pd.DataFrame, path: str | os.PathLike, model_info: dict | None = None) -> Path:
    """Write ``table`` atomically as Parquet or CSV, chosen by the suffix of ``path``.

    Parameters
    ----------
    table : DataFrame
        Written without its index.
    path : str or os.PathLike
        Ends in ``.parquet`` or ``.csv``.
    model_info : dict or None
        Parquet only: stored as JSON in the schema metadata under
        ``skimgfeat.model_info`` (read it back with :func:`read_model_info`).

    Returns
    -------
    path : Path
    """
    return write_table_chunks([table], path, model_info)


def write_table_chunks(
    chunks: Iterable[pd.DataFrame], path: str | os.PathLike, model_info: dict | None = None
) -> Path:
    """Write the rows of ``chunks`` one after the other as one table, atomically.

    Each chunk is written as it comes (a Parquet row group, or CSV lines) and then
    dropped, so peak memory is one chunk however long the table. Columns and types
    are those of the first chunk; there must be at least one (it may be empty).
    Otherwise as :func:`write_table`.
    """
    kind = table_format(path)
    with atomic_path(path) as temporary:
        if kind == "csv":
            with open(temporary, "w", encoding="utf-8", newline="") as handle:
                for i, chunk in enumerate(chunks):
                    chunk.to_csv(handle, index=False, header=i == 0)
        else:
            _write_parquet(chunks, temporary, model_info)
    return Path(path)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table`."""
    if table_format(path) == "csv":
        return pd.read_csv(path, keep_default_na=False, na_values={""})
    return pd.read_parquet(path)


def read_model_info(path: str | os.PathLike) -> dict | None:
    """The model info stored in a Parquet file's metadata, or None."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(MODEL_INFO_KEY)
    return None if raw is None else json.loads(raw)


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` atomically as indented UTF-8 JSON."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return Path(path)


def _write_parquet(chunks: Iterable[pd.DataFrame], path: Path, model_info: dict | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = schema = None
    try:
        for chunk in chunks:
            if writer is None:
                schema = pa.Schema.from_pandas(chunk, preserve_index=False)
                if model_info is not None:
                    metadata = dict(schema.metadata or {})
                    metadata[MODEL_INFO_KEY] = json.dumps(model_info, default=str).encode()
                    schema = schema.with_metadata(metadata)
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(pa.Table.from_pandas(chunk, schema=schema, preserve_index=False))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"no rows to write to {os.fspath(path)!r}: a table needs at least one chunk")


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename just made); not possible on Windows, where it is skipped."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems refuse to fsync a folder; the rename itself is done
    finally:
        os.close(descriptor)


# -- reading feature columns ----------------------------------------------------------

BATCH_ROWS = 16384


@dataclass
class FeatureBatch:
    """Consecutive rows of a feature table: their identities and their features.

    Attributes
    ----------
    identities : dict from column name to ndarray of str
        The identity columns present (``image_path``, ``image_name``, ``item_id``).
    features : ndarray of shape (n_rows, n_features), float32, C-contiguous
        NaN rows are photos that failed to load.
    """

    identities: dict[str, np.ndarray]
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.features)


class FeatureTableReader:
    """The feature columns of a table written by ``skimgfeat extract``, in float32 batches.

    Parameters
    ----------
    path : str, os.PathLike or DataFrame
        A ``.parquet`` or ``.csv`` file, a folder of ``.parquet`` parts (a
        partitioned dataset, searched recursively, read in sorted path order), or a
        table already in memory.
    model_info : dict or None
        The model info of a table given in memory (files carry their own).

    Attributes
    ----------
    files : list of Path
    n_rows : int
    feature_columns : list of str
        The ``img_feature_*`` columns, in table order.
    identity_columns : list of str
        Which of ``image_path``, ``item_id``, ``image_name`` the table has.
    key : str
        ``image_path`` for a per-image table, ``item_id`` for a per-item one.
    model_info : dict or None
        From the Parquet metadata, else ``model_info.json`` beside the table; every part
        of a folder must carry the same model.

    Examples
    --------
    >>> import numpy as np, pandas as pd, tempfile, os
    >>> from skimgfeat.storage.io import FeatureTableReader, write_table
    >>> path = os.path.join(tempfile.mkdtemp(), "t.parquet")
    >>> _ = write_table(pd.DataFrame({"image_path": ["a.jpg", "b.jpg"], "img_feature_0": [1.0, 2.0]}), path)
    >>> reader = FeatureTableReader(path)
    >>> reader.n_rows, reader.key, [batch.features.dtype for batch in reader.batches()]
    (2, 'image_path', [dtype('float32')])
    """

    def __init__(self, path: str | os.PathLike | pd.DataFrame, model_info: dict | None = None) -> None:
        if isinstance(path, pd.DataFrame):
            self.path, self.files, self._csv, self._frame = None, [], True, path
            self._setup_columns(list(path.columns), "the table")
            self.model_info = model_info
            self.n_rows = len(path)
            return
        self.path = Path(path)
        if self.path.is_dir():
            self.files = sorted(self.path.rglob("*.parquet"))
            if not self.files:
                raise FileNotFoundError(f"feature folder {os.fspath(path)!r} holds no .parquet part")
        elif self.path.is_file():
            table_format(self.path)
            self.files = [self.path]
        else:
            raise FileNotFoundError(f"feature table {os.fspath(path)!r} does not exist")
        self._csv = self.files[0].suffix.lower() == ".csv"
        self._frame = read_table(self.files[0]) if self._csv else None
        columns = list(self._frame.columns) if self._csv else _parquet_columns(self.files[0])
        self._setup_columns(columns, repr(os.fspath(self.files[0])))
        self.model_info = self._read_model_info()
        self.n_rows = len(self._frame) if self._csv else sum(_parquet_rows(file) for file in self.files)

    def _setup_columns(self, columns: list, name: str) -> None:
        self.feature_columns = [column for column in columns if str(column).startswith(FEATURE_PREFIX)]
        if not self.feature_columns:
            raise ValueError(f"{name} has no {FEATURE_PREFIX}* columns: not a skimgfeat feature table")
        self.identity_columns = [column for column in IDENTITY_COLUMNS if column in columns]
        self.key = next((column for column in IDENTITY_COLUMNS[:2] if column in columns), None)
        if self.key is None:
            raise ValueError(f"{name} has none of the columns {IDENTITY_COLUMNS[:2]}: not a skimgfeat feature table")

    @property
    def n_features(self) -> int:
        return len(self.feature_columns)

    def batches(self, batch_rows: int = BATCH_ROWS) -> Iterator[FeatureBatch]:
        """All rows in table order (part after part), ``batch_rows`` at a time."""
        if self._csv:
            for start in range(0, len(self._frame), batch_rows):
                yield self._frame_batch(self._frame.iloc[start:start + batch_rows])
            return
        import pyarrow.parquet as pq

        for file in self.files:
            # Without pre-buffering: Arrow would otherwise read ahead, and keep, far more than a batch.
            handle = pq.ParquetFile(file, pre_buffer=False)
            self._check_columns(file, handle.schema_arrow.names)
            for batch in handle.iter_batches(batch_size=batch_rows, columns=self._columns()):
                yield self._arrow_batch(batch)

    def sample(self, n_rows: int, seed: int = 0) -> np.ndarray:
        """About ``n_rows`` feature rows spread over the whole table (NaN rows dropped).

        Whole Parquet row groups are drawn at random, so only they are read; every row
        when the table has no more than ``n_rows``.
        """
        rng = np.random.default_rng(seed)
        if self._csv:
            chosen = np.sort(rng.permutation(len(self._frame))[:n_rows])
            features = self._frame_batch(self._frame.iloc[chosen]).features
            return features[~np.isnan(features).any(axis=1)]
        import pyarrow.parquet as pq

        # One part open at a time: a dataset of 1,000 parts would exceed the usual 1,024 open files.
        groups = [(file, group) for file in self.files for group in range(pq.read_metadata(file).num_row_groups)]
        blocks, total = [], 0
        for position in rng.permutation(len(groups)):
            if total >= n_rows:
                break
            file, group = groups[position]
            with pq.ParquetFile(file, pre_buffer=False) as handle:
                table = handle.read_row_group(group, columns=self.feature_columns)
            features = _float32_matrix(table.columns)
            features = features[~np.isnan(features).any(axis=1)]
            blocks.append(features[: n_rows - total])
            total += len(blocks[-1])
        return np.concatenate(blocks) if blocks else np.empty((0, self.n_features), dtype=np.float32)

    def _columns(self) -> list[str]:
        return [*self.identity_columns, *self.feature_columns]

    def _arrow_batch(self, batch) -> FeatureBatch:
        identities = {name: np.asarray(batch.column(name).to_pylist(), dtype=object)
                      for name in self.identity_columns}
        features = _float32_matrix([batch.column(name) for name in self.feature_columns])
        return FeatureBatch(identities, features)

    def _frame_batch(self, frame: pd.DataFrame) -> FeatureBatch:
        identities = {name: frame[name].astype(str).to_numpy(dtype=object) for name in self.identity_columns}
        features = np.ascontiguousarray(frame[self.feature_columns].to_numpy(dtype=np.float32))
        return FeatureBatch(identities, features)

    def _check_columns(self, file: Path, names: list[str]) -> None:
        missing = [name for name in self._columns() if name not in names]
        if missing:
            raise ValueError(f"part {os.fspath(file)!r} lacks the columns {missing[:3]} of "
                             f"{os.fspath(self.files[0])!r}: not parts of one table")

    def _read_model_info(self) -> dict | None:
        if self._csv:
            beside = self.files[0].parent / "model_info.json"
            return json.loads(beside.read_text(encoding="utf-8")) if beside.is_file() else None
        info = read_model_info(self.files[0])
        for file in self.files[1:]:
            reason = model_mismatch(info, read_model_info(file))
            if reason is not None:
                raise ValueError(f"part {os.fspath(file)!r} was embedded by another model than "
                                 f"{os.fspath(self.files[0])!r}: {reason}")
        if info is None and self.path.is_file():
            beside = self.path.parent / "model_info.json"
            info = json.loads(beside.read_text(encoding="utf-8")) if beside.is_file() else None
        return info


def _float32_matrix(columns) -> np.ndarray:
    """Arrow columns (one per feature) as a C-contiguous float32 matrix, NaN for nulls."""
    n_rows = len(columns[0]) if columns else 0
    # Filled feature by feature (contiguous writes), then transposed in one pass.
    by_feature = np.empty((len(columns), n_rows), dtype=np.float32)
    for position, column in enumerate(columns):
        if column.null_count:
            column = column.fill_null(float("nan"))
        by_feature[position] = column.to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(by_feature.T)


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


# What makes two feature tables comparable: the same network, parameters and preprocessing.
_IDENTITY_KEYS = ("model_name", "n_features", "preprocessing", "multi_scale")


def model_mismatch(expected: dict | None, actual: dict | None) -> str | None:
    """Why features described by ``actual`` cannot be compared with ``expected``'s, or None.

    Compared: the model name, the number of features, the preprocessing, the multi-scale
    stages and the network's parameters (``parameters_sha256``, else ``weights_sha256``).
    A key missing on either side is not compared, so a table without model info is
    accepted; the weights' *location* (a local copy of the same file) never matters.

    Examples
    --------
    >>> model_mismatch({"model_name": "resnet18"}, {"model_name": "mobilenet_v2"})
    "model_name is 'mobilenet_v2', expected 'resnet18'"
    >>> model_mismatch({"model_name": "resnet18"}, None) is None
    True
    """
    if not expected or not actual:
        return None
    for key in _IDENTITY_KEYS:
        if key in expected and key in actual and expected[key] != actual[key]:
            return f"{key} is {actual[key]!r}, expected {expected[key]!r}"
    for key in ("parameters_sha256", "weights_sha256"):
        if expected.get(key) and actual.get(key):
            if expected[key] != actual[key]:
                return f"the network's {key} is {actual[key][:12]}..., expected {expected[key][:12]}..."
            return None
    return None
