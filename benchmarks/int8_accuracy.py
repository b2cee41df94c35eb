"""precision="int8" against float32: model-only speed, feature cosine, and ImageNet top-1.

Calibrates on 64 grocery shop photos from ../shared (not the evaluation photos), then
embeds the 100 labelled ImageNet photos with both precisions and applies the weights'
own classifier (the dequantized MobileNetV2 file's final Linear) to the features.
Model-only cost is CPU time per image on one thread (batches of 32), so other programs
running beside it do not inflate it.

    python benchmarks/int8_accuracy.py
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import torch

from skimgfeat import CNNImageEmbedder
from skimgfeat.engine.decoding import decode_pixels

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
IMAGENET = SHARED / "images" / "imagenet-labelled"
GROCERY = SHARED / "images" / "grocery" / "train"


def model_ms_per_image(embedder: CNNImageEmbedder, pixels: np.ndarray) -> float:
    runner = embedder._runner()
    runner(pixels)
    start, done = time.thread_time(), 0
    while time.thread_time() - start < 3.0:
        runner(pixels)
        done += len(pixels)
    return 1000 * (time.thread_time() - start) / done


def main() -> None:
    os.environ.update({"SKIMGFEAT_INFERENCE_THREADS": "1", "SKIMGFEAT_PARALLEL_BATCHES": "1"})
    labels = {row["filename"]: int(row["class_index"]) for row in csv.DictReader(open(IMAGENET / "labels.csv"))}
    photos = sorted(IMAGENET / name for name in labels)
    truth = np.array([labels[p.name] for p in photos])
    calibration = sorted(GROCERY.rglob("*.jpg"))[::37][:64]
    state = torch.load(WEIGHTS, map_location="cpu")
    weight, bias = state["classifier.1.weight"].numpy(), state["classifier.1.bias"].numpy()
    float32 = CNNImageEmbedder(weights=str(WEIGHTS), device="cpu").fit()
    started = time.perf_counter()
    int8 = CNNImageEmbedder(weights=str(WEIGHTS), device="cpu", precision="int8").fit(calibration)
    fit_seconds = time.perf_counter() - started
    pixels = np.stack([decode_pixels(p, float32.preprocessing_, None) for p in photos[:32]])
    features = {"float32": float32.transform(photos), "int8": int8.transform(photos)}
    a, b = features["float32"].astype(np.float64), features["int8"].astype(np.float64)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    speed = {"float32": model_ms_per_image(float32, pixels), "int8": model_ms_per_image(int8, pixels)}
    print(f"int8 fit (calibration on {len(calibration)} grocery photos, or the artifact cache): {fit_seconds:.1f} s")
    print("| precision | model ms/image (1 thread, CPU time) | speed-up | top-1 (100 ImageNet photos) |")
    print("|---|---:|---:|---:|")
    for name in ("float32", "int8"):
        top1 = ((features[name] @ weight.T + bias).argmax(1) == truth).mean()
        print(f"| {name} | {speed[name]:.2f} | {speed['float32'] / speed[name]:.2f}x | {top1:.2f} |")
    print(f"feature cosine int8 vs float32: min {cosine.min():.4f}, median {np.median(cosine):.4f}")


if __name__ == "__main__":
    main()
