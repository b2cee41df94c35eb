"""The per-image and per-item tables: listing a folder, building and aggregating tables.

Used alike by the command line and by the original module's API
(:mod:`skimgfeat.extractor`). Nothing here imports torch.
"""

from __future__ import annotations

import datetime
import fnmatch
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .aggregation import ItemAggregator
from .schema import ERROR, IMAGE_NAME, IMAGE_PATH, ITEM_ID, feature_names  # noqa: F401 - ERROR, IMAGE_NAME: public here
from .storage.io import printable

MODEL_INFO_FILE = "model_info.json"


def list_images(
    image_dir: str | os.PathLike,
    pattern: str | None = "*.webp",
    *,
    recursive: bool = False,
    max_images: int | None = None,
    case_sensitive: bool = True,
) -> list[Path]:
    """Files in ``image_dir`` matching the glob ``pattern``, sorted by relative path.

    Parameters
    ----------
    image_dir : str or os.PathLike
        An existing folder; NotADirectoryError otherwise.
    pattern : str or None
        A :mod:`glob` pattern matched against file names; default ``"*.webp"`` (the
        original module's). None: every file whose suffix is one of
        :func:`image_suffixes` (what Pillow decodes here), in any case.
    recursive : bool, default=False
        Search sub-folders too. The original module looked in ``image_dir`` only.
    max_images : int or None, default=None
        Keep the first ``max_images`` files of the sorted list.
    case_sensitive : bool, default=True
        False: ``pattern`` matches names in any case (``*.jpg`` finds ``IMG_1.JPG``),
        as the command line does. True keeps the original module's ``glob`` (case-sensitive
        on Linux).

    Returns
    -------
    paths : list of Path
    """
    folder = Path(image_dir)
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder {os.fspath(image_dir)!r} does not exist or is not a folder")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
    if pattern is not None and case_sensitive:
        found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    else:
        suffixes = image_suffixes()
        lowered = None if pattern is None else pattern.lower()
        found = (
            path
            for path in (folder.rglob("*") if recursive else folder.iterdir())
            if (path.suffix.lower() in suffixes if lowered is None else fnmatch.fnmatchcase(path.name.lower(), lowered))
        )
    paths = sorted((path for path in found if path.is_file()), key=lambda path: path.relative_to(folder).as_posix())
    return paths[:max_images]


def image_suffixes() -> frozenset[str]:
    """File name suffixes (lower case, with the dot) of every format Pillow can decode here.

    Pillow's registered extensions, less its identify-only stubs (HDF5, GRIB, BUFR, WMF
    outside Windows), MPEG (header only) and EPS/PS when Ghostscript is missing.

    >>> {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tiff"} <= image_suffixes()
    True
    """
    from PIL import EpsImagePlugin, Image, ImageFile

    Image.init()
    undecodable = {"MPEG"} | (set() if EpsImagePlugin.has_ghostscript() else {"EPS"})
    decodable = {
        name
        for name, (factory, _) in Image.OPEN.items()
        if name not in undecodable and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))
    }
    return frozenset(suffix.lower() for suffix, name in Image.registered_extensions().items() if name in decodable)


def run_model_info(embedder) -> dict:
    """The model info written beside feature files: a fitted embedder's, plus device and date."""
    info = dict(embedder.model_info_)
    info["device"] = str(embedder.inference_device())
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
        not UTF-8 appear as ``\\xNN`` (see :func:`skimgfeat.storage.io.printable`).
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
