"""The ``skimgfeat`` command line: a folder of photos in, feature tables out.

Subcommands: ``extract`` (the original ``extract_all_image_features.py``; with
``--max-images 50`` the original ``test_image_features.py``), ``models``,
``sample-images``, and the uses of a feature table: ``similar``, ``duplicates`` and
``quality``; ``cache`` shows and prunes a feature cache folder. Run
``skimgfeat COMMAND --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import __version__
from .checkpoint import Checkpoint, CheckpointError, FileStamp, Rows, pending
from .io import printable, write_json, write_table, write_table_chunks
from .output import FEATURE_PREFIX, feature_names, progress_bar
from .table_stream import FeatureStatistics, item_table_chunks, raw_table_chunks
from .tables import (
    ERROR,
    IMAGE_PATH,
    MODEL_INFO_FILE,
    aggregate_features_by_item,
    features_table,
    list_images,
    run_model_info,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_IMAGES_FAILED = 3
EXIT_INTERRUPTED = 130

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}    success; images that could not be read do not fail the run: they are
       listed in image_errors.csv, in the summary and in the raw table's "error" column
  {EXIT_FAILURE}    anything else failed (weights not downloadable, disk full, a bad environment
       variable, an unexpected error): one line names the cause, --verbose adds the traceback
  {EXIT_USAGE}    a mistake in the command: unknown option, model, weights or device, no such
       folder, no matching image, a checkpoint that does not fit the run
  {EXIT_IMAGES_FAILED}    --strict was given and some images could not be read
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C): the work done so far is checkpointed, continue with --resume
"""

WEIGHTS_ENV = "SKIMGFEAT_WEIGHTS"
RAW_TABLE = "image_features_raw"
ITEM_TABLE = "image_features_by_item"
ERRORS_FILE = "image_errors.csv"
DEFAULT_CHECKPOINT_EVERY = 1


class UsageError(ValueError):
    """A mistake in the command that the command line itself detected: exit code 2.

    Only these (and :class:`~skimgfeat.checkpoint.CheckpointError`) exit with 2; every
    other exception is a failure of the run (exit code 1), whatever its type.
    """


# -- parser ------------------------------------------------------------------------


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
    _add_extract(commands, common)
    models = commands.add_parser(
        "models", parents=[common], help="list the model names, feature widths and default weights",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.set_defaults(handler=run_models)
    samples = _command(
        commands, common, "sample-images", "write a few sample item photos (no download needed)",
        "Write scikit-learn's sample photos (china, flower) as <item>_<n>.webp files, "
        "several views per item: a small input for demos.",
    )
    samples.add_argument("directory", type=Path, metavar="DIR", help="folder to write to (created)")
    samples.add_argument("--photos-per-item", type=int, default=3, choices=range(1, 5), metavar="N",
                         help="1 to 4 (default: 3)")
    samples.set_defaults(handler=run_sample_images)
    _add_similar(commands, common)
    _add_duplicates(commands, common)
    _add_quality(commands, common)
    _add_cache(commands, common)
    return parser


def _command(commands, common: argparse.ArgumentParser, name: str, summary: str, description: str):
    """A subcommand with the common options, a wrapped description and the exit codes."""
    return commands.add_parser(
        name, parents=[common], help=summary, description=textwrap.fill(description, width=88),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_cache(commands, common: argparse.ArgumentParser) -> None:
    cache = _command(
        commands, common, "cache", "show (and prune) a feature cache folder: entries and size",
        "Show how many feature vectors the cache folder DIR (CNNImageEmbedder(cache=DIR)) holds and their "
        "size; with --max-size or --older-than, first remove the least recently used entries.",
    )
    cache.add_argument("directory", type=Path, metavar="DIR", help="the cache folder")
    cache.add_argument("--max-size", type=_size, default=None, metavar="SIZE",
                       help="remove least recently used entries until at most SIZE remain (e.g. 500M, 2G, 0)")
    cache.add_argument("--older-than", type=_positive_float, default=None, metavar="DAYS",
                       help="remove entries not used for DAYS days")
    cache.set_defaults(handler=run_cache)


_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _size(text: str) -> int:
    number, unit = text.strip().upper().rstrip("B"), ""
    if number and number[-1] in _SIZE_UNITS:
        number, unit = number[:-1], number[-1]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M or 2G, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M or 2G, got {text!r}")
    return int(value)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_extract(commands, common: argparse.ArgumentParser) -> None:
    extract = commands.add_parser(
        "extract", parents=[common], help="extract features of every matching image in a folder",
        description=textwrap.fill(
            "Extract CNN features of every file in IMAGE_DIR matching --pattern. Writes "
            f"OUT/{RAW_TABLE}.parquet (image_path, image_name, img_feature_*, error), "
            f"OUT/{ITEM_TABLE}.parquet (item_id, img_feature_*), OUT/{MODEL_INFO_FILE} and OUT/{ERRORS_FILE}. "
            "The item of a photo is its file stem up to the last underscore (84512_3.webp -> 84512). "
            "Progress is checkpointed in OUT/.skimgfeat-checkpoint; an interrupted run continues with --resume.",
            width=88,
        ),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    extract.add_argument("image_dir", type=Path, metavar="IMAGE_DIR", help="folder of images")
    extract.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUT", help="folder for the outputs")
    extract.add_argument("--pattern", default="*.webp", help='glob pattern of the image files (default: "*.webp")')
    extract.add_argument("--recursive", action="store_true", help="search sub-folders of IMAGE_DIR too (default: no)")
    extract.add_argument(
        "--model", default="mobilenet_v2",
        help="a name from `skimgfeat models`, timm:<name> or open_clip:<arch> (default: %(default)s)",
    )
    extract.add_argument(
        "--weights", default=None,
        help=f"'pretrained', a torchvision weights name, an OpenCLIP pretrained tag, a local state-dict file, or "
        f"'none' for a random network seeded by --seed (default: ${WEIGHTS_ENV} when set, else 'pretrained': the "
        "model's default pretrained weights, downloaded once and cached by torchvision, timm or OpenCLIP)",
    )
    extract.add_argument("--seed", type=int, default=0, help="seed of --weights none (default: 0)")
    extract.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    extract.add_argument("--batch-size", type=_positive_int, default=None, help="images per batch (default: 32 on CPU)")
    extract.add_argument("--workers", type=_positive_int, default=None, help="decode threads (default: one per core)")
    extract.add_argument("--max-images", type=_positive_int, default=None, metavar="N",
                         help="only the first N images in sorted order: a quick test run (e.g. 50)")
    extract.add_argument("--aggregate", choices=("mean", "max", "first", "none"), default="mean",
                         help="how the photos of an item become one row; none: no by-item table (default: mean)")
    extract.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="default: parquet")
    extract.add_argument("--resume", action="store_true", help="continue the interrupted run checkpointed in OUT")
    extract.add_argument("--restart", action="store_true", help="discard the checkpoint of an interrupted run in OUT")
    extract.add_argument("--checkpoint-every", type=_positive_int, default=DEFAULT_CHECKPOINT_EVERY, metavar="N",
                         help="write a checkpoint part every N batches (default: %(default)s)")
    extract.add_argument("--strict", action="store_true", help=f"exit with {EXIT_IMAGES_FAILED} if any image failed")
    extract.set_defaults(handler=run_extract)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# -- entry point -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except BrokenPipeError:
        # The reader went away (``skimgfeat models | head``): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return EXIT_OK
    except KeyboardInterrupt:
        _error("interrupted; what was embedded is checkpointed, continue with --resume", args.verbose)
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


# -- models and sample-images ------------------------------------------------------


def run_models(args: argparse.Namespace) -> int:
    """Print one line per torchvision model (name, width, default weights, recipe), then how to name the others."""
    import torch

    from .registry import MODEL_REGISTRY

    print(f"{'model':<22}{'features':>9}  {'default weights':<16}recipe")
    for name, spec in sorted(MODEL_REGISTRY.items()):
        with torch.device("meta"):  # shapes only: no memory, no initialisation, no download
            _, width = spec.strip_head(spec.build_classifier(None))
        weights = spec.resolve_weights("pretrained")
        print(f"{name:<22}{width:>9}  {weights.name:<16}{spec.recipe(weights).describe()}")
    print()
    print("timm models:    --model timm:<name>, e.g. timm:convnext_tiny.fb_in22k (pip install 'skimgfeat[timm]')")
    print("OpenCLIP image: --model open_clip:<arch>, e.g. open_clip:ViT-B-32 (pip install 'skimgfeat[clip]')")
    return EXIT_OK


def run_sample_images(args: argparse.Namespace) -> int:
    """Write the sample photos and say where."""
    from .samples import write_sample_images

    paths = write_sample_images(args.directory, photos_per_item=args.photos_per_item)
    if not args.quiet:
        print(f"wrote {len(paths)} sample photos to {args.directory}")
    return EXIT_OK


def run_cache(args: argparse.Namespace) -> int:
    """Prune the cache folder when asked, then print what it holds."""
    from .cache import cache_info, prune_cache

    if not args.directory.is_dir():
        raise UsageError(f"cache folder {os.fspath(args.directory)!r} does not exist or is not a folder")
    if args.max_size is not None or args.older_than is not None:
        older_than = None if args.older_than is None else args.older_than * 86400
        removed = prune_cache(args.directory, max_bytes=args.max_size, older_than=older_than)
        print(f"removed {removed.entries} entries ({removed.bytes / 2**20:.1f} MiB)")
    info = cache_info(args.directory)
    print(f"{args.directory}: {info.entries} entries, {info.bytes / 2**20:.1f} MiB")
    return EXIT_OK


# -- extract -----------------------------------------------------------------------


@dataclass
class ExtractResult:
    """What one ``extract`` run did: for the summary (the tables themselves are only on disk)."""

    n_images: int
    failures: list[tuple[str, str]]
    statistics: FeatureStatistics
    n_items: int | None
    outputs: list[Path]
    n_resumed: int
    n_embedded: int
    embed_seconds: float
    wall_seconds: float
    model_info: dict


def run_extract(args: argparse.Namespace) -> int:
    """Embed, checkpoint, then write the tables, the model info and the errors file."""
    started = time.perf_counter()
    if args.resume and args.restart:
        raise UsageError("--resume and --restart exclude each other")
    paths = _input_images(args)
    embedder = _fit_embedder(args)
    relative = [path.relative_to(args.image_dir).as_posix() for path in paths]
    stamps = [FileStamp.of(path) for path in paths]
    fingerprint = _fingerprint(args, embedder)
    checkpoint = Checkpoint.open(args.output_dir, fingerprint, resume=args.resume, restart=args.restart)
    todo = pending(relative, stamps, checkpoint.index())
    embedder.prepare()  # the network's copy and export happen now: not part of the throughput
    embed_started = time.perf_counter()
    _embed_into(checkpoint, embedder, paths, relative, stamps, todo, args)
    embed_seconds = time.perf_counter() - embed_started
    result = _write_outputs(args, checkpoint, relative, embedder)
    checkpoint.remove()
    result.n_resumed, result.n_embedded = len(paths) - len(todo), len(todo)
    result.embed_seconds, result.wall_seconds = embed_seconds, time.perf_counter() - started
    if not args.quiet:
        print_summary(result, args)
    return EXIT_IMAGES_FAILED if args.strict and result.failures else EXIT_OK


def _input_images(args: argparse.Namespace) -> list[Path]:
    """The images ``args`` select (IMAGE_DIR, --pattern, --recursive, --max-images); UsageError if none."""
    if not args.image_dir.is_dir():
        raise UsageError(f"image folder {os.fspath(args.image_dir)!r} does not exist or is not a folder")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise UsageError(f"output folder {os.fspath(args.output_dir)!r} is a file")
    paths = list_images(args.image_dir, args.pattern, recursive=args.recursive, max_images=args.max_images)
    if not paths:
        where = "under" if args.recursive else "in"
        raise UsageError(f"no file matching {args.pattern!r} {where} {os.fspath(args.image_dir)!r}")
    return paths


def _fit_embedder(args: argparse.Namespace):
    from .embedder import CNNImageEmbedder
    from .registry import is_weights_file

    weights = _weights_argument(args.weights)
    embedder = CNNImageEmbedder(
        args.model,
        weights,
        device=args.device,
        batch_size=args.batch_size or "auto",
        on_error="nan",
        n_workers=args.workers,
        random_state=args.seed,
    )
    try:
        return embedder.fit()
    except (ValueError, FileNotFoundError) as error:
        # fit refuses its arguments this way: an unknown model, weights name or device,
        # a weights file that is missing or does not fit the model.
        raise UsageError(str(error)) from error
    except OSError as error:
        if weights is None or is_weights_file(weights):
            raise
        raise RuntimeError(
            f"cannot get weights {weights!r} for {args.model} ({error}); offline, pass --weights "
            f"PATH of a local state-dict file or set {WEIGHTS_ENV}"
        ) from error


def _weights_argument(weights: str | None) -> str | None:
    if weights is None:
        weights = os.environ.get(WEIGHTS_ENV) or "pretrained"
    return None if weights.lower() == "none" else weights


def _fingerprint(args: argparse.Namespace, embedder) -> dict:
    info = embedder.model_info_
    return {
        "model_name": info["model_name"],
        "weights": info["weights"],
        "parameters_sha256": info["parameters_sha256"],
        "preprocessing": info["preprocessing"],
        "precision": info["precision"],
        "image_dir": os.fspath(args.image_dir.resolve()),
        "pattern": args.pattern,
        "recursive": bool(args.recursive),
    }


def _embed_into(checkpoint: Checkpoint, embedder, paths, relative, stamps, todo: list[int], args) -> None:
    """Embed the ``todo`` positions, writing a checkpoint part every few batches."""
    unsaved: list[Rows] = []
    with progress_bar(len(todo), enabled=not args.quiet and sys.stderr.isatty()) as bar:
        try:
            for batch in embedder.iter_transform([str(paths[i]) for i in todo]):
                unsaved.append(_batch_rows(batch, [todo[batch.start + k] for k in range(len(batch.features))],
                                           relative, stamps))
                bar.update(len(batch.features))
                if len(unsaved) >= args.checkpoint_every:
                    checkpoint.write_part(Rows.concat(unsaved))
                    unsaved = []
        finally:
            if unsaved:  # on Ctrl-C too: what is embedded is kept
                checkpoint.write_part(Rows.concat(unsaved))


def _batch_rows(batch, rows: list[int], relative: list[str], stamps: list[FileStamp]) -> Rows:
    failures = {position - batch.start: error for position, error in batch.errors}
    return Rows(
        paths=[relative[row] for row in rows],
        stamps=[stamps[row] for row in rows],
        reasons=[failures[k].reason if k in failures else "" for k in range(len(rows))],
        details=[failures[k].detail if k in failures else "" for k in range(len(rows))],
        features=batch.features,
    )


def _write_outputs(args, checkpoint: Checkpoint, relative: list[str], embedder) -> ExtractResult:
    """Stream the tables in listing order from the checkpoint and write every output atomically."""
    index = checkpoint.index()
    rows = [index[path] for path in relative]
    del index
    width = embedder.n_features_out_
    messages = {i: _message(row.reason, row.detail) for i, row in enumerate(rows) if row.reason}
    model_info = dict(run_model_info(embedder), image_dir=os.fspath(args.image_dir.resolve()))
    output_dir, suffix = args.output_dir, f".{args.format}"
    _remove_leftovers(output_dir)
    statistics = FeatureStatistics(width)
    columns = list(feature_names(width))
    raw = raw_table_chunks(checkpoint, relative, rows, messages, width, features_table,
                           on_chunk=lambda table: statistics.add(table, columns, (table[ERROR] == "").to_numpy()))
    outputs = [write_table_chunks(raw, output_dir / f"{RAW_TABLE}{suffix}", model_info=model_info)]
    n_items = None
    if args.aggregate != "none":
        counted = []
        by_item = item_table_chunks(checkpoint, relative, rows, width, features_table,
                                    lambda table: aggregate_features_by_item(table, method=args.aggregate),
                                    on_chunk=lambda table: counted.append(len(table)))
        item_info = dict(model_info, aggregation=args.aggregate)
        outputs.append(write_table_chunks(by_item, output_dir / f"{ITEM_TABLE}{suffix}", model_info=item_info))
        n_items = sum(counted)
    failures = [(printable(relative[i]), messages[i]) for i in sorted(messages)]
    errors = pd.DataFrame(
        [(path, rows[i].reason, printable(rows[i].detail)) for (path, _), i in zip(failures, sorted(messages))],
        columns=[IMAGE_PATH, "reason", "detail"],
    )
    outputs.append(write_table(errors, output_dir / ERRORS_FILE))
    outputs.append(write_json(dict(model_info, aggregation=args.aggregate), output_dir / MODEL_INFO_FILE))
    return ExtractResult(len(relative), failures, statistics, n_items, outputs, 0, 0, 0.0, 0.0, model_info)


def _remove_leftovers(output_dir: Path) -> None:
    """Delete temporary files of final outputs that a killed run left behind."""
    for name in (RAW_TABLE, ITEM_TABLE, Path(ERRORS_FILE).stem, Path(MODEL_INFO_FILE).stem):
        for leftover in output_dir.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


def _message(reason: str, detail: str) -> str:
    return f"{reason} ({detail})" if detail else reason


# -- summary -----------------------------------------------------------------------


def print_summary(result: ExtractResult, args: argparse.Namespace, n_failures_shown: int = 20) -> None:
    """The end-of-run report of the original test script, on stdout."""
    failed = result.failures
    info = result.model_info
    rate = result.n_embedded / result.embed_seconds if result.embed_seconds > 0 else float("nan")
    print("Image feature extraction summary")
    print(f"  images:          {result.n_images} ({result.n_images - len(failed)} done, {len(failed)} failed)")
    print(f"  resumed:         {result.n_resumed} images from the checkpoint, {result.n_embedded} embedded now")
    print(f"  model:           {info['model_name']} ({info['weights']}), on {info.get('device')}")
    print(f"  feature width:   {info['n_features']}")
    print(f"  wall time:       {result.wall_seconds:.1f} s")
    embedded = f"{result.n_embedded} images embedded in {result.embed_seconds:.2f} s"
    print(f"  throughput:      {rate:.1f} images/s ({embedded})")
    if result.n_items is not None:
        print(f"  items:           {result.n_items} ({args.aggregate} of each item's photos)")
    print("  outputs:")
    for path in result.outputs:
        print(f"    {path}")
    if failed:
        print(f"Failed images ({len(failed)}, all listed in {ERRORS_FILE}):")
        for path, message in failed[:n_failures_shown]:
            print(f"  {path}: {message}")
        if len(failed) > n_failures_shown:
            print(f"  ... and {len(failed) - n_failures_shown} more")
    _print_statistics(result.statistics)


def _print_statistics(stats: FeatureStatistics) -> None:
    if not stats.count:
        print("Feature statistics: no image could be embedded")
        return
    mean, std = stats.per_feature_mean(), stats.per_feature_std()
    width = len(mean)
    print(f"Feature statistics ({stats.count} images x {width} features):")
    print(f"  all values:       mean {stats.overall_mean():.4f}, std {stats.overall_std():.4f}, "
          f"min {stats.minimum:.4f}, max {stats.maximum:.4f}")
    print(f"  per-feature mean: from {mean.min():.4f} to {mean.max():.4f}")
    print(f"  per-feature std:  from {std.min():.4f} to {std.max():.4f}")
    print(f"  zero features:    {int((stats.zeros == stats.count).sum())} always 0; "
          f"sparsity {float(stats.zeros.sum() / (stats.count * width)):.1%}")
    print("Sample rows:")
    columns = [f"{FEATURE_PREFIX}{i}" for i in range(min(5, width))]
    with pd.option_context("display.width", 120, "display.max_columns", 8, "display.precision", 4):
        print(stats.sample[["image_name", *columns]].to_string(index=False))


# -- similar, duplicates, quality ----------------------------------------------------

QUALITY_RAW_TABLE = "image_quality_raw"
QUALITY_ITEM_TABLE = "image_quality_by_item"


def _add_similar(commands, common: argparse.ArgumentParser) -> None:
    similar = commands.add_parser(
        "similar", parents=[common], help="find the photos (or items) nearest to query photos in a feature table",
        description=textwrap.fill(
            "Print, as CSV on stdout (query,rank,image_path,distance; item_id with --by-item), the K rows of "
            "FEATURES nearest to each QUERY by cosine distance. A QUERY is an image_path or item_id of the "
            "table (left out of its own results) or an image file, embedded with the network recorded in the "
            "table's model info.",
            width=88,
        ),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    similar.add_argument("queries", nargs="+", metavar="QUERY", help="image file, image_path or item_id")
    similar.add_argument("--features", type=Path, required=True, metavar="FEATURES",
                         help="a table written by `skimgfeat extract` (raw or by item; .parquet or .csv)")
    similar.add_argument("-k", type=_positive_int, default=5, help="neighbours per query (default: %(default)s)")
    similar.add_argument("--by-item", action="store_true",
                         help="rank items (a raw table is first averaged per item) instead of photos")
    similar.add_argument("--sheet", type=Path, default=None, metavar="SHEET.png",
                         help="also draw a contact sheet: each query beside its neighbours, labelled")
    similar.add_argument("--image-dir", type=Path, default=None, metavar="DIR",
                         help="the folder the table's photos are in, for --sheet (default: the one recorded by "
                              "extract)")
    similar.add_argument("--weights", default=None,
                         help=f"state-dict file replacing the recorded weights to embed query files offline "
                              f"(default: ${WEIGHTS_ENV} when set, else the recorded weights)")
    similar.set_defaults(handler=run_similar)


def _add_duplicates(commands, common: argparse.ArgumentParser) -> None:
    from .similarity import DEFAULT_DUPLICATE_THRESHOLD

    duplicates = commands.add_parser(
        "duplicates", parents=[common], help="list groups of near-duplicate photos in a feature table",
        description=textwrap.fill(
            "Print, as CSV on stdout (group,image_path), every photo of FEATURES that has a near-duplicate "
            "(a resized, recompressed, slightly cropped or re-exposed copy): photos closer than --threshold "
            "in cosine distance are linked, groups are the connected photos, numbered from 0. Photos "
            "without a duplicate are not listed.",
            width=88,
        ),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    duplicates.add_argument("--features", type=Path, required=True, metavar="FEATURES",
                            help="a table written by `skimgfeat extract` (.parquet or .csv)")
    duplicates.add_argument("--threshold", type=float, default=DEFAULT_DUPLICATE_THRESHOLD, metavar="T",
                            help="cosine distance under which two photos are duplicates (default: %(default)s, "
                                 "measured on copies of real photos with MobileNetV2)")
    duplicates.set_defaults(handler=run_duplicates)


def _add_quality(commands, common: argparse.ArgumentParser) -> None:
    quality = commands.add_parser(
        "quality", parents=[common], help="measure the quality of every matching photo in a folder",
        description=textwrap.fill(
            "Measure sharpness, brightness, contrast, colorfulness, over- and underexposure, size, file size "
            f"and JPEG quality of every file in IMAGE_DIR matching --pattern. Writes OUT/{QUALITY_RAW_TABLE}"
            ".parquet (image_path, image_name, the measures, error) and OUT/"
            f"{QUALITY_ITEM_TABLE}.parquet (item_id, the measures).",
            width=88,
        ),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    quality.add_argument("image_dir", type=Path, metavar="IMAGE_DIR", help="folder of images")
    quality.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUT", help="folder for the outputs")
    quality.add_argument("--pattern", default="*.webp", help='glob pattern of the image files (default: "*.webp")')
    quality.add_argument("--recursive", action="store_true", help="search sub-folders of IMAGE_DIR too")
    quality.add_argument("--max-images", type=_positive_int, default=None, metavar="N",
                         help="only the first N images in sorted order")
    quality.add_argument("--workers", type=_positive_int, default=None, help="threads (default: one per core)")
    quality.add_argument("--aggregate", choices=("mean", "max", "first", "none"), default="mean",
                         help="how the photos of an item become one row; none: no by-item table (default: mean)")
    quality.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="default: parquet")
    quality.add_argument("--strict", action="store_true", help=f"exit with {EXIT_IMAGES_FAILED} if any image failed")
    quality.set_defaults(handler=run_quality)


@contextmanager
def _usage_errors() -> Iterator[None]:
    """Report what the API refuses in the user's arguments (ValueError, FileNotFoundError) as exit code 2."""
    try:
        yield
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from error


def run_similar(args: argparse.Namespace) -> int:
    """Print the nearest rows of each query as CSV; draw the contact sheet if asked."""
    from .io import atomic_path
    from .similarity import SimilarityIndex, similar_items

    weights = args.weights or os.environ.get(WEIGHTS_ENV) or None
    with _usage_errors():  # a missing table, an unknown query, a query file that is no image
        index = SimilarityIndex.read(args.features, by_item=args.by_item, image_dir=args.image_dir)
        results = similar_items(index, args.queries, k=args.k, weights=weights)
    results.to_csv(sys.stdout, index=False, float_format="%.6f")
    if args.sheet is not None:
        from .contact_sheet import contact_sheet

        with atomic_path(args.sheet) as temporary:
            contact_sheet(results, index).save(temporary, format="PNG")
    return EXIT_OK


def run_duplicates(args: argparse.Namespace) -> int:
    """Print the groups of near-duplicates as CSV."""
    from .similarity import SimilarityIndex, find_duplicates

    with _usage_errors():  # a missing or foreign table, a threshold out of range
        groups = find_duplicates(SimilarityIndex.read(args.features), threshold=args.threshold)
    groups.to_csv(sys.stdout, index=False)
    return EXIT_OK


def run_quality(args: argparse.Namespace) -> int:
    """Measure the photos, then write the per-image and per-item tables."""
    from .embedder import library_versions
    from .quality import QUALITY_FEATURES, ImageQualityFeatures
    from .tables import aggregate_features_by_item

    paths = _input_images(args)
    measure = ImageQualityFeatures(on_error="nan", n_workers=args.workers).fit()
    started = time.perf_counter()
    values = measure.transform([str(path) for path in paths])
    seconds = time.perf_counter() - started
    row_of = {str(path): row for row, path in enumerate(paths)}
    messages = {row_of[error.path]: _message(error.reason, error.detail) for error in measure.errors_}
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
