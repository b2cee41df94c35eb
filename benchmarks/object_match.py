""""Have we had this object before?": what ``skimgfeat match`` answers a user, on an archive with distractors.

The archive is every photo under ../shared/images (about 4,570): the 250 photos of
../shared/images/objects (50 DVD cases: a clean catalogue photo ``dvdNNN_reference.jpg``
and four phone photos each, from the Stanford Mobile Visual Search data set,
Chandrasekhar et al., ACM MMSys 2011) and about 4,300 unrelated photos (grocery, houses,
ImageNet) as the other lots. It is made the way a user makes it::

    skimgfeat extract ../shared/images -o ARCHIVE --recursive --pattern "*.[jJ][pP]*[gG]" --local-features

(MobileNetV2 with ../shared/weights, all defaults), kept in ``--archive`` (default
/work/notes/cache-objects/archive, or $SKIMGFEAT_OBJECT_ARCHIVE) and reused when it is
there. Then, per half of the objects, one command with the half's 100 phone photos::

    skimgfeat match objects/dvd026_canon.jpg ... --against ARCHIVE

with its default settings (the phone photos are rows of the archive: each is left out of
its own results; the other four photos of its object are in the archive). Reported per
half, from the command's CSV:

* **catalogue**: share of phone photos whose object's catalogue photo is returned as
  ``same_object`` (or ``copy``);
* **recall**: share of the 4 other photos of the query's object returned as ``same_object``/``copy``;
* **precision**: share of the ``same_object``/``copy`` rows that are photos of the query's object;
* **top-1**: share of queries whose first row is a verified photo of their own object;
* **cost**: the command's wall time, and per query after the start (the wall time of
  the same command with one query subtracted). The first run also makes the instance
  index (``ARCHIVE/instance_index``), timed on its own.

Thresholds are chosen on objects 1-25 only; objects 26-50 are held out. Usage::

    python benchmarks/object_match.py [--archive DIR] [--halves 1 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
IMAGES = SHARED / "images"
OBJECTS = IMAGES / "objects"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
DEFAULT_ARCHIVE = Path(os.environ.get("SKIMGFEAT_OBJECT_ARCHIVE", "/work/notes/cache-objects/archive"))
HALVES = {1: range(1, 26), 2: range(26, 51)}
VERIFIED = ("same_object", "copy")


def skimgfeat(*args, **kwargs) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("skimgfeat")), *map(str, args)]
    env = {**os.environ, "SKIMGFEAT_WEIGHTS": str(WEIGHTS)}
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False, **kwargs)


def make_archive(archive: Path) -> float:
    """Extract the archive the way a user does; the seconds it took (0 when it was already there)."""
    if (archive / "image_features_raw.parquet").is_file() and (archive / "local_features").is_dir():
        return 0.0
    started = time.perf_counter()
    result = skimgfeat("extract", IMAGES, "-o", archive, "--recursive", "--pattern", "*.[jJ][pP]*[gG]",
                       "--local-features", "--aggregate", "none", "-q")
    if result.returncode:
        raise SystemExit(result.stderr)
    return time.perf_counter() - started


def score(found: pd.DataFrame, queries: list[str]) -> dict:
    """The numbers of one half from the command's CSV (``query`` as given: files under ../shared/images)."""
    verified = found[found["verdict"].isin(VERIFIED)]
    catalogue, recall, top1 = [], [], []
    own_rows = 0
    for query in queries:
        name = Path(query).name
        case = name.split("_")[0]
        rows = found[found["query"] == query]
        hits = set(verified.loc[verified["query"] == query, "image_path"])
        others = {f"objects/{path.name}" for path in OBJECTS.glob(f"{case}_*.jpg") if path.name != name}
        catalogue.append(f"objects/{case}_reference.jpg" in hits)
        recall.append(len(hits & others) / len(others))
        own_rows += len(hits & others)
        first = rows.iloc[0] if len(rows) else None
        top1.append(first is not None and first["verdict"] in VERIFIED and first["image_path"] in others)
    return {"queries": len(queries), "catalogue": sum(catalogue) / len(queries),
            "recall": sum(recall) / len(queries),
            "precision": own_rows / len(verified) if len(verified) else 1.0,
            "top1": sum(top1) / len(queries), "verified_rows": len(verified),
            "catalogue_missed": [Path(q).name for q, hit in zip(queries, catalogue) if not hit]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--halves", type=int, nargs="+", default=[1, 2], choices=sorted(HALVES))
    parser.add_argument("--fresh-instance-index", action="store_true",
                        help="delete ARCHIVE/instance_index first: time its making")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument("match_options", nargs="*", help="options passed to `skimgfeat match` after --")
    args = parser.parse_args()

    results: dict = {"load_before": os.getloadavg(), "archive": str(args.archive)}
    results["extract_seconds"] = make_archive(args.archive)
    results["archive_photos"] = len(pd.read_parquet(args.archive / "image_features_raw.parquet",
                                                    columns=["image_path"]))
    if args.fresh_instance_index:
        shutil.rmtree(args.archive / "instance_index", ignore_errors=True)
    one = OBJECTS / "dvd001_canon.jpg"
    started = time.perf_counter()  # the first run makes the instance index when it is missing or out of date
    first = skimgfeat("match", one, "--against", args.archive, *args.match_options)
    results["first_run_seconds"] = time.perf_counter() - started
    if first.returncode:
        raise SystemExit(first.stderr)
    started = time.perf_counter()
    skimgfeat("match", one, "--against", args.archive, *args.match_options)
    results["one_query_seconds"] = time.perf_counter() - started
    for half in args.halves:
        queries = [str(OBJECTS / f"dvd{i:03d}_{camera}.jpg") for i in HALVES[half]
                   for camera in ("canon", "droid", "e63", "palm")]
        started = time.perf_counter()
        result = skimgfeat("match", *queries, "--against", args.archive, *args.match_options)
        wall = time.perf_counter() - started
        if result.returncode:
            raise SystemExit(result.stderr)
        found = pd.read_csv(io.StringIO(result.stdout))
        numbers = score(found, queries)
        numbers["wall_seconds"] = wall
        numbers["seconds_per_query"] = (wall - results["one_query_seconds"]) / (len(queries) - 1)
        numbers["rows_per_query"] = len(found) / len(queries)
        label = f"objects {HALVES[half].start}-{HALVES[half].stop - 1}"
        results[label] = numbers
        print(label, {key: round(value, 3) if isinstance(value, float) else value for key, value in numbers.items()
                      if key != "catalogue_missed"}, flush=True)
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
