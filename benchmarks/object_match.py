"""Object matching on ../shared/images/objects: cost and accuracy of local-feature verification.

Measures, for the default settings of :mod:`skimgfeat.matching.local_features` and
:mod:`skimgfeat.matching.verification` (or the ones given):

* **cost**: CPU time of the thread (so other programs do not inflate it), OpenCV on one
  thread: decode + local features (AKAZE) per photo, and verification per candidate pair;
* **pairs**: every unordered pair of the 250 photos (50 DVD cases x 5 photos) verified
  once: precision and recall of ``same_object`` (a pair is positive when both photos
  show the same case), and the inlier counts of both kinds;
* **retrieval**: each phone photo (200) queries the 249 other photos: the CNN shortlist
  of ``k`` (cosine distance on MobileNetV2 features from ../shared/weights) re-ranked by
  verification, as :class:`skimgfeat.matching.object_match.ObjectMatcher` does; the share of
  queries whose top verified match is their own object, and whose nearest photo by CNN
  alone is;
* **same background**: the clean cover of one object and of another pasted at the
  centre of the same background photo (the house photos of ../shared/images/houses): a
  pair must be ``different``; the same cover on two backgrounds, and a composite against
  the object's phone photos, must be ``same_object``.

Every number is given for all 250 photos and for each half: objects 1-25 (dvd001-dvd025)
and 26-50. The thresholds were chosen on objects 1-25 only, so the numbers of objects
26-50 are held out from that choice (same cameras and scenes, other cases); pairs count
within a half, queries of a half search all 249 other photos, and the composites of a
half use 10 of its covers. Usage::

    python benchmarks/object_match.py [--features TABLE] [-k 50] [--out results.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
OBJECTS = SHARED / "images" / "objects"
HOUSES = SHARED / "images" / "houses"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
# The thresholds are chosen on objects 1-25 and reported on objects 26-50 as well (held out from that choice).
SPLIT = 25
HALVES = ("objects 1-25", "objects 26-50")
sys.path.insert(0, str(ROOT / "tests"))  # the scene makers the tests use (tests/_scenes.py)

from _scenes import on_background  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=None,
                        help="per-photo table of the objects (default: extracted now into a temporary folder)")
    parser.add_argument("-k", type=int, default=None, help="shortlist size (default: the matcher's)")
    parser.add_argument("--backgrounds", type=int, default=10, help="background photos for the composites")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument("--from-records", type=Path, default=None,
                        help="score the pairs measured by an earlier run (--records) with today's thresholds")
    parser.add_argument("--detectors", type=int, default=0, metavar="N",
                        help="also time ORB against SIFT on the first N photos (decode excluded)")
    parser.add_argument("--cost-only", type=int, default=0, metavar="N",
                        help="only time the local features of every photo and the verification of N pairs drawn "
                             "at random (a quick cost check; no accuracy)")
    parser.add_argument("--records", type=Path, default=None,
                        help="write every verified pair's measurements here (.npz), to study thresholds")
    parser.add_argument("--reverify-from", type=Path, default=None, metavar="RECORDS",
                        help="verify again only the pairs an earlier run (--records) found with at least 8 inliers "
                             "(the guided match starts there) or of the same object, keep the others' measurements "
                             "(fewer inliers cannot pass any rule), and verify every composite (no per-pair cost)")
    args = parser.parse_args()

    import cv2

    from skimgfeat.matching.local_features import detect_local_features
    from skimgfeat.matching.object_match import DEFAULT_SHORTLIST
    from skimgfeat.matching.verification import GUIDED_MIN_INLIERS, is_same_object

    cv2.setNumThreads(1)
    k = args.k or DEFAULT_SHORTLIST
    files = sorted(OBJECTS.glob("*.jpg"))
    names = [path.name for path in files]
    objects = np.asarray([name.split("_")[0] for name in names])
    results: dict = {"load_before": os.getloadavg(), "n_photos": len(files)}

    if args.cost_only:
        _measure(files, results, sample=args.cost_only)
        results["load_after"] = os.getloadavg()
        print(json.dumps(results, indent=2))
        return
    if args.from_records is not None:
        saved = np.load(args.from_records)
        pairs = [tuple(pair) for pair in saved["pairs"].tolist()]
        verifications = dict(zip(pairs, _verifications(saved)))
        saved_composites = any(name.endswith("_different_inliers") for name in saved.files)
        features = [detect_local_features(path) for path in files] if args.backgrounds and not saved_composites \
            else []
    elif args.reverify_from is not None:
        saved = np.load(args.reverify_from)
        pairs = [tuple(pair) for pair in saved["pairs"].tolist()]
        verifications = dict(zip(pairs, _verifications(saved)))
        again = [pair for pair in pairs if verifications[pair].inliers >= GUIDED_MIN_INLIERS
                 or objects[pair[0]] == objects[pair[1]]]
        features, verified, _ = _measure(files, results, only=again)
        verifications.update(verified)
        results["reverified_pairs"] = len(again)
        # of the pairs with most matches only: not the cost of a candidate pair
        results["reverified_ms_per_pair"] = results.pop("verification_ms_per_pair")
    else:
        features, verifications, pairs = _measure(files, results)
    if args.detectors:
        results["detectors_ms_per_photo"] = _time_detectors(files[:args.detectors])
    same = np.asarray([objects[i] == objects[j] for i, j in pairs])
    predicted = np.asarray([is_same_object(verifications[pair]) for pair in pairs])
    inliers = np.asarray([verifications[pair].inliers for pair in pairs])
    half = np.asarray([HALVES[1] if int(name[3:6]) > SPLIT else HALVES[0] for name in names])
    within = {"all": np.ones(len(pairs), bool),
              **{h: np.asarray([half[i] == h and half[j] == h for i, j in pairs]) for h in HALVES}}
    results["pairs"] = {part: _pair_scores(same[mask], predicted[mask], inliers[mask]) for part, mask in within.items()}
    results["pair_errors"] = {
        "false_positives": [(names[i], names[j], int(verifications[i, j].inliers))
                            for (i, j), s, p in zip(pairs, same, predicted) if p and not s],
        "false_negatives": [(names[i], names[j], int(verifications[i, j].inliers))
                            for (i, j), s, p in zip(pairs, same, predicted) if s and not p],
    }
    if args.records is not None:  # saved now: what follows can fail without losing the pairs
        np.savez(args.records, names=np.asarray(names), pairs=np.asarray(pairs), **_records(verifications[pair]
                                                                                          for pair in pairs))
    table = pd.read_parquet(args.features or _extract(OBJECTS))
    table = table.set_index("image_path").loc[names]
    vectors = np.array(table[[c for c in table.columns if c.startswith("img_feature_")]], dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    distances = 1 - vectors @ vectors.T
    results["retrieval"] = {part: _retrieval(names, objects, distances, verifications, k, is_same_object,
                                             queries=None if part == "all" else half == part)
                            for part in ("all", *HALVES)}
    results["same_background"], composites = {}, {}
    for part, first in (("objects 1-25", 1), ("objects 26-50", SPLIT + 1)):
        if args.from_records is not None and saved_composites:  # the composites measured then, scored now
            checked = {kind: list(_verifications(saved, prefix=f"{part[8:]}_{kind}_"))
                       for kind in ("different", "across", "phone")}
            results["same_background"][part], composites[part] = _composite_scores(checked), checked
            continue
        references = [i for i, name in enumerate(names) if name.endswith("_reference.jpg")
                      and first <= int(name[3:6]) < first + 10]
        results["same_background"][part], composites[part] = _same_background(files, objects, features, references,
                                                                               args.backgrounds)
    if args.records is not None:
        np.savez(args.records, names=np.asarray(names), pairs=np.asarray(pairs), distances=distances,
                 **_records(verifications[pair] for pair in pairs),
                 **{f"{part[8:]}_{kind}_{field}": values for part, made in composites.items()
                    for kind, checked in made.items() for field, values in _records(checked).items()})
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2, default=str))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2, default=str))


def _measure(files, results: dict, sample: int = 0, only=None):
    """Local features of every photo and the verification of every unordered pair (or those of ``sample``, ``only``)."""
    from skimgfeat.matching.local_features import detect_local_features
    from skimgfeat.matching.verification import verify_pair

    features, seconds = [], []
    for path in files:
        started = time.thread_time()
        features.append(detect_local_features(path))
        seconds.append(time.thread_time() - started)
    results["local_features_ms_per_photo"] = 1000 * float(np.mean(seconds))
    results["keypoints_per_photo"] = float(np.mean([len(entry) for entry in features]))
    pairs = list(itertools.combinations(range(len(files)), 2))
    if sample:
        chosen = np.random.default_rng(0).choice(len(pairs), min(sample, len(pairs)), replace=False)
        pairs = [pairs[i] for i in sorted(chosen)]
    if only is not None:
        pairs = only
    verifications, seconds = {}, []
    for i, j in pairs:
        started = time.thread_time()
        verifications[i, j] = verify_pair(features[i], features[j])
        seconds.append(time.thread_time() - started)
    results["verification_ms_per_pair"] = 1000 * float(np.mean(seconds))
    return features, verifications, pairs


def _time_detectors(files) -> dict:
    """Thread CPU ms per photo of ORB and SIFT (as many keypoints as the default) at 640 and 480 px, decode excluded."""
    import cv2

    from skimgfeat.matching.local_features import DEFAULT_MAX_KEYPOINTS

    grays = [np.asarray(Image.open(path).convert("L")) for path in files]
    timings = {}
    for side in (640, 480):
        scaled = [cv2.resize(g, None, fx=side / max(g.shape), fy=side / max(g.shape), interpolation=cv2.INTER_AREA)
                  for g in grays]
        for name, detector in (("orb", cv2.ORB_create(DEFAULT_MAX_KEYPOINTS)),
                               ("sift", cv2.SIFT_create(DEFAULT_MAX_KEYPOINTS))):
            started = time.thread_time()
            for gray in scaled:
                detector.detectAndCompute(gray, None)
            timings[f"{name}_{side}"] = 1000 * (time.thread_time() - started) / len(scaled)
    return timings


FIELDS = ("n_matches", "inliers", "spread", "centred", "central_inliers", "plausible", "covers_centres")


def _verifications(saved, prefix: str = ""):
    """The measurements of a run's records (of runs before the guided match: without it, as it was then)."""
    n = len(saved[prefix + "inliers"])
    first = _stored(saved, prefix, n)
    guided = _stored(saved, prefix + "guided_", n) if prefix + "guided_inliers" in saved.files else [None] * n
    has_guided = saved[prefix + "has_guided"] if prefix + "has_guided" in saved.files else np.zeros(n, bool)
    for verification, again, has in zip(first, guided, has_guided):
        yield replace(verification, guided=again if has else None)


def _stored(saved, prefix: str, n: int):
    from skimgfeat.matching.verification import PairVerification

    empty = np.empty((0, 2), np.float32)
    columns = [saved[prefix + field] if prefix + field in saved.files else np.zeros(n, bool) for field in FIELDS]
    return [PairVerification(int(m), int(inliers), float(spread), float(centred), int(central), bool(plausible),
                             None, empty, empty, bool(covers))
            for m, inliers, spread, centred, central, plausible, covers in zip(*columns)]


def _records(verifications) -> dict[str, np.ndarray]:
    """Each measurement of the verifications (and of their guided matches, zero where none) as one array."""
    from skimgfeat.matching.verification import PairVerification

    verifications = list(verifications)
    guided = [v.guided or PairVerification.none() for v in verifications]
    records = {"has_guided": np.asarray([v.guided is not None for v in verifications], bool)}
    for prefix, found in (("", verifications), ("guided_", guided)):
        for field in FIELDS:
            records[prefix + field] = np.asarray([getattr(v, field) for v in found])
    return records


def _pair_scores(same: np.ndarray, predicted: np.ndarray, inliers: np.ndarray) -> dict:
    true_positives = int((same & predicted).sum())
    return {
        "n_pairs": int(len(same)),
        "n_same": int(same.sum()),
        "precision": true_positives / max(1, int(predicted.sum())),
        "recall": true_positives / max(1, int(same.sum())),
        "false_positives": int((predicted & ~same).sum()),
        "inliers_same_median": float(np.median(inliers[same])),
        "inliers_different_max": int(inliers[~same].max()),
        "inliers_different_p99.9": float(np.quantile(inliers[~same], 0.999)),
    }


def _retrieval(names, objects, distances, verifications, k: int, is_same_object, queries=None) -> dict:
    """Phone photos (those of ``queries``, a mask, when given) query all the other photos."""
    phone = [i for i, name in enumerate(names) if not name.endswith("_reference.jpg")
             and (queries is None or queries[i])]
    top_verified = nearest_cnn = in_shortlist = no_match = 0
    for query in phone:
        order = [j for j in np.argsort(distances[query], kind="stable") if j != query]
        nearest_cnn += objects[order[0]] == objects[query]
        shortlist = order[:k]
        in_shortlist += any(objects[j] == objects[query] for j in shortlist)
        verified = [(verifications[min(query, j), max(query, j)], j) for j in shortlist]
        verified = [(v.inliers, -distances[query, j], j) for v, j in verified if is_same_object(v)]
        if not verified:
            no_match += 1
            continue
        top_verified += objects[max(verified)[2]] == objects[query]
    n = len(phone)
    return {"k": k, "n_queries": n, "top_verified_is_own_object": top_verified / n,
            "top_verified_precision": top_verified / max(1, n - no_match),
            "no_verified_match": no_match / n, "own_object_in_shortlist": in_shortlist / n,
            "nearest_by_cnn_is_own_object": nearest_cnn / n}


def _same_background(files, objects, features, references: list[int], n_backgrounds: int) -> dict:
    from skimgfeat.matching.local_features import detect_local_features
    from skimgfeat.matching.verification import verify_pair

    backgrounds = sorted(HOUSES.glob("*_kitchen.jpg"))[:n_backgrounds] + \
        sorted(HOUSES.glob("*_bedroom.jpg"))[:n_backgrounds]
    made = {(r, b): detect_local_features(on_background(files[r], background))
            for r in references for b, background in enumerate(backgrounds)}
    checked = {
        "different": [verify_pair(made[a, b], made[c, b])
                      for b in range(len(backgrounds)) for a, c in itertools.combinations(references, 2)],
        "across": [verify_pair(made[r, b], made[r, (b + 1) % len(backgrounds)])
                   for r in references for b in range(len(backgrounds))],
        "phone": [verify_pair(made[r, b], features[i]) for r in references for b in range(len(backgrounds))
                  for i in range(len(files)) if objects[i] == objects[r] and i != r],
    }
    return {"n_backgrounds": len(backgrounds), **_composite_scores(checked)}, checked


def _composite_scores(checked: dict) -> dict:
    from skimgfeat.matching.verification import is_same_object

    matched = {kind: sum(is_same_object(v) for v in found) for kind, found in checked.items()}
    return {"other_object_same_background_matched": f"{matched['different']}/{len(checked['different'])}",
            "same_cover_other_background_matched": f"{matched['across']}/{len(checked['across'])}",
            "composite_vs_phone_photo_matched": f"{matched['phone']}/{len(checked['phone'])}"}


def _extract(folder: Path) -> Path:
    out = Path(tempfile.mkdtemp(prefix="object-match-"))
    subprocess.run([sys.executable, "-m", "skimgfeat", "extract", str(folder), "-o", str(out), "--pattern",
                    "*.jpg", "--weights", str(WEIGHTS), "--aggregate", "none", "--quiet"], check=True)
    return out / "image_features_raw.parquet"


if __name__ == "__main__":
    main()
