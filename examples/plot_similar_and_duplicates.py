"""
Similar items and duplicate photos
==================================

A grocery shop's catalogue holds many photos per product, shot on the shop floor. Two
questions come up every day: *which photos show the product in this clean web-shop
picture?* (similar items) and *which photos are copies of one another?* (a photo
reused across listings, resized, recompressed or slightly cropped: duplicates).

Both are nearest-neighbour questions over CNN features: photos of one product lie close
together, and a copy of a photo lies closer still. :class:`~skimgfeat.SimilarityIndex`
ranks a table's rows by cosine distance to a query, :func:`~skimgfeat.similar_items`
accepts image files as queries, :func:`~skimgfeat.find_duplicates` groups rows closer
than a threshold measured on copies of real photos, and
:func:`skimgfeat.plotting.contact_sheet.contact_sheet` draws the answers. The command line does
the same from a table written by ``skimgfeat extract``::

    skimgfeat similar web_shop_picture.jpg --features out/image_features_raw.parquet -k 5 --sheet sheet.png
    skimgfeat duplicates --features out/image_features_raw.parquet

Data: the Grocery Store Dataset (Klasson et al., 2019, MIT licence) from ``../shared``.
"""

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from skimgfeat import CNNImageEmbedder, SimilarityIndex, find_duplicates, similar_items
from skimgfeat.matching.duplicates import DEFAULT_DUPLICATE_THRESHOLD
from skimgfeat.plotting.contact_sheet import contact_sheet

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GROCERY = SHARED / "images" / "grocery"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
SUBSET = os.environ.get("SKIMGFEAT_EXAMPLE_SUBSET") == "1"

# %%
# The catalogue: shop photos of the validation split
# ----------------------------------------------------
# Each photo is embedded once by MobileNetV2 (ImageNet weights, read from a local file:
# no download). The table is what ``skimgfeat extract`` writes: ``image_path`` and the
# ``img_feature_*`` columns.
listing = pd.read_csv(GROCERY / "val.txt", header=None, names=["image_path", "fine_id", "coarse_id"],
                      skipinitialspace=True)
classes = pd.read_csv(GROCERY / "classes.csv")
classes.columns = ["name", "fine_id", "coarse_name", "coarse_id", "iconic", "description"]
if SUBSET:
    listing = listing[listing["fine_id"].isin(listing["fine_id"].unique()[::5])].groupby("fine_id").head(4)
embedder = CNNImageEmbedder(weights=WEIGHTS).fit()
features = embedder.set_output(transform="pandas").transform([str(GROCERY / path) for path in listing["image_path"]])
table = pd.concat([listing[["image_path"]].reset_index(drop=True), features.reset_index(drop=True)], axis=1)
index = SimilarityIndex.from_table(table, image_dir=GROCERY)
print(f"{len(index)} photos of {listing['fine_id'].nunique()} products, {features.shape[1]} features each")

# %%
# Which shop photos show this product?
# ------------------------------------
# The web-shop ("iconic") picture of a product is not in the table: it is embedded with
# the same network and compared with every row.
products = classes.set_index("fine_id").loc[listing["fine_id"].unique()[:4]]
queries = [str(GROCERY / path.lstrip("/")) for path in products["iconic"]]
found = similar_items(index, queries, k=4, embedder=embedder)
product_of = dict(zip(listing["image_path"], listing["fine_id"]))
found["same product"] = [product_of[path] == fine_id for path, fine_id in
                         zip(found["image_path"], np.repeat(products.index, 4))]
print(found.assign(query=[Path(q).name for q in found["query"]]).to_string(index=False))

# %%
# The contact sheet shows each query (framed) beside its neighbours and their distances.
sheet = contact_sheet(found, index, thumbnail=150)
fig, ax = plt.subplots(figsize=(9, 9 * sheet.height / sheet.width))
ax.imshow(sheet)
ax.set_axis_off()
ax.set_title("web-shop picture -> nearest shop photos")
plt.show()

# %%
# Over every product of the catalogue: how many of the 4 nearest shop photos show the
# product of its web-shop picture?
every_product = classes.set_index("fine_id").loc[listing["fine_id"].unique()]
all_found = similar_items(index, [str(GROCERY / p.lstrip("/")) for p in every_product["iconic"]], k=4,
                          embedder=embedder)
hits = [product_of[path] == fine_id for path, fine_id in
        zip(all_found["image_path"], np.repeat(every_product.index, 4))]
print(f"precision at 4: {np.mean(hits):.2f} over {len(every_product)} products")

# %%
# Duplicates: copies hidden in the catalogue
# ------------------------------------------
# Eight photos are re-uploaded in altered form: resized to 60%, recompressed at JPEG
# quality 30, cropped to 90% or brightened by 30%. The copies join the table, and
# :func:`~skimgfeat.find_duplicates` should link each to its original and nothing else.
rng = np.random.default_rng(0)
copies_dir = Path(tempfile.mkdtemp())
originals = rng.choice(listing["image_path"].to_numpy(), size=8, replace=False)
copy_paths = []
for number, relative in enumerate(originals):
    with Image.open(GROCERY / relative) as opened:
        photo = opened.convert("RGB")
    kind = ("resized", "recompressed", "cropped", "brightened")[number % 4]
    if kind == "resized":
        photo = photo.resize((round(photo.width * 0.6), round(photo.height * 0.6)))
    elif kind == "cropped":
        photo = photo.crop((0, 0, round(photo.width * 0.9), round(photo.height * 0.9)))
    elif kind == "brightened":
        photo = ImageEnhance.Brightness(photo).enhance(1.3)
    target = copies_dir / f"copy{number}_{kind}.jpg"
    photo.save(target, quality=30 if kind == "recompressed" else 90)
    copy_paths.append(str(target))
copy_features = embedder.transform(copy_paths)
with_copies = SimilarityIndex(
    [*index.names, *copy_paths], np.vstack([index.vectors, copy_features.to_numpy()]), image_dir=GROCERY
)
groups = find_duplicates(with_copies)
group_of = dict(zip(groups["image_path"], groups["group"]))
caught = sum(c in group_of and group_of[c] == group_of.get(o) for c, o in zip(copy_paths, originals))
print(f"threshold {DEFAULT_DUPLICATE_THRESHOLD}: {groups['group'].nunique()} groups; "
      f"{caught} of {len(copy_paths)} copies grouped with their original")
print(groups.assign(image_path=[Path(p).name for p in groups["image_path"]]).to_string(index=False))

# %%
# Groups beyond the planted copies are consecutive shots of one shelf: the same scene
# moments apart, near-duplicates to the eye too. The histogram shows why one threshold
# works: a copy's distance to its original is far below a photo's distance to the
# nearest *other* photo of the catalogue, with the burst shots in between.
to_original = [with_copies.search(with_copies.vector(c), k=len(with_copies), exclude=[c])
               .set_index("image_path").loc[o, "distance"] for c, o in zip(copy_paths, originals)]
nearest_other = index.similar(index.names, k=1)["distance"]
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.hist(nearest_other, bins=40, color="tab:gray", label="photo -> nearest other catalogue photo")
ax.hist(to_original, bins=10, color="tab:red", label="copy -> its original")
ax.axvline(DEFAULT_DUPLICATE_THRESHOLD, color="black", linestyle="--", label="default threshold")
ax.set_xlabel("cosine distance")
ax.set_ylabel("photos")
ax.legend()
plt.show()
