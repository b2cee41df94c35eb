"""``skimgfeat remove``: take photos out of an archive (by name, item or a list), and compact it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_OK, UsageError, add_command, usage_errors


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add ``remove``."""
    remove = add_command(
        commands, common, "remove", "remove photos from an archive (a withdrawn lot, a takedown), and compact it",
        "Remove photos from ARCHIVE: NAME is a photo's identity (INTAKE/relative path, the image_path of "
        "the reports) or a file name (every intake's photo of that name); --item removes every photo of an "
        "item; --file reads names from a text file, one per line. A removed photo is never returned again "
        "by similar, duplicates or match. --compact also rewrites the archive without any removed photo and "
        "deletes their files (alone: only compacts). A name that matches nothing is listed on stderr. One "
        "writer at a time; killed at any point, the archive is as before or as after.",
    )
    remove.add_argument("names", nargs="*", metavar="NAME", help="identity or file name of a photo")
    remove.add_argument("--archive", type=Path, required=True, metavar="ARCHIVE", help="the archive folder")
    remove.add_argument("--item", action="append", default=[], metavar="ID", help="remove every photo of this item")
    remove.add_argument("--file", type=Path, default=None, metavar="LIST",
                        help="a text file of names (identities or file names), one per line")
    remove.add_argument("--compact", action="store_true",
                        help="rewrite the archive without removed photos and delete their files")
    remove.set_defaults(handler=run_remove)


def run_remove(args: argparse.Namespace) -> int:
    from ..archive import read_name_list, remove

    with usage_errors():
        names = list(args.names) + (read_name_list(args.file) if args.file is not None else [])
        if not names and not args.item and not args.compact:
            raise UsageError("name the photos to remove (NAME, --item or --file), or give --compact")
        result = remove(args.archive, names, items=args.item, compact=args.compact)
    if not args.quiet:
        for name in result.not_found:
            print(f"  not in the archive: {name}", file=sys.stderr)
        compacted = f", {result.compacted} compacted away" if args.compact else ""
        print(f"removed {len(result.removed)} photos{compacted}; {result.n_rows} photos in the archive "
              f"(generation {result.generation})", file=sys.stderr)
    return EXIT_OK
