"""
Photo quality beside CNN features
=================================

A marketplace wants to hold back listing photos that are slightly blurred, dim or
over-compressed before they go online. CNN features are trained to recognise *what* is
in a photo whatever its condition, so they are a poor judge of the condition itself;
:class:`~skimgfeat.ImageQualityFeatures` measures exactly that: sharpness, brightness,
contrast, colourfulness, clipped pixels, size, file size and JPEG quality, in a few
milliseconds per photo.

Here real shop photos and mildly damaged ones (blurred by 1.2 px, darkened to 60%,
recompressed at JPEG quality 12) are told apart by a logistic regression on the CNN
features, on the quality features, and on both side by side in a
:class:`~sklearn.pipeline.FeatureUnion`. Each source photo appears once, good or
damaged, so a model cannot win by recognising the scene. The command line measures a folder the same way::

    skimgfeat quality photos/ -o out/ --pattern "*.jpg"

Data: the Grocery Store Dataset (Klasson et al., 2019, MIT licence) from ``../shared``.
"""

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import StandardScaler

from skimgfeat import CNNImageEmbedder, ImageQualityFeatures

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GROCERY = SHARED / "images" / "grocery"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
SUBSET = os.environ.get("SKIMGFEAT_EXAMPLE_SUBSET") == "1"

# %%
# Photos and damaged copies
# -------------------------
# Each source photo is kept as it is ("good") or damaged one way, chosen at random, so
# every source contributes one photo and the classes are balanced.
rng = np.random.default_rng(0)
sources = sorted((GROCERY / "train").rglob("*.jpg"))[:: 20 if SUBSET else 5]
folder = Path(tempfile.mkdtemp())
DAMAGE = {
    "good": lambda photo: photo,
    "blurred": lambda photo: photo.filter(ImageFilter.GaussianBlur(1.2)),
    "dark": lambda photo: ImageEnhance.Brightness(photo).enhance(0.6),
    "compressed": lambda photo: photo,  # saved at JPEG quality 12 below
}
rows = []
for number, source in enumerate(sources):
    kind = ("good", "good", "good", "blurred", "dark", "compressed")[rng.integers(6)]
    with Image.open(source) as opened:
        photo = DAMAGE[kind](opened.convert("RGB"))
    target = folder / f"{number:04d}_{kind}.jpg"
    photo.save(target, quality=12 if kind == "compressed" else 90)
    rows.append((str(target), kind))
photos = pd.DataFrame(rows, columns=["path", "kind"])
print(photos["kind"].value_counts().to_string())

# %%
# Both kinds of features in one transformer
# ------------------------------------------
# The union embeds and measures each photo once; its feature names say which
# transformer a column comes from.
union = FeatureUnion([
    ("cnn", CNNImageEmbedder(weights=WEIGHTS)),
    ("quality", ImageQualityFeatures()),
]).set_output(transform="pandas")
X = union.fit_transform(photos[["path"]])
quality_columns = [c for c in X.columns if c.startswith("quality__")]
cnn_columns = [c for c in X.columns if c.startswith("cnn__")]
print(X[quality_columns].groupby(photos["kind"].to_numpy()).median().round(3).T.to_string())

# %%
# The quality measures separate the damage at a glance: blur drops sharpness, darkness
# drops brightness, heavy compression shows in the estimated JPEG quality.
fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
for ax, column in zip(axes, ["quality__sharpness", "quality__brightness", "quality__jpeg_quality"]):
    groups = [X.loc[photos["kind"].to_numpy() == kind, column] for kind in DAMAGE]
    ax.boxplot(groups)
    ax.set_xticks(range(1, len(DAMAGE) + 1), list(DAMAGE), rotation=20)
    ax.set_title(column.removeprefix("quality__"))
axes[0].set_yscale("log")
fig.tight_layout()
plt.show()

# %%
# What they add: telling good photos from damaged ones
# -----------------------------------------------------
# Balanced accuracy of "good or damaged?" by 5-fold cross-validation, one fold per
# group of sources.
y = (photos["kind"] != "good").to_numpy()
groups = np.arange(len(photos)) % 5


def linear():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))


candidates = {
    "CNN features, linear": (cnn_columns, linear()),
    "quality features, linear": (quality_columns, linear()),
    "both, linear": (cnn_columns + quality_columns, linear()),
    "both, CNN reduced to 16 PCs": (cnn_columns + quality_columns, make_pipeline(
        ColumnTransformer([("cnn", PCA(16, random_state=0), cnn_columns)], remainder=StandardScaler()),
        StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))),
}
scores = {}
for name, (columns, model) in candidates.items():
    folds = cross_val_score(model, X[columns], y, groups=groups, cv=GroupKFold(5), scoring="balanced_accuracy")
    scores[name] = folds
    print(f"{name:>28}: balanced accuracy {folds.mean():.3f} (+/- {folds.std():.3f}), {len(columns)} columns")

fig, ax = plt.subplots(figsize=(7, 3))
ax.barh(list(scores), [s.mean() for s in scores.values()], xerr=[s.std() for s in scores.values()], color="tab:blue")
ax.set_xlim(0.4, 1.0)
ax.set_xlabel("balanced accuracy, good vs damaged photo")
fig.tight_layout()
plt.show()

# %%
# Eleven quality numbers do what 1280 CNN features struggle with: the network was trained
# to see the apple through the blur. Put naively beside the CNN features, the quality
# columns are drowned: one penalty over 1291 columns spends most of the model on the
# 1280 that do not help. Reducing the CNN block first (here 16 principal components)
# lets the quality columns count, and the two together beat either alone. For predicting
# *what* a photo shows (a price, a category) it is the other way round: the CNN features
# carry the signal, and the quality columns add how a listing was photographed.
