"""``skimgfeat quality``: photo-quality measures of every matching photo in a folder."""

from __future__ import annotations

import argparse
import os
import time

from ..storage.io import write_table
from ..storage.tables import aggregate_features_by_item, features_table
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


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add ``quality``."""
    quality = add_command(
        commands, common, "quality", "measure the quality of every matching photo in a folder",
        "Measure sharpness, brightness, contrast, colorfulness, over- and underexposure, size, file size "
        f"and JPEG quality of every file in IMAGE_DIR matching --pattern. Writes OUT/{QUALITY_RAW_TABLE}"
        ".parquet (image_path, image_name, the measures, error) and OUT/"
        f"{QUALITY_ITEM_TABLE}.parquet (item_id, the measures).",
    )
    add_image_folder_options(quality)
    add_table_output_options(quality)
    quality.set_defaults(handler=run_quality)


def run_quality(args: argparse.Namespace) -> int:
    """Measure the photos, then write the per-image and per-item tables."""
    from ..model_info import library_versions
    from ..uses.quality import QUALITY_FEATURES, ImageQualityFeatures

    paths = input_images(args)
    measure = ImageQualityFeatures(on_error="nan", n_workers=args.workers).fit()
    started = time.perf_counter()
    values = measure.transform([str(path) for path in paths])
    seconds = time.perf_counter() - started
    row_of = {str(path): row for row, path in enumerate(paths)}
    messages = {row_of[error.path]: failure_message(error.reason, error.detail) for error in measure.errors_}
    relative = [path.relative_to(args.image_dir).as_posix() for path in paths]
    raw = features_table(relative, values, messages, columns=QUALITY_FEATURES)
    info = {"features": list(QUALITY_FEATURES), "params": measure.get_params(), "versions": library_versions(),
            "image_dir": os.fspath(args.image_dir.resolve())}
    suffix = f".{args.format}"
    outputs = [write_table(raw, args.output_dir / f"{QUALITY_RAW_TABLE}{suffix}", model_info=info)]
    if args.aggregate != "none":
        by_item = aggregate_features_by_item(raw, method=args.aggregate)
        outputs.append(write_table(by_item, args.output_dir / f"{QUALITY_ITEM_TABLE}{suffix}",
                                   model_info=dict(info, aggregation=args.aggregate)))
    if not args.quiet:
        print(f"measured {len(paths)} images ({len(messages)} failed) in {seconds:.1f} s: "
              f"{len(paths) / max(seconds, 1e-9):.1f} images/s")
        for path in outputs:
            print(f"  {path}")
        for row in sorted(messages)[:20]:
            print(f"  failed: {relative[row]}: {messages[row]}")
    return EXIT_IMAGES_FAILED if args.strict and messages else EXIT_OK
