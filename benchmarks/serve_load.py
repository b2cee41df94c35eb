"""``skimgfeat serve`` under load: searches by name on a 100,000-row archive, and uploads.

The archive: every photo of ../shared/images/objects except the ``_palm`` ones (200 real
photos of 50 DVD cases), extracted as a user does (``skimgfeat extract --hashes
--local-features``, MobileNetV2 with the shared ImageNet weights), padded with synthetic
rows to ``--rows`` (non-negative 1280-wide rows, ReLU-like, as benchmarks/scale.py makes
them; they have no photo, so their copy check finds nothing to hash), then indexed with
``skimgfeat index build`` (auto: ``ivf-sq8`` past 50,000 rows), the hashes and local
features beside the index. ``skimgfeat serve`` runs on it in its own process on
127.0.0.1; nothing else is ever contacted.

Measured, each a bounded loop:

1. ``--clients`` (20) threads each send searches by name, one after the other, until
   ``--searches`` (400) are done: ``GET /search?q=NAME`` (the results page a browser
   shows), names drawn from all rows. Latency of each, p50 / p95 / max.
2. Each tile of the page of a real photo is then verified by ``GET /api/verify`` (what the
   page's script asks): latency per tile, sequentially.
3. ``--uploads`` (20) phone photos (the ``_palm`` ones, not in the archive) uploaded one
   at a time to ``POST /api/search``: embedded, shortlisted, every one of the 12
   candidates verified; latency of each, and how often a photo of the case itself (another
   phone photo, or its catalogue photo) comes back ``same_object``. Global features put a
   case's catalogue photo further from its phone photos than other cases' phone photos
   (../shared/README.md), so among 100,000 rows it is rarely among the 12 nearest:
   ``skimgfeat match`` verifies 100 candidates for that, at about 16 ms each.

    python benchmarks/serve_load.py                  # 100,000 rows, ~3 min on 2 cores
    python benchmarks/serve_load.py --rows 20000 --workdir /tmp/serve-bench --reuse
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
OBJECTS = SHARED / "images" / "objects"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
N_CLUSTERS = 500


def build_archive(workdir: Path, n_rows: int, reuse: bool) -> Path:
    """Real photos extracted, padded with synthetic rows, indexed: the index folder."""
    index = workdir / "index"
    if reuse and (index / "image_hashes.parquet").is_file():
        return index
    photos = workdir / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for path in sorted(OBJECTS.glob("dvd*_*.jpg")):
        if not path.stem.endswith("_palm"):
            shutil.copy(path, photos / path.name)
    features = workdir / "features"
    _run([sys.executable, "-m", "skimgfeat", "extract", str(photos), "-o", str(features), "--pattern", "*.jpg",
          "--hashes", "--local-features", "--aggregate", "none", "-q"])
    real = pq.read_table(features / "image_features_raw.parquet")
    metadata = real.schema.metadata
    table = real.to_pandas()
    columns = [column for column in table.columns if column.startswith("img_feature_")]
    n_synthetic = max(0, n_rows - len(table))
    rng = np.random.default_rng(0)
    centres = rng.exponential(1.0, (N_CLUSTERS, len(columns))).astype(np.float32)
    centres *= rng.random(centres.shape) < 0.35
    parts = [table]
    for start in range(0, n_synthetic, 20_000):
        stop = min(n_synthetic, start + 20_000)
        vectors = centres[rng.integers(0, N_CLUSTERS, stop - start)]
        vectors = vectors * rng.uniform(0.5, 1.5, vectors.shape).astype(np.float32)
        names = [f"synthetic/lot{row:06d}_1.jpg" for row in range(start, stop)]
        chunk = pd.DataFrame(vectors, columns=columns)
        chunk.insert(0, "image_name", [Path(name).name for name in names])
        chunk.insert(0, "image_path", names)
        chunk["error"] = ""
        parts.append(chunk[table.columns])
    combined = pa.Table.from_pandas(pd.concat(parts, ignore_index=True), preserve_index=False)
    combined = combined.replace_schema_metadata({**(combined.schema.metadata or {}), **metadata})
    pq.write_table(combined, workdir / "archive.parquet", row_group_size=4096)
    shutil.rmtree(index, ignore_errors=True)
    _run([sys.executable, "-m", "skimgfeat", "index", "build", str(workdir / "archive.parquet"), "-o", str(index),
          "-q"])
    shutil.copytree(features / "local_features", index / "local_features")
    shutil.copy(features / "image_hashes.parquet", index / "image_hashes.parquet")
    return index


def start_server(index: Path, workdir: Path) -> tuple[subprocess.Popen, int]:
    log = open(workdir / "serve.log", "w")  # noqa: SIM115 - the server's stderr for its whole life
    server = subprocess.Popen([sys.executable, "-m", "skimgfeat", "serve", str(index), "--port", "0",
                               "--cache-dir", str(workdir / "cache")], stderr=log, stdout=log)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", (workdir / "serve.log").read_text())
        if found:
            return server, int(found.group(1))
        if server.poll() is not None:
            raise SystemExit((workdir / "serve.log").read_text())
        time.sleep(0.2)
    raise SystemExit("the server did not start in 10 minutes")


def get(port: int, path: str) -> tuple[int, bytes, float]:
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body, time.perf_counter() - start


def upload(port: int, photo: Path) -> tuple[int, dict, float]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"{photo.name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/api/search", body=body,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer, time.perf_counter() - start


def searches_by_name(port: int, names: list[str], clients: int, total: int) -> np.ndarray:
    """``total`` page loads of /search?q=NAME by ``clients`` threads at once; their latencies."""
    from urllib.parse import quote

    latencies, failures, lock = [], [], threading.Lock()
    counter = iter(range(total))
    barrier = threading.Barrier(clients)

    def client() -> None:
        barrier.wait()
        for number in counter:
            status, _, seconds = get(port, f"/search?q={quote(names[number % len(names)])}")
            with lock:
                (latencies if status == 200 else failures).append(seconds if status == 200 else status)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{len(failures)} searches failed: {failures[:5]}")
    return np.asarray(latencies)


def _run(command: list[str]) -> None:
    env = {**os.environ, "SKIMGFEAT_WEIGHTS": os.environ.get("SKIMGFEAT_WEIGHTS", str(WEIGHTS))}
    subprocess.run(command, check=True, env=env)


def _summary(name: str, seconds: np.ndarray) -> str:
    ms = seconds * 1000
    return (f"{name}: n={len(ms)} p50={np.percentile(ms, 50):.0f} ms p95={np.percentile(ms, 95):.0f} ms "
            f"max={ms.max():.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--searches", type=int, default=400)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="reuse the archive of an earlier run in --workdir")
    args = parser.parse_args()
    if not OBJECTS.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {OBJECTS} and {WEIGHTS} (../shared)")
    os.environ.setdefault("SKIMGFEAT_WEIGHTS", str(WEIGHTS))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="serve-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    index = build_archive(workdir, args.rows, args.reuse)
    print(f"archive: {args.rows:,} rows in {index} ({time.perf_counter() - started:.0f} s to build)", flush=True)
    server, port = start_server(index, workdir)
    try:
        rows = pq.read_table(workdir / "archive.parquet", columns=["image_path"]).column(0).to_pylist()
        rng = np.random.default_rng(1)
        names = [rows[i] for i in rng.choice(len(rows), size=min(len(rows), args.searches), replace=False)]
        phones = sorted(OBJECTS.glob("dvd*_palm.jpg"))
        while upload(port, phones[-1])[0] != 200:  # the server answers and its network is ready
            time.sleep(0.5)
        loads = searches_by_name(port, names, args.clients, args.searches)
        print(_summary(f"search by name, {args.clients} clients at once, /search page", loads), flush=True)
        real = next(name for name in rows if name.startswith("dvd"))  # a photo with local features, as are its tiles
        status, body, _ = get(port, f"/api/search?q={real}")
        tiles = [hit["image_path"] for hit in json.loads(body)["hits"]]
        verify = np.asarray([get(port, f"/api/verify?q={real}&b={tile}")[2] for tile in tiles])
        print(_summary("one tile verified (/api/verify), one at a time", verify), flush=True)
        seconds, own_case, catalogue = [], 0, 0
        for phone in phones[: args.uploads]:
            status, answer, took = upload(port, phone)
            assert status == 200, answer
            seconds.append(took)
            case = phone.name.split("_")[0]
            verified = [hit["image_path"] for hit in answer["hits"] if hit["verdict"] == "same_object"]
            own_case += any(name.startswith(case + "_") for name in verified)
            catalogue += f"{case}_reference.jpg" in verified
        print(_summary("upload of a phone photo, embedded and 12 candidates verified", np.asarray(seconds)) +
              f"; a photo of its own case same_object in {own_case} of {len(seconds)}, its catalogue photo in "
              f"{catalogue}", flush=True)
    finally:
        server.terminate()
        server.wait(60)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores)")


if __name__ == "__main__":
    main()
