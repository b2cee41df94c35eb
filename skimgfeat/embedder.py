"""CNNImageEmbedder: image paths in, one CNN feature vector per image out.

The estimator holds parameters, fits (builds the network, fine-tunes or calibrates it
when asked, records what it is) and transforms by delegating to the engine: the
decode loop (:mod:`skimgfeat.engine.decoding`), the prepared runner
(:mod:`skimgfeat.engine.runner`), the result assembly and feature cache
(:mod:`skimgfeat.engine.embedding`, :mod:`skimgfeat.storage.cache`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterator, Sequence
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .engine.backends import BACKENDS
from .engine.decoding import ON_ERROR, pixel_decoder
from .engine.embedding import embed_input, embedder_cache
from .engine.finetune import TASKS, fine_tune_network, make_recipe
from .engine.inference import EmbeddedBatch, ModelRunner, embed_stream
from .engine.inputs import parse_image_input
from .engine.preprocessing import INTERPOLATIONS, RESIZE_MODES
from .engine.runner import PRECISIONS, PreparedRunner, build_runner, device_here, resolve_device
from .model_info import fitted_model_info
from .registry import DEFAULT_WEIGHTS, build_model, get_spec, network_blocks
from .registry.multi_scale import multi_scale_network, stage_feature_names
from .schema import FEATURE_PREFIX, feature_names
from .storage.output import OutputContainerMixin, wrap_output

__all__ = ["ON_ERROR", "CNNImageEmbedder"]

_POSITIVE = Interval(Integral, 1, None, closed="left")
_SIZE_OR_NONE = [_POSITIVE, None]


class CNNImageEmbedder(OutputContainerMixin, TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Embed image files with a pretrained network, classifier removed.

    Each image is loaded as RGB (alpha composited onto white, EXIF orientation applied,
    first frame of animations), then preprocessed by the recipe its weights were trained
    with (resize, center crop, interpolation, mean/std: see ``docs/models.md``), and
    passed through the network up to exactly what its final classification layer
    receives.

    Parameters
    ----------
    model_name : str, default="mobilenet_v2"
        A name from :func:`skimgfeat.list_models`: ``"mobilenet_v2"`` (1280 features),
        ``"shufflenet_v2_x1_0"`` (1024), ``"resnet50"``, ``"efficientnet_b3"``,
        ``"convnext_tiny"``, ...; ``"timm:<name>"`` for any timm model (e.g.
        ``"timm:convnext_tiny.fb_in22k"``, needs ``skimgfeat[timm]``); or
        ``"open_clip:<arch>"`` for an OpenCLIP image tower (e.g. ``"open_clip:ViT-B-32"``,
        needs ``skimgfeat[clip]``).
    weights : str, os.PathLike, weights enum member or None, default="pretrained"
        ``"pretrained"``: the registry's default pretrained weights for the model
        (torchvision: ``IMAGENET1K_V1``; timm: the name's pretrained tag; OpenCLIP: the
        tag documented in ``docs/models.md``), downloaded and cached by the owning
        library. A torchvision weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"``, ...) or
        member; an OpenCLIP pretrained tag; the path of a local state-dict file (offline
        use; the classifier's keys may be absent; the recipe is then that of the
        registry's default weights); or None for random weights.
    device : str or None, default=None
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; None picks CUDA when available.
    batch_size : int or "auto", default="auto"
        Images per forward pass; "auto" is 16 on CPU and 256 on CUDA (on the CPU one
        pass runs per core at once, and 16 images cost no more per image than 32 while
        holding half the memory: see docs/performance.md). On CUDA a batch
        that runs out of memory is split in halves instead of failing.
    resize_mode : {"square", "shorter_side"} or None, default=None
        None: the recipe's. ``"square"`` resizes to ``resize_size x resize_size``
        ignoring aspect ratio (the original module's recipe, the default of
        mobilenet_v2 and shufflenet_v2_x1_0); ``"shorter_side"`` resizes the shorter
        side keeping aspect ratio (torchvision's, timm's and OpenCLIP's eval recipes).
    resize_size, crop_size : int or None, default=None
        Override the recipe's resize target and center-crop side; None keeps them.
    interpolation : {"bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"} or None, default=None
        Override the recipe's resampling filter; None keeps it.
    on_error : {"raise", "nan"}, default="raise"
        ``"raise"``: an unreadable image raises :class:`~skimgfeat.ImageLoadError`
        naming the file and the reason. ``"nan"``: its row is NaN, every other row is
        computed, and the failures are listed in ``errors_``. There is no "zero"
        policy on purpose: a zero vector is a plausible feature vector and would
        silently bias a model, while NaN is explicit (and ``ItemAggregator`` skips it).
    max_pixels : int or None, default=None
        Images with more pixels are refused from their header, never decoded. None
        uses Pillow's ``PIL.Image.MAX_IMAGE_PIXELS``.
    draft : bool, default=True
        Decode a JPEG at least twice the resize target at a reduced DCT scale (1/2,
        1/4 or 1/8, Pillow's draft mode) that still keeps it at least twice the target,
        then resize: camera-sized photos decode several times faster. Not bit-exact
        (measured on real photos: cosine to full decoding >= 0.995, see
        docs/performance.md); smaller JPEGs and other formats are unaffected. False:
        every photo decoded in full, bit for bit the original module's features.
    decode_device : str or None, default=None
        None decodes with Pillow in the decode threads (exact). ``"cuda"`` decodes JPEG
        files in batches on the GPU (``torchvision.io.decode_jpeg``, nvJPEG) and resizes
        them there: opt-in, not bit-exact (see the docs); other formats stay on Pillow.
    precision : {"float32", "float16", "bfloat16", "int8"}, default="float32"
        Run the network under autocast in a lower precision (opt-in, lossy).
        ``"int8"`` (CPU): the ONNX graph statically quantised by ONNX Runtime, calibrated
        in ``fit(X)`` on up to 64 of the photos X (required), using the CPU's integer
        dot-product instructions where present; see the docs for its accuracy.
    backend : {"auto", "eager", "torchscript", "onnxruntime"}, default="auto"
        How the network is executed; "auto" picks the fastest exact one for the device:
        "onnxruntime" (exported to ONNX, run by an ONNX Runtime CPU session) on the CPU in
        float32, "torchscript" (traced, frozen, oneDNN-fused) there if ONNX Runtime is
        missing, "eager" otherwise. A backend that cannot be prepared falls back to "eager" with a warning.
    n_workers : int or None, default=None
        Decode threads of each call; None shares one process-wide pool sized to the CPUs
        this process may use (affinity and cgroup quota; ``SKIMGFEAT_NUM_THREADS`` or a
        ``dask.distributed`` worker's thread count when set), however many calls run at once.
    cache : str, os.PathLike or None, default=None
        A folder where per-image features are kept, keyed by everything that changes
        them (the network's parameters, the preprocessing, precision and ``max_pixels``)
        and by each file's version, read before it is decoded (path, inode, size,
        modification and status-change times): an edited or replaced photo is embedded
        again. Processes sharing the folder (grid-search folds with ``n_jobs``) lock
        each missing entry, so a photo is embedded once however many need it. See
        :mod:`skimgfeat.storage.cache` to inspect and prune it.
    progress : bool, default=False
        Show a progress bar (tqdm) on stderr.
    random_state : int or None, default=None
        Seeds the random initialisation when ``weights=None``, and fine-tuning.
    fine_tune : int or "all", default=0
        0: the network stays as pretrained and ``fit`` ignores X and y. N > 0: ``fit(X, y)``
        trains the network's last N blocks (what a block is comes from the model's family),
        ``"all"``: the whole network, each with a temporary head on y that is then dropped;
        ``transform`` returns the fine-tuned features (same width and names). Photos of a
        sample with several photos are mean-pooled before the head, as
        :class:`~skimgfeat.ItemAggregator` pools them. See :mod:`skimgfeat.engine.finetune`
        for the recipe.
    fine_tune_task : {"auto", "classification", "regression"}, default="auto"
        The head's task; "auto" reads y as scikit-learn does (``type_of_target``):
        classes -> cross-entropy, numbers -> squared error on standardised y.
    fine_tune_epochs : int, default=10
        Most passes over the training photos (early stopping on a validation split
        may stop sooner).
    fine_tune_options : dict or None, default=None
        Overrides of the training recipe by name (:class:`skimgfeat.engine.finetune.Recipe`:
        ``train_size``, ``learning_rate``, ``validation_fraction``, ``patience``, ...).
    multi_scale : int, default=1
        1: the final feature vector only. N > 1: the globally average-pooled outputs of
        the N-1 stages (runs of blocks at one resolution) before the last one, then the
        final vector, concatenated; their columns are named ``img_feature_stage{k}_{i}``
        (k = 1 nearest the input), the final vector's ``img_feature_{i}`` as usual.
        torchvision and timm models (timm's ``forward_intermediates``).

    Attributes
    ----------
    model_ : torch.nn.Module
        The headless network, eval mode, on the CPU (copies run on the device).
    n_features_out_ : int
        Feature width (1280 for mobilenet_v2).
    preprocessing_ : Preprocessing
        The recipe applied to each image.
    model_info_ : dict
        Model name, weights identity and sha256, feature width, preprocessing and where
        it came from (``recipe_source``), the estimator's parameters (``params``: enough
        to rebuild it with ``CNNImageEmbedder(**info["params"])``) and library
        versions: what produced the features.
    n_embedded_ : int
        How many images the last ``transform`` ran through the network: those it did
        not find in the cache (like ``errors_``, the last call's).
    errors_ : list of ImageLoadError
        Failures of the last ``transform`` (empty with ``on_error="raise"``). Set once,
        when a call ends: with several threads transforming at once it holds the
        failures of whichever call finished last, never a mix; concurrent callers get
        their own failures from :meth:`iter_transform` (each batch's ``errors``) or
        from the NaN rows.
    quantized_graph_ : bytes or None
        With ``precision="int8"``: the calibrated int8 ONNX graph that runs; else None.

    Notes
    -----
    A fitted embedder may be shared by threads (Dask's threaded scheduler, a
    ``dask.distributed`` worker running several tasks, joblib's threading backend):
    the network is prepared once under a lock, each call keeps its own state, and no
    process-wide setting is changed per call.

    Examples
    --------
    >>> from skimgfeat import CNNImageEmbedder
    >>> embedder = CNNImageEmbedder(weights=None, random_state=0).fit()
    >>> embedder.n_features_out_
    1280
    >>> embedder.get_feature_names_out()[:2]
    array(['img_feature_0', 'img_feature_1'], dtype=object)
    """

    _parameter_constraints: dict = {
        "model_name": [str],
        "weights": "no_validation",  # a name, a file, a weights enum member or None: the registry says which
        "device": [str, torch.device, None],
        "batch_size": [_POSITIVE, StrOptions({"auto"})],
        "resize_mode": [StrOptions(set(RESIZE_MODES)), None],
        "resize_size": _SIZE_OR_NONE,
        "crop_size": _SIZE_OR_NONE,
        "interpolation": [StrOptions(set(INTERPOLATIONS)), None],
        "on_error": [StrOptions(set(ON_ERROR))],
        "max_pixels": [Interval(Integral, 0, None, closed="left"), None],
        "draft": ["boolean"],
        "decode_device": [str, torch.device, None],
        "precision": [StrOptions(set(PRECISIONS))],
        "backend": [StrOptions(set(BACKENDS))],
        "n_workers": _SIZE_OR_NONE,
        "cache": [str, os.PathLike, None],
        "progress": ["boolean"],
        "random_state": ["random_state"],
        "fine_tune": [Interval(Integral, 0, None, closed="left"), StrOptions({"all"})],
        "fine_tune_task": [StrOptions(set(TASKS))],
        "fine_tune_epochs": [_POSITIVE],
        "fine_tune_options": [dict, None],
        "multi_scale": [_POSITIVE],
    }

    def __init__(
        self,
        model_name: str = "mobilenet_v2",
        weights: str | os.PathLike | None = DEFAULT_WEIGHTS,
        *,
        device: str | None = None,
        batch_size: int | str = "auto",
        resize_mode: str | None = None,
        resize_size: int | None = None,
        crop_size: int | None = None,
        interpolation: str | None = None,
        on_error: str = "raise",
        max_pixels: int | None = None,
        draft: bool = True,
        decode_device: str | None = None,
        precision: str = "float32",
        backend: str = "auto",
        n_workers: int | None = None,
        cache: str | os.PathLike | None = None,
        progress: bool = False,
        random_state: int | None = None,
        fine_tune: int | str = 0,
        fine_tune_task: str = "auto",
        fine_tune_epochs: int = 10,
        fine_tune_options: dict | None = None,
        multi_scale: int = 1,
    ) -> None:
        self.model_name = model_name
        self.weights = weights
        self.device = device
        self.batch_size = batch_size
        self.resize_mode = resize_mode
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.interpolation = interpolation
        self.on_error = on_error
        self.max_pixels = max_pixels
        self.draft = draft
        self.decode_device = decode_device
        self.precision = precision
        self.backend = backend
        self.n_workers = n_workers
        self.cache = cache
        self.progress = progress
        self.random_state = random_state
        self.fine_tune = fine_tune
        self.fine_tune_task = fine_tune_task
        self.fine_tune_epochs = fine_tune_epochs
        self.fine_tune_options = fine_tune_options
        self.multi_scale = multi_scale

    # -- scikit-learn protocol -------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None) -> CNNImageEmbedder:
        """Build the network, fine-tune it on (X, y) when ``fine_tune`` asks, record what it is.

        Parameters
        ----------
        X : image input as in :meth:`transform`, or None
            Used when ``fine_tune`` is not 0, and by ``precision="int8"``: up to 64 of
            these photos (at least 4 that load), evenly spread, calibrate the quantisation.
        y : array-like of shape (n_samples,) or (n_samples, n_targets), or None
            Class labels or numbers; required when ``fine_tune`` is not 0.

        Returns
        -------
        self : CNNImageEmbedder
        """
        self._check_combinations()
        try:
            self._fit(X, y)
        except BaseException:
            self._discard_fitted_state()  # a half-trained network must not pass for a fitted one
            raise
        return self

    def _fit(self, X, y) -> None:
        built = build_model(self.model_name, self.weights, self.random_state)
        self.model_, self.n_features_out_, self.errors_ = built.module, built.n_features, []
        self.preprocessing_ = dataclasses.replace(built.recipe, **self._recipe_overrides(), draft=bool(self.draft))
        fine_tuning = self._fine_tune(X, y) if self.fine_tune != 0 else None
        self.stage_columns_ = None
        if self.multi_scale > 1:
            self.model_, self.stage_columns_ = multi_scale_network(
                get_spec(self.model_name), self.model_, self.multi_scale, self.preprocessing_.crop
            )
            self.n_features_out_ = sum(column.width for column in self.stage_columns_)
        self._runtime = PreparedRunner()
        self.model_info_ = fitted_model_info(self, built, fine_tuning)
        self.n_embedded_, self.quantized_graph_ = 0, None
        if self.precision == "int8":
            self.quantized_graph_, self.model_info_["calibration"] = self._calibrate(X)

    def _discard_fitted_state(self) -> None:
        for name in [name for name in vars(self) if name.endswith("_") and not name.startswith("_")]:
            delattr(self, name)
        self.__dict__.pop("_runtime", None)

    def prepare(self) -> CNNImageEmbedder:
        """Prepare the network for the device now rather than at the first transform.

        Copies the network to the device and builds the backend (ONNX export and
        session, TorchScript trace; read back from the artifact cache after the first
        time). It happens once per fitted embedder, even when several threads ask at
        the same time; later calls return at once. Useful before timing, or before
        sharing the embedder between threads so no call pays for it.

        Returns
        -------
        self : CNNImageEmbedder
        """
        check_is_fitted(self, "model_")
        self._runner()
        return self

    def transform(self, X) -> np.ndarray:
        """Embed the images in X.

        Parameters
        ----------
        X : sequence of paths, single-column DataFrame, or one sequence of paths per sample
            See :mod:`skimgfeat.engine.inputs` for every accepted form.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), or RaggedPhotos
            float32. With one photo per sample, 2-D. With several photos per sample,
            the photos' rows grouped by sample
            (:class:`~skimgfeat.RaggedPhotos`: memory in proportion to
            the photos): ``features[i]`` is the ``(n_photos_i, n_features)`` rows of
            sample i, ``np.asarray(features)`` the NaN-padded
            ``(n_samples, max_images, n_features)`` array; pass it through
            :class:`~skimgfeat.ItemAggregator` to get one row per sample.
            Row i always belongs to sample i; failed images (``on_error="nan"``) are NaN.
        """
        check_is_fitted(self, "model_")
        data = parse_image_input(X)
        missing = data.missing_path_errors()
        if missing and self.on_error == "raise":
            raise missing[0]
        cache = None
        if self.cache is not None:
            cache = embedder_cache(self.cache, self.model_info_, self.max_pixels, self.decode_device)
        embedded = embed_input(data, self.iter_transform, self.n_features_out_, cache, self.progress)
        # Set once per call, so concurrent calls never mix their results.
        self.errors_ = missing + embedded.errors
        self.n_embedded_ = embedded.n_embedded
        return wrap_output(embedded.features, data.index, self.get_feature_names_out(), self._output_kind())

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """``img_feature_0 ... img_feature_{n_features_out_ - 1}`` (with ``multi_scale``: stage columns first)."""
        check_is_fitted(self, "n_features_out_")
        if getattr(self, "stage_columns_", None):
            return np.asarray(stage_feature_names(self.stage_columns_, FEATURE_PREFIX), dtype=object)
        return feature_names(self.n_features_out_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.one_d_array = True
        tags.input_tags.two_d_array = True
        tags.input_tags.allow_nan = True
        tags.target_tags.required = False
        tags.transformer_tags.preserves_dtype = []
        tags.non_deterministic = self.weights is None and self.random_state is None
        return tags

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # a copy: the live estimator keeps its runtime
        state.pop("_runtime", None)  # device copies and compiled graphs are rebuilt on load
        return state

    def iter_transform(self, paths: Sequence, on_error: str | None = None) -> Iterator[EmbeddedBatch]:
        """Embed ``paths`` batch by batch, in order, with flat memory.

        Yields :class:`~skimgfeat.engine.inference.EmbeddedBatch` objects (``start``,
        ``features`` with NaN rows for failures, ``errors``). This is what the command
        line uses to checkpoint long runs. Safe to call from several threads at once:
        each call's batches carry only its own failures.
        """
        check_is_fitted(self, "model_")
        runner = self._runner()
        batch_size = self.batch_size if self.batch_size != "auto" else 256 if runner.device.type == "cuda" else 16
        yield from embed_stream(
            paths, runner, self._decoder(), self.n_features_out_, int(batch_size), self.n_workers,
            self.on_error if on_error is None else on_error, parallel_calls=runner.parallel_calls,
        )

    def inference_device(self) -> torch.device:
        """The device the network runs on: the fitted ``device``, or the CPU (with a warning) where it is absent.

        ``fit`` refuses a device that is not there; a pickle fitted on a GPU machine and
        loaded on a CPU-only one still runs (on the CPU) rather than failing a deployment.
        """
        return device_here(self.device)

    # -- internals -------------------------------------------------------------

    def _recipe_overrides(self) -> dict:
        """The user's overrides of the weights' recipe (None keeps the recipe's value)."""
        overrides = {"resize_mode": self.resize_mode, "resize": self.resize_size, "crop": self.crop_size,
                     "interpolation": self.interpolation}
        return {name: value for name, value in overrides.items() if value is not None}

    def _check_combinations(self) -> None:
        """What ``_parameter_constraints`` cannot say: devices here, recipe names, int8's needs."""
        make_recipe(self.fine_tune_options)
        device = resolve_device(self.device)
        if self.decode_device is not None:
            resolve_device(self.decode_device)
        if self.precision == "int8" and (device.type != "cpu" or self.backend not in ("auto", "onnxruntime")):
            raise ValueError(
                f"precision='int8' runs an ONNX Runtime graph on the CPU: needs device='cpu' and backend 'auto' or "
                f"'onnxruntime', got device={self.device!r}, backend={self.backend!r}"
            )

    def _calibrate(self, X) -> tuple[bytes, dict]:
        """The int8 graph calibrated on photos of X, and the calibration's record."""
        from .engine.quantization import calibrate

        if X is None:
            raise ValueError("precision='int8' calibrates on real photos: pass image paths to fit(X)")
        paths = parse_image_input(X).unique_paths()
        return calibrate(self.model_, paths, self._decoder(), self.preprocessing_, self.n_workers)

    def _fine_tune(self, X, y) -> dict:
        """Train ``model_`` on (X, y); failed photos are left out and listed in ``errors_``."""
        if X is None or y is None:
            raise ValueError(
                f"fine_tune={self.fine_tune!r} trains the network on the photos' targets: call fit(X, y) "
                "with y (class labels or numbers, one per sample), or use fine_tune=0 for frozen features"
            )
        result = fine_tune_network(
            self.model_, network_blocks(self.model_name, self.model_), parse_image_input(X), y,
            fine_tune=self.fine_tune, task=self.fine_tune_task, epochs=self.fine_tune_epochs,
            recipe=make_recipe(self.fine_tune_options), preprocessing=self.preprocessing_,
            max_pixels=self.max_pixels, on_error=self.on_error, device=resolve_device(self.device),
            random_state=self.random_state, progress=self.progress, n_workers=self.n_workers,
        )
        self.errors_ = result.errors
        return result.record

    def _runner(self) -> ModelRunner:
        device = self.inference_device()
        key = (str(device), self.backend, self.precision, self.preprocessing_)
        runtime = self.__dict__.setdefault("_runtime", PreparedRunner())  # atomic: one per estimator
        return runtime.get(key, lambda: self._build_runner(device))

    def _build_runner(self, device: torch.device) -> ModelRunner:
        runner = build_runner(self.model_, device, self.backend, self.precision, self.preprocessing_,
                              self.quantized_graph_)
        self.model_info_["runtime"] = runner.describe()  # what runs, and any fallback: known once prepared
        return runner

    def _decoder(self):
        decode = pixel_decoder(self.preprocessing_, self.max_pixels)
        if self.decode_device is not None:
            from .engine.gpu_decode import batch_decoder

            decode.decode_batch = batch_decoder(self.preprocessing_, torch.device(self.decode_device), decode,
                                                self.max_pixels)
        return decode


def embedder_from_model_info(model_info: dict, weights: str | os.PathLike | None = None, **overrides):
    """The (unfitted) :class:`~skimgfeat.CNNImageEmbedder` that produced a feature table.

    Parameters
    ----------
    model_info : dict
        A table's model info (:func:`skimgfeat.storage.io.read_model_info`, ``model_info.json``).
        Its ``params`` (the embedder's ``get_params``) are used when present, else its
        ``model_name``, ``weights`` and ``preprocessing``.
    weights : str, os.PathLike or None, default=None
        Replaces the recorded weights: a local state-dict file for offline use. None
        keeps the recorded ones.
    **overrides
        Further embedder parameters to replace (``device``, ``n_workers``, ...).

    Returns
    -------
    CNNImageEmbedder

    Examples
    --------
    >>> from skimgfeat import embedder_from_model_info
    >>> info = {"model_name": "mobilenet_v2", "weights": "IMAGENET1K_V1", "preprocessing": {"resize_mode": "square"}}
    >>> embedder_from_model_info(info, weights="weights.pth").get_params()["weights"]
    'weights.pth'
    """
    if not model_info or "model_name" not in model_info and "params" not in model_info:
        raise ValueError("the table carries no model info: cannot tell which network embeds new photos")
    embedder = CNNImageEmbedder()
    valid = embedder.get_params()
    if "params" in model_info:
        params = {name: value for name, value in model_info["params"].items() if name in valid}
    else:
        preprocessing = model_info.get("preprocessing") or {}
        recorded = model_info.get("weights")
        if isinstance(recorded, str) and recorded.startswith("file:"):  # how model info names a weights file
            recorded = recorded.removeprefix("file:")
        params = {"model_name": model_info["model_name"], "weights": recorded}
        if "resize_mode" in preprocessing:
            params["resize_mode"] = preprocessing["resize_mode"]
        params["draft"] = bool(preprocessing.get("draft", False))  # recorded either way: the default is True
    if weights is not None:
        params["weights"] = os.fspath(weights)
    params.update(overrides)
    return embedder.set_params(**params)


def fitted_embedder_from_model_info(model_info: dict | None, weights=None):
    """:func:`embedder_from_model_info`, fitted; warns when its parameters differ from the recorded ones."""
    embedder = embedder_from_model_info(model_info or {}, weights, on_error="raise").fit()
    recorded = (model_info or {}).get("parameters_sha256")
    if recorded and embedder.model_info_["parameters_sha256"] != recorded:
        warnings.warn(
            f"the network built for the queries ({embedder.model_info_['weights']}) has other parameters than the "
            "one that wrote the table: their distances to the table's rows are not comparable",
            UserWarning,
            stacklevel=3,
        )
    return embedder
