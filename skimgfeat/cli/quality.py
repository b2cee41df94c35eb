"""``skimgfeat quality``: photo-quality measures of every matching photo in a folder, checkpointed and resumable."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from functools import partial

from ..feature_tables import aggregate_features_by_item, features_table
from ..storage.checkpoint import lock_output_folder
from ..storage.io import write_table_chunks
from ..storage.table_stream import item_table_chunks, raw_table_chunks
from .checkpointed import Batch, CheckpointedRun, add_checkpoint_options, check_checkpoint_options
from .common import (
    EXIT_IMAGES_FAILED,
    EXIT_OK,
    add_command,
    add_image_folder_options,
    add_table_output_options,
    failure_message,
    input_images,
)

QUALITY_RAW_TABLE = "image_quality_raw"
QUALITY_ITEM_TABLE = "image_quality_by_item"
QUALITY_CHECKPOINT_DIR = ".skimgfeat-quality-checkpoint"
# Photos measured per call: what Ctrl-C can lose before it is checkpointed.
MEASURE_BATCH = 256


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add ``quality``."""
    quality = add_command(
        commands, common, "quality", "measure the quality of every matching photo in a folder",
        "Measure sharpness, brightness, contrast, colorfulness, over- and underexposure, size, file size "
        f"and JPEG quality of every file in IMAGE_DIR matching --pattern. Writes OUT/{QUALITY_RAW_TABLE}"
        ".parquet (image_path, image_name, the measures, error) and OUT/"
        f"{QUALITY_ITEM_TABLE}.parquet (item_id, the measures). Progress is checkpointed in "
        f"OUT/{QUALITY_CHECKPOINT_DIR}; an interrupted run continues with --resume.",
    )
    add_image_folder_options(quality)
    add_table_output_options(quality)
    add_checkpoint_options(quality)
    quality.set_defaults(handler=run_quality)


def run_quality(args: argparse.Namespace) -> int:
    """Measure the photos (checkpointed), then stream the per-image and per-item tables."""
    from ..model_info import library_versions
    from ..quality.measures import QUALITY_FEATURES, ImageQualityFeatures

    started = time.perf_counter()
    check_checkpoint_options(args)
    paths = input_images(args)
    measure = ImageQualityFeatures(on_error="nan", n_workers=args.workers).fit()
    params = measure.get_params()
    info = {"features": list(QUALITY_FEATURES), "params": params, "versions": library_versions(),
            "image_dir": os.fspath(args.image_dir.resolve())}
    fingerprint = {"features": list(QUALITY_FEATURES), "working_size": params["working_size"],
                   "max_pixels": params["max_pixels"], "image_dir": info["image_dir"], "pattern": args.pattern,
                   "recursive": bool(args.recursive)}
    make_table = partial(features_table, columns=QUALITY_FEATURES)
    with lock_output_folder(args.output_dir):
        run = CheckpointedRun(args, paths, fingerprint, QUALITY_CHECKPOINT_DIR)
        run.compute(partial(_measured_batches, measure, min(MEASURE_BATCH, args.checkpoint_every)))
        with run.gathered(len(QUALITY_FEATURES), dtype="float64") as rows:
            relative = run.relative
            messages = {i: failure_message(reason, rows.details[i]) for i, reason in enumerate(rows.reasons) if reason}
            suffix = f".{args.format}"
            raw = raw_table_chunks(rows, relative, messages, make_table)
            outputs = [write_table_chunks(raw, args.output_dir / f"{QUALITY_RAW_TABLE}{suffix}", model_info=info)]
            if args.aggregate != "none":
                by_item = item_table_chunks(rows, relative, make_table,
                                            partial(aggregate_features_by_item, method=args.aggregate))
                outputs.append(write_table_chunks(by_item, args.output_dir / f"{QUALITY_ITEM_TABLE}{suffix}",
                                                  model_info=dict(info, aggregation=args.aggregate)))
    if not args.quiet:
        rate = len(run.todo) / max(run.seconds, 1e-9)
        print(f"{len(paths)} images ({len(messages)} failed): {len(run.todo)} measured in {run.seconds:.1f} s "
              f"({rate:.1f} images/s), {run.n_resumed} resumed from the checkpoint; "
              f"wall {time.perf_counter() - started:.1f} s")
        for path in outputs:
            print(f"  {path}")
        for row in sorted(messages)[:20]:
            print(f"  failed: {relative[row]}: {messages[row]}")
    return EXIT_IMAGES_FAILED if args.strict and messages else EXIT_OK


def _measured_batches(measure, batch_size: int, paths: list[str]) -> Iterator[Batch]:
    """``measure``'s rows of ``paths``, ``batch_size`` photos at a time, with their failures."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        values = measure.transform(chunk)
        position = {path: start + i for i, path in enumerate(chunk)}
        yield Batch(start, values, [(position[error.path], error) for error in measure.errors_])
