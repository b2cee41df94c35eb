"""End-to-end throughput of skimgfeat against a straightforward implementation.

Input: real photos from ../shared/images (ImageNet-labelled and grocery shop photos),
re-encoded at auction size (1200 px long side by default) as JPEG and WebP into a
temporary folder. Every measurement runs in a fresh process, and the straightforward
implementation and skimgfeat alternate, so both see the same machine load.

    python benchmarks/throughput.py                  # the table below, about 5 minutes
    python benchmarks/throughput.py --images 2000    # longer, steadier run
    python benchmarks/throughput.py --variants baseline,skimgfeat,skimgfeat-serial,skimgfeat-int8
    python benchmarks/throughput.py --memory         # peak RSS for 2,000 vs 20,000 images
    python benchmarks/throughput.py --gpu            # CUDA: batch sizes 32 to 256
    python benchmarks/throughput.py --camera 200     # 200 camera-sized JPEGs (10 MP and 5 MP)

``--camera N`` makes N camera-sized JPEGs from the shared photos (upscaled to 10 MP and
5 MP alternately, bicubic, re-encoded at quality 92; a real camera original would be
noisier, so larger and slower to decode for both sides) and runs the straightforward
implementation, skimgfeat (reduced-scale JPEG decoding, the default) and
``skimgfeat-exact`` (``draft=False``, every photo decoded in full) on them; "min cosine"
then covers all N photos.

Each end-to-end run is timed from before the network is built (fit included, imports
not) to the last feature row: "images/s incl. fit" and its ratio to the baseline;
"fit + first batch" is the latency until the first 32 rows; "after first batch" the
steady rate. "decode ms" and "model ms" are the CPU cost per image of each stage on one
thread (measured in a separate process); "limit" = cores / (decode + model) is what a
perfect pipeline would reach, and "efficiency" = steady rate / limit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
MODELS = ("mobilenet_v2", "shufflenet_v2_x1_0")
FORMATS = ("jpeg", "webp")
BATCH = 32
N_STAGE_SAMPLE = 64  # images decoded to measure the decode cost per image
CHECKED = int(os.environ.get("BENCH_CHECKED_IMAGES", 64))  # images compared with the straightforward implementation
CALIBRATION = 32  # int8 variants calibrate on the last images of the run (re-encoded copies of its sources)

# skimgfeat settings per variant; "baseline" is the straightforward implementation.
VARIANTS: dict[str, dict] = {
    "skimgfeat": {},
    "skimgfeat-eager": {"backend": "eager"},
    "skimgfeat-torchscript": {"backend": "torchscript"},
    "skimgfeat-exact": {"draft": False},
    "skimgfeat-1worker": {"n_workers": 1},
    "skimgfeat-2threads": {"env": {"SKIMGFEAT_INFERENCE_THREADS": "2"}},
    "skimgfeat-samepriority": {"env": {"SKIMGFEAT_DECODE_NICENESS": "0"}},
    "skimgfeat-serial": {"env": {"SKIMGFEAT_PARALLEL_BATCHES": "1"}},
    "skimgfeat-int8": {"precision": "int8"},
    "skimgfeat-nocache": {"env": {"SKIMGFEAT_CACHE_DIR": "off"}},
}


# -- input ---------------------------------------------------------------------


def source_photos(n: int) -> list[Path]:
    """Up to ``n`` real photos, alternating ImageNet-labelled and grocery shop photos."""
    imagenet = sorted((SHARED / "images" / "imagenet-labelled").glob("*.JPEG"))
    grocery = sorted((SHARED / "images" / "grocery" / "train").rglob("*.jpg"))[::7]
    if not imagenet and not grocery:
        sys.exit(f"no photos under {SHARED / 'images'}: see ../shared/README.md")
    mixed = [p for pair in zip(imagenet, grocery) for p in pair]
    return (mixed + imagenet[len(mixed) // 2 :] + grocery[len(mixed) // 2 :])[:n]


def encode_inputs(folder: Path, fmt: str, n_sources: int, long_side: int) -> list[Path]:
    """Re-encode the source photos at ``long_side`` px as ``fmt`` (quality 85)."""
    from PIL import Image

    out = folder / fmt
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, source in enumerate(source_photos(n_sources)):
        target = out / f"{i:04d}.{'jpg' if fmt == 'jpeg' else 'webp'}"
        if not target.exists():
            with Image.open(source) as image:
                image = image.convert("RGB")
                scale = long_side / max(image.size)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image.resize(size, Image.Resampling.BICUBIC).save(target, quality=85)
        paths.append(target)
    return paths


def camera_inputs(folder: Path, n: int) -> list[Path]:
    """``n`` camera-sized JPEGs: shared photos upscaled to 10 MP (even) or 5 MP (odd), quality 92."""
    from PIL import Image

    out = folder / "camera"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, source in enumerate(source_photos(n)):
        target = out / f"{i:04d}.jpg"
        if not target.exists():
            with Image.open(source) as image:
                image = image.convert("RGB")
                scale = ((10e6 if i % 2 == 0 else 5e6) / (image.width * image.height)) ** 0.5
                size = (round(image.width * scale), round(image.height * scale))
                image.resize(size, Image.Resampling.BICUBIC).save(target, quality=92)
        paths.append(target)
    return paths


def path_list(folder: Path, sources: list[Path], n_images: int) -> Path:
    """A file listing ``n_images`` distinct paths: symlinks cycling over ``sources``.

    Distinct names, because skimgfeat embeds a repeated path only once.
    """
    links = folder / f"links-{sources[0].parent.name}"
    links.mkdir(exist_ok=True)
    paths = []
    for i in range(n_images):
        link = links / f"{i:06d}{sources[i % len(sources)].suffix}"
        if not link.exists():
            link.symlink_to(sources[i % len(sources)])
        paths.append(str(link))
    listing = folder / f"paths-{sources[0].parent.name}-{n_images}.txt"
    listing.write_text("\n".join(paths))
    return listing


# -- workers (each in a fresh process) -------------------------------------------


def build_reference_model(model_name: str):
    """The eager float32 torchvision network, head removed, as a straightforward script would."""
    import torch
    import torchvision

    torch.manual_seed(0)  # random weights (no real ShuffleNetV2 file): the same in every process
    model = torchvision.models.get_model(model_name, weights=None)
    if model_name == "mobilenet_v2" and WEIGHTS.exists():
        model.load_state_dict(torch.load(WEIGHTS, map_location="cpu"))
    head = "classifier" if hasattr(model, "classifier") else "fc"
    setattr(model, head, torch.nn.Flatten(1))
    return model.eval()


def reference_transform():
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize((256, 256)),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )


def run_baseline(paths: list[str], model_name: str, mode: str) -> dict:
    """Per-image PIL open + torchvision transforms, batches of 32, eager float32."""
    import torch
    from PIL import Image

    started = time.perf_counter()
    model = build_reference_model(model_name)
    transform = reference_transform()

    def load(path: str):
        with Image.open(path) as image:
            return transform(image.convert("RGB"))

    with torch.no_grad():
        if mode == "stages":
            torch.set_num_threads(1)
            pixels = torch.stack([load(p) for p in paths[:BATCH]])
            return _stage_costs(lambda path: load(path), lambda: model(pixels), paths)

        def batches():
            for i in range(0, len(paths), BATCH):
                yield model(torch.stack([load(p) for p in paths[i : i + BATCH]])).numpy()

        return _time_stream(batches(), started, len(paths))


def run_skimgfeat(paths: list[str], model_name: str, mode: str, settings: dict) -> dict:
    from skimgfeat import CNNImageEmbedder

    started = time.perf_counter()
    weights = str(WEIGHTS) if model_name == "mobilenet_v2" and WEIGHTS.exists() else None
    calibration = paths[-CALIBRATION:] if settings.get("precision") == "int8" else None
    embedder = CNNImageEmbedder(model_name, weights=weights, device="cpu", **settings)
    embedder.fit(calibration)
    if weights is None:  # the baseline's random network, so that features can be compared
        embedder.model_.load_state_dict(build_reference_model(model_name).state_dict())
    if mode == "stages":
        from skimgfeat.engine.decoding import decode_pixels

        runner = embedder._runner()
        pixels = np.stack([decode_pixels(p, embedder.preprocessing_, None) for p in paths[:BATCH]])
        return _stage_costs(lambda path: decode_pixels(path, embedder.preprocessing_, None),
                            lambda: runner(pixels), paths)
    return _time_stream((batch.features for batch in embedder.iter_transform(paths)), started, len(paths))


def _time_stream(batches, started: float, n_images: int) -> dict:
    """Fit + first-batch latency, images/s including fit, and after the first batch."""
    features, first = [], None
    for out in batches:
        if first is None:
            first = time.perf_counter()
        if sum(len(f) for f in features) < CHECKED:
            features.append(out)
    ended = time.perf_counter()
    return {
        "fit_first_batch_s": first - started,
        "images_per_s": n_images / (ended - started),
        "steady_images_per_s": (n_images - BATCH) / (ended - first),
        "features": np.concatenate(features)[:CHECKED],
    }


def _stage_costs(decode, forward, paths: list[str]) -> dict:
    """CPU milliseconds per image of decoding and of the model, each on one thread.

    CPU time of the calling thread (everything runs in it), so other programs running
    beside the benchmark do not inflate the costs.
    """
    forward()  # warm-up: first-call specialisation and allocations
    sample = paths[: max(N_STAGE_SAMPLE, BATCH)]
    start = time.thread_time()
    for path in sample:
        decode(path)
    decode_ms = 1000 * (time.thread_time() - start) / len(sample)
    start, done = time.thread_time(), 0
    while done < 4 * BATCH or time.thread_time() - start < 2.0:
        forward()
        done += BATCH
    model_ms = 1000 * (time.thread_time() - start) / done
    return {"decode_ms": decode_ms, "model_ms": model_ms}


def worker_main(args: argparse.Namespace) -> None:
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    paths = Path(args.paths).read_text().splitlines()
    if args.worker == "baseline":
        result = run_baseline(paths, args.model, args.mode)
    else:
        settings = dict(VARIANTS[args.worker])
        os.environ.update(settings.pop("env", {}))
        if args.mode == "stages":  # one thread, one call at a time: the cost of the model alone
            os.environ.update({"SKIMGFEAT_INFERENCE_THREADS": "1", "SKIMGFEAT_PARALLEL_BATCHES": "1"})
        if args.n_workers and "n_workers" not in settings:
            settings["n_workers"] = args.n_workers
        result = run_skimgfeat(paths, args.model, args.mode, settings)
    features = result.pop("features", None)
    if args.features and features is not None:
        np.save(args.features, features)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# -- driver ----------------------------------------------------------------------


def spawn(worker: str, model: str, listing: Path, mode: str, args, features: Path | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", worker, "--model", model, "--paths", str(listing)]
    command += ["--mode", mode]
    if features is not None:
        command += ["--features", str(features)]
    if args.torch_threads:
        command += ["--torch-threads", str(args.torch_threads)]
    if args.n_workers:
        command += ["--n-workers", str(args.n_workers)]
    # A cache of prepared graphs private to this benchmark: the first fit of a variant fills it
    # (the stage measurements run first), the timed runs reuse it as a user's later fits would.
    env = dict(os.environ, SKIMGFEAT_CACHE_DIR=str(args.artifact_dir))
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{worker} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cosine = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return float(cosine.min())


def benchmark(args: argparse.Namespace, folder: Path) -> list[dict]:
    variants = args.variants.split(",")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    for fmt in ["jpeg"] if args.camera else args.formats.split(","):
        if args.camera:
            sources = camera_inputs(folder, args.camera)
            listing = path_list(folder, sources, len(sources))
        else:
            sources = encode_inputs(folder, fmt, args.sources, args.long_side)
            listing = path_list(folder, sources, args.images)
        for model in args.models.split(","):
            stages = {v: spawn(v, model, listing, "stages", args) for v in variants}
            runs: dict[str, list[dict]] = {v: [] for v in variants}
            feats: dict[str, np.ndarray] = {}
            for _ in range(args.repeats):
                for variant in variants:  # alternating, fresh process each
                    out = folder / f"features-{variant}.npy"
                    result = spawn(variant, model, listing, "e2e", args, out)
                    runs[variant].append(result)
                    feats[variant] = np.load(out)
                    print(f"  {model} {fmt} {variant}: {result['images_per_s']:.1f} img/s", file=sys.stderr)
            base = _median(runs["baseline"], "images_per_s") if "baseline" in runs else None
            for variant in variants:
                rate = _median(runs[variant], "images_per_s")
                steady = _median(runs[variant], "steady_images_per_s")
                cost_ms = stages[variant]["decode_ms"] + stages[variant]["model_ms"]
                limit = cores * 1000 / cost_ms
                rows.append(
                    {
                        "model": model,
                        "format": fmt,
                        "variant": variant,
                        "images_per_s": rate,
                        "ratio": rate / base if base else float("nan"),
                        "fit_first_batch_s": _median(runs[variant], "fit_first_batch_s"),
                        "steady_images_per_s": steady,
                        "decode_ms": stages[variant]["decode_ms"],
                        "model_ms": stages[variant]["model_ms"],
                        "limit": limit,
                        "efficiency": steady / limit,
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[variant]),
                        "min_cosine": min_cosine(feats[variant], feats["baseline"]) if base else float("nan"),
                        "runs": [r["images_per_s"] for r in runs[variant]],
                    }
                )
    return rows


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_table(rows: list[dict]) -> None:
    print("| model | format | implementation | images/s incl. fit | vs baseline | fit + first batch s "
          "| images/s after first batch | decode ms | model ms | limit images/s | efficiency "
          "| peak RSS MB | min cosine vs baseline |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        runs = "/".join(f"{x:.0f}" for x in r["runs"])
        print(
            f"| {r['model']} | {r['format']} | {r['variant']} | {r['images_per_s']:.1f} ({runs}) "
            f"| {r['ratio']:.2f}x | {r['fit_first_batch_s']:.2f} | {r['steady_images_per_s']:.1f} "
            f"| {r['decode_ms']:.1f} | {r['model_ms']:.1f} | {r['limit']:.0f} | {100 * r['efficiency']:.0f}% "
            f"| {r['peak_rss_mb']:.0f} | {r['min_cosine']:.6f} |"
        )


def memory_mode(args: argparse.Namespace, folder: Path) -> None:
    sources = encode_inputs(folder, "jpeg", args.sources, args.long_side)
    print("| images | images/s | peak RSS MB |")
    print("|---:|---:|---:|")
    for n in (int(x) for x in args.memory_sizes.split(",")):
        listing = path_list(folder, sources, n)
        result = spawn("skimgfeat", "mobilenet_v2", listing, "e2e", args)
        print(f"| {n} | {result['images_per_s']:.1f} | {result['peak_rss_mb']:.0f} |", flush=True)


def gpu_mode(args: argparse.Namespace, folder: Path) -> None:
    """Model-only and end-to-end CUDA throughput for batch sizes 32 to 256."""
    import torch

    from skimgfeat import CNNImageEmbedder
    from skimgfeat.engine.decoding import decode_pixels

    if not torch.cuda.is_available():
        sys.exit("--gpu needs CUDA")
    sources = encode_inputs(folder, "jpeg", args.sources, args.long_side)
    paths = Path(path_list(folder, sources, args.images)).read_text().splitlines()
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| model | batch | precision | model-only images/s | end-to-end images/s | end-to-end, JPEG decoded on GPU |")
    print("|---|---:|---|---:|---:|---:|")
    for model in args.models.split(","):
        for precision in ("float32", "float16"):
            for batch in (32, 64, 128, 256):
                embedder = CNNImageEmbedder(model, weights=None, random_state=0, device="cuda",
                                            batch_size=batch, precision=precision).fit()
                embedder.transform(paths[:batch])
                runner = embedder._runner()
                pixels = np.stack([decode_pixels(p, embedder.preprocessing_, None) for p in paths[:batch]])
                start = time.perf_counter()
                for _ in range(20):
                    runner(pixels)
                torch.cuda.synchronize()
                model_only = 20 * batch / (time.perf_counter() - start)
                start = time.perf_counter()
                embedder.transform(paths)
                e2e = len(paths) / (time.perf_counter() - start)
                embedder.set_params(decode_device="cuda")
                embedder.transform(paths[:batch])
                start = time.perf_counter()
                embedder.transform(paths)
                gpu_decoded = len(paths) / (time.perf_counter() - start)
                print(f"| {model} | {batch} | {precision} | {model_only:.0f} | {e2e:.0f} | {gpu_decoded:.0f} |",
                      flush=True)


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    import torch

    return f"{name}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} torch threads"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320, help="images per end-to-end run")
    parser.add_argument("--sources", type=int, default=160, help="distinct re-encoded photos")
    parser.add_argument("--long-side", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--variants", default="baseline,skimgfeat")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--n-workers", type=int, default=0, help="decode threads; 0: skimgfeat's default")
    parser.add_argument("--memory", action="store_true", help="peak RSS for --memory-sizes images")
    parser.add_argument("--memory-sizes", default="2000,20000")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--camera", type=int, default=0, metavar="N",
                        help="N camera-sized JPEGs (10 MP / 5 MP) instead of --images; variants "
                             "baseline,skimgfeat,skimgfeat-exact unless --variants is given")
    parser.add_argument("--workdir", help="keep the re-encoded photos here instead of a temporary folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="e2e", help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.camera:
        os.environ["BENCH_CHECKED_IMAGES"] = str(args.camera)  # every photo's features compared
        if "--variants" not in sys.argv:
            args.variants = "baseline,skimgfeat,skimgfeat-exact"
    if args.worker:
        worker_main(args)
        return
    with tempfile.TemporaryDirectory(prefix="skimgfeat-bench-") as tmp:
        folder = Path(args.workdir) if args.workdir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        args.artifact_dir = folder / "artifacts"
        print(f"{time.strftime('%Y-%m-%d')} | {machine()} | load average before: {_load():.1f}")
        print(f"command: python benchmarks/throughput.py {' '.join(sys.argv[1:])}\n")
        if args.memory:
            memory_mode(args, folder)
        elif args.gpu:
            gpu_mode(args, folder)
        else:
            print_table(benchmark(args, folder))
        print(f"\nload average after: {_load():.1f} (1 minute; 0 on an otherwise idle machine)")


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


if __name__ == "__main__":
    main()
