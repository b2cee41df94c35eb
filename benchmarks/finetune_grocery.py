"""Fine-tuned versus frozen features on the grocery photos: fit time and accuracy gain.

Fits ``CNNImageEmbedder(weights=<shared MobileNetV2>, fine_tune=..., random_state=0)`` on the
training split's fine-grained labels, then fits ``LogisticRegression`` on the frozen and on the
fine-tuned features of the training photos and scores both on the val split.

    python benchmarks/finetune_grocery.py                      # fine_tune="all", every photo
    python benchmarks/finetune_grocery.py --fine-tune 3
    python benchmarks/finetune_grocery.py --classes 20 --per-class 12 --epochs 3   # a quick look

Prints one JSON line per run (fit seconds, epochs, validation score of the temporary head,
frozen and fine-tuned accuracy, gain in points).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from skimgfeat import CNNImageEmbedder  # noqa: E402

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
GROCERY = SHARED / "images" / "grocery"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"


def read_split(name: str, classes: int | None, per_class: int | None) -> tuple[list[str], np.ndarray]:
    paths, labels, seen = [], [], {}
    for line in (GROCERY / f"{name}.txt").read_text().splitlines():
        relative, fine_id, _ = (part.strip() for part in line.split(","))
        label = int(fine_id)
        if classes is not None and label >= classes:
            continue
        seen[label] = seen.get(label, 0) + 1
        if per_class is not None and seen[label] > per_class:
            continue
        paths.append(str(GROCERY / relative))
        labels.append(label)
    return paths, np.asarray(labels)


def probe_accuracy(train_features, y_train, val_features, y_val) -> float:
    model = LogisticRegression(max_iter=2000).fit(train_features, y_train)
    return float(model.score(val_features, y_val))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fine-tune", default="all", help='"all" or a number of blocks')
    parser.add_argument("--epochs", type=int, default=None, help="fine_tune_epochs (default: the estimator's)")
    parser.add_argument("--options", default="{}", help="fine_tune_options as JSON")
    parser.add_argument("--classes", type=int, default=None, help="only the first N fine classes")
    parser.add_argument("--per-class", type=int, default=None, help="at most N training photos per class")
    parser.add_argument("--cache", default=None, help="feature cache folder for the frozen features")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    fine_tune = args.fine_tune if args.fine_tune == "all" else int(args.fine_tune)

    train_paths, y_train = read_split("train", args.classes, args.per_class)
    val_paths, y_val = read_split("val", args.classes, None)

    frozen = CNNImageEmbedder(weights=str(WEIGHTS), cache=args.cache).fit()
    frozen_accuracy = probe_accuracy(frozen.transform(train_paths), y_train, frozen.transform(val_paths), y_val)

    extra = {} if args.epochs is None else {"fine_tune_epochs": args.epochs}
    tuned = CNNImageEmbedder(
        weights=str(WEIGHTS), fine_tune=fine_tune, random_state=0, progress=args.progress,
        fine_tune_options=json.loads(args.options), **extra,
    )
    start = time.perf_counter()
    tuned.fit(train_paths, y_train)
    fit_seconds = time.perf_counter() - start
    tuned_accuracy = probe_accuracy(tuned.transform(train_paths), y_train, tuned.transform(val_paths), y_val)

    record = tuned.model_info_["fine_tuning"]
    print(json.dumps({
        "fine_tune": fine_tune,
        "n_train": len(train_paths),
        "n_val": len(val_paths),
        "options": json.loads(args.options),
        "fit_seconds": round(fit_seconds, 1),
        "epochs_run": record["epochs_run"],
        "best_epoch": record["best_epoch"],
        "head_validation_accuracy": record["validation_score"],
        "history": record["history"],
        "frozen_accuracy": round(frozen_accuracy, 4),
        "fine_tuned_accuracy": round(tuned_accuracy, 4),
        "gain_points": round(100 * (tuned_accuracy - frozen_accuracy), 1),
    }), flush=True)


if __name__ == "__main__":
    main()
