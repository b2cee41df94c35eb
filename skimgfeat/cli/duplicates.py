"""``skimgfeat duplicates``: groups of near-duplicate photos in a feature table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_OK, add_command, usage_errors


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add ``duplicates``."""
    from ..uses.duplicates import DEFAULT_DUPLICATE_THRESHOLD

    duplicates = add_command(
        commands, common, "duplicates", "list groups of near-duplicate photos in a feature table",
        "Print, as CSV on stdout (group,image_path), every photo of FEATURES that has a near-duplicate "
        "(a resized, recompressed, slightly cropped or re-exposed copy): photos closer than --threshold "
        "in cosine distance are linked, groups are the connected photos, numbered from 0. Photos "
        "without a duplicate are not listed.",
    )
    duplicates.add_argument("--features", type=Path, required=True, metavar="FEATURES",
                            help="a table written by `skimgfeat extract` (.parquet or .csv)")
    duplicates.add_argument("--threshold", type=float, default=DEFAULT_DUPLICATE_THRESHOLD, metavar="T",
                            help="cosine distance under which two photos are duplicates (default: %(default)s, "
                                 "measured on copies of real photos with MobileNetV2)")
    duplicates.set_defaults(handler=run_duplicates)


def run_duplicates(args: argparse.Namespace) -> int:
    """Print the groups of near-duplicates as CSV."""
    from ..uses.duplicates import find_duplicates
    from ..uses.similarity import SimilarityIndex

    with usage_errors():  # a missing or foreign table, a threshold out of range
        groups = find_duplicates(SimilarityIndex.read(args.features), threshold=args.threshold)
    groups.to_csv(sys.stdout, index=False)
    return EXIT_OK
