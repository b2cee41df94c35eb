"""Images per second of one model per family, end to end on the CPU (decode + forward).

Random weights (the speed of a network does not depend on its values), the default
backend, real grocery shop photos (about 348 px) from ../shared. The network is built
and prepared (ONNX export) before timing; each model is timed twice and the faster run
is kept. Numbers on a shared machine are noisy: compare rows of one run only.

    python benchmarks/model_families.py                      # the table in docs/models.md
    python benchmarks/model_families.py --images 256 --models timm:vit_small_patch16_224
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from skimgfeat import CNNImageEmbedder

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MODELS = (
    "mobilenet_v2",
    "shufflenet_v2_x1_0",
    "mobilenet_v3_large",
    "resnet50",
    "efficientnet_b0",
    "efficientnet_b3",
    "convnext_tiny",
    "timm:convnext_tiny.fb_in22k",
    "timm:efficientnetv2_rw_s.ra2_in1k",
    "timm:vit_small_patch16_224.augreg_in21k",
    "timm:vit_small_patch14_dinov2.lvd142m",
    "open_clip:ViT-B-32",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    photos = sorted((SHARED / "images" / "grocery" / "train").rglob("*.jpg"))[: args.images]
    print(f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, {len(photos)} photos")
    print(f"{'model':<42}{'width':>6}  {'input':>5}  {'backend':<18}{'images/s':>9}")
    for name in args.models.split(","):
        embedder = CNNImageEmbedder(name, weights=None, random_state=0, device="cpu").fit()
        embedder.transform([str(photos[0])])  # prepares the backend
        backend = type(embedder._runner().module).__name__
        seconds = []
        for _ in range(2):
            started = time.perf_counter()
            embedder.transform([str(p) for p in photos])
            seconds.append(time.perf_counter() - started)
        crop = embedder.preprocessing_.crop
        print(f"{name:<42}{embedder.n_features_out_:>6}  {crop:>5}  {backend:<18}{len(photos) / min(seconds):>9.1f}",
              flush=True)


if __name__ == "__main__":
    main()
