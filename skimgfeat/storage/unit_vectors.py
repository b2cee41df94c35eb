"""Unit-length float32 rows, and the FAISS module that searches them (an optional dependency)."""

from __future__ import annotations

import numpy as np


def faiss_module():
    """The ``faiss`` module, or an ImportError saying how to install it."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "an inverted-file index needs FAISS: pip install 'skimgfeat[index]' (faiss-cpu); "
            "exact search (kind='flat') works without it"
        ) from error
    return faiss


def normalise(vectors) -> np.ndarray:
    """A float32 C-contiguous copy of ``vectors`` with each non-zero row scaled to unit length."""
    vectors = np.array(vectors, dtype=np.float32, order="C", ndmin=2)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors
