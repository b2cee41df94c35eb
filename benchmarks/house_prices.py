"""Every way of using listing photos for house prices, by repeated 5-fold cross-validation.

The Houses Dataset in ../shared (Ahmed and Moustafa, "House price estimation from visual and
textual features", 2016, arXiv:1609.08399): 300 houses, four photos each (bathroom, bedroom,
frontal, kitchen), bedrooms, bathrooms, area and zip code. Every variant is a random forest on
log price beside the four tabular columns; what changes is how the photos enter:

* ``tabular``: not at all;
* ``naive``: the 1280 mean-pooled image features as raw columns;
* ``stack-mean`` / ``stack-max``: one out-of-fold ridge prediction from mean / max-pooled features;
* ``per-slot``: one out-of-fold ridge prediction per photo slot (four columns);
* ``comparables``: the distance-weighted log price of the 10 visually nearest training houses;
* ``combined``: per-slot and comparables together;
* ``recommended``: a grid search (inner 5-fold) choosing between dropping the photos,
  ``per-slot`` and ``stack-max``: what examples/plot_house_prices.py recommends;
* ``crossfit-finetune``: the network fine-tuned on the training houses' log price inside
  :class:`~skimgfeat.CrossFittedTransformer` (out-of-fold features for the ridge), small
  images and few epochs; expensive, so measured on the first repeat only (``--finetune-repeats``).

The frozen features are embedded once through the embedder's feature cache (``--cache``), so
the variants and later runs do not embed again. Per-fold MAPE is written to ``--out`` (JSON);
the table shows each variant's mean and standard deviation over the folds, and the mean and
standard deviation of its per-fold difference from ``tabular`` on the same folds.

    python benchmarks/house_prices.py                      # every variant, 5-fold x 3 repeats
    python benchmarks/house_prices.py --variants tabular per-slot --repeats 1
    python benchmarks/house_prices.py --table a.json b.json   # the table of runs made apart
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_absolute_percentage_error
from sklearn.model_selection import GridSearchCV, RepeatedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from skimgfeat import CNNImageEmbedder, CrossFittedTransformer, ItemAggregator, OutOfFoldPredictor, VisualComparables

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
HOUSES = SHARED / "images" / "houses"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
ROOMS = ("bathroom", "bedroom", "frontal", "kitchen")
TABULAR = ["bedrooms", "bathrooms", "area", "zipcode"]
N_FEATURES = 1280
VARIANTS = (
    "tabular",
    "naive",
    "stack-mean",
    "stack-max",
    "per-slot",
    "comparables",
    "combined",
    "recommended",
    "crossfit-finetune",
)


def load_houses(cache: Path) -> pd.DataFrame:
    """One row per house: tabular columns, its photo list, and the frozen features of each slot."""
    houses = pd.read_csv(HOUSES / "houses.csv")
    houses["photos"] = [[str(HOUSES / f"{house}_{room}.jpg") for room in ROOMS] for house in houses["house_id"]]
    start = time.perf_counter()
    embedder = CNNImageEmbedder(weights=WEIGHTS, cache=cache).fit()
    features = embedder.transform(houses["photos"])  # (houses, 4 slots, 1280)
    print(
        f"frozen features: {embedder.n_embedded_} photos embedded, the rest from {cache}, "
        f"{time.perf_counter() - start:.0f} s"
    )
    columns = pd.DataFrame(features.reshape(len(houses), -1), columns=feature_columns(), index=houses.index)
    return pd.concat([houses, columns], axis=1)


def feature_columns(room: str | None = None) -> list[str]:
    rooms = ROOMS if room is None else (room,)
    return [f"{name}_{i}" for name in rooms for i in range(N_FEATURES)]


def as_photos(X) -> np.ndarray:
    """The four slots' columns back to (houses, 4 photos, 1280), as the embedder returns them."""
    return np.asarray(X, dtype=np.float32).reshape(len(X), len(ROOMS), N_FEATURES)


def ridge() -> OutOfFoldPredictor:
    return OutOfFoldPredictor(make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(0, 5, 11))), random_state=0)


def pooled(method: str, *tail) -> Pipeline:
    return make_pipeline(FunctionTransformer(as_photos), ItemAggregator(method=method), *tail)


def per_slot() -> ColumnTransformer:
    return ColumnTransformer([(room, ridge(), feature_columns(room)) for room in ROOMS])


def comparables() -> Pipeline:
    return make_pipeline(FunctionTransformer(as_photos), VisualComparables(n_neighbors=10, random_state=0))


def finetuned(epochs: int, size: int, folds: int) -> Pipeline:
    embedder = CNNImageEmbedder(
        weights=WEIGHTS,
        resize_size=size,
        crop_size=size,
        random_state=0,
        fine_tune=2,
        fine_tune_epochs=epochs,
        fine_tune_options={"train_size": size, "source_size": size + size // 4, "n_views": 2},
    )
    photos = make_pipeline(embedder, ItemAggregator(method="mean"))
    return make_pipeline(CrossFittedTransformer(photos, cv=folds, random_state=0), ridge())


def price_model(photos: list[tuple]) -> TransformedTargetRegressor:
    features = ColumnTransformer([*photos, ("table", "passthrough", TABULAR)])
    forest = RandomForestRegressor(n_estimators=200, random_state=0, n_jobs=1)
    return TransformedTargetRegressor(
        Pipeline([("features", features), ("model", forest)]), func=np.log, inverse_func=np.exp
    )


def variant(name: str, args) -> object:
    everything = feature_columns()
    if name == "tabular":
        return price_model([])
    if name == "naive":
        return price_model([("photos", pooled("mean"), everything)])
    if name in ("stack-mean", "stack-max"):
        return price_model([("photos", pooled(name.split("-")[1], ridge()), everything)])
    if name == "per-slot":
        return price_model([("photos", per_slot(), everything)])
    if name == "comparables":
        return price_model([("photos", comparables(), everything)])
    if name == "combined":
        return price_model([("photos", per_slot(), everything), ("comparables", comparables(), everything)])
    if name == "recommended":
        grid = {"regressor__features__photos": ["drop", per_slot(), pooled("max", ridge())]}
        search = GridSearchCV(
            price_model([("photos", per_slot(), everything)]), grid, cv=5, scoring="neg_mean_absolute_percentage_error"
        )
        return search
    if name == "crossfit-finetune":
        return price_model(
            [("photos", finetuned(args.finetune_epochs, args.finetune_size, args.finetune_folds), "photos")]
        )
    raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")


def measure(name: str, houses: pd.DataFrame, args, done: list[dict]) -> list[dict]:
    repeats = args.finetune_repeats if name == "crossfit-finetune" else args.repeats
    splits = RepeatedKFold(n_splits=5, n_repeats=repeats, random_state=0).split(houses)
    rows = []
    for fold, (train, test) in enumerate(splits):
        start = time.perf_counter()
        model = variant(name, args).fit(houses.iloc[train], houses["price"].iloc[train])
        predicted = model.predict(houses.iloc[test])
        score = mean_absolute_percentage_error(houses["price"].iloc[test], predicted)
        chosen = getattr(model, "best_params_", {}).get("regressor__features__photos")
        rows.append(
            {
                "variant": name,
                "fold": fold,
                "mape": score,
                "seconds": time.perf_counter() - start,
                "chosen": chosen if chosen is None or isinstance(chosen, str) else _describe(chosen),
            }
        )
        print(f"{name} fold {fold}: MAPE {score:.3f} ({rows[-1]['seconds']:.0f} s)", flush=True)
        if args.out is not None:  # after every fold: a long run keeps what it measured
            args.out.write_text(json.dumps(done + rows, indent=1))
    return rows


def _describe(photos) -> str:
    return "per-slot" if isinstance(photos, ColumnTransformer) else "stack-max"


def table(rows: list[dict]) -> pd.DataFrame:
    scores = pd.DataFrame(rows).drop_duplicates(["variant", "fold"])  # split runs each measure tabular
    tabular = scores[scores["variant"] == "tabular"].set_index("fold")["mape"]
    lines = []
    for name, group in scores.groupby("variant", sort=False):
        group = group.set_index("fold")
        difference = (group["mape"] - tabular.reindex(group.index)).dropna()
        chosen = group["chosen"].dropna().value_counts().to_dict()
        lines.append(
            {
                "variant": name,
                "folds": len(group),
                "MAPE": group["mape"].mean(),
                "std": group["mape"].std(),
                "minus tabular": difference.mean() if len(difference) else np.nan,
                "its std": difference.std() if len(difference) else np.nan,
                "s per fold": group["seconds"].mean(),
                "chosen": ", ".join(f"{key} x{count}" for key, count in chosen.items()) or "-",
            }
        )
    return pd.DataFrame(lines).set_index("variant")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--finetune-repeats", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-size", type=int, default=128)
    parser.add_argument("--finetune-folds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "skimgfeat-example-cache")
    parser.add_argument("--out", type=Path, default=None, help="JSON of per-fold scores; merged into when it exists")
    parser.add_argument("--table", type=Path, nargs="+", help="print the table of these --out files only")
    args = parser.parse_args()
    if args.table:
        print(table([row for path in args.table for row in json.loads(path.read_text())]).round(3).to_string())
        return
    if not HOUSES.exists():
        raise SystemExit(f"needs {HOUSES} (see ../shared/README.md)")
    houses = load_houses(args.cache)
    rows = []
    if args.out is not None and args.out.exists():
        rows = [row for row in json.loads(args.out.read_text()) if row["variant"] not in args.variants]
    if "tabular" not in args.variants and not any(row["variant"] == "tabular" for row in rows):
        args.variants = ["tabular", *args.variants]
    for name in args.variants:
        rows += measure(name, houses, args, rows)
    print(f"load average {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} CPUs")
    print(table(rows).round(3).to_string())


if __name__ == "__main__":
    main()
