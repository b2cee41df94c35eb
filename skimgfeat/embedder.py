"""CNNImageEmbedder: image paths in, one CNN feature vector per image out."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import platform
import threading
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import PIL
import sklearn
import torch
import torchvision
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import __version__
from .engine.backends import BACKENDS, OnnxRuntimeModule, onnx_session_threads, prepare_module
from .engine.finetune import TASKS, fine_tune_network, make_recipe
from .engine.image_loading import default_max_pixels
from .engine.inference import (
    EmbeddedBatch,
    ModelRunner,
    decode_pixels,
    default_decode_workers,
    embed_stream,
    shared_decode_pool,
)
from .engine.inputs import ImageInput, parse_image_input
from .engine.preprocessing import INTERPOLATIONS, RESIZE_MODES, Preprocessing
from .exceptions import ImageLoadError
from .registry import DEFAULT_WEIGHTS, build_model, get_spec, network_blocks, parameters_sha256
from .registry.multi_scale import multi_scale_network, stage_feature_names
from .storage.cache import FeatureCache
from .storage.output import FEATURE_PREFIX, OutputContainerMixin, feature_names, progress_bar, wrap_output

ON_ERROR = ("raise", "nan")
# Autocast dtype of each precision; "int8" runs a quantised ONNX graph instead (skimgfeat.engine.quantization).
PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": None}

# Cache entries locked per claim: bounds the open lock files of one call.
_CLAIM_CHUNK = 256

# Guards the creation of each embedder's own preparation lock (a lock cannot be pickled,
# so every copy makes its own on first use).
_LOCK_CREATION = threading.Lock()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when available, else CPU; anything else must be usable here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"invalid device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device=None or 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available")
    return resolved


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
        Images per forward pass; "auto" is 32 on CPU and 256 on CUDA. On CUDA a batch
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
    draft : bool, default=False
        Let JPEG decode at reduced scale before resizing: faster on big photos, not
        bit-exact (see the docs for the measured deviation).
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
        draft: bool = False,
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

    def fit(self, X=None, y=None) -> CNNImageEmbedder:
        """Build the network, fine-tune it on (X, y) when ``fine_tune`` asks, record what it is.

        Parameters
        ----------
        X : image input as in :meth:`transform`, or None
            Used when ``fine_tune`` is not 0, and by ``precision="int8"``: up to 64 of
            these photos, evenly spread, calibrate the quantisation.
        y : array-like of shape (n_samples,) or (n_samples, n_targets), or None
            Class labels or numbers; required when ``fine_tune`` is not 0.

        Returns
        -------
        self : CNNImageEmbedder
        """
        self._check_params()
        built = build_model(self.model_name, self.weights, self.random_state)
        self.model_ = built.module
        self.n_features_out_ = built.n_features
        self.preprocessing_ = self._recipe(built.recipe)
        self.errors_ = []
        fine_tuning = self._fine_tune(X, y) if self.fine_tune != 0 else None
        self.stage_columns_ = None
        if self.multi_scale > 1:
            self.model_, self.stage_columns_ = multi_scale_network(
                get_spec(self.model_name), self.model_, self.multi_scale, self.preprocessing_.crop
            )
            self.n_features_out_ = sum(column.width for column in self.stage_columns_)
        self.model_info_ = {
            "model_name": self.model_name,
            "weights": built.weights,
            "weights_sha256": built.weights_sha256,
            "parameters_sha256": parameters_sha256(self.model_),
            "n_features": self.n_features_out_,
            "feature_names": f"{FEATURE_PREFIX}0 ... {FEATURE_PREFIX}{built.n_features - 1}",
            "output": built.output,
            "input_size": [3, self.preprocessing_.crop, self.preprocessing_.crop],
            "preprocessing": self.preprocessing_.to_dict(),
            "recipe_source": self._recipe_source(built),
            "params": json_safe_params(self.get_params(deep=False)),
            "precision": self.precision,
            "versions": library_versions(),
            "fitted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if fine_tuning is not None:
            self.model_info_["fine_tuning"] = fine_tuning
        if self.stage_columns_ is not None:
            names = self.get_feature_names_out()
            self.model_info_["feature_names"] = f"{names[0]} ... {names[-1]}"
            self.model_info_["output"] += "; before it, the global average pool of earlier stages' outputs"
            self.model_info_["multi_scale"] = [dataclasses.asdict(column) for column in self.stage_columns_]
        self.n_embedded_ = 0
        self.quantized_graph_ = None
        if self.precision == "int8":
            self.quantized_graph_, self.model_info_["calibration"] = self._calibrate(X)
        self._runtime = None
        return self

    def prepare(self) -> CNNImageEmbedder:
        """Prepare the network for the device now rather than at the first transform.

        Copies the network to the device and builds the backend (ONNX export and
        session, TorchScript trace): about a second on the CPU. It happens once per
        fitted embedder, even when several threads ask at the same time; later calls
        return at once. Useful before timing, or before sharing the embedder between
        threads so no call pays for it.

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
        features : ndarray of shape (n_samples, n_features) or (n_samples, max_images, n_features)
            float32. With one photo per sample, 2-D. With several photos per sample,
            3-D and NaN-padded: ``features[i, j]`` is the j-th photo of sample i; pass
            it through :class:`~skimgfeat.ItemAggregator` to get one row per sample.
            Row i always belongs to sample i; failed images (``on_error="nan"``) are NaN.
        """
        check_is_fitted(self, "model_")
        data = parse_image_input(X)
        missing = self._missing_path_errors(data)
        paths = data.unique_paths()
        matrix, errors, n_embedded = self._embed_with_cache(paths)
        features = data.assemble(paths, matrix)
        # Set once per call, so concurrent calls never mix their results.
        self.errors_ = missing + errors
        self.n_embedded_ = n_embedded
        return wrap_output(features, data.index, self.get_feature_names_out(), self._output_kind())

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
        state.pop("_lock", None)
        return state

    # -- streaming -------------------------------------------------------------

    def iter_transform(self, paths: Sequence, on_error: str | None = None) -> Iterator[EmbeddedBatch]:
        """Embed ``paths`` batch by batch, in order, with flat memory.

        Yields :class:`~skimgfeat.engine.inference.EmbeddedBatch` objects (``start``,
        ``features`` with NaN rows for failures, ``errors``). This is what the command
        line uses to checkpoint long runs. Safe to call from several threads at once:
        each call's batches carry only its own failures.
        """
        check_is_fitted(self, "model_")
        runner = self._runner()
        on_error = self.on_error if on_error is None else on_error
        n_workers = self.n_workers or default_decode_workers()
        yield from embed_stream(
            paths,
            runner,
            self._decoder(),
            self.n_features_out_,
            self._batch_size(runner.device),
            n_workers,
            on_error,
            parallel_calls=runner.parallel_calls,
            pool=shared_decode_pool(n_workers) if self.n_workers is None else None,
        )

    # -- internals -------------------------------------------------------------

    def _recipe(self, recipe: Preprocessing) -> Preprocessing:
        """The weights' recipe with the user's overrides (None keeps the recipe's value)."""
        overrides = {
            "resize_mode": self.resize_mode,
            "resize": self.resize_size,
            "crop": self.crop_size,
            "interpolation": self.interpolation,
        }
        chosen = {name: value for name, value in overrides.items() if value is not None}
        return dataclasses.replace(recipe, **chosen, draft=bool(self.draft))

    def _recipe_source(self, built) -> str:
        overridden = [
            f"{name}={getattr(self, name)!r}"
            for name in ("resize_mode", "resize_size", "crop_size", "interpolation")
            if getattr(self, name) is not None
        ]
        return built.recipe_source + (f"; overridden by {', '.join(overridden)}" if overridden else "")

    def _check_params(self) -> None:
        choices = {
            "on_error": (self.on_error, ON_ERROR),
            "resize_mode": (self.resize_mode, (None, *RESIZE_MODES)),
            "interpolation": (self.interpolation, (None, *INTERPOLATIONS)),
            "precision": (self.precision, tuple(PRECISIONS)),
            "backend": (self.backend, BACKENDS),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.batch_size != "auto" and not _is_int_at_least(self.batch_size, 1):
            raise ValueError(f"batch_size must be a positive int or 'auto', got {self.batch_size!r}")
        for name in ("resize_size", "crop_size"):
            value = getattr(self, name)
            if value is not None and not _is_int_at_least(value, 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if self.n_workers is not None and not _is_int_at_least(self.n_workers, 1):
            raise ValueError(f"n_workers must be a positive int or None, got {self.n_workers!r}")
        if self.max_pixels is not None and not _is_int_at_least(self.max_pixels, 0):
            raise ValueError(f"max_pixels must be a non-negative int or None, got {self.max_pixels!r}")
        fine_tune = self.fine_tune
        if fine_tune != "all" and not _is_int_at_least(fine_tune, 0):
            raise ValueError(f"fine_tune must be a non-negative int or 'all', got {fine_tune!r}")
        if self.fine_tune_task not in TASKS:
            raise ValueError(f"fine_tune_task must be one of {TASKS}, got {self.fine_tune_task!r}")
        if not _is_int_at_least(self.fine_tune_epochs, 1):
            raise ValueError(f"fine_tune_epochs must be a positive int, got {self.fine_tune_epochs!r}")
        make_recipe(self.fine_tune_options)
        if not _is_int_at_least(self.multi_scale, 1):
            raise ValueError(f"multi_scale must be a positive int, got {self.multi_scale!r}")
        device = resolve_device(self.device)
        if self.decode_device is not None:
            resolve_device(self.decode_device)
        if self.precision == "int8" and (device.type != "cpu" or self.backend not in ("auto", "onnxruntime")):
            raise ValueError(
                f"precision='int8' runs an ONNX Runtime graph on the CPU: needs device='cpu' and backend 'auto' or "
                f"'onnxruntime', got device={self.device!r}, backend={self.backend!r}"
            )

    def _calibrate(self, X) -> tuple[bytes, dict]:
        """The int8 graph calibrated on photos of X, and what identifies the calibration."""
        from .engine.quantization import calibration_paths, calibration_pixels, quantize_graph

        if X is None:
            raise ValueError("precision='int8' calibrates on real photos: pass image paths to fit(X)")
        paths = calibration_paths(parse_image_input(X).unique_paths())
        pixels = calibration_pixels(paths, self._decoder(), self.n_workers or default_decode_workers())
        cpu, size = torch.device("cpu"), self.preprocessing_.crop
        float_module = prepare_module(self.model_, cpu, "onnxruntime", input_size=size)
        if not isinstance(float_module, OnnxRuntimeModule):
            raise RuntimeError("precision='int8' needs the network exported to ONNX, which failed (see the warning)")
        quantized = quantize_graph(float_module.graph, pixels, self.preprocessing_)
        return quantized, {"n_images": len(pixels), "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest()}

    def _fine_tune(self, X, y) -> dict:
        """Train ``model_`` on (X, y); failed photos are left out and listed in ``errors_``."""
        if X is None or y is None:
            raise ValueError(
                f"fine_tune={self.fine_tune!r} trains the network on the photos' targets: call fit(X, y) "
                "with y (class labels or numbers, one per sample), or use fine_tune=0 for frozen features"
            )
        result = fine_tune_network(
            self.model_,
            network_blocks(self.model_name, self.model_),
            parse_image_input(X),
            y,
            fine_tune=self.fine_tune,
            task=self.fine_tune_task,
            epochs=self.fine_tune_epochs,
            recipe=make_recipe(self.fine_tune_options),
            preprocessing=self.preprocessing_,
            max_pixels=self.max_pixels,
            on_error=self.on_error,
            device=resolve_device(self.device),
            random_state=self.random_state,
            progress=self.progress,
            n_workers=self.n_workers,
        )
        self.errors_ = result.errors
        return result.record

    def _runner(self) -> ModelRunner:
        device = self.inference_device()
        key = (str(device), self.backend, self.precision, self.preprocessing_)
        runtime = getattr(self, "_runtime", None)
        if runtime is not None and runtime[0] == key:
            return runtime[1]
        with self._prepare_lock():
            runtime = getattr(self, "_runtime", None)  # another thread may have prepared it meanwhile
            if runtime is not None and runtime[0] == key:
                return runtime[1]
            autocast_dtype = PRECISIONS[self.precision]
            if getattr(self, "quantized_graph_", None) is not None:
                module = OnnxRuntimeModule(self.quantized_graph_, onnx_session_threads())
            else:
                module = prepare_module(
                    self.model_,
                    device,
                    self.backend,
                    input_size=self.preprocessing_.crop,
                    autocast=autocast_dtype is not None,
                )
            runner = ModelRunner(module, device, self.preprocessing_, autocast_dtype)
            self._runtime = (key, runner)
            return runner

    def _prepare_lock(self) -> threading.Lock:
        with _LOCK_CREATION:
            if getattr(self, "_lock", None) is None:
                self._lock = threading.Lock()
            return self._lock

    def inference_device(self) -> torch.device:
        """The device the network runs on.

        The fitted ``device``; a fitted model loaded where its device is absent runs on the CPU.

        ``fit`` refuses a device that is not there. A pickle fitted on a GPU machine and
        loaded on a CPU-only one still works (the network is stored as CPU tensors): it
        warns and runs on the CPU rather than failing a deployment.
        """
        try:
            return resolve_device(self.device)
        except ValueError as error:
            if _device_type(self.device) not in ("cuda", "mps"):
                raise
            warnings.warn(
                f"{error.args[0].split(';')[0]}: running on the CPU instead (set_params(device=None) silences this)",
                RuntimeWarning,
                stacklevel=4,
            )
            return torch.device("cpu")

    def _batch_size(self, device: torch.device) -> int:
        if self.batch_size == "auto":
            return 256 if device.type == "cuda" else 32
        return int(self.batch_size)

    def _decoder(self):
        preprocessing, max_pixels = self.preprocessing_, self.max_pixels

        def decode(path):
            return decode_pixels(path, preprocessing, max_pixels)

        if getattr(self, "decode_device", None) is not None:
            from .engine.gpu_decode import decode_jpeg_batch

            device = torch.device(self.decode_device)
            decode.decode_batch = lambda paths: decode_jpeg_batch(paths, preprocessing, device, decode, max_pixels)
        return decode

    def _missing_path_errors(self, data: ImageInput) -> list[ImageLoadError]:
        errors = data.missing_path_errors()
        if errors and self.on_error == "raise":
            raise errors[0]
        return errors

    def _embed_with_cache(self, paths: list) -> tuple[np.ndarray, list[ImageLoadError], int]:
        """Features of ``paths`` (NaN rows for failures), the failures in input order, how many were embedded."""
        matrix = np.full((len(paths), self.n_features_out_), np.nan, dtype=np.float32)
        failures: list[tuple[int, ImageLoadError]] = []
        if self.cache is None:
            with progress_bar(len(paths), enabled=self.progress) as bar:
                self._embed_rows(paths, list(range(len(paths))), matrix, failures, bar)
            n_embedded = len(paths)
        else:
            n_embedded = self._embed_through_cache(paths, matrix, failures)
        return matrix, [error for _, error in sorted(failures, key=lambda item: item[0])], n_embedded

    def _embed_rows(self, paths: list, rows: list[int], matrix: np.ndarray, failures: list, bar, store=None) -> None:
        """Embed ``paths[rows]`` into ``matrix[rows]``; ``store(row, vector)`` each success."""
        if not rows:
            return
        for batch in self.iter_transform([paths[i] for i in rows]):
            positions = rows[batch.start : batch.start + len(batch.features)]
            matrix[positions] = batch.features
            failures.extend((rows[position], error) for position, error in batch.errors)
            failed = {position for position, _ in batch.errors}
            for k, row in enumerate(positions):
                if store is not None and batch.start + k not in failed:
                    store(row, batch.features[k])
            bar.update(len(batch.features))

    def _embed_through_cache(self, paths: list, matrix: np.ndarray, failures: list) -> int:
        cache = FeatureCache(self.cache, self._cache_namespace())
        # Keys from the files as they are before decoding: a file changed meanwhile never
        # gets these features under the key of its new version.
        keys = cache.keys(paths)
        hits = cache.get_many(keys)
        for i, vector in hits.items():
            matrix[i] = vector
        misses = [i for i in range(len(paths)) if i not in hits]
        writable = True

        def store(row: int, vector: np.ndarray) -> None:
            nonlocal writable
            writable = writable and cache.put(keys[row], vector)  # one warning, then no more tries

        embedded, elsewhere = [], []
        with progress_bar(len(misses), enabled=self.progress) as bar:
            for start in range(0, len(misses), _CLAIM_CHUNK):
                chunk = misses[start : start + _CLAIM_CHUNK]
                with cache.claim([keys[i] for i in chunk]) as claimed:
                    mine = [chunk[k] for k in sorted(claimed)]
                    self._embed_rows(paths, mine, matrix, failures, bar, store)
                embedded += mine
                elsewhere += [row for k, row in enumerate(chunk) if k not in claimed]
            left = []
            for row in elsewhere:  # another process was embedding these: take its results
                vector = cache.wait(keys[row])
                if vector is None:
                    left.append(row)
                else:
                    matrix[row] = vector
                    bar.update(1)
            self._embed_rows(paths, left, matrix, failures, bar, store)
        return len(embedded) + len(left)

    def _cache_namespace(self) -> str:
        info = self.model_info_
        max_pixels = default_max_pixels() if self.max_pixels is None else self.max_pixels
        return "|".join(
            [
                info["parameters_sha256"],
                repr(sorted(self.preprocessing_.to_dict().items())),
                self.precision,
                f"max_pixels={max_pixels}",
            ]
            + ([info["calibration"]["pixels_sha256"]] if "calibration" in info else [])
        )

def _device_type(device) -> str | None:
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        return None


def _is_int_at_least(value, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def json_safe_params(params: dict) -> dict:
    """``get_params(deep=False)`` as JSON values: paths and enum members become strings."""
    return {
        name: value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
        for name, value in params.items()
    }


def library_versions() -> dict[str, str]:
    return {
        "skimgfeat": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
    }
