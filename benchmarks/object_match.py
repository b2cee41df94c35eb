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
* **cost**: the command's wall time and CPU time (of the child process: what the load of
  other programs does not inflate), and per query after the start (those of the same
  command with one query subtracted). The first run also makes the instance
  index (``ARCHIVE/instance_index``), timed on its own.

Thresholds are chosen on objects 1-25 only; objects 26-50 are held out. Usage::

    python benchmarks/object_match.py [--archive DIR] [--halves 1 2] [--out results.json]

``--scale N`` measures the instance index at archive scale instead: a vocabulary of up to
512 x 512 words trained on 2,000,000 descriptors of the archive, then an inverted file of
N synthetic photos x 1,000 descriptors (each word's list as long as the archive's word
frequencies make it, photo numbers and 64-bit signatures drawn at random) written to
``--workdir`` (12 bytes a descriptor: 12 GB at N = 1,000,000), loaded memory-mapped as
``match`` loads it, and searched with 20 real phone photos (wall time per search, the
first one cold); then, per phone photo, what ``match`` does after loading: that search,
the second one of query expansion (with its object's catalogue photo's descriptors, as
many as the expansion searches with at most) and ``--verifications`` pair verifications
against real photos of the archive (CPU and wall time per query)::

    python benchmarks/object_match.py --scale 1000000 --workdir /tmp/instance-1m
    # where the disk cannot hold 12 GB: only the lists those searches read (3.5 GB), the same reads
    python benchmarks/object_match.py --scale 1000000 --only-query-words --workdir /tmp/instance-1m
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
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


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: what the commands cost, whatever the load."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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


def measure_scale(archive: Path, n_photos: int, workdir: Path, n_queries: int = 20, verifications: int = 90,
                  only_query_words: bool = False) -> dict:
    """The instance index's search time at ``n_photos`` synthetic photos (see the module's docstring)."""
    import numpy as np

    from skimgfeat.matching.instance_index import InstanceIndex
    from skimgfeat.matching.local_features import LocalFeatureStore
    from skimgfeat.matching.verification import verify_pair
    from skimgfeat.storage.vector_index import write_generation

    store = LocalFeatureStore(archive / "local_features")
    results: dict = {"photos": n_photos, "load_before": os.getloadavg()}
    started = time.perf_counter()
    vocabulary = archive / "vocabulary-512"  # trained once, kept with the archive
    if (vocabulary / "CURRENT").is_file():
        index = InstanceIndex.load(vocabulary, mmap=False)
    else:
        index = InstanceIndex(branching=512, training_descriptors=2_000_000)
        index.fit_vocabulary(store.training_descriptors(index.training_descriptors, index.max_words))
        index.save(vocabulary)
        results["vocabulary_seconds"] = time.perf_counter() - started
    results["words"] = index.n_words_
    sample = store.training_descriptors(500_000, index.max_words, seed=1)
    frequency = np.bincount(index.words(sample), minlength=index.n_words_) / len(sample)
    rng = np.random.default_rng(0)
    lengths = rng.poisson(n_photos * index.max_words * frequency)
    queries = [f"objects/dvd{i:03d}_{camera}.jpg" for i in range(26, 51, 5) for camera in ("canon", "droid", "e63",
                                                                                           "palm")][:n_queries]
    if only_query_words:  # the lists these queries' two searches read, as long as at n_photos; the others left empty
        read = np.zeros(index.n_words_, bool)
        for query in queries:
            for photo in (query, query.split("_")[0] + "_reference.jpg"):
                read[index._words(store[photo].descriptors, index.query_words)[0]] = True
        lengths = np.where(read, lengths, 0)
        results["lists_kept_share"] = float(lengths.sum() / (n_photos * index.max_words))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    photos_holding = n_photos * (1 - np.exp(-index.max_words * frequency))
    idf = np.log((n_photos + 1) / np.maximum(photos_holding, 1)).astype(np.float32)
    norm = np.sqrt(index.max_words * np.sum(frequency * idf.astype(np.float64) ** 2))
    started = time.perf_counter()

    def write_files(staging: Path) -> dict:
        fixed = {"top": index.top_, "children": index.children_, "child_start": index.child_start_,
                 "child_count": index.child_count_, "signature_bits": index.signature_bits_, "offsets": offsets,
                 "removed": np.zeros(n_photos, bool), "idf": idf, "norms": np.full(n_photos, norm, np.float32)}
        for name, values in fixed.items():
            np.save(staging / f"{name}.npy", values)
        photo = np.lib.format.open_memmap(staging / "postings_photo.npy", "w+", np.int32, (int(offsets[-1]),))
        signature = np.lib.format.open_memmap(staging / "postings_signature.npy", "w+", np.uint64,
                                              (int(offsets[-1]),))
        block = 50_000_000
        for start in range(0, int(offsets[-1]), block):
            stop = min(start + block, int(offsets[-1]))
            photo[start:stop] = rng.integers(0, n_photos, stop - start, dtype=np.int32)
            signature[start:stop] = rng.integers(0, 2**64, stop - start, dtype=np.uint64)
        photo.flush()
        signature.flush()
        del photo, signature
        (staging / "names.json").write_text(json.dumps([f"synthetic/{i:07d}.jpg" for i in range(n_photos)]))
        return {"kind": "instance", "instance_format_version": 1, "params": index.get_params(),
                "n_photos": n_photos, "n_words": index.n_words_, "n_postings": int(offsets[-1]), "source": {}}

    shutil.rmtree(workdir, ignore_errors=True)
    write_generation(workdir, write_files)
    results["write_seconds"] = time.perf_counter() - started
    results["postings"] = int(offsets[-1])
    results["bytes"] = sum(path.stat().st_size for path in workdir.rglob("*") if path.is_file())
    started = time.perf_counter()
    loaded = InstanceIndex.load(workdir)
    results["load_seconds"] = time.perf_counter() - started
    seconds, cpu = [], []
    for query in queries:
        features = store[query]
        started, started_cpu = time.perf_counter(), time.process_time()
        loaded.search(features, k=100)
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    results["search_seconds_first"] = seconds[0]
    results["search_seconds_median"] = float(np.median(seconds[1:]))
    results["search_seconds_max"] = float(np.max(seconds[1:]))
    results["search_cpu_seconds_median"] = float(np.median(cpu[1:]))
    results["search_cpu_seconds_max"] = float(np.max(cpu[1:]))
    # What `match` does after those searches, per query: a second search (query expansion) with as many descriptors
    # as one photo holds (here the catalogue photo's, its object's region where the phone photo found it), and the
    # verification of its candidates: as many as `match` verifies per query on the archive (--verifications),
    # real photos of the archive (the instance index's best at archive scale), read from the local-features store.
    archive_index = InstanceIndex.load(archive / "instance_index")
    expansion_cpu, verification_cpu, total_cpu, total_seconds = [], [], [], []
    for query in queries:
        features = store[query]
        catalogue = store[query.split("_")[0] + "_reference.jpg"]
        candidates = archive_index.search(features, k=verifications + 1)[0]
        candidates = [name for name in candidates if name != query][:verifications]
        started, started_cpu = time.perf_counter(), time.process_time()
        loaded.search(features, k=100)
        searched = time.process_time()
        loaded.search(catalogue.descriptors, k=100)
        expanded = time.process_time()
        for name in candidates:
            verify_pair(features, store[name])
        finished = time.process_time()
        expansion_cpu.append(expanded - searched)
        verification_cpu.append(finished - expanded)
        total_cpu.append(finished - started_cpu)
        total_seconds.append(time.perf_counter() - started)
    results["verifications_per_query"] = verifications
    results["expansion_search_cpu_seconds_median"] = float(np.median(expansion_cpu[1:]))
    results["verification_cpu_seconds_median"] = float(np.median(verification_cpu[1:]))
    results["query_cpu_seconds_median"] = float(np.median(total_cpu[1:]))
    results["query_cpu_seconds_max"] = float(np.max(total_cpu[1:]))
    results["query_seconds_median"] = float(np.median(total_seconds[1:]))
    results["load_after"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--halves", type=int, nargs="+", default=[1, 2], choices=sorted(HALVES))
    parser.add_argument("--queries", type=int, default=100, metavar="N",
                        help="only the first N phone photos of each half (a quick cost run)")
    parser.add_argument("--fresh-instance-index", action="store_true",
                        help="delete ARCHIVE/instance_index first: time its making")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument("--csv", type=Path, default=None, metavar="DIR",
                        help="also keep each half's CSV from `skimgfeat match` in DIR")
    parser.add_argument("--scale", type=int, default=0, metavar="N",
                        help="measure the instance index's search at N synthetic photos instead")
    parser.add_argument("--verifications", type=int, default=90, metavar="N",
                        help="with --scale: pairs verified per query (what `match` verifies per query on the archive)")
    parser.add_argument("--only-query-words", action="store_true",
                        help="with --scale: write only the lists the measured queries read (as long as at N photos; "
                             "a third of the file at N = 1,000,000: where the disk cannot hold it all)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/instance-scale"),
                        help="where --scale writes its index (deleted afterwards)")
    parser.add_argument("match_options", nargs="*", help="options passed to `skimgfeat match` after --")
    args = parser.parse_args()
    if args.scale:
        try:
            results = measure_scale(args.archive, args.scale, args.workdir, verifications=args.verifications,
                                    only_query_words=args.only_query_words)
        finally:
            shutil.rmtree(args.workdir, ignore_errors=True)
        text = json.dumps(results, indent=2)
        print(text)
        if args.out is not None:
            args.out.write_text(text + "\n")
        return

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
    started, cpu = time.perf_counter(), _children_cpu()
    skimgfeat("match", one, "--against", args.archive, *args.match_options)
    results["one_query_seconds"] = time.perf_counter() - started
    results["one_query_cpu_seconds"] = _children_cpu() - cpu
    for half in args.halves:
        queries = [str(OBJECTS / f"dvd{i:03d}_{camera}.jpg") for i in HALVES[half]
                   for camera in ("canon", "droid", "e63", "palm")][:args.queries]
        started, cpu = time.perf_counter(), _children_cpu()
        result = skimgfeat("match", *queries, "--against", args.archive, *args.match_options)
        wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
        if result.returncode:
            raise SystemExit(result.stderr)
        found = pd.read_csv(io.StringIO(result.stdout))
        if args.csv is not None:  # the command's answer as it was, to read the misses and false matches
            args.csv.mkdir(parents=True, exist_ok=True)
            (args.csv / f"match-half-{half}.csv").write_text(result.stdout)
        numbers = score(found, queries)
        numbers["wall_seconds"] = wall
        numbers["seconds_per_query"] = (wall - results["one_query_seconds"]) / (len(queries) - 1)
        numbers["cpu_seconds"] = cpu
        numbers["cpu_seconds_per_query"] = (cpu - results["one_query_cpu_seconds"]) / (len(queries) - 1)
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
