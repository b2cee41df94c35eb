"""Scenes made from real photos for the object-matching tests and benchmark (benchmarks/object_match.py).

One copy of each scene maker: the benchmark puts this folder on its import path.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def on_background(cover: str | os.PathLike, background: str | os.PathLike, *, fraction: float = 0.5,
                  side: int = 640) -> np.ndarray:
    """A clean cover pasted at the centre of a room photo ``side`` px wide, grayscale: a lot on a backdrop.

    The cover is scaled to ``fraction`` of the room photo's height.
    """
    with Image.open(background) as opened:
        scene = opened.convert("L")
    scene = scene.resize((side, round(side * scene.height / scene.width)))
    with Image.open(cover) as opened:
        front = opened.convert("L")
    height = round(scene.height * fraction)
    front = front.resize((round(front.width * height / front.height), height))
    scene.paste(front, ((scene.width - front.width) // 2, (scene.height - front.height) // 2))
    return np.asarray(scene)
