"""The copy search over a balanced partition, on real photo features: does it return the original of real copies?

A copy search (an intake's report, ``duplicates --against``) compares each new photo with
the archived rows of its 8 nearest balanced parts (``skimgfeat.storage.balanced_partition``)
instead of every row. This checks it on real features: an inverted file (ivf-sq8) over the
features of a table made by ``skimgfeat extract`` from the shared photos, and copies of 150 of
those photos (centred crop, mirror, white border, half size re-encoded, brighter, all
combined) embedded by the same network. For each copy: is its original among the rows the
search returns within the copy radius (0.3)? And of every row within that radius by exact
search (mostly similar photos that are not copies), what share does it return? The same is
measured for the inverted file's own 8 lists (the search before the partition).

    skimgfeat extract ../shared/images -o /tmp/shared-features --recursive \\
        --weights ../shared/weights/mobilenet_v2-imagenet1k-dequantized.pth
    python benchmarks/copy_search_recall.py --features /tmp/shared-features/image_features_raw.parquet
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the copies' makers, one copy for tests and benchmarks

from _copy_cases import centred_crop, mirrored, reencoded, with_border  # noqa: E402

from skimgfeat import CNNImageEmbedder, SimilarityIndex  # noqa: E402
from skimgfeat.matching.duplicates import DEFAULT_CANDIDATE_DISTANCE  # noqa: E402
from skimgfeat.storage.balanced_partition import RANGE_SEARCH_PARTS  # noqa: E402
from skimgfeat.storage.unit_vectors import normalise  # noqa: E402

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
COPIES = {
    "crop": lambda image: centred_crop(image, 0.8),
    "mirror": mirrored,
    "border": with_border,
    "resized": lambda image: reencoded(image, 0.5),
    "brighter": lambda image: ImageEnhance.Brightness(image).enhance(1.3),
    "combined": lambda image: with_border(ImageEnhance.Brightness(centred_crop(image, 0.85)).enhance(0.8)),
}


def recall(index: SimilarityIndex, queries: np.ndarray, originals: np.ndarray, parts: int | None) -> tuple:
    """(share of copies whose original is returned, share of exact pairs within the radius returned)."""
    distance = 1.0 - normalise(queries) @ index._store.reconstruct(0, len(index)).T  # to the rows as stored
    exact = distance <= DEFAULT_CANDIDATE_DISTANCE
    lims, _, rows = index.range_search(queries, DEFAULT_CANDIDATE_DISTANCE, nprobe=parts)
    returned = np.zeros_like(exact)
    returned[np.repeat(np.arange(len(queries)), np.diff(lims)), rows] = True
    copies = np.arange(len(queries))
    own = exact[copies, originals]
    return returned[copies, originals][own].mean(), (returned & exact).sum() / exact.sum(), int(exact.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, required=True, help="a table made by skimgfeat extract")
    parser.add_argument("--image-dir", type=Path, default=SHARED / "images", help="where its image_path lie")
    parser.add_argument("--sources", type=int, default=150, help="photos copied")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/copy-search-recall"))
    args = parser.parse_args()

    table = pd.read_parquet(args.features)
    table = table[table.filter(like="img_feature_").notna().all(axis=1)].reset_index(drop=True)
    sources = np.random.default_rng(0).choice(len(table), args.sources, replace=False)
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in sources:
        image = Image.open(args.image_dir / table["image_path"][source]).convert("RGB")
        for kind, edit in COPIES.items():
            path = args.workdir / f"{source}_{kind}.jpg"
            edit(image).convert("RGB").save(path, quality=85)
            paths.append(os.fspath(path))
    embedder = CNNImageEmbedder("mobilenet_v2", weights=os.fspath(WEIGHTS)).fit()
    queries = np.asarray(embedder.transform(paths), dtype=np.float32)
    originals = np.repeat(sources, len(COPIES))

    index = SimilarityIndex.build(table, kind="ivf-sq8")
    print(f"{len(table)} archived rows, {index._store.nlist} lists and parts; {len(queries)} copies of "
          f"{len(sources)} photos; radius {DEFAULT_CANDIDATE_DISTANCE}")
    for parts in (RANGE_SEARCH_PARTS, 2 * RANGE_SEARCH_PARTS):
        own, pairs, n_pairs = recall(index, queries, originals, parts)
        print(f"{parts} balanced parts: original returned for {own:.4f} of the copies; {pairs:.4f} of {n_pairs} "
              f"exact pairs")
    index._store.partition = None  # the inverted file's own lists, as an index written before
    own, pairs, n_pairs = recall(index, queries, originals, RANGE_SEARCH_PARTS)
    print(f"{RANGE_SEARCH_PARTS} inverted lists: original returned for {own:.4f} of the copies; {pairs:.4f} of "
          f"{n_pairs} exact pairs")


if __name__ == "__main__":
    main()
