"""The original ``feature_engineering`` API, as a thin layer over the estimators.

``ImageFeatureExtractor`` and ``aggregate_features_by_item`` keep the names, arguments,
columns and files of the original module, so its users get the same results from
skimgfeat. The work is done by :class:`~skimgfeat.CNNImageEmbedder` and
:class:`~skimgfeat.ItemAggregator`; nothing here embeds or aggregates on its own.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .aggregation import ITEM_ID, ItemAggregator
from .embedder import CNNImageEmbedder
from .io import printable, write_json, write_table
from .output import feature_names

IMAGE_PATH = "image_path"
IMAGE_NAME = "image_name"
ERROR = "error"
MODEL_INFO_FILE = "model_info.json"


def list_images(
    image_dir: str | os.PathLike,
    pattern: str = "*.webp",
    *,
    recursive: bool = False,
    max_images: int | None = None,
) -> list[Path]:
    """Files in ``image_dir`` matching the glob ``pattern``, sorted by relative path.

    Parameters
    ----------
    image_dir : str or os.PathLike
        An existing folder; NotADirectoryError otherwise.
    pattern : str, default="*.webp"
        A :mod:`glob` pattern matched against file names (case-sensitive on Linux).
    recursive : bool, default=False
        Search sub-folders too. The original module looked in ``image_dir`` only.
    max_images : int or None, default=None
        Keep the first ``max_images`` files of the sorted list.

    Returns
    -------
    paths : list of Path
    """
    folder = Path(image_dir)
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder {os.fspath(image_dir)!r} does not exist or is not a folder")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    paths = sorted((path for path in found if path.is_file()), key=lambda path: path.relative_to(folder).as_posix())
    return paths[:max_images]


def run_model_info(embedder: CNNImageEmbedder) -> dict:
    """The model info written beside feature files: the embedder's, plus device and date."""
    info = dict(embedder.model_info_)
    info["device"] = str(embedder._inference_device())
    info["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return info


def features_table(
    relative_paths: Sequence[str],
    features: np.ndarray,
    errors: Mapping[int, str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The per-image table: ``image_path``, ``image_name``, ``img_feature_*`` (+ ``error``).

    Parameters
    ----------
    relative_paths : sequence of str
        Paths relative to the image folder, POSIX separators. Bytes of a name that are
        not UTF-8 appear as ``\\xNN`` (see :func:`skimgfeat.io.printable`).
    features : ndarray of shape (n_images, n_features)
    errors : mapping from row to message, or None
        With a mapping, an ``error`` column is added: the message for failed rows
        (whose features are NaN), an empty string for the others.
    columns : sequence of str or None
        Names of the feature columns (default: ``img_feature_*``, float32); with names
        the values keep their dtype.
    """
    if columns is None:
        table = pd.DataFrame(np.asarray(features, dtype=np.float32), columns=list(feature_names(features.shape[1])))
    else:
        table = pd.DataFrame(np.asarray(features), columns=list(columns))
    shown = [printable(str(path)) for path in relative_paths]
    table.insert(0, IMAGE_NAME, [Path(path).name for path in shown])
    table.insert(0, IMAGE_PATH, shown)
    if errors is not None:
        table[ERROR] = [printable(errors.get(row, "")) for row in range(len(table))]
    return table


def aggregate_features_by_item(
    df_features: pd.DataFrame,
    method: str = "mean",
    item_id: str | Callable[[str], str] | None = None,
) -> pd.DataFrame:
    """One feature row per item from a per-image table: ``item_id``, ``img_feature_*``.

    Parameters
    ----------
    df_features : DataFrame
        Per-image features with ``image_name`` (or ``image_path``, or ``item_id``) and
        ``img_feature_*`` columns, e.g. from
        :meth:`ImageFeatureExtractor.extract_features_from_directory`.
    method : {"mean", "max", "first"}, default="mean"
        ``"first"`` is the photo with the lowest number (``_1`` before ``_2`` before
        ``_10``), not the file-system order. Rows with NaN features (failed images)
        are ignored; an item with none left is a NaN row.
    item_id : None, str or callable, default=None
        None: the file stem up to its last underscore (``84512_3.webp`` -> ``84512``;
        a stem without underscore is its own item). A regular expression (group
        ``item``, else the first group, else the match) or a callable on the image name.

    Returns
    -------
    DataFrame
        Sorted by ``item_id``.

    Examples
    --------
    >>> import pandas as pd
    >>> photos = pd.DataFrame({"image_name": ["7_2.webp", "7_1.webp", "8.webp"], "img_feature_0": [1.0, 3.0, 5.0]})
    >>> aggregate_features_by_item(photos, method="first")
      item_id  img_feature_0
    0       7            3.0
    1       8            5.0
    """
    names_a_column = isinstance(item_id, str) and item_id in df_features.columns
    # An item_id derived from the names replaces a stale item_id column rather than competing with it.
    replaces = item_id is not None and not names_a_column and ITEM_ID in df_features.columns
    table = df_features.drop(columns=[ITEM_ID]) if replaces else df_features
    return ItemAggregator(method=method, item_id=item_id).fit_transform(table)


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
        pattern : str, default="*.webp"
            Glob pattern on file names.
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
        schema metadata (see :func:`skimgfeat.io.read_model_info`).
        """
        return write_table(df, output_path, model_info=self.model_info)

    def save_model_info(self, output_dir: str | os.PathLike) -> Path:
        """Write :attr:`model_info` to ``output_dir/model_info.json``; return its path."""
        return write_json(self.model_info, Path(output_dir) / MODEL_INFO_FILE)

    def __repr__(self) -> str:
        arguments = f"model_name={self.model_name!r}, device={self.device!r}, weights={self.weights!r}"
        return f"ImageFeatureExtractor({arguments})"
