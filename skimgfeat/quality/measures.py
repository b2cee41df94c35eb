"""ImageQualityFeatures: how sharp, bright, colourful, large and compressed each photo is.

Every measure on pixels is taken on one working copy of the photo, resized so that its
longer side is ``working_size``: sharpness (the variance of the Laplacian) depends on
scale, so a fixed working resolution makes it comparable between a 4000 px camera
original and a 600 px thumbnail. JPEG files are decoded at a reduced DCT scale that
still covers the working size (Pillow's draft mode), which makes big photos cheap.
Size, file size and JPEG quality come from the file and its header.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from numbers import Integral

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..engine.decoding import ON_ERROR, decode_batches
from ..engine.image_loading import exif_orientation, load_rgb_image
from ..engine.inputs import parse_image_input
from ..storage.output import OutputContainerMixin, wrap_output

QUALITY_FEATURES = (
    "sharpness",
    "brightness",
    "contrast",
    "colorfulness",
    "overexposed",
    "underexposed",
    "width",
    "height",
    "aspect_ratio",
    "file_size",
    "jpeg_quality",
)
# Photos measured per batch of the decode loop: only how often results are collected.
_BATCH = 32
# Luma at or beyond these 8-bit values counts as clipped: JPEG noise keeps blown-out
# highlights a few levels below 255, crushed shadows a few above 0.
OVEREXPOSED_LUMA = 250
UNDEREXPOSED_LUMA = 5
# The IJG (libjpeg) luminance table at quality 50, natural order: encoders scale it by quality.
_IJG_LUMINANCE = np.array(
    [
        16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
    ],
    dtype=np.int64,
)  # fmt: skip
_QUALITIES = np.arange(1, 101)
_SCALES = np.where(_QUALITIES < 50, 5000 // _QUALITIES, 200 - 2 * _QUALITIES)
_IJG_TABLES = np.clip((_IJG_LUMINANCE[None, :] * _SCALES[:, None] + 50) // 100, 1, 255)


class ImageQualityFeatures(OutputContainerMixin, TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Photo quality measures of image files: one row of 11 numbers per photo.

    Takes the same inputs as :class:`~skimgfeat.CNNImageEmbedder` (a list of paths, a
    single-column table, or several photos per sample for the photos' rows grouped by item
    (:class:`~skimgfeat.RaggedPhotos`, memory in proportion to the photos) to
    pass through :class:`~skimgfeat.ItemAggregator`) and sits beside it in a
    :class:`~sklearn.pipeline.FeatureUnion` or :class:`~sklearn.compose.ColumnTransformer`.

    Features, in order:

    ``sharpness``
        Variance of the Laplacian of the luma (0-255) at the working resolution: low for
        blurred or out-of-focus photos.
    ``brightness``, ``contrast``
        Mean and standard deviation of the luma, scaled to [0, 1].
    ``colorfulness``
        Hasler and Suesstrunk's (2003) colourfulness on 0-255 RGB: 0 for grey images,
        above ~100 for very colourful ones.
    ``overexposed``, ``underexposed``
        Fractions of pixels whose luma is clipped: at least 250, at most 5.
    ``width``, ``height``, ``aspect_ratio``
        Size of the photo as displayed (EXIF orientation applied), width / height.
    ``file_size``
        Bytes on disk.
    ``jpeg_quality``
        The IJG quality (1-100) whose luminance quantisation table is closest to the
        file's: an estimate of how hard it was compressed; NaN for other formats.

    Parameters
    ----------
    working_size : int, default=512
        Longer side, in pixels, of the copy the pixel measures are computed on.
    on_error : {"raise", "nan"}, default="raise"
        As in :class:`~skimgfeat.CNNImageEmbedder`: raise
        :class:`~skimgfeat.ImageLoadError`, or give a NaN row and list it in ``errors_``.
    max_pixels : int or None, default=None
        Images with more pixels are refused from their header; None uses Pillow's limit.
    n_workers : int or None, default=None
        Threads measuring photos; None uses one per available core.

    Attributes
    ----------
    n_features_out_ : int
        11.
    errors_ : list of ImageLoadError
        Failures of the last ``transform`` (empty with ``on_error="raise"``).

    Examples
    --------
    >>> from skimgfeat import ImageQualityFeatures
    >>> quality = ImageQualityFeatures().fit()
    >>> quality.get_feature_names_out()[:3]
    array(['sharpness', 'brightness', 'contrast'], dtype=object)
    """

    _parameter_constraints: dict = {
        "working_size": [Interval(Integral, 8, None, closed="left")],
        "on_error": [StrOptions(set(ON_ERROR))],
        "max_pixels": [Interval(Integral, 0, None, closed="left"), None],
        "n_workers": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        *,
        working_size: int = 512,
        on_error: str = "raise",
        max_pixels: int | None = None,
        n_workers: int | None = None,
    ) -> None:
        self.working_size = working_size
        self.on_error = on_error
        self.max_pixels = max_pixels
        self.n_workers = n_workers

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None) -> ImageQualityFeatures:
        """Check the parameters. X and y are not used.

        Returns
        -------
        self : ImageQualityFeatures
        """
        self.n_features_out_ = len(QUALITY_FEATURES)
        self.errors_ = []
        return self

    def transform(self, X):
        """Measure the photos in X.

        Parameters
        ----------
        X : sequence of paths, single-column DataFrame, or one sequence of paths per sample
            See :mod:`skimgfeat.engine.inputs`.

        Returns
        -------
        features : ndarray of shape (n_samples, 11), or RaggedPhotos
            float64. With several photos per sample, the photos' rows grouped by sample
            (:class:`~skimgfeat.RaggedPhotos`; ``np.asarray`` gives the NaN-padded
            ``(n_samples, max_images, 11)`` array). Failed photos (``on_error="nan"``)
            are NaN rows.
        """
        check_is_fitted(self, "n_features_out_")
        data = parse_image_input(X)
        self.errors_ = data.missing_path_errors()
        if self.errors_ and self.on_error == "raise":
            raise self.errors_[0]
        paths = data.unique_paths()
        # the result, filled in place; several photos per sample stay ragged, never padded
        layout = data.layout(paths, self.n_features_out_, np.float64)
        batches = decode_batches(paths, self._measure, _BATCH, on_error=self.on_error, n_workers=self.n_workers)
        for batch in batches:
            if batch.stacked is not None:
                layout.out[layout.rows[batch.positions]] = batch.stacked
            self.errors_.extend(error for _, error in batch.errors)
        features = layout.complete()
        return wrap_output(features, data.index, self.get_feature_names_out(), self._output_kind())

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The 11 feature names, ``sharpness`` ... ``jpeg_quality``."""
        return np.asarray(QUALITY_FEATURES, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.one_d_array = True
        tags.input_tags.two_d_array = True
        tags.input_tags.allow_nan = True
        tags.target_tags.required = False
        tags.transformer_tags.preserves_dtype = []
        return tags

    def _measure(self, path) -> np.ndarray:
        return measure_quality(path, working_size=self.working_size, max_pixels=self.max_pixels)


def measure_quality(path: str | os.PathLike, *, working_size: int = 512, max_pixels: int | None = None) -> np.ndarray:
    """The :data:`QUALITY_FEATURES` of one image file; ImageLoadError if it cannot be read.

    >>> from skimgfeat.quality.measures import QUALITY_FEATURES, measure_quality
    >>> from skimgfeat.storage.samples import write_sample_images
    >>> import tempfile
    >>> photo = write_sample_images(tempfile.mkdtemp(), photos_per_item=1)[0]
    >>> values = dict(zip(QUALITY_FEATURES, measure_quality(photo)))
    >>> int(values["width"]), int(values["height"])
    (640, 427)
    """
    header = _read_header(path)
    draft_size = header.draft_size(working_size) if header is not None else None
    image = load_rgb_image(path, max_pixels=max_pixels, draft_size=draft_size)
    with image:
        pixels = _working_copy(image, working_size)
    if header is None:  # the loader read a file whose header Pillow alone could not: rare
        header = _Header(image.width, image.height, 1, float("nan"))
    width, height = header.displayed_size
    luma = np.asarray(pixels.convert("L"), dtype=np.float32)
    rgb = np.asarray(pixels, dtype=np.float32)
    return np.array(
        [
            laplacian_variance(luma),
            luma.mean() / 255.0,
            luma.std() / 255.0,
            colorfulness(rgb),
            float(np.mean(luma >= OVEREXPOSED_LUMA)),
            float(np.mean(luma <= UNDEREXPOSED_LUMA)),
            width,
            height,
            width / height,
            os.stat(path).st_size,
            header.jpeg_quality,
        ],
        dtype=np.float64,
    )


def _working_copy(image: Image.Image, working_size: int) -> Image.Image:
    scale = working_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR) if size != image.size else image.copy()


@dataclass(frozen=True)
class _Header:
    """What a file's header says: stored size, EXIF orientation, estimated JPEG quality."""

    width: int
    height: int
    orientation: int
    jpeg_quality: float

    @property
    def displayed_size(self) -> tuple[int, int]:
        if self.orientation in (5, 6, 7, 8):  # the transposing orientations
            return self.height, self.width
        return self.width, self.height

    def draft_size(self, working_size: int) -> tuple[int, int]:
        """The smallest decoded size whose longer side still covers ``working_size``."""
        scale = min(1.0, working_size / max(self.width, self.height))
        return max(1, int(self.width * scale)), max(1, int(self.height * scale))


def _read_header(path) -> _Header | None:
    """The header of ``path``, or None when Pillow cannot read it (the loader then says why)."""
    try:
        with Image.open(path) as image:
            tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
            quality = estimate_jpeg_quality(tables) if tables else float("nan")
            return _Header(image.width, image.height, exif_orientation(image), quality)
    except Exception:  # noqa: BLE001 - any unreadable header is the loader's to explain
        return None


def laplacian_variance(luma: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D array (edges excluded); 0 when too small."""
    if min(luma.shape) < 3:
        return 0.0
    centre = luma[1:-1, 1:-1]
    laplacian = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * centre
    return float(laplacian.var())


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness of an ``(h, w, 3)`` RGB array on a 0-255 scale."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = np.sqrt(rg.var() + yb.var())
    offset = np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(spread + 0.3 * offset)


def estimate_jpeg_quality(quantization: dict) -> float:
    """The IJG quality (1-100) whose luminance table is nearest to table 0 of ``quantization``.

    ``quantization`` is Pillow's ``JpegImageFile.quantization`` (tables in natural order).

    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO()
    >>> Image.new("RGB", (16, 16)).save(buffer, format="JPEG", quality=83)
    >>> estimate_jpeg_quality(Image.open(buffer).quantization)
    83.0
    """
    luminance = np.asarray(quantization[min(quantization)], dtype=np.int64)
    if luminance.shape != (64,):
        return float("nan")
    errors = np.abs(_IJG_TABLES - luminance[None, :]).sum(axis=1)
    return float(_QUALITIES[int(np.argmin(errors))])
