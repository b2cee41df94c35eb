"""Optional model libraries, imported only when a model of theirs is asked for."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"timm": "timm", "open_clip": "clip"}


def import_optional(module: str) -> ModuleType:
    """Import ``module`` or raise an ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module} models need the {module} package: pip install 'skimgfeat[{EXTRAS[module]}]' ({error})"
        ) from error
