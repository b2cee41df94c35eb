"""The ``skimgfeat`` command line: a folder of photos in, feature tables out.

Subcommands: ``extract`` (the original ``extract_all_image_features.py``; with
``--max-images 50`` the original ``test_image_features.py``), ``models``,
``sample-images``, ``index`` (a persistent similarity index: ``build``, ``add``,
``info``), an archive folder (``ingest`` a day's photos, ``remove`` photos), and the
uses of a feature table: ``similar``, ``duplicates``,
``quality`` and ``match`` (the same object in new photos), ``serve`` (the archive in a
browser); ``cache`` shows and prunes a feature cache folder. Run
``skimgfeat COMMAND --help`` for the options. One module per subcommand; each adds its
parser with ``add_parser(commands, common)`` and sets its handler, and
``resumable=True`` when it has ``--resume`` (Ctrl-C then points to it).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from . import admin, duplicates, extract, index, ingest, match, quality, remove, serve, similar
from .common import (
    EXIT_CODES,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    check_environment,
    exit_codes,
)

SUBCOMMANDS = (extract, admin, index, ingest, remove, similar, duplicates, quality, match, serve)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``skimgfeat`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="skimgfeat",
        description="Turn image files into CNN feature vectors (one row per image and one per item).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"skimgfeat {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    common.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an error")
    for module in SUBCOMMANDS:
        module.add_parser(commands, common)
    for command in commands.choices.values():
        command.epilog = exit_codes(resumable=bool(command.get_default("resumable")))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    from ..storage.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        check_environment()
        return args.handler(args)
    except BrokenPipeError:
        # The reader went away (``skimgfeat models | head``): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return EXIT_OK
    except KeyboardInterrupt:
        # Only the checkpointed commands (see cli/checkpointed.py) have something to resume.
        _error(getattr(args, "on_interrupt", "interrupted"), args.verbose)
        return EXIT_INTERRUPTED
    except (UsageError, CheckpointError) as error:
        _error(str(error), args.verbose)
        return EXIT_USAGE
    except Exception as error:  # noqa: BLE001 - one clear line, the traceback only with --verbose
        _error(f"{type(error).__name__}: {error}", args.verbose)
        return EXIT_FAILURE


def _error(message: str, verbose: bool) -> None:
    if verbose:
        traceback.print_exc(file=sys.stderr)
    first_line = " ".join(message.split())
    print(f"skimgfeat: error: {first_line}", file=sys.stderr)
