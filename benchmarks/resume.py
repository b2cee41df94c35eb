"""An ``extract`` killed at 70% resumes with what it checkpointed: the resumed run's time against a full run's.

Writes N small JPEGs derived from the real photos of ../shared/images (``_photos.py``:
random crops, resized to 64-96 px, re-encoded), then, each ``skimgfeat extract`` in a
fresh process with the real MobileNetV2 weights of ../shared/weights:

1. a full run into ``full/`` (wall and CPU seconds of the process);
2. a run into ``killed/`` sent ``SIGKILL`` as soon as its checkpoint parts hold
   ``--kill-at`` (default 70%) of the rows: what it lost is what it had embedded since
   its last part (a part every 10 s by default, or every ``--checkpoint-every`` rows);
3. ``extract --resume`` into ``killed/``, timed like the full run.

It prints the ratio resume / full (the target of issue 26: <= 0.65 at 70%) and checks
that the resumed table has the full run's rows with the same features (the same photos
embedded by the same network: equal to float tolerance).

    python benchmarks/resume.py                       # 5,000 photos
    python benchmarks/resume.py --photos 600 --workdir /tmp/resume
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))
from _photos import SHARED, make_photos  # noqa: E402

WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
CHECKPOINT = ".skimgfeat-checkpoint"


def extract_command(photos: Path, output: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "skimgfeat", "extract", os.fspath(photos), "-o", os.fspath(output),
            "--model", "mobilenet_v2", "--weights", os.fspath(WEIGHTS), "--quiet", *more]


def run_timed(command: list[str]) -> dict:
    """Run to the end in a fresh process: wall and CPU seconds (``wait4`` on it)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{' '.join(command)} failed (exit {code}): {child.stderr.read().decode()[-2000:]}")
    return {"wall_s": round(seconds, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}


def checkpointed_rows(output: Path) -> int:
    """Rows in the checkpoint parts written so far (parts appear whole: written, then renamed)."""
    rows = 0
    for part in sorted((output / CHECKPOINT).glob("part-*.npz")):
        try:
            with np.load(part, allow_pickle=False) as npz:
                rows += len(npz["image_path"])
        except (OSError, ValueError, KeyError):  # renamed between the listing and the read
            continue
    return rows


def run_killed(command: list[str], output: Path, kill_rows: int) -> dict:
    """Start a run and SIGKILL it once its checkpoint holds ``kill_rows`` rows."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = 0
    while child.poll() is None:
        rows = checkpointed_rows(output)
        if rows >= kill_rows:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    _, _, usage = os.wait4(child.pid, 0)
    if child.returncode == 0:
        sys.exit("the run to kill finished before its checkpoint held the rows to kill at")
    return {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "checkpointed_rows": rows}


def same_rows(first: Path, second: Path) -> tuple[int, float]:
    """(rows, largest feature difference) of two runs' tables, which must hold the same photos."""
    import pandas as pd

    a = pd.read_parquet(first / "image_features_raw.parquet").set_index("image_path").sort_index()
    b = pd.read_parquet(second / "image_features_raw.parquet").set_index("image_path").sort_index()
    if not a.index.equals(b.index):
        sys.exit(f"the resumed table has other rows than the full run's ({len(b)} against {len(a)})")
    columns = [column for column in a.columns if column.startswith("img_feature_")]
    return len(a), float(np.abs(a[columns].to_numpy() - b[columns].to_numpy()).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=5000)
    parser.add_argument("--kill-at", type=float, default=0.7, help="share of the rows checkpointed when killed")
    parser.add_argument("--workdir", type=Path, help="keep the photos here for a rerun (default: a temporary folder)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="passed to extract (default: its own)")
    args = parser.parse_args()
    if not WEIGHTS.is_file():
        sys.exit(f"needs {WEIGHTS} (see ../shared/README.md)")
    more = [] if args.checkpoint_every is None else ["--checkpoint-every", str(args.checkpoint_every)]
    with tempfile.TemporaryDirectory(prefix="skimgfeat-resume-") as temporary:
        work = args.workdir or Path(temporary)
        photos = make_photos(work / "photos", args.photos)
        for name in ("full", "killed"):
            shutil.rmtree(work / name, ignore_errors=True)
        load = os.getloadavg()
        full = run_timed(extract_command(photos, work / "full", *more))
        print(f"full run of {args.photos} photos: {full['wall_s']} s (CPU {full['cpu_s']} s)", flush=True)
        killed = run_killed(extract_command(photos, work / "killed", *more), work / "killed",
                            int(np.ceil(args.kill_at * args.photos)))
        print(f"killed after {killed['wall_s']} s with {killed['checkpointed_rows']} rows checkpointed", flush=True)
        resumed = run_timed(extract_command(photos, work / "killed", "--resume", *more))
        n_rows, difference = same_rows(work / "full", work / "killed")
        summary = {"photos": args.photos, "kill_at": args.kill_at, "load_before": load, "full": full,
                   "killed": killed, "resumed": resumed, "rows": n_rows, "largest_feature_difference": difference,
                   "resume_over_full_wall": round(resumed["wall_s"] / full["wall_s"], 3),
                   "resume_over_full_cpu": round(resumed["cpu_s"] / full["cpu_s"], 3),
                   "load_after": os.getloadavg()}
        print(f"resume: {resumed['wall_s']} s (CPU {resumed['cpu_s']} s): {summary['resume_over_full_wall']:.3f} "
              f"of the full run's wall time, {summary['resume_over_full_cpu']:.3f} of its CPU time; "
              f"{n_rows} rows, largest feature difference {difference:.2e}", flush=True)
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
