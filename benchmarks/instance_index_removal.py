"""Saving an archive's instance index after a removal: the lists shared with the generation before, or rewritten.

An archive's ``remove`` takes the photos out of its instance index (the same-object
shortlist) as a new generation of it, which the archive's new generation names. That save
shares the inverted lists with the generation before (hard links, the removed photos only
marked), as the archive shares its vectors; a compaction rewrites them without the removed
photos' entries. This times both saves on an index of ``--photos`` photos of ``--words``
entries each (synthetic postings over a vocabulary trained on random descriptors: the save
does not depend on what the entries are), removing ``--remove`` photos each time.

    python benchmarks/instance_index_removal.py                         # 100,000 photos, 300 entries each
    python benchmarks/instance_index_removal.py --photos 1000000        # 3.6 GB of lists: run under flock
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from skimgfeat.matching.instance_index import InstanceIndex


def synthetic_index(n_photos: int, per_photo: int, seed: int = 0) -> InstanceIndex:
    """An instance index of ``n_photos`` photos with ``per_photo`` random entries each."""
    rng = np.random.default_rng(seed)
    index = InstanceIndex(branching=64).fit_vocabulary(rng.integers(0, 256, (20_000, 64), dtype=np.uint8))
    words = rng.integers(0, index.n_words_, n_photos * per_photo)
    order = np.argsort(words, kind="stable")
    index.names_ = [f"day/{number}.jpg" for number in range(n_photos)]
    index._row_of = {name: row for row, name in enumerate(index.names_)}
    index.removed_ = np.zeros(n_photos, bool)
    index.postings_photo_ = np.repeat(np.arange(n_photos, dtype=np.int32), per_photo)[order]
    index.postings_signature_ = rng.integers(0, 2**63, len(order)).astype(np.uint64)
    index.offsets_ = np.concatenate([[0], np.cumsum(np.bincount(words, minlength=index.n_words_))])
    index._norms = None
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--words", type=int, default=300, help="entries per photo (the default max_words is 1000)")
    parser.add_argument("--remove", type=int, default=1000, help="photos removed before each save")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    workdir = Path(tempfile.mkdtemp(prefix="instance-removal-"))
    try:
        folder = workdir / "instance_index"
        synthetic_index(args.photos, args.words).save(folder)
        print(f"{args.photos} photos, {args.photos * args.words:,} entries; load average "
              f"{os.getloadavg()[0]:.1f}")
        for _ in range(args.rounds):
            for compact in (False, True):
                index = InstanceIndex.load(folder)
                index.remove(rng.choice(index.names(), args.remove, replace=False).tolist())
                wall, cpu = time.perf_counter(), time.process_time()
                index.save(folder, compact=compact)
                how = "rewritten (compaction)" if compact else "shared (removal)"
                print(f"save after removing {args.remove}, {how}: {time.perf_counter() - wall:.2f} s wall, "
                      f"{time.process_time() - cpu:.2f} s CPU")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
