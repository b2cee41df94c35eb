"""Peak memory of items with very different numbers of photos (issue 27).

2,000 items of one small photo each plus one item of 400 photos (2,399 photos of 64 px,
crops of the real photos in ../shared/images), one list of paths per item, through
``make_pipeline(CNNImageEmbedder(...), ItemAggregator("mean"))``, in a fresh process;
peak RSS (``ru_maxrss``) of that process. Then checks that each row equals the mean of
its photos' vectors embedded one by one.

    python benchmarks/ragged_memory.py                 # the ragged form (what the embedder returns)
    python benchmarks/ragged_memory.py --padded        # also: the padded array forced between the steps
    python benchmarks/ragged_memory.py --items 2000 --big-item 400
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _photos import SHARED, make_photos  # noqa: E402

WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"


def items_of(folder: Path, n_items: int, big_item: int) -> list[list[str]]:
    """One photo for each of ``n_items`` items, then one item of ``big_item`` photos."""
    photos = sorted(str(p) for p in folder.glob("*.jpg"))[: n_items + big_item]
    return [[photo] for photo in photos[:n_items]] + [photos[n_items:]]


def worker(listing: Path, padded: bool, out: Path) -> None:
    """Run in a fresh process: the pipeline on the items, its rows saved, peak RSS printed."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from skimgfeat import CNNImageEmbedder, ItemAggregator

    items = json.loads(listing.read_text())
    weights = str(WEIGHTS) if WEIGHTS.exists() else None
    steps = [CNNImageEmbedder(weights=weights, random_state=0, device="cpu")]
    if padded:  # what the embedder returned before: one (items, largest item, features) array
        steps.append(FunctionTransformer(np.asarray))
    steps.append(ItemAggregator("mean"))
    started = time.perf_counter()
    rows = make_pipeline(*steps).fit_transform(items)
    seconds = time.perf_counter() - started
    np.save(out, rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "seconds": seconds, "rows": len(rows)}))


def per_photo_means(items: list[list[str]]) -> np.ndarray:
    """Each item's mean of its photos' vectors, the photos embedded one list for all (2-D)."""
    from skimgfeat import CNNImageEmbedder

    weights = str(WEIGHTS) if WEIGHTS.exists() else None
    photos = [photo for item in items for photo in item]
    vectors = CNNImageEmbedder(weights=weights, random_state=0, device="cpu").fit_transform(photos)
    bounds = np.cumsum([0] + [len(item) for item in items])
    return np.stack([vectors[a:b].astype(np.float64).mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000, help="items of one photo")
    parser.add_argument("--big-item", type=int, default=400, help="photos of the one large item")
    parser.add_argument("--padded", action="store_true", help="also measure the padded array between the steps")
    parser.add_argument("--workdir", help="keep the photos here instead of a temporary folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--as-padded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker), args.as_padded, Path(args.out))
        return
    with tempfile.TemporaryDirectory(prefix="skimgfeat-ragged-") as tmp:
        folder = Path(args.workdir or tmp)
        make_photos(folder / "photos", args.items + args.big_item, min_side=64, max_side=64)
        items = items_of(folder / "photos", args.items, args.big_item)
        listing = folder / "items.json"
        listing.write_text(json.dumps(items))
        expected = per_photo_means(items)
        print(f"{args.items} items of one photo + one item of {args.big_item} photos, 64 px, mobilenet_v2, CPU")
        print("| form between the steps | peak RSS MB | seconds | max abs difference from per-photo means |")
        print("|---|---:|---:|---:|")
        for padded in [False, True] if args.padded else [False]:
            out = folder / f"rows-{padded}.npy"
            command = [sys.executable, __file__, "--worker", str(listing), "--out", str(out)]
            done = subprocess.run(command + (["--as-padded"] if padded else []), capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(done.stderr[-3000:])
            result = json.loads(done.stdout.strip().splitlines()[-1])
            difference = float(np.abs(np.load(out) - expected).max())
            form = "padded array (np.asarray)" if padded else "RaggedPhotos (default)"
            print(f"| {form} | {result['peak_rss_mb']:.0f} | {result['seconds']:.1f} | {difference:.2e} |", flush=True)


if __name__ == "__main__":
    main()
