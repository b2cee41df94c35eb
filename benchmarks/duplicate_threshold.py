"""Measure ``skimgfeat duplicates``: harsh copies of real photos against re-shoots of the same products.

For each "source" photo (ImageNet-labelled photos and grocery shop photos from
../shared/images) four harsh copies are written: resized to 40-60 % and saved at JPEG
quality 30-50, cropped by 5-10 % of each side (off centre), re-exposed (brightness
x0.7-0.85 or x1.15-1.3), and all of these at once. Each grocery source also brings its
*re-shoot*: the next photo of the same product in the same split and folder, taken
moments later (the hard negative of a shop catalogue: near-duplicate to the eye, not a
copy). Further grocery photos without copies are distractors. Every photo is embedded
with MobileNetV2 (the shared ImageNet weights) and hashed once
(:class:`skimgfeat.matching.copy_check.PhotoHashes`); a pair is a true duplicate when both
photos come from one source.

Two decisions are scored on the groups they form: the one-stage feature threshold
(``find_duplicates`` without the copy check, at each threshold) and the two-stage one
(candidate pairs within a cosine radius, then the copy check at each Hamming threshold).
Two disjoint splits: "tune" (grocery train photos, the first half of the ImageNet ones)
picks the settings; "held-out" (grocery val photos, the other half) reports them. Last,
the cost of both decisions on the same table (hashes read from their sidecar file) and
of hashing a photo.

    python benchmarks/duplicate_threshold.py               # 50+80 sources per split
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
import pandas as pd
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skimgfeat import CNNImageEmbedder  # noqa: E402
from skimgfeat.matching.copy_check import COPY, COPY_THRESHOLD, DIFFERENT, HASHES_FILE, PhotoHashes  # noqa: E402
from skimgfeat.matching.duplicates import (  # noqa: E402
    DEFAULT_CANDIDATE_DISTANCE,
    DEFAULT_DUPLICATE_THRESHOLD,
    duplicate_groups,
    duplicate_pairs,
    find_duplicates,
)
from skimgfeat.schema import feature_names  # noqa: E402
from skimgfeat.search.similarity import SimilarityIndex  # noqa: E402
from skimgfeat.storage.io import write_table  # noqa: E402

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
IMAGENET = SHARED / "images" / "imagenet-labelled"
GROCERY = SHARED / "images" / "grocery"
COPY_KINDS = ("resized", "cropped", "reexposed", "combined")
FEATURE_THRESHOLDS = np.round(np.arange(0.04, 0.205, 0.02), 3)
RADII = (0.2, 0.25, 0.3, 0.35, 0.4)
COPY_THRESHOLDS = tuple(range(4, 17, 2))
SOURCE, RESHOOT, DISTRACTOR = "source", "reshoot", "distractor"


def make_copy(image: Image.Image, kind: str, rng: np.random.Generator, target: Path) -> None:
    """Write one harsh copy of ``image`` as a JPEG."""
    quality = 90
    if kind in ("cropped", "combined"):
        width, height = image.size
        keep = rng.uniform(0.90, 0.95, size=2)
        new_w, new_h = max(1, round(width * keep[0])), max(1, round(height * keep[1]))
        left, top = rng.integers(0, width - new_w + 1), rng.integers(0, height - new_h + 1)
        image = image.crop((left, top, left + new_w, top + new_h))
    if kind in ("resized", "combined"):
        scale = rng.uniform(0.4, 0.6)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
        quality = int(rng.integers(30, 51))
    if kind in ("reexposed", "combined"):
        factor = rng.uniform(0.7, 0.85) if rng.random() < 0.5 else rng.uniform(1.15, 1.3)
        image = ImageEnhance.Brightness(image).enhance(factor)
    image.save(target, format="JPEG", quality=quality)


def split_photos(split: str, n_sources: int, n_distractors: int, rng: np.random.Generator):
    """(sources, re-shoots, distractors) of one split: half the ImageNet photos, grocery photos of one split.

    A grocery source's re-shoot is the next photo in its folder (file order), else the previous one.
    """
    imagenet = sorted(IMAGENET.glob("*.JPEG"))
    imagenet = imagenet[: len(imagenet) // 2] if split == "tune" else imagenet[len(imagenet) // 2 :]
    grocery = sorted((GROCERY / ("train" if split == "tune" else "val")).rglob("*.jpg"))
    taken: set[Path] = set()
    sources, reshoots = [], []
    for i in rng.permutation(len(grocery)):
        if len(sources) == n_sources:
            break
        photo = grocery[i]
        siblings = [grocery[j] for j in (i + 1, i - 1) if 0 <= j < len(grocery) and grocery[j].parent == photo.parent]
        free = [sibling for sibling in siblings if sibling not in taken]
        if photo in taken or not free:
            continue
        sources.append(photo)
        reshoots.append(free[0])
        taken.update((photo, free[0]))
    rest = [photo for photo in grocery if photo not in taken]
    distractors = [rest[i] for i in rng.permutation(len(rest))[:n_distractors]]
    return imagenet, sources, reshoots, distractors


def build_split(split: str, folder: Path, n_sources: int, n_distractors: int, seed: int) -> pd.DataFrame:
    """Write the copies; one row per photo: path, role, owner (source number), kind, reshoot_of."""
    rng = np.random.default_rng(seed)
    imagenet, grocery, reshoots, distractors = split_photos(split, n_sources, n_distractors, rng)
    rows = []
    for number, source in enumerate([*imagenet, *grocery]):
        rows.append((str(source), SOURCE, number, "original", -1))
        with Image.open(source) as opened:
            image = opened.convert("RGB")
        for kind in COPY_KINDS:
            target = folder / f"{split}_{number:03d}_{kind}.jpg"
            make_copy(image, kind, rng, target)
            rows.append((str(target), SOURCE, number, kind, -1))
    for number, reshoot in enumerate(reshoots, start=len(imagenet)):
        rows.append((str(reshoot), RESHOOT, -1, "", number))
    rows += [(str(photo), DISTRACTOR, -1, "", -1) for photo in distractors]
    return pd.DataFrame(rows, columns=["path", "role", "owner", "kind", "reshoot_of"])


def grouped_pairs(groups: pd.DataFrame, row_of: dict) -> set[tuple[int, int]]:
    pairs = set()
    for _, members in groups.groupby("group")["image_path"]:
        pairs.update(combinations(sorted(row_of[name] for name in members), 2))
    return pairs


def score(photos: pd.DataFrame, groups: pd.DataFrame) -> dict:
    """Pair precision/recall of ``groups``, and the share of re-shoot pairs grouped together."""
    row_of = {path: row for row, path in enumerate(photos["path"])}
    predicted = grouped_pairs(groups, row_of)
    owners = photos["owner"].to_numpy()
    truth = set()
    for owner in np.unique(owners[owners >= 0]):
        truth.update(combinations(np.flatnonzero(owners == owner).tolist(), 2))
    reshoot_pairs = set()
    for row in np.flatnonzero(photos["reshoot_of"].to_numpy() >= 0):
        for member in np.flatnonzero(owners == photos["reshoot_of"].iloc[row]):
            reshoot_pairs.add(tuple(sorted((int(member), int(row)))))
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 1.0
    recall = hits / len(truth)
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "reshoot_share": len(predicted & reshoot_pairs) / len(reshoot_pairs),
        "n_reshoot_pairs": len(reshoot_pairs),
        "groups": int(groups["group"].nunique()) if len(groups) else 0,
    }


def two_stage_groups(pairs: pd.DataFrame, radius: float, copy_threshold: int) -> pd.DataFrame:
    """Groups at ``radius`` and ``copy_threshold`` from pairs scored once at the widest radius."""
    kept = pairs[pairs["feature_distance"] <= radius]
    verdict = np.where(kept["copy_score"] <= copy_threshold, COPY, DIFFERENT)  # NaN (unreadable): not a copy
    return duplicate_groups(kept.assign(verdict=verdict))


def recall_by_kind(photos: pd.DataFrame, groups: pd.DataFrame) -> dict:
    """Per copy kind: the share of copies grouped with their own source photo."""
    group_of = dict(zip(groups["image_path"], groups["group"]))
    originals = photos[photos["kind"] == "original"].set_index("owner")["path"]
    found = {}
    for kind in COPY_KINDS:
        copies = photos[photos["kind"] == kind]
        found[kind] = float(np.mean([path in group_of and group_of.get(originals[owner]) == group_of[path]
                                     for path, owner in zip(copies["path"], copies["owner"])]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=80,
                        help="grocery sources (each with a re-shoot) per split, beside 50 ImageNet ones (default: 80)")
    parser.add_argument("--distractors", type=int, default=200, help="grocery photos without copies per split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=15, help="timing runs of each decision (the fastest is kept)")
    args = parser.parse_args()
    if not WEIGHTS.exists():
        sys.exit(f"needs {WEIGHTS} and {SHARED / 'images'}: see ../shared/README.md")
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)", file=sys.stderr)
    embedder = CNNImageEmbedder(weights=str(WEIGHTS)).fit()
    splits = {}
    with tempfile.TemporaryDirectory() as temporary:
        for split, seed in (("tune", args.seed), ("held-out", args.seed + 1)):
            photos = build_split(split, Path(temporary), args.sources, args.distractors, seed)
            names = photos["path"].tolist()
            started = time.perf_counter()
            vectors = embedder.transform(names)
            embed_seconds = time.perf_counter() - started
            started = time.perf_counter()
            hashes = PhotoHashes.compute(names)
            hash_seconds = time.perf_counter() - started
            print(f"{split}: {len(names)} photos embedded in {embed_seconds:.1f} s, hashed in {hash_seconds:.1f} s",
                  file=sys.stderr)
            index = SimilarityIndex(names, vectors)
            pairs = duplicate_pairs(index, max_distance=max(RADII), copy_check=hashes, copy_threshold=COPY_THRESHOLD)
            splits[split] = (photos, index, hashes, pairs, embed_seconds / len(names), hash_seconds / len(names))
            if split == "held-out":
                report_timing(index, Path(temporary), hashes, args.repeats)
    report_one_stage(splits)
    report_two_stage(splits)
    for split, (_, _, _, _, embed_cost, hash_cost) in splits.items():
        print(f"\n{split}: per photo, embedding {1000 * embed_cost:.0f} ms, hashing {1000 * hash_cost:.0f} ms "
              f"(whole pass, {os.cpu_count()} cores)")


def report_one_stage(splits: dict) -> None:
    print("\nOne stage (features only, `duplicates --no-copy-check`):\n")
    print("| split | threshold | pair precision | pair recall | F1 | re-shoot pairs grouped | groups |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for split, (photos, index, *_) in splits.items():
        for threshold in FEATURE_THRESHOLDS:
            row = score(photos, find_duplicates(index, float(threshold)))
            mark = " **" if abs(threshold - DEFAULT_DUPLICATE_THRESHOLD) < 1e-9 else ""
            print(f"| {split} | {threshold:.2f}{mark} | {row['precision']:.3f} | {row['recall']:.3f} | "
                  f"{row['f1']:.3f} | {row['reshoot_share']:.3f} of {row['n_reshoot_pairs']} | {row['groups']} |")


def report_two_stage(splits: dict) -> None:
    tune = splits["tune"]
    curve = [(radius, bits, score(tune[0], two_stage_groups(tune[3], radius, bits)))
             for radius in RADII for bits in COPY_THRESHOLDS]
    radius, bits, best = max(curve, key=lambda entry: (entry[2]["f1"], -entry[2]["reshoot_share"], -entry[0]))
    print(f"\nTwo stages: best pair F1 on tune at radius {radius} and copy threshold {bits} bits "
          f"(defaults: {DEFAULT_CANDIDATE_DISTANCE} and {COPY_THRESHOLD})\n")
    print("| split | radius | copy threshold | pair precision | pair recall | F1 | re-shoot pairs grouped | groups |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    shown = sorted({(radius, bits), (DEFAULT_CANDIDATE_DISTANCE, COPY_THRESHOLD),
                    *((DEFAULT_CANDIDATE_DISTANCE, b) for b in (6, 8, 12, 14)),
                    *((r, COPY_THRESHOLD) for r in RADII)})
    for split, (photos, _, _, pairs, *_) in splits.items():
        for r, b in shown:
            row = score(photos, two_stage_groups(pairs, r, b))
            mark = " **" if (r, b) == (DEFAULT_CANDIDATE_DISTANCE, COPY_THRESHOLD) else ""
            print(f"| {split} | {r:.2f}{mark} | {b} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} "
                  f"| {row['reshoot_share']:.3f} of {row['n_reshoot_pairs']} | {row['groups']} |")
    for split, (photos, _, _, pairs, *_) in splits.items():
        groups = two_stage_groups(pairs, DEFAULT_CANDIDATE_DISTANCE, COPY_THRESHOLD)
        kinds = ", ".join(f"{kind} {share:.3f}" for kind, share in recall_by_kind(photos, groups).items())
        chained = groups.loc[groups["chained"], "group"].nunique() if len(groups) else 0
        copies = pairs[pairs["copy_score"].notna()]
        true_copy = _true_pair_mask(photos, copies)
        true_scores, other_scores = copies.loc[true_copy, "copy_score"], copies.loc[~true_copy, "copy_score"]
        print(f"\n{split} at the defaults: copies grouped with their source: {kinds}; chained groups {chained}; "
              f"copy distance of true copy pairs: 99th percentile {true_scores.quantile(0.99):.0f}, max "
              f"{true_scores.max():.0f} bits; of other candidate pairs within {max(RADII)}: "
              + ", ".join(f"{(other_scores <= bits).sum()} at <= {bits}" for bits in (4, 6, 8, 10, 12)))


def _true_pair_mask(photos: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray:
    owner = dict(zip(photos["path"], photos["owner"]))
    a, b = pairs["image_a"].map(owner).to_numpy(), pairs["image_b"].map(owner).to_numpy()
    return (a >= 0) & (a == b)


def report_timing(index: SimilarityIndex, folder: Path, hashes: PhotoHashes, repeats: int) -> None:
    """One stage as before vs two stages on the same table file, hashes read from their sidecar each time.

    Each run reads the feature table as the command does; the runs alternate and the
    fastest of each is kept (the least disturbed by other processes).
    """
    table = folder / "image_features_raw.parquet"
    write_table(pd.DataFrame(index.vectors, columns=feature_names(index.vectors.shape[1]))
                .assign(image_path=index.names), table)
    sidecar = hashes.write(folder / HASHES_FILE)
    runs = {
        "one stage, as before this change": lambda: one_stage_before(SimilarityIndex.read(table), 0.1),
        "one stage now (--no-copy-check)": lambda: find_duplicates(SimilarityIndex.read(table), 0.1),
        "two stages, hashes from the sidecar": lambda: find_duplicates(SimilarityIndex.read(table),
                                                                       copy_check=PhotoHashes.read(sidecar)),
    }
    best = {name: np.inf for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    before = best["one stage, as before this change"]
    print(f"\nTiming on the held-out table ({len(index)} rows, read from Parquet each time; fastest of {repeats} "
          f"alternating runs; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):")
    for name, seconds in best.items():
        print(f"  {name}: {1000 * seconds:.0f} ms ({seconds / before:.2f}x)")


def one_stage_before(index: SimilarityIndex, threshold: float):
    """``find_duplicates`` as it was before the copy check: scikit-learn's radius graph, its components."""
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors

    nearest = NearestNeighbors(metric="cosine", algorithm="brute").fit(index.vectors)
    graph = nearest.radius_neighbors_graph(index.vectors, radius=threshold, mode="connectivity")
    return connected_components(graph, directed=False)


if __name__ == "__main__":
    main()
