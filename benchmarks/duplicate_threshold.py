"""Measure ``skimgfeat duplicates`` as a user runs it: copies of real photos against look-alikes that are not copies.

Per split, every photo is written into one folder, then ``skimgfeat extract DIR -o OUT
--hashes --local-features`` and ``skimgfeat duplicates --features OUT/... --pairs`` run with
their default settings (and once more with the table and hashes in a folder without local
features: the hash-only rule). The photos:

* **main**: "source" photos (ImageNet-labelled photos and grocery shop photos) with seven
  copies each: resized to 40-60 % at JPEG quality 30-50; cropped by 5-10 % of each side off
  centre; re-exposed (x0.7-0.85 or x1.15-1.3); all three at once; cropped around the middle
  to 80-95 % of each side; mirrored; inside a plain border (white, cream or black, 5-10 %).
  Each grocery source brings its *re-shoot* (the next photo of the same product: a hard
  negative) and further grocery photos are distractors.
* **framed**: line drawings on light paper behind one frame and mat (8 per frame, 2 frames;
  ``tests/_copy_cases.py``), each with a resized, a corner-cropped and a centre-cropped copy.
* **backdrop**: the split's 25 DVD covers of ``../shared/images/objects``, each pasted at
  30 % of the height at a random position on one of two backdrops (a studio backdrop, a
  room photo), each with a resized and a mirrored copy.
* **products**: the split's half of the grocery web-shop images (white background), each
  with a resized copy and one in a border.

A pair is a true copy when both photos come from one source; scores count the pairs
inside the groups. Main set: pair precision and recall, re-shoot pairs grouped; hard
sets: false copy pairs and the recall of their copies. Two disjoint splits: "tune"
(grocery train photos, the first half of the ImageNet photos, frames 0-1, objects 1-25,
the first half of the web-shop images) chooses the settings (a grid over copy threshold,
coverage, inliers and unmatched share, scored from pairs judged once at a wide copy
threshold); "held-out" (grocery val photos, the other halves, frames 2-3, objects 26-50)
reports them.

    python benchmarks/duplicate_threshold.py --sources 20 --distractors 50 --workdir /tmp/dt
    python benchmarks/duplicate_threshold.py --sources 20 --distractors 50 --workdir /tmp/dt --reuse
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import combinations, product
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))  # the hard cases' makers, one copy for tests and benchmark

from _copy_cases import centred_crop, framed_work, mirrored, on_backdrop, studio_backdrop, with_border  # noqa: E402

from skimgfeat.matching.copy_check import (  # noqa: E402
    COPY,
    COPY_THRESHOLD,
    DIFFERENT,
    HASHES_FILE,
    MAX_PIXEL_DIFFERENCE,
    MAX_UNMATCHED,
    MIN_COPY_COVERAGE,
    MIN_COPY_INLIERS,
    TEXTURE_FLOOR,
    TEXTURE_REFERENCE,
    PhotoHashes,
    hash_texture,
)
from skimgfeat.matching.duplicates import duplicate_groups, duplicate_pairs  # noqa: E402
from skimgfeat.matching.local_features import LocalFeatureStore  # noqa: E402
from skimgfeat.search.similarity import SimilarityIndex  # noqa: E402

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
IMAGENET = SHARED / "images" / "imagenet-labelled"
GROCERY = SHARED / "images" / "grocery"
OBJECTS = SHARED / "images" / "objects"
HOUSES = SHARED / "images" / "houses"
ICONIC = GROCERY / "iconic-images-and-descriptions"
COPY_KINDS = ("resized", "cropped", "reexposed", "combined", "centred", "mirrored", "border")
HARD_COPY_KINDS = {"framed": ("resized", "cropped", "centred"), "backdrop": ("resized", "mirrored"),
                   "products": ("resized", "border")}
SETS = ("main", "framed", "backdrop", "products")
COPY_THRESHOLDS = (6, 8, 10, 12)
COVERAGES = (0.2, 0.3, 0.4)
MIN_INLIERS = (8, 12, 20)
MAX_UNMATCHEDS = (0.03, 0.05, 0.1)
PIXEL_DIFFERENCES = (25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0, np.inf)
SOURCE, RESHOOT, DISTRACTOR = "source", "reshoot", "distractor"


def make_copy(image: Image.Image, kind: str, rng: np.random.Generator, target: Path) -> None:
    """Write one copy of ``image`` as a JPEG: a harsh edit on the hash windows' grid, or one off it."""
    quality = 90
    if kind in ("cropped", "combined"):
        width, height = image.size
        keep = rng.uniform(0.90, 0.95, size=2)
        new_w, new_h = max(1, round(width * keep[0])), max(1, round(height * keep[1]))
        left, top = rng.integers(0, width - new_w + 1), rng.integers(0, height - new_h + 1)
        image = image.crop((left, top, left + new_w, top + new_h))
    if kind == "centred":  # up to 20 % off each side, around the middle
        image = centred_crop(image, rng.uniform(0.80, 0.95))
    if kind == "mirrored":
        image = mirrored(image)
        quality = int(rng.integers(60, 91))
    if kind == "border":  # a plain mat: white, cream or black, 5-10 % of the shorter side
        colours = ((255, 255, 255), (240, 234, 220), (20, 20, 20))
        image = with_border(image, rng.uniform(0.05, 0.10), colours[int(rng.integers(0, len(colours)))])
    if kind in ("resized", "combined"):
        scale = rng.uniform(0.4, 0.6)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
        quality = int(rng.integers(30, 51))
    if kind in ("reexposed", "combined"):
        factor = rng.uniform(0.7, 0.85) if rng.random() < 0.5 else rng.uniform(1.15, 1.3)
        image = ImageEnhance.Brightness(image).enhance(factor)
    image.convert("RGB").save(target, format="JPEG", quality=quality)


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


def _open(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        return opened.convert("RGB")


def build_split(split: str, folder: Path, n_sources: int, n_distractors: int, seed: int,
                sets: tuple[str, ...] = SETS) -> pd.DataFrame:
    """Write every photo of one split into ``folder`` (of the photo sets ``sets``).

    One row per photo: ``path`` (in ``folder``), ``set`` ("main", "framed", "backdrop",
    "products"), ``role``, ``owner`` (the source number its copies share, -1 for none),
    ``kind`` and ``reshoot_of``. Photos of the three hard sets that are not copies of one
    another are different works (owners of their own).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    imagenet, grocery, reshoots, distractors = split_photos(split, n_sources, n_distractors, rng)
    rows = []

    def add_source(image: Image.Image, number: int, kinds, photo_set: str) -> None:
        target = folder / f"{photo_set}_{number:04d}_original.jpg"
        image.save(target, format="JPEG", quality=95)
        rows.append((target.name, photo_set, SOURCE, number, "original", -1))
        for kind in kinds:
            copy = folder / f"{photo_set}_{number:04d}_{kind}.jpg"
            make_copy(image, kind, rng, copy)
            rows.append((copy.name, photo_set, SOURCE, number, kind, -1))

    number = 0
    if "main" not in sets:
        imagenet, grocery, reshoots, distractors = [], [], [], []
    for source in [*imagenet, *grocery]:
        add_source(_open(source), number, COPY_KINDS, "main")
        number += 1
    for offset, reshoot in enumerate(reshoots):
        target = folder / f"main_reshoot_{offset:04d}.jpg"
        shutil.copy(reshoot, target)
        rows.append((target.name, "main", RESHOOT, -1, "", len(imagenet) + offset))
    for offset, photo in enumerate(distractors):
        target = folder / f"main_distractor_{offset:04d}.jpg"
        shutil.copy(photo, target)
        rows.append((target.name, "main", DISTRACTOR, -1, "", -1))
    # Framed works: eight drawings behind each of two frames (other frames and drawings in each split).
    frames = (0, 1) if split == "tune" else (2, 3)
    for frame in frames if "framed" in sets else ():
        for drawing in range(8):
            add_source(framed_work(100 * frame + drawing, frame=frame), number, HARD_COPY_KINDS["framed"], "framed")
            number += 1
    # Objects on one backdrop: the split's half of the 50 DVD covers, a studio backdrop and a room photo.
    covers = sorted(OBJECTS.glob("*_reference.jpg"))
    covers = covers[:25] if split == "tune" else covers[25:]
    backdrops = [studio_backdrop(), _open(HOUSES / ("1_bedroom.jpg" if split == "tune" else "2_bedroom.jpg"))
                 .resize((640, 480))]
    for i, cover in enumerate(covers if "backdrop" in sets else ()):
        position = tuple(rng.uniform(0, 1, 2))
        add_source(on_backdrop(cover, backdrops[i % 2], fraction=0.3, position=position), number,
                   HARD_COPY_KINDS["backdrop"], "backdrop")
        number += 1
    # White-background product shots: the split's half of the web-shop images.
    products = sorted(ICONIC.rglob("*.jpg"))
    products = products[: len(products) // 2] if split == "tune" else products[len(products) // 2:]
    for shot in products if "products" in sets else ():
        add_source(_open(shot), number, HARD_COPY_KINDS["products"], "products")
        number += 1
    return pd.DataFrame(rows, columns=["path", "set", "role", "owner", "kind", "reshoot_of"])


def grouped_pairs(groups: pd.DataFrame, row_of: dict) -> set[tuple[int, int]]:
    pairs = set()
    for _, members in groups.groupby("group")["image_path"]:
        pairs.update(combinations(sorted(row_of[name] for name in members), 2))
    return pairs


def truth_pairs(photos: pd.DataFrame, mask: np.ndarray | None = None) -> set[tuple[int, int]]:
    owners = photos["owner"].to_numpy()
    keep = owners >= 0 if mask is None else (owners >= 0) & mask
    truth = set()
    for owner in np.unique(owners[keep]):
        truth.update(combinations(np.flatnonzero(owners == owner).tolist(), 2))
    return truth


def score(photos: pd.DataFrame, groups: pd.DataFrame) -> dict:
    """Pair precision/recall of ``groups`` over the main set, re-shoots grouped, and each hard set's errors."""
    row_of = {path: row for row, path in enumerate(photos["path"])}
    predicted = grouped_pairs(groups, row_of)
    in_set = {name: photos["set"].to_numpy() == name for name in SETS}
    owners = photos["owner"].to_numpy()
    main = {pair for pair in predicted if in_set["main"][pair[0]] and in_set["main"][pair[1]]}
    truth = truth_pairs(photos, in_set["main"])
    reshoot_pairs = set()
    for row in np.flatnonzero(photos["reshoot_of"].to_numpy() >= 0):
        for member in np.flatnonzero(owners == photos["reshoot_of"].iloc[row]):
            reshoot_pairs.add(tuple(sorted((int(member), int(row)))))
    hits = len(main & truth)
    precision = hits / len(main) if main else 1.0
    recall = hits / len(truth) if truth else float("nan")
    result = {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if truth and precision + recall else 0.0,
        "reshoot_share": len(predicted & reshoot_pairs) / max(1, len(reshoot_pairs)),
        "n_reshoot_pairs": len(reshoot_pairs),
        "false_pairs": len(predicted - truth_pairs(photos)),  # anywhere in the table
    }
    for name in SETS[1:]:
        set_truth = truth_pairs(photos, in_set[name])
        inside = {pair for pair in predicted if in_set[name][pair[0]] or in_set[name][pair[1]]}
        result[f"{name}_false"] = len(inside - set_truth)
        result[f"{name}_recall"] = len(inside & set_truth) / len(set_truth) if set_truth else float("nan")
    return result


def recall_by_kind(photos: pd.DataFrame, groups: pd.DataFrame, photo_set: str = "main") -> dict:
    """Per copy kind: the share of copies of ``photo_set`` grouped with their own source photo."""
    group_of = dict(zip(groups["image_path"], groups["group"]))
    photos = photos[photos["set"] == photo_set]
    originals = photos[photos["kind"] == "original"].set_index("owner")["path"]
    found = {}
    for kind in dict.fromkeys(photos.loc[photos["kind"].ne("original") & photos["kind"].ne(""), "kind"]):
        copies = photos[photos["kind"] == kind]
        found[kind] = float(np.mean([path in group_of and group_of.get(originals[owner]) == group_of[path]
                                     for path, owner in zip(copies["path"], copies["owner"])]))
    return found


def run(command: list, **environment) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "skimgfeat", *map(str, command)], capture_output=True, text=True,
                            env={**os.environ, **environment})
    if result.returncode != 0:
        sys.exit(f"skimgfeat {' '.join(map(str, command))} failed:\n{result.stderr}")
    return result, time.perf_counter() - started


def offline_groups(pairs: pd.DataFrame, texture: dict, bits: int, coverage: float, inliers: int,
                   unmatched: float = 1.0, pixels: float = np.inf) -> pd.DataFrame:
    """The groups the copy check would make at other settings, from pairs scored once at a wide copy threshold.

    A pair without a pixel difference (the default content check refused it before the
    pixels were compared, or hashes alone decided) passes the pixel threshold.
    """
    scale = np.clip(np.minimum(pairs["image_a"].map(texture), pairs["image_b"].map(texture)) / TEXTURE_REFERENCE,
                    TEXTURE_FLOOR, 1.0)
    copy = ((pairs["copy_score"] <= np.floor(bits * scale)) & (pairs["copy_coverage"] >= coverage)
            & (pairs["inliers"] >= inliers) & (pairs["copy_unmatched"] <= unmatched)
            & ~(pairs["copy_pixels"] > pixels))
    return duplicate_groups(pairs.assign(verdict=np.where(copy, COPY, DIFFERENT)))


def tune(photos: pd.DataFrame, pairs: pd.DataFrame, texture: dict) -> tuple:
    """The settings with no false copy in the hard sets and the best main-set F1 (then recall of the hard sets).

    Returns (bits, coverage, inliers, unmatched, pixels, the pixel thresholds that tie with
    the chosen one, its scores). Among tied pixel thresholds the default
    (:data:`MAX_PIXEL_DIFFERENCE`) is kept when it is one of them.
    """
    best, keys = None, {}
    for bits, coverage, inliers, unmatched, pixels in product(COPY_THRESHOLDS, COVERAGES, MIN_INLIERS,
                                                              MAX_UNMATCHEDS, PIXEL_DIFFERENCES):
        row = score(photos, offline_groups(pairs, texture, bits, coverage, inliers, unmatched, pixels))
        hard_false = sum(row[f"{name}_false"] for name in SETS[1:])
        key = (-hard_false, round(row["f1"], 3), np.nansum([row[f"{name}_recall"] for name in SETS[1:]]), -bits,
               coverage, inliers, -unmatched)
        keys[(bits, coverage, inliers, unmatched, pixels)] = key
        key = (*key, pixels == MAX_PIXEL_DIFFERENCE, -pixels)
        if best is None or key > best[0]:
            best = (key, bits, coverage, inliers, unmatched, pixels, row)
    chosen = best[1:5]
    tied = [pixels for pixels in PIXEL_DIFFERENCES if keys[(*chosen, pixels)] == keys[(*chosen, best[5])]]
    return (*best[1:6], tied, best[6])


def result_pixels(result: dict) -> tuple[float, float]:
    """(largest pixel difference of a true copy pair, smallest of a false pair) among the pairs compared."""
    pairs = result["pairs"].dropna(subset=["copy_pixels"])
    owner = dict(zip(result["photos"]["path"], result["photos"]["owner"]))
    same = pairs["image_a"].map(owner).eq(pairs["image_b"].map(owner)) & pairs["image_a"].map(owner).ge(0)
    return float(pairs.loc[same, "copy_pixels"].max()), float(pairs.loc[~same, "copy_pixels"].min())


def print_row(split: str, label: str, row: dict, n_photos: int) -> None:
    print(f"| {split} | {label} | {n_photos} | {row['precision']:.3f} | {row['recall']:.3f} | "
          f"{row['reshoot_share']:.3f} of {row['n_reshoot_pairs']} | "
          + " | ".join(f"{row[f'{name}_false']} / {row[f'{name}_recall']:.2f}" for name in SETS[1:]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=80,
                        help="grocery sources (each with a re-shoot) per split, beside 50 ImageNet ones (default: 80)")
    parser.add_argument("--distractors", type=int, default=200, help="grocery photos without copies per split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the photos and tables here")
    parser.add_argument("--reuse", action="store_true", help="reuse the extract outputs already in --workdir")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS),
                        help="build only these photo sets (a quick run: --sets products); default: all")
    args = parser.parse_args()
    if not WEIGHTS.exists():
        sys.exit(f"needs {WEIGHTS} and {SHARED / 'images'}: see ../shared/README.md")
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.workdir or Path(temporary)
        results = {}
        for split, seed in (("tune", args.seed), ("held-out", args.seed + 1)):
            folder, out = work / split / "photos", work / split / "out"
            photos = build_split(split, folder, args.sources, args.distractors, seed, tuple(args.sets))
            extract_seconds = np.nan
            if not (args.reuse and (out / "image_features_raw.parquet").is_file()):
                if out.exists():
                    shutil.rmtree(out)
                _, extract_seconds = run(["extract", folder, "-o", out, "--pattern", "*.jpg", "--hashes",
                                          "--local-features", "-q"], SKIMGFEAT_WEIGHTS=str(WEIGHTS))
            table = out / "image_features_raw.parquet"
            cli, duplicates_seconds = run(["duplicates", "--features", table, "--pairs", out / "pairs.csv"])
            groups = pd.read_csv(io.StringIO(cli.stdout))
            # Hashes alone (no local features beside the table): the same table and hashes in another folder.
            bare = work / split / "hash-only"
            bare.mkdir(exist_ok=True)
            for name in ("image_features_raw.parquet", HASHES_FILE):
                shutil.copy(out / name, bare / name)
            hash_only, _ = run(["duplicates", "--features", bare / "image_features_raw.parquet",
                                "--image-dir", folder, "-q"])
            index = SimilarityIndex.read(table)
            hashes = PhotoHashes.read(out / HASHES_FILE)
            wide = None if split != "tune" else duplicate_pairs(  # for the choice of the settings
                index, copy_check=hashes, copy_threshold=max(COPY_THRESHOLDS),
                local_features=LocalFeatureStore(out / "local_features"))
            texture = dict(zip(hashes.names, hash_texture(hashes.hashes)))
            results[split] = dict(photos=photos, groups=groups, hash_only=pd.read_csv(io.StringIO(hash_only.stdout)),
                                  wide=wide, texture=texture, pairs=pd.read_csv(out / "pairs.csv"),
                                  seconds=(extract_seconds, duplicates_seconds))
            print(f"{split}: {len(photos)} photos; extract --hashes --local-features {extract_seconds:.0f} s, "
                  f"duplicates {duplicates_seconds:.0f} s; {cli.stderr.strip()}", file=sys.stderr)
        chosen = results["tune"]
        tune_pixels = result_pixels(chosen)
        bits, coverage, inliers, unmatched, pixels, tied, _ = tune(chosen["photos"], chosen["wide"],
                                                                   chosen["texture"])
        print(f"\nChosen on tune: copy threshold {bits} bits, coverage >= {coverage}, inliers >= {inliers}, "
              f"unmatched <= {unmatched}, pixel difference <= {pixels} (defaults now: {COPY_THRESHOLD}, "
              f"{MIN_COPY_COVERAGE}, {MIN_COPY_INLIERS}, {MAX_UNMATCHED}, {MAX_PIXEL_DIFFERENCE})\n")
        print(f"tune: pixel difference of the copy pairs at most {tune_pixels[0]:.1f}, of the false hash matches "
              f"that the content check confirmed at least {tune_pixels[1]:.1f}; pixel thresholds scoring as well "
              f"as the chosen one: {', '.join(f'{value:g}' for value in tied)}\n")
        print("Through `skimgfeat extract --hashes --local-features` + `skimgfeat duplicates` (defaults); main set: "
              "pair precision and recall, re-shoot pairs grouped; hard sets: false copy pairs / recall of their "
              "copies\n")
        print("| split | decision | photos | precision | recall | re-shoots grouped | "
              + " | ".join(f"{name}: false / recall" for name in SETS[1:]) + " |")
        print("|---|---|---:|---:|---:|---:|" + "---:|" * (len(SETS) - 1))
        for split, result in results.items():
            photos = result["photos"]
            print_row(split, "hashes + local features (default)", score(photos, result["groups"]), len(photos))
            print_row(split, "hashes alone (no local features)", score(photos, result["hash_only"]), len(photos))
            if result["wide"] is None:
                continue
            print_row(split, "the setting chosen on tune (offline, from the same pairs)",
                      score(photos, offline_groups(result["wide"], result["texture"], bits, coverage, inliers,
                                                   unmatched, pixels)), len(photos))
            unconfirmed = result["wide"].assign(copy_coverage=1.0, inliers=99, copy_unmatched=0.0)  # hash match: copy
            print_row(split, f"hash match alone at {COPY_THRESHOLD} bits (no content check)",
                      score(photos, offline_groups(unconfirmed, result["texture"], COPY_THRESHOLD, 0, 0)), len(photos))
        for split, result in results.items():
            for name in SETS:
                kinds = ", ".join(f"{kind} {share:.3f}" for kind, share in
                                  recall_by_kind(result["photos"], result["groups"], name).items())
                print(f"\n{split}, {name}: copies grouped with their source: {kinds}")
            copies = result["pairs"][result["pairs"]["verdict"] == COPY]
            print(f"{split}: copy pairs' inliers: min {copies['inliers'].min()}, copy coverage: min "
                  f"{copies['copy_coverage'].min():.2f}; extract {result['seconds'][0]:.0f} s, duplicates "
                  f"{result['seconds'][1]:.0f} s")


if __name__ == "__main__":
    main()
