"""What produced a feature table, and the embedder that produces it again.

A fitted embedder records its model info (:func:`fitted_model_info`: model, weights and
their sha256, preprocessing, the embedder's parameters, library versions); a table
written by ``skimgfeat extract`` carries it, and from it
:func:`embedder_from_model_info` rebuilds the embedder that embeds new photos the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform

import numpy as np
import pandas as pd
import PIL
import sklearn

from . import __version__
from .schema import FEATURE_PREFIX
from .storage.artifact_cache import parameters_sha256


def fitted_model_info(embedder, built, fine_tuning: dict | None = None) -> dict:
    """The ``model_info_`` of a :class:`~skimgfeat.CNNImageEmbedder` just fitted from ``built`` (the registry's model).

    ``fine_tuning``: the fine-tuning record, when the network was fine-tuned.
    """
    preprocessing = embedder.preprocessing_
    overridden = [
        f"{name}={getattr(embedder, name)!r}"
        for name in ("resize_mode", "resize_size", "crop_size", "interpolation")
        if getattr(embedder, name) is not None
    ]
    info = {
        "model_name": embedder.model_name,
        "weights": built.weights,
        "weights_sha256": built.weights_sha256,
        "parameters_sha256": parameters_sha256(embedder.model_),
        "n_features": embedder.n_features_out_,
        "feature_names": f"{FEATURE_PREFIX}0 ... {FEATURE_PREFIX}{built.n_features - 1}",
        "output": built.output,
        "input_size": [3, preprocessing.crop, preprocessing.crop],
        "preprocessing": preprocessing.to_dict(),
        "recipe_source": built.recipe_source + (f"; overridden by {', '.join(overridden)}" if overridden else ""),
        "params": json_safe_params(embedder.get_params(deep=False)),
        "precision": embedder.precision,
        "versions": library_versions(),
        "fitted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if fine_tuning is not None:
        info["fine_tuning"] = fine_tuning
    if embedder.stage_columns_ is not None:
        names = embedder.get_feature_names_out()
        info["feature_names"] = f"{names[0]} ... {names[-1]}"
        info["output"] += "; before it, the global average pool of earlier stages' outputs"
        info["multi_scale"] = [dataclasses.asdict(column) for column in embedder.stage_columns_]
    return info


def json_safe_params(params: dict) -> dict:
    """``get_params(deep=False)`` as JSON values: paths and enum members become strings."""
    return {
        name: value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
        for name, value in params.items()
    }


def library_versions() -> dict[str, str]:
    """The versions of the libraries that decide the features."""
    import torch
    import torchvision

    return {
        "skimgfeat": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
    }
