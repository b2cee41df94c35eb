"""Containers for transform results: ndarray, pandas or polars, as set_output asks."""

from __future__ import annotations

import numpy as np
import pandas as pd

OUTPUT_KINDS = ("default", "pandas", "polars")


def validate_output_kind(kind: str) -> None:
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"set_output(transform=...) must be one of {OUTPUT_KINDS}, got {kind!r}")


def wrap_output(values: np.ndarray, index: pd.Index | None, columns: np.ndarray, kind: str):
    """Wrap a 2-D result; 3-D results (several photos per sample) stay ndarrays."""
    if kind == "default" or values.ndim != 2:
        return values
    if kind == "pandas":
        return pd.DataFrame(values, index=index, columns=list(columns), copy=False)
    if kind == "polars":
        import polars as pl

        return pl.DataFrame(values, schema=list(columns))
    raise ValueError(f"unknown output kind {kind!r}")
