"""``skimgfeat ingest``: the daily intake, new photos into an archive folder in one command."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .common import (
    EXIT_IMAGES_FAILED,
    EXIT_OK,
    WEIGHTS_ENV,
    add_command,
    positive_int,
    usage_errors,
    weights_from_env,
)


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add ``ingest``."""
    ingest = add_command(
        commands, common, "ingest", "add a folder of new photos to an archive and report what they are in it",
        "Copy into ARCHIVE the photos of NEW_DIR (sub-folders too) it does not have yet, by identity "
        "(INTAKE/relative path) and by content (SHA-256): embed them, hash them, store their local features, "
        "and add them to the archive's index as one new generation. A photo whose file changed since the "
        "same intake brought it replaces the old one. Then write the report (ARCHIVE/reports/INTAKE.csv): "
        "for each photo of NEW_DIR its status and the archived photos it is a copy of or shows the same "
        "object as, with feature distance, copy score, inliers and the match's lot columns. Running it again "
        "adds nothing; killed at any point, running it again finishes the intake with no row lost or "
        "doubled. One writer at a time: a second waits (SKIMGFEAT_LOCK_WAIT seconds, default 600).",
    )
    ingest.add_argument("new_dir", type=Path, metavar="NEW_DIR", help="folder of the new photos")
    ingest.add_argument("--archive", type=Path, required=True, metavar="ARCHIVE",
                        help="the archive folder (a new or empty folder makes a new archive)")
    ingest.add_argument("--intake", default=None, metavar="NAME",
                        help="the intake's name, the first part of each new photo's identity (default: today's "
                             "date, UTC)")
    ingest.add_argument("--lots", type=Path, default=None, metavar="LOTS",
                        help="a lot table (CSV or Parquet) keyed by item_id to attach (replaces the one attached "
                             "before); its columns join the report's matches")
    ingest.add_argument("--item-rule", default=None, metavar="REGEX",
                        help="regular expression giving the item id of a file name (its group 'item', else its "
                             "first group, else the match); kept for later intakes (default: the file stem up "
                             "to the last underscore)")
    ingest.add_argument("--model", default="mobilenet_v2",
                        help="the network of a new archive (default: %(default)s); an existing archive uses its own")
    ingest.add_argument("--weights", default=None,
                        help=f"weights of a new archive's network, or a local copy of an existing archive's weights "
                             f"file (default: ${WEIGHTS_ENV} when set, else the pretrained or recorded weights)")
    ingest.add_argument("--no-hashes", dest="hashes", action="store_false",
                        help="do not store copy-check hashes (the report then has no copy verdicts)")
    ingest.add_argument("--no-local-features", dest="local_features", action="store_false",
                        help="do not store local features (the report then has no same_object verdicts)")
    ingest.add_argument("--report", type=Path, default=None, metavar="REPORT.csv",
                        help="where to write the report (default: ARCHIVE/reports/INTAKE.csv)")
    ingest.add_argument("-k", type=positive_int, default=10,
                        help="archived photos verified per new photo for same_object (default: %(default)s)")
    ingest.add_argument("--strict", action="store_true", help=f"exit with {EXIT_IMAGES_FAILED} if any photo failed")
    ingest.set_defaults(handler=run_ingest)


def run_ingest(args: argparse.Namespace) -> int:
    """Ingest, print the summary."""
    from ..archive import ingest
    from ..storage.vector_index import CURRENT

    started = time.perf_counter()
    weights = weights_from_env(args.weights)
    with usage_errors():  # a folder that is no archive, a lot table without item_id, a busy archive...
        embedder = None
        if not (args.archive / CURRENT).is_file():  # a new archive
            embedder = _new_embedder(args.model, weights)
        elif weights is not None and weights.lower() == "none":
            weights = None  # the archive's random network is rebuilt from its recorded seed
        result = ingest(args.new_dir, args.archive, embedder=embedder, weights=weights, intake=args.intake,
                        item_rule=args.item_rule, lots=args.lots, hashes=args.hashes,
                        local_features=args.local_features, report=args.report, report_k=args.k,
                        on_progress=_progress(args.quiet))
    if not args.quiet:
        counts = ", ".join(f"{count} {status}" for status, count in result.statuses.items() if count)
        matched = result.report[result.report["verdict"] != ""]
        print(f"intake {result.intake}: {counts}; {matched['image_path'].nunique()} photos match archived ones "
              f"({(matched['verdict'] == 'copy').sum()} copy, {(matched['verdict'] == 'same_object').sum()} "
              f"same_object); {result.n_rows} photos in the archive (generation {result.generation}); report "
              f"{os.fspath(result.report_path)}; {time.perf_counter() - started:.1f} s", file=sys.stderr)
        for name, reason in result.failures:
            print(f"  failed: {name}: {reason}", file=sys.stderr)
    return EXIT_IMAGES_FAILED if args.strict and result.failures else EXIT_OK


def _new_embedder(model: str, weights: str | None):
    from ..embedder import CNNImageEmbedder

    if weights is not None and weights.lower() == "none":
        return CNNImageEmbedder(model, None, random_state=0, on_error="nan").fit()
    return CNNImageEmbedder(model, weights or "pretrained", on_error="nan").fit()


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    done: dict[str, int] = {}

    def show(step: str, count: int) -> None:
        done[step] = done.get(step, 0) + count
        print(f"\r{step}: {done[step]}   ", end="", file=sys.stderr, flush=True)

    return show
