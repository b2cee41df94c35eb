"""The package's own exceptions."""

from __future__ import annotations

import os

# The reasons an image can fail to load; each ImageLoadError carries one of them.
MISSING = "missing"
NOT_A_FILE = "not a file"
EMPTY = "empty"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
NOT_AN_IMAGE = "not an image"
TOO_MANY_PIXELS = "too many pixels"
UNSUPPORTED = "unsupported"

REASONS = (MISSING, NOT_A_FILE, EMPTY, TRUNCATED, CORRUPT, NOT_AN_IMAGE, TOO_MANY_PIXELS, UNSUPPORTED)


class ImageLoadError(ValueError):
    """An image file could not be turned into an RGB picture.

    Attributes
    ----------
    path : str
        The file that failed, as given.
    reason : str
        One of :data:`skimgfeat.exceptions.REASONS`: ``"missing"``, ``"not a file"``,
        ``"empty"``, ``"truncated"``, ``"corrupt"`` (the format is known but the
        data is broken), ``"not an image"``, ``"too many pixels"``,
        ``"unsupported"``.
    detail : str
        What the decoder said, for humans.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str, detail: str = "") -> None:
        self.path = "" if path is None else os.fspath(path)
        self.reason = reason
        self.detail = detail
        message = f"cannot load image {self.path!r}: {reason}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.detail))


class WeightsMismatchError(ValueError):
    """A state-dict file does not fit the architecture it was loaded into."""


class IndexDirectoryError(ValueError):
    """A folder is not a usable similarity index: missing, truncated, or something else's.

    Attributes
    ----------
    path : str
        The index folder (or the file in it that is wrong).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"index directory {self.path!r}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class ModelMismatchError(ValueError):
    """Features embedded by another network (or preprocessing) than those they are compared with."""
