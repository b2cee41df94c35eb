"""``skimgfeat index``: build, extend and describe a persistent similarity index (an index directory)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import EXIT_OK, add_command, positive_int, usage_errors

KIND_HELP = ("exact search up to 50,000 rows, an inverted file of 8-bit codes (ivf-sq8) beyond; or flat "
             "(exact), ivf (inverted file, full vectors), ivf-sq8, ivf-pq (default: %(default)s)")


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add ``index`` and its actions ``build``, ``add`` and ``info``."""
    from ..storage.vector_index import KINDS

    index = add_command(
        commands, common, "index", "build, extend and describe a persistent similarity index",
        "A similarity index directory keeps the feature vectors of a table (exact, or a FAISS inverted "
        "file for millions of rows), the identity of each row and the table's model info, so that "
        "`skimgfeat similar --index` answers without reading the table, and new photos are added "
        "without a rebuild. Every change writes a new generation and switches to it atomically: an "
        "interrupted `index add` leaves the index as it was.",
    )
    actions = index.add_subparsers(dest="action", required=True, metavar="ACTION")

    build = add_command(
        actions, common, "build", "build an index directory from a feature table",
        "Build INDEX_DIR from FEATURES: a table written by `skimgfeat extract` (.parquet or .csv, per "
        "image or per item) or a folder of Parquet parts (a partitioned dataset). The table is read a "
        "batch at a time; an inverted file is trained on a sample of row groups spread over it.",
    )
    build.add_argument("features", type=Path, metavar="FEATURES", help="feature table, or folder of Parquet parts")
    build.add_argument("-o", "--output", type=Path, required=True, metavar="INDEX_DIR",
                       help="the index directory to create (new or empty)")
    build.add_argument("--kind", choices=KINDS, default="auto", help=KIND_HELP)
    build.add_argument("--nlist", type=positive_int, default=None,
                       help="inverted lists (default: about the square root of the rows)")
    build.add_argument("--nprobe", type=positive_int, default=None,
                       help="lists visited per query (default: a 32nd of the lists, at least 8)")
    build.set_defaults(handler=run_build)

    add = add_command(
        actions, common, "add", "add the rows of a feature table to an index directory",
        "Add the rows of MORE_FEATURES (new photos, embedded by the same model, keyed like the index) "
        "to INDEX_DIR, found afterwards exactly as if they had been in the build. Rows already in the "
        "index are refused.",
    )
    add.add_argument("index_dir", type=Path, metavar="INDEX_DIR")
    add.add_argument("features", type=Path, metavar="MORE_FEATURES", help="feature table, or folder of Parquet parts")
    add.set_defaults(handler=run_add)

    info = add_command(actions, common, "info", "describe an index directory",
                       "Print, as JSON, the kind, parameters, row count and model of INDEX_DIR's live generation.")
    info.add_argument("index_dir", type=Path, metavar="INDEX_DIR")
    info.set_defaults(handler=run_info)


def run_build(args: argparse.Namespace) -> int:
    """Build the index and save it as the first generation."""
    from ..search.similarity import SimilarityIndex

    started = time.perf_counter()
    with usage_errors():  # a missing or foreign table, a non-empty foreign output folder
        index = SimilarityIndex.build(args.features, kind=args.kind, nlist=args.nlist, nprobe=args.nprobe)
        generation = index.save(args.output)
    _summary(args, f"indexed {len(index)} rows ({index.kind}) in {time.perf_counter() - started:.1f} s", generation)
    return EXIT_OK


def run_add(args: argparse.Namespace) -> int:
    """Add rows and save a new generation."""
    from ..search.similarity import SimilarityIndex
    from ..storage.generation_lock import WriterLock

    started = time.perf_counter()
    with usage_errors():  # a broken index, a table of another model or key, rows already indexed, a busy writer
        # One writer at a time, from the read of the live generation to the switch to the
        # next: two adds started together both land (the second waits for the first).
        if not args.index_dir.is_dir():
            SimilarityIndex.load(args.index_dir)  # says what is wrong with it
        with WriterLock(args.index_dir):
            index = SimilarityIndex.load(args.index_dir, writable=True)
            before = len(index)
            index.add(args.features)
            generation = index.save()
    _summary(args, f"added {len(index) - before} rows, {len(index)} in all ({index.kind}) in "
                   f"{time.perf_counter() - started:.1f} s", generation)
    return EXIT_OK


def run_info(args: argparse.Namespace) -> int:
    """Print the live generation's description."""
    from ..storage.vector_index import read_generation

    with usage_errors():
        folder, info = read_generation(args.index_dir)
    model = info.get("model_info") or {}
    shown = {"directory": str(args.index_dir), "generation": folder.name, "key": info.get("key"),
             "n_rows": info.get("n_rows"),
             "n_live": info.get("n_live", info.get("n_rows")), "n_skipped": info.get("n_skipped"),
             **info.get("index", {}),
             "requested_kind": info.get("requested_kind"), "model_name": model.get("model_name"),
             "weights": model.get("weights"), "written_at": info.get("written_at"), "files": info.get("files")}
    print(json.dumps(shown, indent=2, default=str))
    return EXIT_OK


def _summary(args: argparse.Namespace, message: str, generation: Path) -> None:
    if not args.quiet:
        print(f"{message}; live generation {generation}", file=sys.stderr)
