"""``skimgfeat extract``: a folder of photos in, feature tables out, checkpointed and resumable."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..feature_tables import (
    ERROR,
    IMAGE_PATH,
    MODEL_INFO_FILE,
    aggregate_features_by_item,
    features_table,
    run_model_info,
)
from ..schema import FEATURE_PREFIX, IMAGE_NAME, feature_names
from ..storage.checkpoint import CHECKPOINT_DIR, Gathered, lock_output_folder
from ..storage.io import printable, write_json, write_table, write_table_chunks
from ..storage.table_stream import FeatureStatistics, item_table_chunks, raw_table_chunks
from .checkpointed import CheckpointedRun, add_checkpoint_options, check_checkpoint_options
from .common import (
    EXIT_CODES,
    EXIT_IMAGES_FAILED,
    EXIT_OK,
    WEIGHTS_ENV,
    UsageError,
    add_image_folder_options,
    add_table_output_options,
    failure_message,
    input_images,
    positive_int,
)

RAW_TABLE = "image_features_raw"
ITEM_TABLE = "image_features_by_item"
ERRORS_FILE = "image_errors.csv"


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add ``extract``."""
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
    add_image_folder_options(extract)
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
    extract.add_argument("--batch-size", type=positive_int, default=None, help="images per batch (default: 16 on CPU)")
    extract.add_argument("--exact-decoding", action="store_true",
                         help="decode every JPEG in full, as the original module did (default: a JPEG at least "
                              "twice the resize target is decoded at a reduced scale, cosine >= 0.995 to full)")
    add_table_output_options(extract)
    add_checkpoint_options(extract)
    extract.add_argument("--hashes", action="store_true",
                         help="also write OUT/image_hashes.parquet: the perceptual hashes `skimgfeat duplicates` "
                              "checks copies with, computed once here instead of at every duplicates run")
    add_local_features_option(extract)
    extract.add_argument("--overwrite", action="store_true",
                         help="replace the tables of an earlier run in OUT even when this run has fewer photos "
                              "(default: refused, exit 2)")
    extract.set_defaults(handler=run_extract)


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
    check_checkpoint_options(args)
    paths = input_images(args)
    _refuse_to_drop_rows(args, [path.relative_to(args.image_dir).as_posix() for path in paths])
    embedder = _fit_embedder(args)  # a bad model or weights file is refused before OUT is created
    with lock_output_folder(args.output_dir):
        run = CheckpointedRun(args, paths, _fingerprint(args, embedder), CHECKPOINT_DIR)
        embedder.prepare()  # the network's copy and export happen now: not part of the throughput
        run.compute(embedder.iter_transform)
        local_features = write_local_features_of_run(args, paths)  # before the checkpoint goes: --resume continues
        with run.gathered(embedder.n_features_out_) as rows:
            result = _write_outputs(args, rows, run.relative, embedder)
        result.outputs += _write_hashes(args, paths, run.relative)
        result.outputs += local_features
    result.n_resumed, result.n_embedded = run.n_resumed, len(run.todo)
    result.embed_seconds, result.wall_seconds = run.seconds, time.perf_counter() - started
    if not args.quiet:
        print_summary(result, args)
    return EXIT_IMAGES_FAILED if args.strict and result.failures else EXIT_OK


def _refuse_to_drop_rows(args: argparse.Namespace, relative: list[str]) -> None:
    """UsageError when OUT holds an earlier run's table with photos this run would drop (never silently).

    Running again over the same photos (or more) replaces the tables with as many rows or
    more; another folder's photos into the same OUT would replace a 300-row table by 20.
    """
    for suffix in (".parquet", ".csv"):
        table = args.output_dir / f"{RAW_TABLE}{suffix}"
        if not table.is_file() or getattr(args, "overwrite", False):
            continue
        try:
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                earlier = pq.read_table(table, columns=[IMAGE_PATH]).column(0).to_pylist()
            else:
                earlier = pd.read_csv(table, usecols=[IMAGE_PATH], dtype=str, keep_default_na=False)[IMAGE_PATH]
        except Exception:  # noqa: BLE001 - an unreadable table is replaced, as before
            continue
        dropped = set(map(str, earlier)) - set(relative)
        if dropped:
            raise UsageError(
                f"output folder {os.fspath(args.output_dir)!r} holds the tables of an earlier run with "
                f"{len(dropped)} photos that are not among this run's {len(relative)} (e.g. {sorted(dropped)[0]!r}): "
                "they would be replaced; choose a new output folder, or pass --overwrite (to grow a catalogue "
                "day by day: skimgfeat ingest NEW_DIR --archive ARCHIVE)")


def _fit_embedder(args: argparse.Namespace):
    from ..embedder import CNNImageEmbedder
    from ..registry import is_weights_file

    weights = _weights_argument(args.weights)
    embedder = CNNImageEmbedder(
        args.model,
        weights,
        device=args.device,
        batch_size=args.batch_size or "auto",
        on_error="nan",
        n_workers=args.workers,
        random_state=args.seed,
        draft=not args.exact_decoding,
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


def _write_outputs(args, rows: Gathered, relative: list[str], embedder) -> ExtractResult:
    """Stream the tables from the gathered checkpoint rows and write every output atomically."""
    width = embedder.n_features_out_
    messages = {i: failure_message(reason, rows.details[i]) for i, reason in enumerate(rows.reasons) if reason}
    model_info = dict(run_model_info(embedder), image_dir=os.fspath(args.image_dir.resolve()))
    output_dir, suffix = args.output_dir, f".{args.format}"
    _remove_leftovers(output_dir)
    statistics = FeatureStatistics(width)
    columns = list(feature_names(width))
    raw = raw_table_chunks(rows, relative, messages, features_table,
                           on_chunk=lambda table: statistics.add(table, columns, (table[ERROR] == "").to_numpy()))
    outputs = [write_table_chunks(raw, output_dir / f"{RAW_TABLE}{suffix}", model_info=model_info)]
    n_items = None
    if args.aggregate != "none":
        counted = []
        by_item = item_table_chunks(rows, relative, features_table,
                                    lambda table: aggregate_features_by_item(table, method=args.aggregate),
                                    on_chunk=lambda table: counted.append(len(table)))
        item_info = dict(model_info, aggregation=args.aggregate)
        outputs.append(write_table_chunks(by_item, output_dir / f"{ITEM_TABLE}{suffix}", model_info=item_info))
        n_items = sum(counted)
    failures = [(printable(relative[i]), messages[i]) for i in sorted(messages)]
    errors = pd.DataFrame(
        [(path, rows.reasons[i], printable(rows.details[i])) for (path, _), i in zip(failures, sorted(messages))],
        columns=[IMAGE_PATH, "reason", "detail"],
    )
    outputs.append(write_table(errors, output_dir / ERRORS_FILE))
    outputs.append(write_json(dict(model_info, aggregation=args.aggregate), output_dir / MODEL_INFO_FILE))
    return ExtractResult(len(relative), failures, statistics, n_items, outputs, 0, 0, 0.0, 0.0, model_info)


def _write_hashes(args: argparse.Namespace, paths: list[Path], relative: list[str]) -> list[Path]:
    """With --hashes, the copy check's hashes of every photo; without, no hashes of an earlier run's photos."""
    from ..matching.copy_check import HASHES_FILE, PhotoHashes

    target = args.output_dir / HASHES_FILE
    if not args.hashes:
        target.unlink(missing_ok=True)  # they would describe other photos than these tables
        return []
    return [PhotoHashes.compute(paths, relative, n_workers=args.workers).write(target)]


def _remove_leftovers(output_dir: Path) -> None:
    """Delete temporary files of final outputs that a killed run left behind."""
    for name in (RAW_TABLE, ITEM_TABLE, Path(ERRORS_FILE).stem, Path(MODEL_INFO_FILE).stem):
        for leftover in output_dir.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


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
        print(stats.sample[[IMAGE_NAME, *columns]].to_string(index=False))


# -- local features for `skimgfeat match` ----------------------------------------------------------------------------


def add_local_features_option(parser: argparse.ArgumentParser) -> None:
    """--local-features."""
    parser.add_argument("--local-features", action="store_true",
                        help="also store the photos' local features (AKAZE keypoints, at most 1000 per photo) in "
                             "OUT/local_features, for `skimgfeat match`; photos stored by an earlier run are kept "
                             "(needs the match extra: OpenCV)")


def write_local_features_of_run(args: argparse.Namespace, paths: list[Path]) -> list[Path]:
    """Store the local features of ``paths`` not stored yet when ``--local-features`` is given."""
    if not args.local_features:
        return []
    from ..matching.local_features import LOCAL_FEATURES_DIR, write_local_features
    from ..storage.output import progress_bar

    folder = args.output_dir / LOCAL_FEATURES_DIR
    with progress_bar(len(paths), enabled=not args.quiet and sys.stderr.isatty()) as bar:
        write_local_features(paths, folder, image_dir=args.image_dir, on_progress=bar.update)
    return [folder]
