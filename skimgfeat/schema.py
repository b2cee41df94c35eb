"""The names that every feature table, sidecar and report shares, defined once.

The bottom layer of the package: it imports nothing of skimgfeat, and every other module
takes column names, the item a photo belongs to and the key of a photo from here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# -- columns -------------------------------------------------------------------------
FEATURE_PREFIX = "img_feature_"
IMAGE_PATH = "image_path"  # a photo's path relative to the image folder, '/'-separated
IMAGE_NAME = "image_name"  # the original module's column: the file name alone
ITEM_ID = "item_id"
COUNT_COLUMN = "n_images"
ERROR = "error"
# The columns a photo may be named by, in the order an item id is derived from them.
NAME_COLUMNS = (IMAGE_NAME, IMAGE_PATH)
# The identity columns a feature table may carry, in the order its key is chosen.
IDENTITY_COLUMNS = (IMAGE_PATH, ITEM_ID, IMAGE_NAME)


def feature_names(n_features: int) -> np.ndarray:
    """``img_feature_0 ... img_feature_{n-1}``: the original module's column names."""
    return np.asarray([f"{FEATURE_PREFIX}{i}" for i in range(n_features)], dtype=object)


# -- photos and items ----------------------------------------------------------------
def item_id_from_name(name: str) -> str:
    """The item a photo belongs to: its file stem up to the last underscore.

    >>> item_id_from_name("84512_3.webp")
    '84512'
    >>> item_id_from_name("lot_2024_7.jpg")
    'lot_2024'
    >>> item_id_from_name("84512.webp")
    '84512'
    """
    stem = os.path.splitext(os.path.basename(str(name)))[0]
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def image_number(name: str) -> tuple[int, float | str]:
    """Sort key of a photo within its item: the number after the last underscore.

    Numbered photos come first in numeric order (``_2`` before ``_10``); others after.
    """
    stem = os.path.splitext(os.path.basename(str(name)))[0]
    suffix = stem.rsplit("_", 1)[1] if "_" in stem else ""
    return (0, int(suffix)) if suffix.isdecimal() else (1, suffix)


def relative_key(path: str | os.PathLike, image_dir: str | os.PathLike) -> str:
    """The key of a photo in every table: its path relative to the image folder, '/'-separated.

    The path is taken as written (not resolved), so a symlinked photo keeps the name it has
    in the folder, the same name in the feature table, the hashes and the local features.

    >>> relative_key("archive/2024/lot_7.jpg", "archive")
    '2024/lot_7.jpg'
    """
    return Path(os.path.abspath(path)).relative_to(os.path.abspath(image_dir)).as_posix()
