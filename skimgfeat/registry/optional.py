"""Optional model libraries, imported only when a model of theirs is asked for."""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType

import torch

EXTRAS = {"timm": "timm", "open_clip": "clip"}


def import_optional(module: str) -> ModuleType:
    """Import ``module`` or raise an ImportError naming the extra that installs it."""
    try:
        imported = importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module} models need the {module} package: pip install 'skimgfeat[{EXTRAS[module]}]' ({error})"
        ) from error
    _ignore_tracer_warnings(module)
    return imported


@functools.cache
def _ignore_tracer_warnings(module: str) -> None:
    """Exporting to ONNX traces the library's forward, whose shape checks the tracer warns
    about; the exported graph is compared with eager on a probe batch, so they are noise.
    As torch does for its own modules (``TracerWarning.ignore_lib_warnings``), the filter
    names the library's modules only, and is added once per process."""
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=rf"{module}(\.|$)")
