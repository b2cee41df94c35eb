"""``skimgfeat models``, ``sample-images`` and ``cache``: the small housekeeping commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import EXIT_CODES, EXIT_OK, UsageError, add_command, positive_float, size


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add ``models``, ``sample-images`` and ``cache``."""
    models = commands.add_parser(
        "models", parents=[common], help="list the model names, feature widths and default weights",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.set_defaults(handler=run_models)
    samples = add_command(
        commands, common, "sample-images", "write a few sample item photos (no download needed)",
        "Write scikit-learn's sample photos (china, flower) as <item>_<n>.webp files, "
        "several views per item: a small input for demos.",
    )
    samples.add_argument("directory", type=Path, metavar="DIR", help="folder to write to (created)")
    samples.add_argument("--photos-per-item", type=int, default=3, choices=range(1, 5), metavar="N",
                         help="1 to 4 (default: 3)")
    samples.set_defaults(handler=run_sample_images)
    cache = add_command(
        commands, common, "cache", "show (and prune) a feature cache folder: entries and size",
        "Show how many feature vectors the cache folder DIR (CNNImageEmbedder(cache=DIR)) holds and their "
        "size; with --max-size or --older-than, first remove the least recently used entries.",
    )
    cache.add_argument("directory", type=Path, metavar="DIR", help="the cache folder")
    cache.add_argument("--max-size", type=size, default=None, metavar="SIZE",
                       help="remove least recently used entries until at most SIZE remain (e.g. 500M, 2G, 0)")
    cache.add_argument("--older-than", type=positive_float, default=None, metavar="DAYS",
                       help="remove entries not used for DAYS days")
    cache.set_defaults(handler=run_cache)


def run_models(args: argparse.Namespace) -> int:
    """Print one line per torchvision model (name, width, default weights, recipe), then how to name the others."""
    import torch

    from ..registry import MODEL_REGISTRY

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
    from ..storage.samples import write_sample_images

    paths = write_sample_images(args.directory, photos_per_item=args.photos_per_item)
    if not args.quiet:
        print(f"wrote {len(paths)} sample photos to {args.directory}")
    return EXIT_OK


def run_cache(args: argparse.Namespace) -> int:
    """Prune the cache folder when asked, then print what it holds."""
    from ..storage.cache import cache_info, prune_cache

    if not args.directory.is_dir():
        raise UsageError(f"cache folder {os.fspath(args.directory)!r} does not exist or is not a folder")
    if args.max_size is not None or args.older_than is not None:
        older_than = None if args.older_than is None else args.older_than * 86400
        removed = prune_cache(args.directory, max_bytes=args.max_size, older_than=older_than)
        print(f"removed {removed.entries} entries ({removed.bytes / 2**20:.1f} MiB)")
    info = cache_info(args.directory)
    print(f"{args.directory}: {info.entries} entries, {info.bytes / 2**20:.1f} MiB")
    return EXIT_OK
