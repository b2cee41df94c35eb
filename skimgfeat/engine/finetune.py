"""Fine-tuning the embedder's network on y: what ``CNNImageEmbedder(fine_tune=...)`` runs in fit.

The recipe, chosen by measurement on the grocery photos (benchmarks/README.md):

* every photo is decoded once, with the package's own engine, to a small square uint8
  copy kept in memory; each epoch cuts a random resized crop from it, flips it, and
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
  its output is reused every epoch; only the last N blocks run per step.

The loop is a small one of our own rather than skorch's: the parts that matter here
(photos of one sample pooled before the head, batch norms kept in inference mode
while training, a frozen prefix run once per view, two-stage LP-FT) would each need an
override of skorch's internals, while the loop itself is a few lines.
"""

from __future__ import annotations

import copy
import math
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
from .decoding import decode_pixels, iter_decoded
from .inputs import ImageInput
from .preprocessing import Preprocessing
from .threads import default_decode_workers
from .threads import torch_threads as _torch_threads

TASKS = ("auto", "classification", "regression")


@dataclass(frozen=True)
class Recipe:
    """Training settings; ``fine_tune_options`` overrides any of them by name.

    Parameters
    ----------
    train_size : int
        Side of the augmented training crops (``transform`` embeds at the
        preprocessing's crop, 224).
    source_size : int
        Side of the in-memory square copy of each photo the crops are cut from.
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
        Memory allowed for those views; fewer views (or none: the frozen part then runs
        every step) when they would not fit.
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
                raise ValueError("classification fine-tuning needs at least two classes in y")
            return cls(task, torch.from_numpy(codes.astype(np.int64)), len(classes), classes)
        try:
            numbers = np.asarray(y, dtype=np.float64)
        except ValueError:
            raise ValueError("regression fine-tuning needs numeric y") from None
        numbers = numbers.reshape(len(numbers), -1)
        if not np.all(np.isfinite(numbers)):
            raise ValueError("regression fine-tuning needs finite y (no NaN or infinity)")
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


@dataclass
class Photos:
    """The decoded photos of the samples used for training, and which sample each belongs to."""

    pixels: torch.Tensor  # (n_photos, side, side, 3) uint8
    sample_of_photo: np.ndarray  # (n_photos,) positions in the list of kept samples
    samples: np.ndarray  # positions in X of the samples with at least one photo


def decode_samples(
    data: ImageInput, preprocessing: Preprocessing, max_pixels: int | None, on_error: str, n_workers: int
) -> tuple[Photos, list[ImageLoadError]]:
    """Decode every photo of every sample with ``preprocessing``; failures drop the photo.

    With ``on_error="raise"`` the first failure raises. A sample left without any photo
    is left out of training.
    """
    flat = [(i, path) for i, sample in enumerate(data.samples) for path in sample]

    def decode(path):
        return decode_pixels(path, preprocessing, max_pixels)

    decoded = iter_decoded([path for _, path in flat], decode, n_workers, window=4 * n_workers)
    pixels, owners, errors = [], [], []
    for (sample, _), result in zip(flat, decoded):
        if isinstance(result, ImageLoadError):
            if on_error == "raise":
                decoded.close()
                raise result
            errors.append(result)
            continue
        pixels.append(result)
        owners.append(sample)
    if not pixels:
        raise ValueError("fine-tuning found no readable photo in X")
    samples, sample_of_photo = np.unique(np.asarray(owners), return_inverse=True)
    return Photos(torch.from_numpy(np.stack(pixels)), sample_of_photo, samples), errors


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
    """One fine-tuning run: inputs prepared once, then epochs of SGD on the trunk and head."""

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
        self.views: list[torch.Tensor] = []

    # -- inputs ----------------------------------------------------------------

    def _frozen(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.prefix is None:
            return inputs
        with torch.no_grad():
            return self.prefix(inputs.to(self.device)).cpu()

    def _in_chunks(self, function, pixels: torch.Tensor, size: int = 64) -> torch.Tensor:
        return torch.cat([function(pixels[i : i + size]) for i in range(0, len(pixels), size)])

    def prepare_views(self, n_epochs: int) -> None:
        """Run the frozen prefix over ``n_views`` augmented views of every photo, once."""
        if self.prefix is None:
            return
        sample = self._frozen(self.augment(self.photos.pixels[:1]))
        per_view = sample.element_size() * sample.numel() * len(self.photos.pixels)
        n_views = min(self.recipe.n_views, n_epochs, int(self.recipe.cache_megabytes * 2**20 // per_view))
        for _ in range(n_views):
            self.views.append(self._in_chunks(lambda chunk: self._frozen(self.augment(chunk)), self.photos.pixels))

    def training_inputs(self, photo_rows: np.ndarray, epoch: int) -> torch.Tensor:
        if self.views:
            return self.views[epoch % len(self.views)][photo_rows]
        return self._frozen(self.augment(self.photos.pixels[photo_rows]))

    # -- batches of samples ----------------------------------------------------

    def batches(self, epoch_order: np.ndarray, photos_per_sample: float):
        per_batch = max(1, int(round(self.recipe.batch_size / photos_per_sample)))
        for start in range(0, len(epoch_order), per_batch):
            yield epoch_order[start : start + per_batch]

    def photo_rows(self, photos: Photos, sample_rows: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """Photo positions of these samples, and each photo's sample position in the batch."""
        where = {sample: k for k, sample in enumerate(sample_rows)}
        rows = np.flatnonzero(np.isin(photos.sample_of_photo, sample_rows))
        owners = torch.as_tensor([where[s] for s in photos.sample_of_photo[rows]], dtype=torch.long)
        return rows, owners

    def sample_features(self, inputs: torch.Tensor, owners: torch.Tensor, n_samples: int) -> torch.Tensor:
        features = self.trunk(inputs.to(self.device, memory_format=torch.channels_last))
        return pool_by_sample(features, owners.to(self.device), n_samples)

    # -- stages ----------------------------------------------------------------

    def probe_head(self, head: nn.Module) -> None:
        """Fit the head on frozen features of the whole photos (the LP of LP-FT)."""
        if self.recipe.probe_epochs == 0:
            return
        self.trunk.eval()
        with torch.no_grad():
            inputs = self._in_chunks(
                lambda chunk: self._frozen(center_inputs(chunk, self.preprocessing, self.recipe.train_size)),
                self.photos.pixels,
            )
            features = torch.cat([
                self.trunk(inputs[i : i + 64].to(self.device, memory_format=torch.channels_last))
                for i in range(0, len(inputs), 64)
            ])
            owners = torch.as_tensor(self.photos.sample_of_photo, device=self.device)
            pooled = pool_by_sample(features, owners, len(self.targets.values))[torch.as_tensor(self.split.train)]
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

    def validation_score(self, head: nn.Module) -> float | None:
        if self.validation is None:
            return None
        self.trunk.eval()
        head.eval()
        with torch.no_grad():
            if not hasattr(self, "_validation_inputs"):
                self._validation_inputs = self._in_chunks(
                    lambda chunk: self._frozen(self.preprocessing.normalize(chunk)), self.validation.pixels
                )
            features = torch.cat([
                self.trunk(self._validation_inputs[i : i + 64].to(self.device, memory_format=torch.channels_last))
                for i in range(0, len(self._validation_inputs), 64)
            ])
            owners = torch.as_tensor(self.validation.sample_of_photo, device=self.device)
            pooled = pool_by_sample(features, owners, len(self.split.validation))
            outputs = head(pooled).cpu()
        return self.targets.score(outputs, torch.as_tensor(self.split.validation))

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
        n_photos = int(np.isin(self.photos.sample_of_photo, self.split.train).sum())
        with progress_bar(epochs * n_photos, enabled=self.progress) as bar:
            bar.unit = "photo"
            for epoch in range(epochs):
                self.trunk.train()
                keep_batch_norm_frozen(self.trunk)
                head.train()
                order = self.split.train[torch.randperm(n_train, generator=self.generator).numpy()]
                losses = []
                for sample_rows in self.batches(order, photos_per_sample):
                    rows, owners = self.photo_rows(self.photos, sample_rows)
                    inputs = self.training_inputs(rows, epoch)
                    outputs = head(self.sample_features(inputs, owners, len(sample_rows)))
                    loss = self.targets.loss(outputs, torch.as_tensor(sample_rows), recipe.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    losses.append(float(loss.detach()))
                    bar.update(len(rows))
                score = self.validation_score(head)
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

    Returns what ``model_info_`` records and the photos that failed to load.
    """
    y = np.asarray(y)
    if len(y) != len(data.samples):
        raise ValueError(f"X has {len(data.samples)} samples but y has {len(y)}")
    task = resolve_task(y, task)
    seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    workers = n_workers or default_decode_workers()
    source = replace(preprocessing, resize=recipe.source_size, crop=recipe.source_size)
    photos, errors = decode_samples(data, source, max_pixels, on_error, workers)
    targets = Targets.from_y(y[photos.samples], task)
    split = split_samples(targets, recipe.validation_fraction, seed)
    validation = None
    if len(split.validation):
        chosen = photos.samples[split.validation]
        held_out = ImageInput([data.samples[i] for i in chosen], data.multi, None)
        validation, _ = decode_samples(held_out, preprocessing, max_pixels, "nan", workers)
    with torch.random.fork_rng(devices=[]), _torch_threads(default_decode_workers() if device.type == "cpu" else None):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        width = model(torch.zeros(1, 3, preprocessing.crop, preprocessing.crop)).shape[1]
        head = nn.Sequential(nn.Dropout(recipe.head_dropout), nn.Linear(width, targets.n_outputs))
        network = split_network(model, blocks, fine_tune, preprocessing.crop)
        trainer = _Trainer(network, targets, photos, validation, split, recipe, preprocessing, device,
                           generator, progress)
        trainer.prepare_views(epochs)
        trainer.probe_head(head)
        outcome = trainer.train(head, epochs)
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
