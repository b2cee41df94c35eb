"""skimgfeat: image files to CNN feature vectors, the scikit-learn way.

The public names are imported on first use, so ``import skimgfeat`` (and
``skimgfeat --version``) does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module defining it.
_EXPORTS = {
    "CNNImageEmbedder": "embedder",
    "CrossFittedTransformer": "uses.crossfit",
    "FeatureTableReader": "storage.io",
    "ImageFeatureExtractor": "extractor",
    "ImageLoadError": "exceptions",
    "ImageQualityFeatures": "uses.quality",
    "IndexDirectoryError": "exceptions",
    "ItemAggregator": "aggregation",
    "LocalFeatureStore": "uses.local_features",
    "MODEL_REGISTRY": "registry",
    "ModelMismatchError": "exceptions",
    "ObjectMatcher": "uses.object_match",
    "OutOfFoldPredictor": "uses.stacking",
    "PhotoHashes": "uses.copy_check",
    "RaggedPhotos": "engine.ragged",
    "SimilarityIndex": "uses.similarity",
    "VisualComparables": "uses.comparables",
    "WeightsMismatchError": "exceptions",
    "add_same_object_verdicts": "uses.object_match",
    "aggregate_features_by_item": "storage.tables",
    "copy_distance": "uses.copy_check",
    "duplicate_groups": "uses.duplicates",
    "duplicate_pairs": "uses.duplicates",
    "embedder_from_model_info": "model_info",
    "find_copies_against": "uses.duplicates",
    "find_duplicates": "uses.duplicates",
    "item_id_from_name": "aggregation",
    "list_models": "registry",
    "match_sheet": "uses.object_match",
    "similar_items": "uses.similarity",
    "verify_pair": "uses.verification",
    "write_local_features": "uses.local_features",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
