"""Scenes made from real photos for the object-matching tests and benchmark (benchmarks/object_match.py).

One copy of each scene maker: the benchmark puts this folder on its import path.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

# Where a lot stands on the backdrop: the centre of the cover, as a fraction of the backdrop's width.
POSITIONS = {"left": 0.0, "centre": 0.5, "right": 1.0}
# How tall the cover is, as a fraction of the backdrop's height.
SIZES = (0.3, 0.5, 0.7)


def on_background(cover: str | os.PathLike, background: str | os.PathLike, *, fraction: float = 0.5,
                  side: int = 640, position: str | float = "centre") -> np.ndarray:
    """A clean cover pasted on a room photo ``side`` px wide, grayscale: a lot on a backdrop.

    The cover is scaled to ``fraction`` of the room photo's height and placed across at
    ``position``: ``"left"`` (against the left edge), ``"centre"``, ``"right"`` (against
    the right edge) or a fraction of the free width (0 left, 1 right); vertically centred.
    """
    with Image.open(background) as opened:
        scene = opened.convert("L")
    scene = scene.resize((side, round(side * scene.height / scene.width)))
    with Image.open(cover) as opened:
        front = opened.convert("L")
    height = round(scene.height * fraction)
    front = front.resize((round(front.width * height / front.height), height))
    across = POSITIONS[position] if isinstance(position, str) else float(position)
    left = round(max(0, scene.width - front.width) * across)
    scene.paste(front, (left, (scene.height - front.height) // 2))
    return np.asarray(scene)
