"""
The same object in new photos
=============================

An auction house re-offers an unsold lot with new photos: another angle, other light,
another background. *Have we had this object before?* is neither a copy (the pixels
differ) nor a lookalike (another object of the same kind): every lot here is a DVD case,
so the CNN features of two different cases are as close as those of two photos of one
case.

:class:`~skimgfeat.ObjectMatcher` takes the CNN shortlist of each query and verifies
every candidate with local features: AKAZE keypoints stored once per photo, matched and
fitted with a homography (RANSAC). A candidate is ``same_object`` when enough matches
agree with one perspective transform, spread over the object. The command line does the
same::

    skimgfeat extract photos/ -o out/ --pattern "*.jpg" --local-features
    skimgfeat match new_photo.jpg --against out/ -k 100 --sheet matches.png

Data: 50 DVD cases, each a clean cover image and four phone photos in cluttered scenes,
from the Stanford Mobile Visual Search data set (Chandrasekhar et al., ACM MMSys 2011),
in ``../shared``.
"""

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from skimgfeat import CNNImageEmbedder, LocalFeatureStore, ObjectMatcher, SimilarityIndex, write_local_features
from skimgfeat.plotting.match_sheet import match_sheet

SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
OBJECTS = SHARED / "images" / "objects"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
SUBSET = os.environ.get("SKIMGFEAT_EXAMPLE_SUBSET") == "1"

# %%
# The archive: CNN features and local features of every photo
# -------------------------------------------------------------
# The CNN features make the shortlist; the local features (at most 1000 keypoints per
# photo, stored in a sidecar folder as ``extract --local-features`` does) verify it.
photos = sorted(OBJECTS.glob("dvd00?_*.jpg" if SUBSET else "*.jpg"))
embedder = CNNImageEmbedder(weights=WEIGHTS).fit()
features = embedder.set_output(transform="pandas").transform([str(path) for path in photos])
table = pd.concat([pd.DataFrame({"image_path": [path.name for path in photos]}), features], axis=1)
index = SimilarityIndex.from_table(table, image_dir=OBJECTS)
sidecar = Path(tempfile.mkdtemp()) / "local_features"
write_local_features(photos, sidecar, image_dir=OBJECTS)
matcher = ObjectMatcher(index, LocalFeatureStore(sidecar), k=len(photos) - 1)
print(f"{len(index)} photos of {len(photos) // 5} DVD cases")

# %%
# Phone photos as queries
# -----------------------
# Each phone photo is a new listing: which photos of the archive show the same case?
# The CNN alone ranks other cases first; verification re-ranks them, and the verdict
# says which candidates are the same object.
queries = [path.name for path in photos if path.stem.endswith("_palm")]
found = matcher.match(queries)
found["own_object"] = found["image_path"].str[:6] == found["query"].str[:6]
nearest_by_cnn = found.sort_values("feature_distance").groupby("query").head(1)
top = found[found["rank"] == 1]
verified_own = (top["own_object"] & (top["verdict"] != "different")).mean()
print(f"nearest photo by CNN features is the same case: {nearest_by_cnn['own_object'].mean():.0%}")
print(f"top verified match is the same case:           {verified_own:.0%}")
print(pd.crosstab(found["own_object"], found["verdict"]))

# %%
# Queries beside their verified matches
# -------------------------------------
# Green lines join the keypoints that one homography maps onto each other (the inliers).
sheet = match_sheet(found[found["query"].isin(queries[:3])], matcher, height=200, max_matches=2)
fig, ax = plt.subplots(figsize=(9, 9 * sheet.height / sheet.width))
ax.imshow(sheet)
ax.set_axis_off()
ax.set_title("Phone photos (left) and the photos verified as the same DVD case")
plt.tight_layout()
