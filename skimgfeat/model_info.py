"""What produced a feature table, and the embedder that produces it again.

A fitted embedder records its model info (:func:`fitted_model_info`: model, weights and
their sha256, preprocessing, the embedder's parameters, library versions); a table
written by ``skimgfeat extract`` carries it, and from it
:func:`embedder_from_model_info` rebuilds the embedder that embeds new photos the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import warnings

import numpy as np
import pandas as pd
import PIL
import sklearn

from . import __version__
from .storage.output import FEATURE_PREFIX


def fitted_model_info(embedder, built, fine_tuning: dict | None = None) -> dict:
    """The ``model_info_`` of a :class:`~skimgfeat.CNNImageEmbedder` just fitted from ``built`` (the registry's model).

    ``fine_tuning``: the fine-tuning record, when the network was fine-tuned.
    """
    from .registry import parameters_sha256  # torch: only once a network is fitted

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


def embedder_from_model_info(model_info: dict, weights: str | os.PathLike | None = None, **overrides):
    """The (unfitted) :class:`~skimgfeat.CNNImageEmbedder` that produced a feature table.

    Parameters
    ----------
    model_info : dict
        A table's model info (:func:`skimgfeat.storage.io.read_model_info`, ``model_info.json``).
        Its ``params`` (the embedder's ``get_params``) are used when present, else its
        ``model_name``, ``weights`` and ``preprocessing``.
    weights : str, os.PathLike or None, default=None
        Replaces the recorded weights: a local state-dict file for offline use. None
        keeps the recorded ones.
    **overrides
        Further embedder parameters to replace (``device``, ``n_workers``, ...).

    Returns
    -------
    CNNImageEmbedder

    Examples
    --------
    >>> from skimgfeat import embedder_from_model_info
    >>> info = {"model_name": "mobilenet_v2", "weights": "IMAGENET1K_V1", "preprocessing": {"resize_mode": "square"}}
    >>> embedder_from_model_info(info, weights="weights.pth").get_params()["weights"]
    'weights.pth'
    """
    from .embedder import CNNImageEmbedder

    if not model_info or "model_name" not in model_info and "params" not in model_info:
        raise ValueError("the table carries no model info: cannot tell which network embeds new photos")
    embedder = CNNImageEmbedder()
    valid = embedder.get_params()
    if "params" in model_info:
        params = {name: value for name, value in model_info["params"].items() if name in valid}
    else:
        preprocessing = model_info.get("preprocessing") or {}
        recorded = model_info.get("weights")
        if isinstance(recorded, str) and recorded.startswith("file:"):  # how model info names a weights file
            recorded = recorded.removeprefix("file:")
        params = {"model_name": model_info["model_name"], "weights": recorded}
        if "resize_mode" in preprocessing:
            params["resize_mode"] = preprocessing["resize_mode"]
        params["draft"] = bool(preprocessing.get("draft", False))
    if weights is not None:
        params["weights"] = os.fspath(weights)
    params.update(overrides)
    return embedder.set_params(**params)


def fitted_embedder_from_model_info(model_info: dict | None, weights=None):
    """:func:`embedder_from_model_info`, fitted; warns when its parameters differ from the recorded ones."""
    embedder = embedder_from_model_info(model_info or {}, weights, on_error="raise").fit()
    recorded = (model_info or {}).get("parameters_sha256")
    if recorded and embedder.model_info_["parameters_sha256"] != recorded:
        warnings.warn(
            f"the network built for the queries ({embedder.model_info_['weights']}) has other parameters than the "
            "one that wrote the table: their distances to the table's rows are not comparable",
            UserWarning,
            stacklevel=3,
        )
    return embedder


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
