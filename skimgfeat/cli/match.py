"""``skimgfeat match``: the photos of a feature table that show the same object as query photos."""

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
    """Add ``match``."""
    from ..matching.verification import (  # light: no torch at start-up
        DEFAULT_EXPANSION_SHORTLIST,
        DEFAULT_INSTANCE_SHORTLIST,
        DEFAULT_MIN_INLIERS,
        DEFAULT_SHORTLIST,
    )

    match = add_command(
        commands, common, "match", "find the photos (or items) that show the same object as query photos",
        "Print, as CSV on stdout (query,rank,image_path,feature_distance,inliers,verdict; with --by-item item_id "
        "and the image_path of its best-matching photo), the K rows of FEATURES nearest to each QUERY by cosine "
        "distance and the K_INSTANCE photos whose local features agree best with the query's (an inverted file of "
        "visual words, kept in instance_index beside the local features and brought up to date when they changed; "
        "for an archive folder, the one its live generation names), "
        "then the K_EXPANSION photos it ranks highest for the object's region in the query's verified matches "
        "(query expansion), each verified with local features and re-ranked: verdict copy (the same photo again: "
        "the copy check of `duplicates`), same_object (a new photo of the same object: enough inliers of one "
        "perspective transform) or different; unverified (and a warning) for a candidate whose local features were "
        "never stored. FEATURES_OR_INDEX is a table written by `skimgfeat extract --local-features`, its output "
        "folder, or an index folder (`skimgfeat index build`); the local features are read from the local_features "
        "folder beside it. A QUERY is an image_path or item_id of the table (left out of its own results) or an "
        "image file.",
    )
    match.add_argument("queries", nargs="+", metavar="QUERY", help="image file, image_path or item_id")
    match.add_argument("--against", type=Path, required=True, metavar="FEATURES_OR_INDEX",
                       help="a table written by `skimgfeat extract --local-features`, its output folder, or an "
                            "index folder")
    match.add_argument("-k", type=positive_int, default=DEFAULT_SHORTLIST,
                       help="candidates per query taken from the CNN shortlist and verified (default: %(default)s)")
    match.add_argument("--k-instance", type=int, default=DEFAULT_INSTANCE_SHORTLIST, metavar="K_INSTANCE",
                       help="candidates per query taken from the instance index of the local features and verified "
                            "(0: the CNN shortlist only; default: %(default)s)")
    match.add_argument("--k-expansion", type=int, default=DEFAULT_EXPANSION_SHORTLIST, metavar="K_EXPANSION",
                       help="candidates per query found by searching the instance index again with the object's "
                            "region in the query's verified matches, and verified (0: no expansion; default: "
                            "%(default)s)")
    match.add_argument("--by-item", action="store_true",
                       help="match items: one matches when any of its photos matches any photo of the query")
    match.add_argument("--min-inliers", type=positive_int, default=DEFAULT_MIN_INLIERS, metavar="N",
                       help="inliers a same_object pair needs (default: %(default)s, measured on photos of 50 "
                            "objects)")
    match.add_argument("--local-features", type=Path, default=None, metavar="DIR",
                       help="the local features folder (default: local_features beside the table)")
    match.add_argument("--sheet", type=Path, default=None, metavar="SHEET.png",
                       help="also draw each query beside its verified matches, with the inlier lines")
    add_table_photo_options(match, embedded="query files")
    match.set_defaults(handler=run_match)


def run_match(args: argparse.Namespace) -> int:
    """Print the verified matches of each query as CSV; draw the sheet if asked."""
    from ..schema import IMAGE_PATH
    from ..storage.decisions import DecisionStore, honour_decisions
    from ..storage.io import atomic_path, printable

    with usage_errors():  # a missing table or sidecar, an unknown query, a query file that is no image
        matcher = _matcher(args)
        results = matcher.match(args.queries, weights=weights_from_env(args.weights))
        results = honour_decisions(results, DecisionStore.of(args.against), columns=("query", IMAGE_PATH))
        results["rank"] = results.groupby("query").cumcount() + 1  # reviewed-away pairs leave no gap
    results.to_csv(sys.stdout, index=False, float_format="%.6f")
    if matcher.unverified_:
        missing = sorted(set(matcher.unverified_))
        shown = ", ".join(printable(name) for name in missing[:5]) + (" ..." if len(missing) > 5 else "")
        print(f"warning: {len(missing)} candidate(s) have no stored local features and were not verified "
              f"(verdict unverified): {shown}; store them with `skimgfeat extract IMAGE_DIR -o OUT "
              "--local-features`", file=sys.stderr)
    if args.sheet is not None:
        from ..plotting.match_sheet import match_sheet

        with atomic_path(args.sheet) as temporary:
            match_sheet(results, matcher).save(temporary, format="PNG")
    return EXIT_OK


def _matcher(args: argparse.Namespace):
    """The matcher over ``--against``: an archive folder's live generation with the instance index written with
    it (never a newer one), else a table or index folder with the instance index of its local features."""
    from ..archive.folder import Archive, read_settings
    from ..matching.object_match import ObjectMatcher

    options = {"k": args.k, "k_instance": max(0, args.k_instance), "k_expansion": max(0, args.k_expansion),
               "min_inliers": args.min_inliers}
    if args.against.is_dir() and not args.by_item and args.local_features is None and \
            read_settings(args.against) is not None:
        archive = Archive.open(args.against)  # held until the command ends
        if archive.local_features is not None:
            if args.image_dir is not None:
                archive.index.image_dir = Path(args.image_dir)
            instance = archive.instance_index if options["k_instance"] else None
            return ObjectMatcher(archive.index, archive.local_features, hashes=archive.hashes,
                                 instance_index=instance, **options)
        archive.close()  # no local features: the error of a folder without them
    return ObjectMatcher.read(args.against, by_item=args.by_item, local_features=args.local_features,
                              image_dir=args.image_dir, **options)
