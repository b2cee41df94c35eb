"""What every subcommand shares: exit codes, usage errors, argument types and options."""

from __future__ import annotations

import argparse
import math
import os
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_IMAGES_FAILED = 3
EXIT_INTERRUPTED = 130



# What Ctrl-C leaves of a command with --resume: its --help and its interrupt message say the same.
CHECKPOINTED_ON_INTERRUPT = "the work done so far is checkpointed, continue with --resume"


def exit_codes(resumable: bool | None = None) -> str:
    """The exit codes, for the end of ``--help``.

    What Ctrl-C leaves depends on the command: a ``resumable`` one checkpoints its work;
    None describes all commands (``skimgfeat --help``).
    """
    interrupted = {
        True: CHECKPOINTED_ON_INTERRUPT,
        False: "run the command again",
        None: "a command with --resume continues where it stopped",
    }[resumable]
    return f"""\
exit codes:
  {EXIT_OK}    success; images that could not be read do not fail the run: they are
       listed in image_errors.csv, in the summary and in the raw table's "error" column
  {EXIT_FAILURE}    anything else failed (weights not downloadable, disk full, a bad environment
       variable, an unexpected error): one line names the cause, --verbose adds the traceback
  {EXIT_USAGE}    a mistake in the command: unknown option, model, weights or device, no such
       folder, no matching image, a checkpoint that does not fit the run, an output
       folder another run is writing into
  {EXIT_IMAGES_FAILED}    --strict was given and some images could not be read
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C): {interrupted}
"""


EXIT_CODES = exit_codes()

WEIGHTS_ENV = "SKIMGFEAT_WEIGHTS"


class UsageError(ValueError):
    """A mistake in the command that the command line itself detected: exit code 2.

    Only these (and :class:`~skimgfeat.storage.checkpoint.CheckpointError`) exit with 2; every
    other exception is a failure of the run (exit code 1), whatever its type.
    """


def add_command(commands, common: argparse.ArgumentParser, name: str, summary: str, description: str):
    """A subcommand with the common options, a wrapped description and the exit codes."""
    return commands.add_parser(
        name, parents=[common], help=summary, description=textwrap.fill(description, width=88),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def check_environment() -> None:
    """Refuse a bad thread-count variable before any work: a failure (exit 1) under every command."""
    from ..engine.environment import check_thread_variables

    check_thread_variables()


# -- argument types ------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def size(text: str) -> int:
    """``500M``, ``2G``, ``0``: a number of bytes."""
    number, unit = text.strip().upper().rstrip("B"), ""
    if number and number[-1] in _SIZE_UNITS:
        number, unit = number[:-1], number[-1]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M or 2G, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):  # int() of inf raises OverflowError, which argparse lets through
        raise argparse.ArgumentTypeError(f"expected a size such as 500M or 2G, got {text!r}")
    return int(value)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# -- options shared by the commands that read a folder of photos -----------------------


def add_image_folder_options(parser: argparse.ArgumentParser) -> None:
    """IMAGE_DIR, -o OUT, --pattern, --recursive, --max-images, --workers."""
    parser.add_argument("image_dir", type=Path, metavar="IMAGE_DIR", help="folder of images")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUT", help="folder for the outputs")
    parser.add_argument("--pattern", default=None,
                        help="glob pattern of the image file names, in any case (default: every type Pillow decodes "
                             "here: jpg, jpeg, png, webp, bmp, tiff, gif, ...)")
    parser.add_argument("--recursive", action="store_true", help="search sub-folders of IMAGE_DIR too (default: no)")
    parser.add_argument("--max-images", type=positive_int, default=None, metavar="N",
                        help="only the first N images in sorted order: a quick test run (e.g. 50)")
    parser.add_argument("--workers", type=positive_int, default=None, help="decode threads (default: one per core)")


def add_table_photo_options(parser: argparse.ArgumentParser, embedded: str = "query files") -> None:
    """``--image-dir`` (where a table's photos are) and ``--weights`` (to embed new photos offline)."""
    parser.add_argument("--image-dir", type=Path, default=None, metavar="DIR",
                        help="the folder the table's photos are in (default: the one recorded by extract)")
    parser.add_argument("--weights", default=None,
                        help=f"state-dict file replacing the recorded weights to embed {embedded} offline "
                             f"(default: ${WEIGHTS_ENV} when set, else the recorded weights)")


def add_table_output_options(parser: argparse.ArgumentParser) -> None:
    """--aggregate, --format, --strict."""
    parser.add_argument("--aggregate", choices=("mean", "max", "first", "none"), default="mean",
                        help="how the photos of an item become one row; none: no by-item table (default: mean)")
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="default: parquet")
    parser.add_argument("--strict", action="store_true", help=f"exit with {EXIT_IMAGES_FAILED} if any image failed")


def input_images(args: argparse.Namespace) -> list[Path]:
    """The images ``args`` select (IMAGE_DIR, --pattern, --recursive, --max-images); UsageError if none."""
    from ..feature_tables import list_images

    if not args.image_dir.is_dir():
        raise UsageError(f"image folder {os.fspath(args.image_dir)!r} does not exist or is not a folder")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise UsageError(f"output folder {os.fspath(args.output_dir)!r} is a file")
    paths = list_images(args.image_dir, args.pattern, recursive=args.recursive, max_images=args.max_images,
                        case_sensitive=False)
    if not paths:
        where = "under" if args.recursive else "in"
        wanted = "image file" if args.pattern is None else f"file matching {args.pattern!r}"
        raise UsageError(f"no {wanted} {where} {os.fspath(args.image_dir)!r}")
    return paths


@contextmanager
def usage_errors() -> Iterator[None]:
    """Report what the API refuses in the user's arguments (ValueError, FileNotFoundError) as exit code 2."""
    try:
        yield
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from error


def failure_message(reason: str, detail: str) -> str:
    """``reason (detail)``: one failed image, as the summaries and errors files show it."""
    return f"{reason} ({detail})" if detail else reason


def weights_from_env(weights: str | None) -> str | None:
    """``weights`` as given, else ``$SKIMGFEAT_WEIGHTS``, else None."""
    return weights or os.environ.get(WEIGHTS_ENV) or None
