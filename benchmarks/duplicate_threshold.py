"""Measure the cosine-distance threshold of ``skimgfeat duplicates`` on generated copies of real photos.

For each "source" photo (ImageNet-labelled photos and grocery shop photos from
../shared/images) five copies are written: resized (35-60%), recompressed (JPEG
quality 25-50), cropped (85-93% of each side, off centre), re-exposed (brightness
x0.65-0.8 or x1.2-1.4) and all of these at once (milder). Grocery photos without copies
are added as distractors: shots of the same products from other angles, the hard
negatives of a shop catalogue. Every photo is embedded with MobileNetV2 (the shared
ImageNet weights); :func:`skimgfeat.uses.duplicates.find_duplicates` groups them at each
threshold and pairs are scored: a pair is a true duplicate when both photos come from
one source.

Two disjoint splits: "tune" (grocery train photos, the first half of the ImageNet ones)
picks the threshold with the best pair F1; "held-out" (grocery val photos, the other
half) reports it.

    python benchmarks/duplicate_threshold.py               # 50+100 sources, 200 distractors per split
    python benchmarks/duplicate_threshold.py --sources 30  # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skimgfeat import CNNImageEmbedder  # noqa: E402
from skimgfeat.uses.duplicates import DEFAULT_DUPLICATE_THRESHOLD, find_duplicates  # noqa: E402
from skimgfeat.uses.similarity import SimilarityIndex  # noqa: E402

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
IMAGENET = SHARED / "images" / "imagenet-labelled"
GROCERY = SHARED / "images" / "grocery"
COPY_KINDS = ("resized", "recompressed", "cropped", "reexposed", "combined")
THRESHOLDS = np.round(np.arange(0.02, 0.405, 0.01), 3)


def make_copy(image: Image.Image, kind: str, rng: np.random.Generator, target: Path) -> None:
    """Write one near-duplicate of ``image`` as a JPEG."""
    quality = 90
    if kind in ("cropped", "combined"):
        keep = rng.uniform(0.85, 0.93) if kind == "cropped" else 0.93
        width, height = image.size
        new_w, new_h = max(1, round(width * keep)), max(1, round(height * keep))
        left, top = rng.integers(0, width - new_w + 1), rng.integers(0, height - new_h + 1)
        image = image.crop((left, top, left + new_w, top + new_h))
    if kind in ("resized", "combined"):
        scale = rng.uniform(0.35, 0.6) if kind == "resized" else 0.6
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    if kind in ("reexposed", "combined"):
        factor = rng.choice([rng.uniform(0.65, 0.8), rng.uniform(1.2, 1.4)]) if kind == "reexposed" else 1.15
        image = ImageEnhance.Brightness(image).enhance(factor)
    if kind == "recompressed":
        quality = int(rng.integers(25, 51))
    elif kind == "combined":
        quality = 60
    image.save(target, format="JPEG", quality=quality)


def split_photos(split: str, n_sources: int, n_distractors: int, rng: np.random.Generator):
    """(sources, distractors) of one split: half the ImageNet photos, random grocery photos."""
    imagenet = sorted(IMAGENET.glob("*.JPEG"))
    imagenet = imagenet[: len(imagenet) // 2] if split == "tune" else imagenet[len(imagenet) // 2 :]
    grocery = sorted((GROCERY / ("train" if split == "tune" else "val")).rglob("*.jpg"))
    picked = rng.permutation(len(grocery))
    grocery_sources = [grocery[i] for i in picked[:n_sources]]
    distractors = [grocery[i] for i in picked[n_sources : n_sources + n_distractors]]
    return imagenet + grocery_sources, distractors


def build_split(split: str, folder: Path, n_sources: int, n_distractors: int, seed: int):
    """Write the copies; return (paths, source id per path: -1 for distractors)."""
    rng = np.random.default_rng(seed)
    sources, distractors = split_photos(split, n_sources, n_distractors, rng)
    paths, owners = [], []
    for number, source in enumerate(sources):
        paths.append(source)
        owners.append(number)
        with Image.open(source) as opened:
            image = opened.convert("RGB")
        for kind in COPY_KINDS:
            target = folder / f"{split}_{number:03d}_{kind}.jpg"
            make_copy(image, kind, rng, target)
            paths.append(target)
            owners.append(number)
    paths += distractors
    owners += [-1] * len(distractors)
    return paths, np.asarray(owners)


def true_pairs(owners: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for owner in set(owners[owners >= 0].tolist()):
        pairs.update(combinations(np.flatnonzero(owners == owner).tolist(), 2))
    return pairs


def score(index: SimilarityIndex, owners: np.ndarray, threshold: float) -> dict:
    """Pair precision/recall of the groups at ``threshold``, and distractors wrongly listed."""
    groups = find_duplicates(index, threshold)
    row_of = {name: row for row, name in enumerate(index.names)}
    predicted = set()
    for _, members in groups.groupby("group")["image_path"]:
        rows = sorted(row_of[name] for name in members)
        predicted.update(combinations(rows, 2))
    truth = true_pairs(owners)
    hits = len(predicted & truth)
    listed = {row_of[name] for name in groups["image_path"]}
    precision = hits / len(predicted) if predicted else 1.0
    recall = hits / len(truth)
    return {
        "threshold": threshold,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "distractors_listed": sum(owners[row] < 0 for row in listed),
        "n_distractors": int((owners < 0).sum()),
        "groups": int(groups["group"].nunique()) if len(groups) else 0,
    }


def copy_recall_by_kind(index: SimilarityIndex, owners: np.ndarray, names: list[str], threshold: float) -> dict:
    """Per copy kind: the share of copies grouped with their own source photo."""
    groups = find_duplicates(index, threshold)
    group_of = dict(zip(groups["image_path"], groups["group"]))
    found = {kind: [] for kind in COPY_KINDS}
    sources = {owner: name for name, owner in zip(names, owners) if owner >= 0 and not _is_copy(name)}
    for name, owner in zip(names, owners):
        if owner >= 0 and _is_copy(name):
            kind = Path(name).stem.rsplit("_", 1)[1]
            same = name in group_of and group_of.get(sources[owner]) == group_of[name]
            found[kind].append(same)
    return {kind: float(np.mean(values)) for kind, values in found.items()}


def rank1(index: SimilarityIndex, owners: np.ndarray, names: list[str]) -> float:
    """Share of copies whose nearest other photo comes from their own source."""
    copies = [name for name, owner in zip(names, owners) if owner >= 0 and _is_copy(name)]
    owner_of = dict(zip(names, owners))
    nearest = index.similar(copies, k=1)
    return float(np.mean([owner_of[n] == owner_of[q] for q, n in zip(nearest["query"], nearest["image_path"])]))


def _is_copy(name: str) -> bool:
    return Path(name).stem.rsplit("_", 1)[-1] in COPY_KINDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=100,
                        help="grocery sources per split, beside the 50 ImageNet ones (default: 100)")
    parser.add_argument("--distractors", type=int, default=200, help="grocery photos without copies per split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not WEIGHTS.exists():
        sys.exit(f"needs {WEIGHTS} and {SHARED / 'images'}: see ../shared/README.md")
    embedder = CNNImageEmbedder(weights=str(WEIGHTS)).fit()
    results = {}
    with tempfile.TemporaryDirectory() as temporary:
        for split, seed in (("tune", args.seed), ("held-out", args.seed + 1)):
            paths, owners = build_split(split, Path(temporary), args.sources, args.distractors, seed)
            started = time.perf_counter()
            vectors = embedder.transform([str(path) for path in paths])
            names = [str(path) for path in paths]
            print(f"{split}: {len(paths)} photos embedded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            index = SimilarityIndex(names, vectors)
            curve = [score(index, owners, float(t)) for t in THRESHOLDS]
            results[split] = (index, owners, names, curve)
    best = max(results["tune"][3], key=lambda row: (row["f1"], row["threshold"]))
    chosen = best["threshold"]
    print(f"best pair F1 on the tune split at threshold {chosen:.2f} "
          f"(DEFAULT_DUPLICATE_THRESHOLD is {DEFAULT_DUPLICATE_THRESHOLD})\n")
    print("| split | threshold | pair precision | pair recall | F1 | distractors listed | groups |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for split, (_, _, _, curve) in results.items():
        for row in curve:
            if abs(row["threshold"] - chosen) <= 0.051 or abs(row["threshold"] - DEFAULT_DUPLICATE_THRESHOLD) < 1e-9:
                mark = " **" if abs(row["threshold"] - DEFAULT_DUPLICATE_THRESHOLD) < 1e-9 else ""
                print(f"| {split} | {row['threshold']:.2f}{mark} | {row['precision']:.3f} | {row['recall']:.3f} | "
                      f"{row['f1']:.3f} | {row['distractors_listed']}/{row['n_distractors']} | {row['groups']} |")
    for split, (index, owners, names, _) in results.items():
        by_kind = copy_recall_by_kind(index, owners, names, DEFAULT_DUPLICATE_THRESHOLD)
        shown = ", ".join(f"{kind} {share:.2f}" for kind, share in by_kind.items())
        print(f"\n{split}: copies grouped with their source at {DEFAULT_DUPLICATE_THRESHOLD}: {shown}; "
              f"nearest other photo from the same source (rank 1): {rank1(index, owners, names):.3f}")


if __name__ == "__main__":
    main()
