"""Draw docs/_static/architecture.png: how a photo path becomes a feature row.

Run ``python docs/architecture_diagram.py`` after changing the layout it shows, and commit
the PNG with it (the docs build does not run this script).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

OUTPUT = Path(__file__).resolve().parent / "_static" / "architecture.png"

# One colour per subpackage, the estimators (top level of the package) in grey.
COLOURS = {
    "estimators": "#e8e8e8",
    "engine": "#cfe3f7",
    "storage": "#f9e0b8",
    "uses": "#d5ecd0",  # search/, matching/, tabular/, quality/, plotting/: what the features are for
    "cli": "#ead7f1",
    "archive": "#f6d3d3",
}


def box(ax, x, y, width, height, text, kind, *, size=9, weight="normal"):
    """A rounded box centred on (x, y) in the colour of ``kind``."""
    ax.add_patch(FancyBboxPatch(
        (x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.02,rounding_size=0.08",
        facecolor=COLOURS[kind], edgecolor="#555555", linewidth=0.9,
    ))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, weight=weight, linespacing=1.3)


def band(ax, x0, y0, width, height, label, kind):
    """A subpackage: a light frame with its name in the top-left corner."""
    ax.add_patch(FancyBboxPatch(
        (x0, y0), width, height, boxstyle="round,pad=0.02,rounding_size=0.15",
        facecolor=COLOURS[kind], alpha=0.35, edgecolor=COLOURS[kind], linewidth=2,
    ))
    ax.text(x0 + 0.12, y0 + height - 0.1, label, ha="left", va="top", fontsize=10, weight="bold", color="#333333")


def arrow(ax, start, end, text=None, *, style="-|>", colour="#333333", dashed=False, offset=(0.0, 0.12)):
    """An arrow from ``start`` to ``end``, labelled at its middle."""
    ax.annotate("", xy=end, xytext=start, arrowprops={
        "arrowstyle": style, "color": colour, "linewidth": 1.2, "shrinkA": 2, "shrinkB": 2,
        "linestyle": "--" if dashed else "-",
    })
    if text:
        middle = ((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1])
        ax.text(*middle, text, ha="center", va="bottom", fontsize=7.5, color="#333333", style="italic")


def draw() -> plt.Figure:
    figure, ax = plt.subplots(figsize=(13, 8.4))
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 8.4)
    ax.axis("off")

    # cli/: the command line, on top of the public API only; each command above what it uses.
    band(ax, 0.2, 7.25, 12.6, 0.95, "cli/  (one module per subcommand, public API only)", "cli")
    commands = [(3.6, "skimgfeat extract"), (6.2, "skimgfeat quality"), (8.2, "skimgfeat similar"),
                (10.2, "skimgfeat duplicates, match")]
    for x, name in commands:
        box(ax, x, 7.55, 1.75 if x < 10 else 2.0, 0.4, name, "cli", size=8.5)
    box(ax, 12.0, 7.55, 1.3, 0.4, "ingest, serve", "cli", size=8)

    # archive/ and serve/: one archive folder and the browser on it, above what the features are for.
    band(ax, 5.0, 6.05, 7.8, 0.95, "archive/  (one folder, one writer: ingest, remove)    serve/  (the browser)",
         "archive")
    box(ax, 8.2, 6.35, 3.0, 0.4, "Archive: generations of every part", "archive", size=8)
    box(ax, 11.4, 6.35, 2.4, 0.4, "serve: pages + JSON API", "archive", size=8)
    arrow(ax, (12.0, 7.34), (12.0, 6.56), colour="#7a4f91")
    arrow(ax, (8.2, 6.14), (8.2, 5.52), colour="#a33a3a")

    # What the features are for: one subpackage per domain, above the estimators.
    band(ax, 5.0, 4.95, 7.8, 0.9, "quality/   search/   matching/   tabular/   (plotting/ draws them)", "uses")
    uses = [(6.2, "ImageQualityFeatures"), (8.2, "SimilarityIndex"), (10.2, "find_duplicates,\nObjectMatcher"),
            (12.0, "OutOfFoldPredictor")]
    for x, name in uses:
        box(ax, x, 5.3, 1.85 if x < 12 else 1.45, 0.42, name, "uses", size=8.5 if x < 12 else 7.5)
    for x, _ in commands[1:]:
        arrow(ax, (x, 7.34), (x, 5.52) if x != 8.2 else (x, 6.56), colour="#7a4f91")
    arrow(ax, (3.6, 7.34), (3.6, 4.67), colour="#7a4f91")

    # The estimators: the top level of the package, what users put in a Pipeline.
    box(ax, 1.2, 4.1, 1.7, 0.9, "photo path\n'lots/84512_1.jpg'", "estimators", size=8.5)
    box(ax, 3.6, 4.1, 2.4, 1.1, "CNNImageEmbedder\nfit: build the network\ntransform: paths -> rows",
        "estimators", size=8.5, weight="bold")
    box(ax, 6.8, 4.1, 2.2, 1.1, "feature row\nimg_feature_0 ... N-1\n(NaN when unreadable)", "estimators", size=8.5)
    box(ax, 9.9, 4.1, 2.3, 1.1, "ItemAggregator\nphotos of an item ->\none row (mean, max, first)",
        "estimators", size=8.5, weight="bold")
    ax.text(11.2, 4.1, "-> any\n    scikit-learn\n    model", ha="left", va="center", fontsize=8.5)
    arrow(ax, (2.05, 4.1), (2.4, 4.1))
    arrow(ax, (4.8, 4.1), (5.7, 4.1), "one per photo", offset=(0, 0.08))
    arrow(ax, (7.9, 4.1), (8.75, 4.1))
    arrow(ax, (6.8, 4.67), (6.8, 5.07), colour="#2f6b2f")

    # storage/: what is written to disk and read back.
    band(ax, 0.2, 0.25, 4.0, 2.75, "storage/", "storage")
    box(ax, 1.25, 2.0, 1.8, 0.85, "cache\nper-photo vectors,\nkeyed by file version", "storage", size=8)
    box(ax, 3.2, 2.0, 1.7, 0.85, "checkpoint\nparts of a long run\n(extract --resume)", "storage", size=8)
    box(ax, 2.2, 0.85, 3.7, 0.75, "io, table_stream: Parquet / CSV tables\nwith the model info; vector_index", "storage", size=8)
    arrow(ax, (3.0, 3.53), (1.5, 2.45), "look up, store", style="<|-|>", dashed=True, offset=(-0.55, 0.0))

    # engine/: decode, preprocess, batch, infer.
    band(ax, 4.5, 0.25, 8.3, 2.75, "engine/", "engine")
    steps = [
        (5.5, "decode\nimage_loading\nPillow, EXIF, RGB"),
        (7.55, "preprocess\npreprocessing\nresize, crop, normalise"),
        (9.6, "batch\ninference\nthreads, input order"),
        (11.65, "infer\nbackends\ntorch, ONNX, int8"),
    ]
    for x, text in steps:
        box(ax, x, 1.75, 1.75, 1.0, text, "engine", size=8)
    for (x0, _), (x1, _) in zip(steps, steps[1:]):
        arrow(ax, (x0 + 0.9, 1.75), (x1 - 0.9, 1.75))
    ax.text(8.65, 0.55, "one decode-and-batch loop for embedding, fine-tuning, quality and calibration;\n"
            "registry/ holds the model families (torchvision, timm, OpenCLIP), recipes and weights",
            ha="center", va="center", fontsize=7.5, color="#333333")
    arrow(ax, (4.2, 3.53), (5.3, 2.27), "photos not in the cache", offset=(1.45, 0.1))
    arrow(ax, (11.65, 2.27), (7.4, 3.53), "vectors", offset=(0.4, -0.05))

    ax.set_title("How a photo path becomes a feature row", fontsize=13, weight="bold", loc="left")
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    draw().savefig(OUTPUT, dpi=110)
    print(f"wrote {OUTPUT}")
