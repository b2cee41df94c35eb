"""``skimgfeat similar``: the rows of a feature table nearest to query photos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (
    EXIT_OK,
    add_command,
    add_table_photo_options,
    positive_int,
    usage_errors,
    weights_from_env,
)


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add ``similar``."""
    similar = add_command(
        commands, common, "similar", "find the photos (or items) nearest to query photos in a feature table",
        "Print, as CSV on stdout (query,rank,image_path,distance; item_id with --by-item or an item "
        "index), the K rows of FEATURES (or of the index INDEX_DIR) nearest to each QUERY by cosine "
        "distance. A QUERY is an image_path, image_name or item_id of the table (left out of its own "
        "results) or an image file, embedded with the network recorded in the table's model info.",
    )
    similar.add_argument("queries", nargs="+", metavar="QUERY", help="image file, image_path, image_name or item_id")
    source = similar.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", type=Path, metavar="FEATURES",
                        help="a table written by `skimgfeat extract` (raw or by item; .parquet or .csv)")
    source.add_argument("--index", type=Path, metavar="INDEX_DIR",
                        help="an index directory written by `skimgfeat index build` (the table is not read)")
    similar.add_argument("-k", type=positive_int, default=5, help="neighbours per query (default: %(default)s)")
    similar.add_argument("--by-item", action="store_true",
                         help="rank items (a raw table is first averaged per item) instead of photos; not with "
                              "--index, which ranks what it was built from")
    similar.add_argument("--sheet", type=Path, default=None, metavar="SHEET.png",
                         help="also draw a contact sheet: each query beside its neighbours, labelled")
    add_table_photo_options(similar, embedded="query files")
    similar.set_defaults(handler=run_similar)


def run_similar(args: argparse.Namespace) -> int:
    """Print the nearest rows of each query as CSV; draw the contact sheet if asked."""
    from ..search.similarity import SimilarityIndex, similar_items
    from ..storage.io import atomic_path

    with usage_errors():  # a missing table or index, an unknown query, a query file that is no image
        if args.index is not None:
            if args.by_item:
                raise ValueError("--by-item applies to --features: an index ranks the rows it was built from")
            index = SimilarityIndex.load(args.index)
            if args.image_dir is not None:
                index.image_dir = args.image_dir
        else:
            index = SimilarityIndex.read(args.features, by_item=args.by_item, image_dir=args.image_dir)
        results = similar_items(index, args.queries, k=args.k, weights=weights_from_env(args.weights))
    results.to_csv(sys.stdout, index=False, float_format="%.6f")
    if args.sheet is not None:
        from ..plotting.contact_sheet import contact_sheet

        with atomic_path(args.sheet) as temporary:
            contact_sheet(results, index).save(temporary, format="PNG")
    return EXIT_OK
