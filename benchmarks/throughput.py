"""End-to-end throughput of skimgfeat against a straightforward implementation.

Input: real photos from ../shared/images (ImageNet-labelled and grocery shop photos),
re-encoded at auction size (1200 px long side by default) as JPEG and WebP into a
temporary folder. Every measurement runs in a fresh process, and the straightforward
implementation and skimgfeat alternate, so both see the same machine load.

    python benchmarks/throughput.py                  # table: images/s, ratio, ceiling, RSS
    python benchmarks/throughput.py --images 2000    # longer, steadier run
    python benchmarks/throughput.py --variants baseline,skimgfeat,skimgfeat-eager,skimgfeat-draft
    python benchmarks/throughput.py --memory         # peak RSS for 2,000 vs 20,000 images
    python benchmarks/throughput.py --gpu            # CUDA: batch sizes 32 to 256

"ceiling" is the model-only throughput of the same inference path on pre-decoded
batches; "e2e/ceil" says how much of it survives decoding (decoding must overlap).
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
N_CHECK = 64  # images whose features are compared against the straightforward implementation

# skimgfeat settings per variant; "baseline" is the straightforward implementation.
VARIANTS: dict[str, dict] = {
    "skimgfeat": {},
    "skimgfeat-eager": {"backend": "eager"},
    "skimgfeat-torchscript": {"backend": "torchscript"},
    "skimgfeat-draft": {"draft": True},
    "skimgfeat-1worker": {"n_workers": 1},
    "skimgfeat-2threads": {"env": {"SKIMGFEAT_INFERENCE_THREADS": "2"}},
    "skimgfeat-samepriority": {"env": {"SKIMGFEAT_DECODE_NICENESS": "0"}},
    "skimgfeat-serial": {"env": {"SKIMGFEAT_PARALLEL_BATCHES": "1"}},
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


def run_baseline(paths: list[str], model_name: str, mode: str) -> tuple[float, np.ndarray]:
    """Per-image PIL open + torchvision transforms, batches of 32, eager float32."""
    import torch
    from PIL import Image

    model = build_reference_model(model_name)
    transform = reference_transform()

    def load(path: str):
        with Image.open(path) as image:
            return transform(image.convert("RGB"))

    with torch.no_grad():
        warm = torch.stack([load(p) for p in paths[:BATCH]])
        model(warm)
        if mode == "ceiling":
            return _time_model_only(lambda: model(warm), len(paths)), np.empty(0)
        start = time.perf_counter()
        features = []
        for i in range(0, len(paths), BATCH):
            batch = torch.stack([load(p) for p in paths[i : i + BATCH]])
            out = model(batch).numpy()
            if i < N_CHECK:
                features.append(out)
        elapsed = time.perf_counter() - start
    return len(paths) / elapsed, np.concatenate(features)[:N_CHECK]


def run_skimgfeat(paths: list[str], model_name: str, mode: str, settings: dict) -> tuple[float, np.ndarray]:
    from skimgfeat import CNNImageEmbedder

    weights = str(WEIGHTS) if model_name == "mobilenet_v2" and WEIGHTS.exists() else None
    embedder = CNNImageEmbedder(model_name, weights=weights, device="cpu", **settings).fit()
    if weights is None:  # the baseline's random network, so that features can be compared
        embedder.model_.load_state_dict(build_reference_model(model_name).state_dict())
    embedder.transform(paths[:BATCH])  # prepares the backend and warms it up
    if mode == "ceiling":
        from skimgfeat.inference import decode_pixels

        runner = embedder._runner()
        pixels = np.stack([decode_pixels(p, embedder.preprocessing_, None) for p in paths[:BATCH]])
        return _time_model_only(lambda: runner(pixels), len(paths)), np.empty(0)
    start = time.perf_counter()
    features = [batch.features for batch in embedder.iter_transform(paths) if batch.start < N_CHECK]
    elapsed = time.perf_counter() - start
    return len(paths) / elapsed, np.concatenate(features)[:N_CHECK]


def _time_model_only(forward, n_images: int) -> float:
    """Images/s of ``forward`` (one batch of 32) over at least ``n_images`` images, min 3 s."""
    start = time.perf_counter()
    done = 0
    while done < n_images or time.perf_counter() - start < 3.0:
        forward()
        done += BATCH
    return done / (time.perf_counter() - start)


def worker_main(args: argparse.Namespace) -> None:
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    paths = Path(args.paths).read_text().splitlines()
    if args.worker == "baseline":
        rate, features = run_baseline(paths, args.model, args.mode)
    else:
        settings = dict(VARIANTS[args.worker])
        os.environ.update(settings.pop("env", {}))
        if args.n_workers and "n_workers" not in settings:
            settings["n_workers"] = args.n_workers
        rate, features = run_skimgfeat(paths, args.model, args.mode, settings)
    if args.features:
        np.save(args.features, features)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images_per_s": rate, "peak_rss_mb": peak_mb}))


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
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{worker} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cosine = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return float(cosine.min())


def benchmark(args: argparse.Namespace, folder: Path) -> list[dict]:
    variants = args.variants.split(",")
    rows = []
    for fmt in args.formats.split(","):
        sources = encode_inputs(folder, fmt, args.sources, args.long_side)
        listing = path_list(folder, sources, args.images)
        for model in args.models.split(","):
            rates: dict[str, list[float]] = {v: [] for v in variants}
            rss: dict[str, float] = {}
            feats: dict[str, np.ndarray] = {}
            for _ in range(args.repeats):
                for variant in variants:  # alternating, fresh process each
                    out = folder / f"features-{variant}.npy"
                    result = spawn(variant, model, listing, "e2e", args, out)
                    rates[variant].append(result["images_per_s"])
                    rss[variant] = max(rss.get(variant, 0.0), result["peak_rss_mb"])
                    feats[variant] = np.load(out)
                    print(f"  {model} {fmt} {variant}: {result['images_per_s']:.1f} img/s", file=sys.stderr)
            ceiling = {v: spawn(v, model, listing, "ceiling", args)["images_per_s"] for v in variants}
            base = statistics.median(rates["baseline"]) if "baseline" in rates else None
            for variant in variants:
                rate = statistics.median(rates[variant])
                rows.append(
                    {
                        "model": model,
                        "format": fmt,
                        "variant": variant,
                        "images_per_s": rate,
                        "ratio": rate / base if base else float("nan"),
                        "ceiling": ceiling[variant],
                        "e2e_of_ceiling": rate / ceiling[variant],
                        "peak_rss_mb": rss[variant],
                        "min_cosine": min_cosine(feats[variant], feats["baseline"]) if base else float("nan"),
                        "runs": rates[variant],
                    }
                )
    return rows


def print_table(rows: list[dict]) -> None:
    print("| model | format | implementation | images/s | vs baseline | model-only ceiling | e2e/ceiling "
          "| peak RSS MB | min cosine vs baseline |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        runs = "/".join(f"{x:.0f}" for x in r["runs"])
        print(
            f"| {r['model']} | {r['format']} | {r['variant']} | {r['images_per_s']:.1f} ({runs}) "
            f"| {r['ratio']:.2f}x | {r['ceiling']:.1f} | {100 * r['e2e_of_ceiling']:.0f}% "
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
    from skimgfeat.inference import decode_pixels

    if not torch.cuda.is_available():
        sys.exit("--gpu needs CUDA")
    sources = encode_inputs(folder, "jpeg", args.sources, args.long_side)
    paths = Path(path_list(folder, sources, args.images)).read_text().splitlines()
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| model | batch | precision | model-only images/s | end-to-end images/s |")
    print("|---|---:|---|---:|---:|")
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
                print(f"| {model} | {batch} | {precision} | {model_only:.0f} | {e2e:.0f} |", flush=True)


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
    parser.add_argument("--images", type=int, default=480, help="images per end-to-end run")
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
    parser.add_argument("--workdir", help="keep the re-encoded photos here instead of a temporary folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="e2e", help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(args)
        return
    with tempfile.TemporaryDirectory(prefix="skimgfeat-bench-") as tmp:
        folder = Path(args.workdir) if args.workdir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{time.strftime('%Y-%m-%d')} | {machine()}")
        print(f"command: python benchmarks/throughput.py {' '.join(sys.argv[1:])}\n")
        if args.memory:
            memory_mode(args, folder)
        elif args.gpu:
            gpu_mode(args, folder)
        else:
            print_table(benchmark(args, folder))


if __name__ == "__main__":
    main()
