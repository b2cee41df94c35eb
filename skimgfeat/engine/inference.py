"""Inference: decoded pixel batches in, feature rows out, in input order.

Decoding comes from the one decode loop (:mod:`skimgfeat.engine.decoding`); this
module runs the network on its batches. Several calls at once (threads sharing one
fitted embedder: Dask's threaded scheduler, a ``dask.distributed`` worker running
several tasks, joblib's threading backend) share the process-wide decode and inference
pools (:mod:`skimgfeat.engine.threads`), so concurrent calls never multiply threads,
and nothing process-wide (such as ``torch.set_num_threads``) is changed per call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..exceptions import ImageLoadError
from .decoding import DecodedBatch, decode_batches
from .preprocessing import Preprocessing
from .threads import inference_layout, leased_pool


@dataclass
class EmbeddedBatch:
    """Features for ``len(features)`` consecutive inputs starting at ``start``.

    Rows whose image failed are NaN; ``errors`` holds ``(position, ImageLoadError)``.
    """

    start: int
    features: np.ndarray
    errors: list[tuple[int, ImageLoadError]] = field(default_factory=list)


class ModelRunner:
    """Runs a headless network on uint8 pixel batches on one device.

    On CUDA the batch is copied from pinned memory without blocking, normalised on the
    GPU, optionally run under autocast, and a batch that runs out of memory is split in
    halves (and later batches kept at the smaller size) instead of failing the run.

    Calls may come from several threads at once: the runner changes no process-wide
    setting per batch. On the CPU an ONNX Runtime session runs with the threads it was
    created with (:func:`inference_layout`); the eager and TorchScript backends use
    torch's own process-wide setting (``torch.set_num_threads``), left to the caller.
    """

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        preprocessing: Preprocessing,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.module = module
        self.device = device
        self.preprocessing = preprocessing
        self.autocast_dtype = autocast_dtype
        self.max_batch: int | None = None
        self.memory_format = getattr(module, "input_memory_format", torch.channels_last)
        # Batches that may run at once: a module that sizes its own threads (an ONNX
        # Runtime session, one thread per call) runs one call per inference thread.
        concurrent = device.type == "cpu" and getattr(module, "supports_concurrent_calls", False)
        self.parallel_calls = inference_layout().parallel_calls if concurrent else 1

    def describe(self) -> dict:
        """What runs: device, backend, exporter and any fallback (``model_info_["runtime"]``)."""
        prepared_as = getattr(self.module, "prepared_as", {"backend": type(self.module).__name__})
        return {"device": str(self.device), **prepared_as}

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if self.max_batch is not None and len(pixels) > self.max_batch:
            return np.concatenate(
                [self(pixels[i : i + self.max_batch]) for i in range(0, len(pixels), self.max_batch)]
            )
        try:
            return self._forward(pixels)
        except torch.cuda.OutOfMemoryError:
            if len(pixels) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(pixels) // 2
            self.max_batch = half
            return np.concatenate([self(pixels[:half]), self(pixels[half:])])

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(pixels)
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            batch = batch.to(self.device)
        with torch.inference_mode():
            inputs = self.preprocessing.normalize(batch, self.memory_format)
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    outputs = self.module(inputs)
            else:
                outputs = self.module(inputs)
            return outputs.float().cpu().numpy()


def embed_stream(
    paths: Sequence,
    run: Callable[[np.ndarray], np.ndarray],
    decode: Callable,
    n_features: int,
    batch_size: int,
    n_workers: int | None = None,
    on_error: str = "raise",
    parallel_calls: int = 1,
) -> Iterator[EmbeddedBatch]:
    """Yield :class:`EmbeddedBatch` es covering ``paths`` in order.

    Decoding is :func:`~skimgfeat.engine.decoding.decode_batches` (``n_workers``,
    ``on_error`` as there; a ``decode.decode_batch`` attribute decodes whole batches).
    With ``on_error="raise"`` the first failing input raises its ImageLoadError;
    otherwise its row is NaN and the error is reported in the batch. A batch made only
    of failures still yields its rows, without running the model. ``parallel_calls``
    batches may be inferred at once (``run`` must be thread-safe then); they are still
    yielded in input order, on the process-wide inference pool, so concurrent streams
    never multiply its threads.
    """
    batches = decode_batches(
        paths, decode, batch_size, on_error=on_error, n_workers=n_workers,
        decode_batch=getattr(decode, "decode_batch", None),
    )
    if parallel_calls <= 1:
        for batch in batches:
            yield _finish(batch, n_features, None if batch.stacked is None else run(batch.stacked))
        return
    with leased_pool("infer", parallel_calls) as pool:
        in_flight: deque[tuple[DecodedBatch, Future | None]] = deque()
        try:
            for batch in batches:
                in_flight.append((batch, None if batch.stacked is None else pool.submit(run, batch.stacked)))
                if len(in_flight) >= parallel_calls:
                    yield _finish_future(*in_flight.popleft(), n_features)
            while in_flight:
                yield _finish_future(*in_flight.popleft(), n_features)
        finally:
            for _, future in in_flight:
                if future is not None:
                    future.cancel()


def _finish_future(batch: DecodedBatch, future: Future | None, n_features: int) -> EmbeddedBatch:
    return _finish(batch, n_features, None if future is None else future.result())


def _finish(batch: DecodedBatch, n_features: int, features: np.ndarray | None) -> EmbeddedBatch:
    """NaN rows for the failures, the model's rows for the rest."""
    rows = np.full((batch.size, n_features), np.nan, dtype=np.float32)
    if features is not None:
        rows[batch.good] = features
    return EmbeddedBatch(batch.start, rows, batch.errors)
