"""The original ``feature_engineering`` API, as a thin layer over the estimators.

``ImageFeatureExtractor`` and ``aggregate_features_by_item`` keep the names, arguments,
columns and files of the original module, so its users get the same results from
skimgfeat. The work is done by :class:`~skimgfeat.CNNImageEmbedder` and
:class:`~skimgfeat.ItemAggregator`; nothing here embeds or aggregates on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .embedder import CNNImageEmbedder
from .feature_tables import (  # noqa: F401 - IMAGE_NAME, ERROR, aggregate_features_by_item: this module's public names
    ERROR,
    IMAGE_NAME,
    IMAGE_PATH,
    MODEL_INFO_FILE,
    aggregate_features_by_item,
    features_table,
    list_images,
    run_model_info,
)
from .storage.io import write_json, write_table


class ImageFeatureExtractor:
    """Extract CNN features from image files, with the original module's API.

    Parameters
    ----------
    model_name : str, default="mobilenet_v2"
        A name from :func:`skimgfeat.list_models`; mobilenet_v2 gives 1280 features,
        shufflenet_v2_x1_0 gives 1024.
    device : str or None, default=None
        ``"cpu"``, ``"cuda"``, ...; None picks CUDA when available.
    weights : str, os.PathLike or None, default="IMAGENET1K_V1"
        torchvision weights name (downloaded and cached under ``$TORCH_HOME``), the
        path of a local state-dict file, or None for a random network.
    batch_size : int or "auto", default="auto"
        Images per forward pass.
    on_error : {"raise", "nan"}, default="raise"
        What an unreadable image does in ``extract_features_from_directory``:
        raise :class:`~skimgfeat.ImageLoadError`, or become a NaN row, explained in
        an extra ``error`` column.
    random_state : int or None, default=None
        Seeds the network when ``weights=None``.
    progress : bool, default=False
        Show a progress bar on stderr.

    Attributes
    ----------
    embedder : CNNImageEmbedder
        The fitted estimator doing the work; use it directly in scikit-learn pipelines.

    Examples
    --------
    >>> extractor = ImageFeatureExtractor(weights=None, random_state=0)
    >>> extractor.feature_dim
    1280
    """

    def __init__(
        self,
        model_name: str = "mobilenet_v2",
        device: str | None = None,
        weights: str | os.PathLike | None = "IMAGENET1K_V1",
        *,
        batch_size: int | str = "auto",
        on_error: str = "raise",
        random_state: int | None = None,
        progress: bool = False,
    ) -> None:
        self.model_name = model_name
        self.device = device
        self.weights = weights
        self.embedder = CNNImageEmbedder(
            model_name,
            weights,
            device=device,
            batch_size=batch_size,
            on_error=on_error,
            progress=progress,
            random_state=random_state,
            draft=False,  # the original module decoded every photo in full: keep its features exactly
        ).fit()

    @property
    def feature_dim(self) -> int:
        """Length of one feature vector."""
        return self.embedder.n_features_out_

    @property
    def model_info(self) -> dict:
        """What produces the features: the embedder's model info, the device and the date."""
        return run_model_info(self.embedder)

    def extract_features_from_image(self, image_path: str | os.PathLike) -> np.ndarray:
        """Features of one image file: float32 array of shape ``(feature_dim,)``.

        When the file cannot be loaded: raises :class:`~skimgfeat.ImageLoadError` with
        ``on_error="raise"`` (the default), returns a NaN vector with ``on_error="nan"``.
        """
        return np.asarray(self.embedder.transform([image_path]))[0]

    def extract_features_from_directory(
        self,
        image_dir: str | os.PathLike,
        pattern: str = "*.webp",
        max_images: int | None = None,
        recursive: bool = False,
    ) -> pd.DataFrame:
        """Features of every file in ``image_dir`` matching ``pattern``.

        Parameters
        ----------
        image_dir : str or os.PathLike
        pattern : str
            Glob pattern on file names; default ``"*.webp"``.
        max_images : int or None, default=None
            Only the first ``max_images`` files (in sorted order): a quick test run.
        recursive : bool, default=False
            Search sub-folders too (``image_path`` then contains the sub-folder).

        Returns
        -------
        DataFrame
            ``image_path`` (relative to ``image_dir``), ``image_name``,
            ``img_feature_0 ... img_feature_{N-1}``, one row per file sorted by
            ``image_path``; plus ``error`` when ``on_error="nan"``.
        """
        paths = list_images(image_dir, pattern, recursive=recursive, max_images=max_images)
        if paths:
            features = np.asarray(self.embedder.transform([str(path) for path in paths]))
        else:
            features = np.empty((0, self.feature_dim), dtype=np.float32)
        relative = [path.relative_to(image_dir).as_posix() for path in paths]
        errors = None
        if self.embedder.on_error == "nan":
            row_of = {str(path): row for row, path in enumerate(paths)}
            errors = {row_of[error.path]: str(error) for error in self.embedder.errors_ if error.path in row_of}
        return features_table(relative, features, errors)

    def save_features(self, df: pd.DataFrame, output_path: str | os.PathLike) -> Path:
        """Write ``df`` to ``output_path``: Parquet or CSV by suffix, atomically.

        Parent folders are created. A Parquet file carries :attr:`model_info` in its
        schema metadata (see :func:`skimgfeat.storage.io.read_model_info`).
        """
        return write_table(df, output_path, model_info=self.model_info)

    def save_model_info(self, output_dir: str | os.PathLike) -> Path:
        """Write :attr:`model_info` to ``output_dir/model_info.json``; return its path."""
        return write_json(self.model_info, Path(output_dir) / MODEL_INFO_FILE)

    def __repr__(self) -> str:
        arguments = f"model_name={self.model_name!r}, device={self.device!r}, weights={self.weights!r}"
        return f"ImageFeatureExtractor({arguments})"
