"""What users see of results: feature column names, containers (ndarray, pandas, polars), progress."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import sklearn

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


class OutputContainerMixin:
    """``set_output`` for transformers that wrap their own results with :func:`wrap_output`.

    scikit-learn's automatic wrapping cannot place a 3-D result (several photos per
    sample) or keep an input table's index, so these estimators opt out of it
    (``auto_wrap_output_keys=None``) and ask :meth:`_output_kind` instead.
    """

    def set_output(self, *, transform: str | None = None):
        """Choose the container of ``transform``: "default" (ndarray), "pandas", "polars".

        A 2-D result becomes a table with the feature names as columns and the input's
        index; a 3-D result (several photos per sample) stays an ndarray in every mode.
        None leaves the setting unchanged.
        """
        if transform is not None:
            validate_output_kind(transform)
            self._sklearn_output_config = {"transform": transform}
        return self

    def _output_kind(self) -> str:
        config = getattr(self, "_sklearn_output_config", {})
        return config.get("transform") or sklearn.get_config()["transform_output"]


def progress_bar(total: int, enabled: bool):
    """A tqdm bar on stderr counting images, with rate and ETA; inert when disabled or empty."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=not enabled or total == 0, dynamic_ncols=True,
                smoothing=0.1)
