"""Atomic writers for feature tables (Parquet, CSV) and JSON files.

Every file is written to a temporary name in its own folder, flushed to disk and then
renamed onto its final name (``os.replace`` is atomic on POSIX and Windows), so a
reader never sees a half-written table under a final name, whatever kills the writer.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

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
