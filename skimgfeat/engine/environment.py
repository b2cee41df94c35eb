"""The environment variables that set the engine's thread budget, read without importing torch."""

from __future__ import annotations

import os

# Read by engine.inference: the process's budget, the forward pass's threads, concurrent calls.
THREAD_VARIABLES = ("SKIMGFEAT_NUM_THREADS", "SKIMGFEAT_INFERENCE_THREADS", "SKIMGFEAT_PARALLEL_BATCHES")


def positive_int_from_env(name: str) -> int | None:
    """The positive integer in environment variable ``name``; None when unset or empty.

    Raises ValueError naming the variable when it holds anything else.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable {name} must be a positive integer, got {text!r}")
    return value


def check_thread_variables() -> None:
    """Raise ValueError for the first of :data:`THREAD_VARIABLES` that is set but not a positive integer."""
    for name in THREAD_VARIABLES:
        positive_int_from_env(name)
