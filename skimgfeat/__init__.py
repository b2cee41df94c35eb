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
    "CrossFittedTransformer": "tabular.crossfit",
    "FeatureTableReader": "storage.io",
    "ImageFeatureExtractor": "extractor",
    "ImageLoadError": "exceptions",
    "ImageQualityFeatures": "quality.measures",
    "IndexDirectoryError": "exceptions",
    "ItemAggregator": "aggregation",
    "LocalFeatureStore": "matching.local_features",
    "MODEL_REGISTRY": "registry",
    "ModelMismatchError": "exceptions",
    "ObjectMatcher": "matching.object_match",
    "OutOfFoldPredictor": "tabular.stacking",
    "PhotoHashes": "matching.copy_check",
    "RaggedPhotos": "engine.ragged",
    "SimilarityIndex": "search.similarity",
    "VisualComparables": "tabular.comparables",
    "WeightsMismatchError": "exceptions",
    "add_same_object_verdicts": "matching.object_match",
    "aggregate_features_by_item": "feature_tables",
    "copy_distance": "matching.copy_check",
    "duplicate_groups": "matching.duplicates",
    "duplicate_pairs": "matching.duplicates",
    "embedder_from_model_info": "embedder",
    "find_copies_against": "matching.duplicates",
    "find_duplicates": "matching.duplicates",
    "item_id_from_name": "schema",
    "list_models": "registry",
    "match_sheet": "plotting.match_sheet",
    "similar_items": "search.similarity",
    "verify_pair": "matching.verification",
    "write_local_features": "matching.local_features",
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
