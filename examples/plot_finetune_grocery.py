"""
Features that learn the task: fine-tuning on grocery photos
===========================================================

A pretrained network's features describe ImageNet's 1000 classes; they separate
Granny Smith from Golden Delicious apples only as well as those classes needed to.
With ``fine_tune``, :class:`~skimgfeat.CNNImageEmbedder` trains the network itself on
the labels given to ``fit`` (through a temporary classification head it then drops),
so ``transform`` returns features shaped by the task, still 1280 wide, still fed to any
scikit-learn model.

Data: the Grocery Store Dataset (Klasson, Zhang and Kjellström, "A Hierarchical
Grocery Store Image Dataset with Visual and Semantic Labels", WACV 2019; MIT licence),
phone photos of 81 fine-grained products taken in supermarkets. We fit a logistic
regression on frozen and on fine-tuned features of the training photos and compare
their accuracy on the validation photos, which fine-tuning never saw.
"""

# %%
# The photos
# ----------
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from sklearn.linear_model import LogisticRegression

from skimgfeat import CNNImageEmbedder

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GROCERY = SHARED / "images" / "grocery"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
SUBSET = os.environ.get("SKIMGFEAT_EXAMPLE_SUBSET") == "1"  # a quick run: a few look-alike products


def read_split(name: str) -> pd.DataFrame:
    split = pd.read_csv(GROCERY / f"{name}.txt", header=None, names=["path", "fine_id", "coarse_id"],
                        skipinitialspace=True)
    split["path"] = [str(GROCERY / relative) for relative in split["path"]]
    return split


train, val = read_split("train"), read_split("val")
if SUBSET:
    look_alikes = [0, 1, 2, 3, 4, 20, 21, 22]  # five apple varieties and three pears
    train = train[train.fine_id.isin(look_alikes)].groupby("fine_id").head(8)
    val = val[val.fine_id.isin(look_alikes)].groupby("fine_id").head(6)
print(f"{len(train)} training photos, {len(val)} validation photos, {train.fine_id.nunique()} products")

# %%
# Frozen features
# ---------------
# The pretrained network as it is: ``fit`` ignores the labels.
frozen = CNNImageEmbedder(weights=WEIGHTS).fit()
probe = LogisticRegression(max_iter=2000).fit(frozen.transform(train.path), train.fine_id)
frozen_accuracy = probe.score(frozen.transform(val.path), val.fine_id)
print(f"frozen features:     {frozen_accuracy:.1%} of the validation photos right")

# %%
# Fine-tuned features
# -------------------
# ``fine_tune="all"`` trains the whole network on the training photos' labels: random
# crops and flips at 160 px, a held-out tenth of the training photos scoring every
# epoch, the best epoch kept (see the user guide for the recipe). ``fine_tune=3`` would
# train only the last three blocks, faster. The quick run trains smaller crops for two
# epochs; the full run takes minutes on a laptop CPU, seconds on a GPU.
settings = {"fine_tune_epochs": 10}
if SUBSET:
    settings = {"fine_tune_epochs": 2,
                "fine_tune_options": {"train_size": 96, "source_size": 128, "validation_fraction": 0.25}}
tuned = CNNImageEmbedder(weights=WEIGHTS, fine_tune="all", random_state=0, **settings)
start = time.perf_counter()
tuned.fit(train.path, train.fine_id)
print(f"fine-tuning took {time.perf_counter() - start:.0f} s")

probe = LogisticRegression(max_iter=2000).fit(tuned.transform(train.path), train.fine_id)
tuned_accuracy = probe.score(tuned.transform(val.path), val.fine_id)
print(f"fine-tuned features: {tuned_accuracy:.1%} of the validation photos right "
      f"({100 * (tuned_accuracy - frozen_accuracy):+.1f} points)")

# %%
# What the training did
# ---------------------
# ``model_info_["fine_tuning"]`` records the run: the task read from y, how many
# samples, each epoch's training loss and the temporary head's accuracy on the held-out
# part of the training photos, and the epoch whose weights were kept.
record = tuned.model_info_["fine_tuning"]
history = pd.DataFrame(record["history"]).set_index("epoch")
print({key: record[key] for key in ("task", "n_samples", "n_classes", "epochs_run", "best_epoch")})

fig, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
history["train_loss"].plot(ax=loss_axis, marker="o", title="training loss (label-smoothed cross-entropy)")
history["validation_score"].plot(ax=score_axis, marker="o", title="head's accuracy on held-out training photos")
score_axis.axvline(record["best_epoch"], color="grey", linestyle=":", label="kept")
score_axis.legend()
for axis in (loss_axis, score_axis):
    axis.set_xlabel("epoch")
fig.tight_layout()

# %%
# Frozen versus fine-tuned
# ------------------------
fig, axis = plt.subplots(figsize=(4, 3))
axis.bar(["frozen", "fine-tuned"], [frozen_accuracy, tuned_accuracy], color=["#999999", "#2a7ab0"])
axis.set_ylabel("validation accuracy")
axis.set_ylim(0, 1)
for x, value in enumerate([frozen_accuracy, tuned_accuracy]):
    axis.text(x, value + 0.02, f"{value:.1%}", ha="center")
fig.tight_layout()
plt.show()
