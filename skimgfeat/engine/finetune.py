"""Fine-tuning the embedder's network on y: what ``CNNImageEmbedder(fine_tune=...)`` runs in fit.

The recipe, chosen by measurement on the grocery photos (benchmarks/README.md):

* every photo is decoded once, by the package's one decode loop
  (:func:`skimgfeat.engine.decoding.decode_batches`), to a small square uint8
  copy kept in a temporary file (:class:`PhotoStore`: memory stays flat however many
  photos train); each epoch cuts a random resized crop from it, flips it, and
  trains at a lower resolution than ``transform`` embeds at (cheaper steps, and a
  network trained on zoomed-in crops sees objects at the right size on full photos);
* the temporary head starts from a linear probe fitted on frozen features (LP-FT), so
  the first steps do not push random-head gradients into the pretrained blocks;
* batch norms stay in inference mode: small batches give noisy statistics, and weights
  with folded batch norms would be wrecked by them;
* AdamW, a learning rate ten times higher for the head than for the network, linear
  warm-up then cosine decay (plain SGD diverges on weights whose batch norms were folded
  into the convolutions: their gradients are not scale-invariant); label smoothing for classes,
  squared error on standardised y for regression;
* a validation split of the training data (stratified for classes) scores every epoch
  at the embedding resolution; the best epoch's weights are kept, and training stops
  after ``patience`` epochs without improvement;
* with ``fine_tune=N`` the frozen part runs once per augmented view of each photo and
  its output is reused every epoch; only the last N blocks run per step;
* a loss, weight or validation score that stops being finite raises FloatingPointError
  naming the learning rates at once, rather than training on (or keeping) NaN weights.

The loop is a small one of our own rather than skorch's: the parts that matter here
(photos of one sample pooled before the head, batch norms kept in inference mode
while training, a frozen prefix run once per view, two-stage LP-FT) would each need an
override of skorch's internals, while the loop itself is a few lines.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target
from torch import nn
from torch.nn import functional

from ..exceptions import ImageLoadError
from ..storage.output import progress_bar
from .decoding import decode_batches, pixel_decoder
from .inputs import ImageInput
from .preprocessing import Preprocessing
from .threads import default_decode_workers
from .threads import torch_threads as _torch_threads

TASKS = ("auto", "classification", "regression")
# Photos decoded per write to the PhotoStore: what decoding holds in memory at a time.
STORE_BATCH = 8


@dataclass(frozen=True)
class Recipe:
    """Training settings; ``fine_tune_options`` overrides any of them by name.

    Parameters
    ----------
    train_size : int
        Side of the augmented training crops (``transform`` embeds at the
        preprocessing's crop, 224).
    source_size : int
        Side of the square copy of each photo the crops are cut from (kept in a
        temporary file, ``source_size**2 * 3`` bytes per photo).
    crop_scale : (float, float)
        Area range of the random resized crops, as a fraction of the photo.
    batch_size : int
        Photos per training step (samples with several photos: about that many photos).
    learning_rate : float
        Peak AdamW learning rate of the network's trained blocks.
    head_learning_rate : float
        Peak AdamW learning rate of the temporary head.
    weight_decay : float
        AdamW's decoupled weight decay; batch norm and bias parameters get none.
    warmup_epochs : float
        Linear learning-rate warm-up before the cosine decay.
    label_smoothing : float
        Cross-entropy label smoothing (classification).
    head_dropout : float
        Dropout on the pooled features before the temporary head.
    validation_fraction : float
        Share of the training samples held out to score epochs; 0 trains on all and
        keeps the last epoch.
    patience : int
        Epochs without a better validation score before training stops.
    n_views : int
        Augmented views of each photo run through the frozen part and reused
        (``fine_tune=N`` only).
    cache_megabytes : int
        Memory allowed for the frozen part's outputs (``fine_tune=N`` only): those of the
        validation photos first (scored every epoch), then the views; fewer views (or
        none: the frozen part then runs every step) when they would not fit.
    probe_epochs : int
        Full-batch passes fitting the initial head on frozen features.
    """

    train_size: int = 160
    source_size: int = 208
    crop_scale: tuple[float, float] = (0.25, 1.0)
    batch_size: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    head_dropout: float = 0.2
    validation_fraction: float = 0.1
    patience: int = 3
    n_views: int = 4
    cache_megabytes: int = 2048
    probe_epochs: int = 100


def make_recipe(options: dict | None) -> Recipe:
    """The default :class:`Recipe` with ``options`` applied; unknown names raise a ValueError."""
    options = dict(options or {})
    known = {field.name for field in fields(Recipe)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown fine_tune_options {unknown}; known: {sorted(known)}")
    if "crop_scale" in options:
        options["crop_scale"] = tuple(options["crop_scale"])
    return replace(Recipe(), **options)


def resolve_task(y: np.ndarray, task: str) -> str:
    """``"classification"`` or ``"regression"``, from ``task`` or from y as scikit-learn reads it."""
    if task not in TASKS:
        raise ValueError(f"fine_tune_task must be one of {TASKS}, got {task!r}")
    if y.dtype.kind in "fc":
        _check_finite(y)
    if task != "auto":
        return task
    kind = type_of_target(y, input_name="y")
    if kind in ("binary", "multiclass"):
        return "classification"
    if kind in ("continuous", "continuous-multioutput"):
        return "regression"
    raise ValueError(
        f"fine-tuning learns one class label or one or more numbers per sample; y is {kind!r}. "
        "Set fine_tune_task to force a task."
    )


def _check_finite(numbers: np.ndarray) -> None:
    bad = ~np.isfinite(numbers.reshape(len(numbers), -1)).all(axis=1)
    if bad.any():
        raise ValueError(
            f"fine-tuning needs finite y: {int(bad.sum())} of {len(numbers)} samples have NaN or infinity "
            f"(first at position {int(np.argmax(bad))}); drop them or impute y first"
        )


@dataclass
class Targets:
    """y as the loss sees it: class indices, or standardised numbers."""

    task: str
    values: torch.Tensor
    n_outputs: int
    classes: np.ndarray | None = None

    @classmethod
    def from_y(cls, y: np.ndarray, task: str) -> Targets:
        if task == "classification":
            if y.ndim != 1:
                raise ValueError(f"classification fine-tuning needs a 1-D y, got shape {y.shape}")
            classes, codes = np.unique(y, return_inverse=True)
            if len(classes) < 2:
                raise ValueError(
                    f"classification fine-tuning needs at least two classes in y, got only {classes.tolist()}"
                )
            return cls(task, torch.from_numpy(codes.astype(np.int64)), len(classes), classes)
        try:
            numbers = np.asarray(y, dtype=np.float64)
        except ValueError:
            raise ValueError("regression fine-tuning needs numeric y") from None
        numbers = numbers.reshape(len(numbers), -1)
        _check_finite(numbers)
        scale = numbers.std(axis=0)
        standardised = (numbers - numbers.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
        return cls(task, torch.from_numpy(standardised.astype(np.float32)), numbers.shape[1])

    def loss(self, outputs: torch.Tensor, rows: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        truth = self.values[rows.cpu()].to(outputs.device)
        if self.task == "classification":
            return functional.cross_entropy(outputs, truth, label_smoothing=label_smoothing)
        return functional.mse_loss(outputs, truth)

    def score(self, outputs: torch.Tensor, rows: torch.Tensor) -> float:
        """Accuracy for classes, R^2 (mean over targets) for numbers: higher is better."""
        truth = self.values[rows]
        if self.task == "classification":
            return float((outputs.argmax(1) == truth).float().mean())
        residual = ((outputs - truth) ** 2).sum(0)
        total = ((truth - truth.mean(0)) ** 2).sum(0).clamp_min(1e-12)
        return float((1 - residual / total).mean())

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "classification" else "r2"


class PhotoStore:
    """Decoded square uint8 photos in an unnamed temporary file, read back a few at a time.

    Training visits every photo each epoch; holding them all in memory would cost
    ``side**2 * 3`` bytes a photo (130 kB at 208 px: 13 GB for 100,000 photos). Reads go
    through the operating system's file cache, which it gives back under pressure,
    instead of this process's own memory. The file is in :func:`tempfile.gettempdir`
    (``TMPDIR``) and disappears when the store is closed or the process ends.
    """

    def __init__(self, side: int):
        self.shape = (side, side, 3)
        self.photo_bytes = side * side * 3
        self.n_photos = 0
        self._file = tempfile.TemporaryFile(prefix="skimgfeat-finetune-")

    def __len__(self) -> int:
        return self.n_photos

    def append(self, pixels: np.ndarray) -> None:
        """Add a ``(n, side, side, 3)`` uint8 batch of photos after the others."""
        if pixels.shape[1:] != self.shape or pixels.dtype != np.uint8:
            raise ValueError(f"the store holds {self.shape} uint8 photos, got {pixels.shape} {pixels.dtype}")
        self._file.seek(self.n_photos * self.photo_bytes)
        try:
            self._file.write(np.ascontiguousarray(pixels).data)
        except OSError as error:
            raise OSError(
                error.errno,
                f"fine-tuning keeps its decoded photos ({self.photo_bytes / 2**20:.2f} MB each) in a temporary "
                f"file in {tempfile.gettempdir()} and could not write it ({error.strerror}); "
                "point TMPDIR at a disk with room",
            ) from error
        self.n_photos += len(pixels)

    def read(self, rows) -> torch.Tensor:
        """The photos at ``rows`` as one ``(len(rows), side, side, 3)`` uint8 tensor."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        pixels = np.empty((len(rows), *self.shape), dtype=np.uint8)
        buffer = memoryview(pixels).cast("B")
        # consecutive rows come in one read: the chunked passes read the file in order
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            self._file.seek(int(rows[start]) * self.photo_bytes)
            wanted = (stop - start) * self.photo_bytes
            if self._file.readinto(buffer[start * self.photo_bytes : stop * self.photo_bytes]) != wanted:
                raise EOFError(f"the store holds {self.n_photos} photos; rows {rows[start]}..{rows[stop - 1]} asked")
        return torch.from_numpy(pixels)

    def chunks(self, size: int = 64):
        """``(start, stop)`` of consecutive chunks of at most ``size`` photos."""
        for start in range(0, self.n_photos, size):
            yield start, min(start + size, self.n_photos)

    def close(self) -> None:
        self._file.close()


@dataclass
class Photos:
    """The decoded photos of the samples used for training, and which sample each belongs to.

    Photos are stored sample after sample, so a sample's photos are one run of rows.
    """

    store: PhotoStore
    sample_of_photo: np.ndarray  # (n_photos,) positions in the list of kept samples, non-decreasing
    samples: np.ndarray  # positions in the input of the samples with at least one photo

    def __post_init__(self):
        counts = np.bincount(self.sample_of_photo, minlength=len(self.samples))
        self.first_photo = np.concatenate([[0], np.cumsum(counts)])

    def photo_count(self, sample_rows: np.ndarray) -> np.ndarray:
        return self.first_photo[np.asarray(sample_rows) + 1] - self.first_photo[sample_rows]

    def rows_of(self, sample_rows: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """Photo rows of these samples, and each photo's sample position in ``sample_rows``."""
        counts = self.photo_count(sample_rows)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rows = np.repeat(self.first_photo[sample_rows] - offsets, counts) + np.arange(counts.sum())
        return rows, torch.from_numpy(np.repeat(np.arange(len(sample_rows)), counts))

    def close(self) -> None:
        self.store.close()


def decode_samples(
    data: ImageInput, preprocessing: Preprocessing, max_pixels: int | None, on_error: str, n_workers: int | None
) -> tuple[Photos, list[ImageLoadError]]:
    """Decode every photo of every sample with ``preprocessing`` into a :class:`PhotoStore`.

    A photo that fails is dropped (with ``on_error="raise"`` the first failure raises);
    a sample left without any photo is left out of training.
    """
    paths = [path for sample in data.samples for path in sample]
    sample_of_path = np.repeat(np.arange(len(data.samples)), [len(sample) for sample in data.samples])
    store = PhotoStore(preprocessing.crop)
    owners, errors = [], []
    try:
        for batch in decode_batches(paths, pixel_decoder(preprocessing, max_pixels), STORE_BATCH,
                                    on_error=on_error, n_workers=n_workers):
            errors += [error for _, error in batch.errors]
            if batch.stacked is not None:
                store.append(batch.stacked)
                owners.append(sample_of_path[batch.positions])
        if not owners:
            raise ValueError("fine-tuning found no readable photo in X")
    except BaseException:
        store.close()
        raise
    samples, sample_of_photo = np.unique(np.concatenate(owners), return_inverse=True)
    return Photos(store, sample_of_photo, samples), errors


@dataclass
class NetworkSplit:
    """The network as fine-tuning runs it: an optional frozen prefix, then the trained trunk.

    When the registry's blocks run in sequence reproduce the network (torchvision
    models), the frozen blocks become a prefix whose output can be computed once and
    reused; otherwise (timm's blocks are parameter groups) the whole network runs every
    step with only the trained blocks' parameters learning.
    """

    prefix: nn.Module | None
    trunk: nn.Module
    trained: list[nn.Parameter]


def split_network(model: nn.Module, blocks: list[nn.Module], fine_tune: int | str, side: int) -> NetworkSplit:
    """Split ``model`` for ``fine_tune`` = N last ``blocks`` or ``"all"``."""
    if fine_tune == "all":
        return NetworkSplit(None, model, list(model.parameters()))
    if fine_tune > len(blocks):
        raise ValueError(f"fine_tune={fine_tune} but the network has {len(blocks)} blocks; use at most that or 'all'")
    trained = [parameter for block in blocks[len(blocks) - fine_tune :] for parameter in block.parameters()]
    if not _blocks_chain(model, blocks, side):
        return NetworkSplit(None, model, trained)
    cut = len(blocks) - fine_tune
    return NetworkSplit(nn.Sequential(*blocks[:cut]) if cut else None, nn.Sequential(*blocks[cut:]), trained)


def _blocks_chain(model: nn.Module, blocks: list[nn.Module], side: int) -> bool:
    probe = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            chained = nn.Sequential(*blocks)(probe)
        except (RuntimeError, TypeError, ValueError):
            return False
        expected = model(probe)
    return chained.shape == expected.shape and torch.allclose(chained, expected, rtol=1e-4, atol=1e-4)


@dataclass
class Augmenter:
    """Random resized crops and horizontal flips of uint8 photos, normalised for the network."""

    preprocessing: Preprocessing
    size: int
    scale: tuple[float, float]
    generator: torch.Generator

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        crops = [self._crop(photo) for photo in pixels]
        batch = torch.cat(crops).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return self.preprocessing.normalize(batch)

    def _crop(self, photo: torch.Tensor) -> torch.Tensor:
        height, width = photo.shape[:2]
        draw = torch.rand(4, generator=self.generator).tolist()
        area = height * width * (self.scale[0] + (self.scale[1] - self.scale[0]) * draw[0])
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * draw[1])
        side_w = min(width, max(1, round(math.sqrt(area * aspect))))
        side_h = min(height, max(1, round(math.sqrt(area / aspect))))
        top = int(draw[2] * (height - side_h + 1))
        left = int(draw[3] * (width - side_w + 1))
        region = photo[top : top + side_h, left : left + side_w].permute(2, 0, 1)[None].float()
        if torch.rand(1, generator=self.generator).item() < 0.5:
            region = region.flip(3)
        return functional.interpolate(region, size=(self.size, self.size), mode="bilinear", antialias=True)


def center_inputs(pixels: torch.Tensor, preprocessing: Preprocessing, size: int) -> torch.Tensor:
    """The whole photos resized to ``size``, normalised: the probe's view."""
    images = pixels.permute(0, 3, 1, 2).float()
    resized = functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return preprocessing.normalize(resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous())


def pool_by_sample(features: torch.Tensor, owners: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Mean of the photo features of each sample, as ``ItemAggregator(method="mean")`` pools them."""
    sums = torch.zeros(n_samples, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, owners, features)
    counts = torch.bincount(owners, minlength=n_samples).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]


def keep_batch_norm_frozen(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()


@dataclass
class Split:
    """Positions in the kept samples for training and validation."""

    train: np.ndarray
    validation: np.ndarray


def split_samples(targets: Targets, fraction: float, seed: int) -> Split:
    """A validation split of the samples, stratified when every class can be represented."""
    n = len(targets.values)
    positions = np.arange(n)
    n_validation = int(round(fraction * n))
    if fraction <= 0 or n_validation < 1 or n - n_validation < 2:
        return Split(positions, positions[:0])
    stratify = None
    if targets.task == "classification":
        counts = np.bincount(targets.values.numpy())
        if counts[counts > 0].min() >= 2 and n_validation >= np.count_nonzero(counts):
            stratify = targets.values.numpy()
    train, validation = train_test_split(positions, test_size=n_validation, random_state=seed, stratify=stratify)
    return Split(np.sort(train), np.sort(validation))


@dataclass
class FineTuneResult:
    """What fitting learned, for ``model_info_``."""

    record: dict[str, Any]
    errors: list[ImageLoadError]


class _Trainer:
    """One fine-tuning run: the frozen part's outputs prepared once, then epochs of AdamW on trunk and head.

    Every pass over photos reads them from their :class:`PhotoStore` a chunk at a time,
    so memory holds one chunk of inputs, per-sample pooled features and, for
    ``fine_tune=N``, the frozen outputs that fit in ``cache_megabytes``.
    """

    def __init__(self, network: NetworkSplit, targets: Targets, photos: Photos, validation: Photos | None,
                 split: Split, recipe: Recipe, preprocessing: Preprocessing, device, generator, progress):
        self.targets, self.photos, self.split = targets, photos, split
        self.recipe, self.preprocessing, self.device, self.generator = recipe, preprocessing, device, generator
        self.progress = progress
        self.prefix, self.trunk, self.trained = network.prefix, network.trunk, network.trained
        if self.prefix is not None:
            self.prefix.to(device)
        self.augment = Augmenter(preprocessing, recipe.train_size, recipe.crop_scale, generator)
        self.validation = validation
        self.validation_frozen: torch.Tensor | None = None
        self.views: list[torch.Tensor] = []

    # -- inputs ----------------------------------------------------------------

    def _frozen(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.prefix is None:
            return inputs
        with torch.no_grad():
            return self.prefix(inputs.to(self.device)).cpu()

    def _validation_inputs(self, start: int, stop: int) -> torch.Tensor:
        if self.validation_frozen is not None:
            return self.validation_frozen[start:stop]
        return self._frozen(self.preprocessing.normalize(self.validation.store.read(range(start, stop))))

    def _probe_inputs(self, start: int, stop: int) -> torch.Tensor:
        pixels = self.photos.store.read(range(start, stop))
        return self._frozen(center_inputs(pixels, self.preprocessing, self.recipe.train_size))

    def _view_inputs(self, start: int, stop: int) -> torch.Tensor:
        return self._frozen(self.augment(self.photos.store.read(range(start, stop))))

    def _all_frozen(self, store: PhotoStore, inputs_of: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
        """``inputs_of`` over the whole store, chunk by chunk, into one preallocated tensor."""
        output = None
        for start, stop in store.chunks():
            chunk = inputs_of(start, stop)
            if output is None:
                output = torch.empty((len(store), *chunk.shape[1:]), dtype=chunk.dtype)
            output[start:stop] = chunk
        return output

    def prepare_frozen(self, n_epochs: int) -> None:
        """With a frozen prefix: its outputs for the validation photos, then ``n_views`` augmented views."""
        if self.prefix is None:
            return
        budget = self.recipe.cache_megabytes * 2**20
        if self.validation is not None:
            one = self._frozen(self.preprocessing.normalize(self.validation.store.read([0])))
            size = one.element_size() * one.numel() * len(self.validation.store)
            if size <= budget:
                self.validation_frozen = self._all_frozen(self.validation.store, self._validation_inputs)
                budget -= size
        one = self._view_inputs(0, 1)
        per_view = one.element_size() * one.numel() * len(self.photos.store)
        for _ in range(min(self.recipe.n_views, n_epochs, int(budget // per_view))):
            self.views.append(self._all_frozen(self.photos.store, self._view_inputs))

    def training_inputs(self, photo_rows: np.ndarray, epoch: int) -> torch.Tensor:
        if self.views:
            return self.views[epoch % len(self.views)][photo_rows]
        return self._frozen(self.augment(self.photos.store.read(photo_rows)))

    # -- batches of samples ----------------------------------------------------

    def batches(self, epoch_order: np.ndarray, photos_per_sample: float):
        per_batch = max(1, int(round(self.recipe.batch_size / photos_per_sample)))
        for start in range(0, len(epoch_order), per_batch):
            yield epoch_order[start : start + per_batch]

    def sample_features(self, inputs: torch.Tensor, owners: torch.Tensor, n_samples: int) -> torch.Tensor:
        features = self.trunk(inputs.to(self.device, memory_format=torch.channels_last))
        return pool_by_sample(features, owners.to(self.device), n_samples)

    def pooled_features(self, photos: Photos, inputs_of: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
        """Per-sample mean of the trunk's features over all ``photos``, a chunk at a time (no gradients)."""
        sums = None
        with torch.no_grad():
            for start, stop in photos.store.chunks():
                features = self.trunk(inputs_of(start, stop).to(self.device, memory_format=torch.channels_last))
                if sums is None:
                    sums = torch.zeros(len(photos.samples), features.shape[1], device=self.device)
                sums.index_add_(0, torch.as_tensor(photos.sample_of_photo[start:stop], device=self.device), features)
        counts = torch.as_tensor(photos.photo_count(np.arange(len(photos.samples))), device=self.device)
        return sums / counts.clamp_min(1)[:, None].to(sums.dtype)

    # -- stages ----------------------------------------------------------------

    def probe_head(self, head: nn.Module) -> None:
        """Fit the head on frozen features of the whole photos (the LP of LP-FT)."""
        if self.recipe.probe_epochs == 0:
            return
        self.trunk.eval()
        pooled = self.pooled_features(self.photos, self._probe_inputs)[torch.as_tensor(self.split.train)]
        if not torch.isfinite(pooled).all():
            raise FloatingPointError(
                "the network gives NaN or infinite features on these photos before any training: check its weights"
            )
        linear = head[-1]
        optimizer = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=self.recipe.probe_epochs,
                                      line_search_fn="strong_wolfe")
        rows = torch.as_tensor(self.split.train)
        penalty = 1e-3

        def closure():
            optimizer.zero_grad()
            loss = self.targets.loss(linear(pooled), rows, self.recipe.label_smoothing)
            loss = loss + penalty * linear.weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)

    def validation_score(self, head: nn.Module, epoch: int) -> float | None:
        if self.validation is None:
            return None
        self.trunk.eval()
        head.eval()
        pooled = self.pooled_features(self.validation, self._validation_inputs)
        with torch.no_grad():
            outputs = head(pooled).cpu()
        if not torch.isfinite(outputs).all():
            raise self._diverged("the head's outputs on the validation photos are NaN or infinite", epoch)
        rows = torch.as_tensor(self.split.validation[self.validation.samples])
        score = self.targets.score(outputs, rows)
        if not math.isfinite(score):
            raise self._diverged(f"the validation {self.targets.metric} is {score}", epoch)
        return score

    def _diverged(self, what: str, epoch: int) -> FloatingPointError:
        recipe = self.recipe
        return FloatingPointError(
            f"fine-tuning diverged at epoch {epoch + 1}: {what}. Lower fine_tune_options['learning_rate'] "
            f"(now {recipe.learning_rate:g}) and 'head_learning_rate' (now {recipe.head_learning_rate:g}), "
            "for example ten times"
        )

    def train(self, head: nn.Module, epochs: int) -> dict[str, Any]:
        recipe = self.recipe
        self.trunk.to(self.device)
        head.to(self.device)
        trained = self.trained
        for parameter in trained:
            parameter.requires_grad_(True)
        groups = [
            {"params": [p for p in trained if p.ndim > 1], "weight_decay": recipe.weight_decay},
            {"params": [p for p in trained if p.ndim <= 1], "weight_decay": 0.0},
            {"params": [head[-1].weight], "weight_decay": recipe.weight_decay, "lr": recipe.head_learning_rate},
            {"params": [head[-1].bias], "weight_decay": 0.0, "lr": recipe.head_learning_rate},
        ]
        optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate)
        n_train = len(self.split.train)
        photos_per_sample = len(self.photos.sample_of_photo) / len(self.targets.values)
        steps_per_epoch = math.ceil(n_train / max(1, int(round(recipe.batch_size / photos_per_sample))))
        total = max(1, epochs * steps_per_epoch)
        warmup = min(total - 1, int(recipe.warmup_epochs * steps_per_epoch))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        history: list[dict[str, float | None]] = []
        best = (-math.inf, None, -1)  # score, weights, epoch
        n_photos = int(self.photos.photo_count(self.split.train).sum())
        with progress_bar(epochs * n_photos, enabled=self.progress) as bar:
            bar.unit = "photo"
            for epoch in range(epochs):
                self.trunk.train()
                keep_batch_norm_frozen(self.trunk)
                head.train()
                order = self.split.train[torch.randperm(n_train, generator=self.generator).numpy()]
                losses = []
                for sample_rows in self.batches(order, photos_per_sample):
                    rows, owners = self.photos.rows_of(sample_rows)
                    inputs = self.training_inputs(rows, epoch)
                    outputs = head(self.sample_features(inputs, owners, len(sample_rows)))
                    loss = self.targets.loss(outputs, torch.as_tensor(sample_rows), recipe.label_smoothing)
                    losses.append(float(loss.detach()))
                    if not math.isfinite(losses[-1]):
                        raise self._diverged(f"the training loss is {losses[-1]}", epoch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    bar.update(len(rows))
                if not all(torch.isfinite(parameter).all() for parameter in [*trained, *head.parameters()]):
                    raise self._diverged("the weights are NaN or infinite", epoch)
                score = self.validation_score(head, epoch)
                history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "validation_score": score})
                bar.set_postfix(loss=f"{np.mean(losses):.3f}",
                                **({f"val_{self.targets.metric}": f"{score:.3f}"} if score is not None else {}))
                if score is None or score > best[0]:
                    best = (math.inf if score is None else score, copy.deepcopy(self.trunk.state_dict()), epoch)
                elif epoch - best[2] >= recipe.patience:
                    break
        self.trunk.load_state_dict(best[1])
        for parameter in trained:
            parameter.requires_grad_(False)
        self.trunk.eval()
        self.trunk.to("cpu")
        return {
            "epochs_run": len(history),
            "best_epoch": best[2] + 1,
            "validation_score": None if best[0] == math.inf else best[0],
            "history": history,
        }


def fine_tune_network(
    model: nn.Module,
    blocks: list[nn.Module],
    data: ImageInput,
    y,
    *,
    fine_tune: int | str,
    task: str,
    epochs: int,
    recipe: Recipe,
    preprocessing: Preprocessing,
    max_pixels: int | None,
    on_error: str,
    device: torch.device,
    random_state: int | None,
    progress: bool = False,
    n_workers: int | None = None,
) -> FineTuneResult:
    """Train ``model`` (in place, left on the CPU in eval mode) on the photos of ``data`` and ``y``.

    ``blocks`` are the network's blocks from :func:`skimgfeat.registry.network_blocks`.
    y is checked (two classes at least, finite numbers) before any photo is decoded.
    A diverging run raises FloatingPointError naming the learning rates.

    Returns what ``model_info_`` records and the photos that failed to load.
    """
    y = np.asarray(y)
    if len(y) != len(data.samples):
        raise ValueError(f"X has {len(data.samples)} samples but y has {len(y)}")
    task = resolve_task(y, task)
    Targets.from_y(y, task)
    seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    source = replace(preprocessing, resize=recipe.source_size, crop=recipe.source_size)
    photos, errors = decode_samples(data, source, max_pixels, on_error, n_workers)
    validation = None
    try:
        targets = Targets.from_y(y[photos.samples], task)
        split = split_samples(targets, recipe.validation_fraction, seed)
        if len(split.validation):
            chosen = photos.samples[split.validation]
            held_out = ImageInput([data.samples[i] for i in chosen], data.multi, None)
            validation, _ = decode_samples(held_out, preprocessing, max_pixels, "nan", n_workers)
        threads = default_decode_workers() if device.type == "cpu" else None
        with torch.random.fork_rng(devices=[]), _torch_threads(threads):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            width = model(torch.zeros(1, 3, preprocessing.crop, preprocessing.crop)).shape[1]
            head = nn.Sequential(nn.Dropout(recipe.head_dropout), nn.Linear(width, targets.n_outputs))
            network = split_network(model, blocks, fine_tune, preprocessing.crop)
            trainer = _Trainer(network, targets, photos, validation, split, recipe, preprocessing, device,
                               generator, progress)
            trainer.prepare_frozen(epochs)
            trainer.probe_head(head)
            outcome = trainer.train(head, epochs)
    finally:
        photos.close()
        if validation is not None:
            validation.close()
    model.to("cpu")
    model.eval()
    model.requires_grad_(False)
    record = {
        "blocks": fine_tune,
        "task": task,
        "n_samples": len(photos.samples),
        "n_images": len(photos.sample_of_photo),
        "n_validation_samples": len(split.validation),
        "validation_metric": targets.metric if len(split.validation) else None,
        **({"n_classes": int(targets.n_outputs)} if task == "classification" else {"n_targets": targets.n_outputs}),
        "epochs": epochs,
        **outcome,
        "seed": seed,
        "recipe": asdict(recipe),
    }
    return FineTuneResult(record, errors)
