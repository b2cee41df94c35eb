"""skimgfeat: image files to CNN feature vectors, the scikit-learn way."""

__version__ = "0.1.0"

from .aggregation import ItemAggregator, item_id_from_name  # noqa: E402
from .embedder import CNNImageEmbedder  # noqa: E402
from .exceptions import ImageLoadError, WeightsMismatchError  # noqa: E402
from .extractor import ImageFeatureExtractor, aggregate_features_by_item  # noqa: E402
from .quality import ImageQualityFeatures  # noqa: E402
from .registry import MODEL_REGISTRY, list_models  # noqa: E402
from .similarity import SimilarityIndex, embedder_from_model_info, find_duplicates, similar_items  # noqa: E402
from .stacking import OutOfFoldPredictor  # noqa: E402

__all__ = [
    "CNNImageEmbedder",
    "ImageFeatureExtractor",
    "ImageLoadError",
    "ImageQualityFeatures",
    "ItemAggregator",
    "MODEL_REGISTRY",
    "OutOfFoldPredictor",
    "SimilarityIndex",
    "WeightsMismatchError",
    "aggregate_features_by_item",
    "embedder_from_model_info",
    "find_duplicates",
    "item_id_from_name",
    "list_models",
    "similar_items",
    "__version__",
]
