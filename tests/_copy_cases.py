"""The hard cases of the copy check, made from real photos: off-grid copy edits and look-alikes that are not copies.

One copy of each maker: ``benchmarks/duplicate_threshold.py`` puts this folder on its import path.

Copies (the same picture again):

* :func:`centred_crop` keeps the middle of the photo (80-95 % of each side): off the
  hash windows, which start at the photo's edges;
* :func:`mirrored`: flipped left to right, as a reseller's listing often is;
* :func:`with_border`: a plain mat or margin added around the photo;
* :func:`reencoded`: resized and recompressed.

Look-alikes that are not copies (each photo of a set differs from the others only in
what matters):

* :func:`framed_work`: line drawings on light paper behind the same mat and frame,
  photographed on the same wall: frame, mat and paper fill most of the picture;
* :func:`on_backdrop`: different objects (real DVD covers) photographed small, at any
  position, on one studio backdrop;
* :func:`product_variant`: one carton design on white in flavours that differ only in
  colour (its band and its fruit picture), of one grey tone: the hashes and keypoints
  of two flavours agree, their colours do not (the grocery set's web-shop images are
  the real ones, in the benchmark);
* :func:`plain_fruit`: one smooth fruit shape on white in colours of one grey tone (too
  few keypoints for the content check).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

# -- copies ------------------------------------------------------------------------------


def centred_crop(image: Image.Image, keep: float) -> Image.Image:
    """The middle ``keep`` of each side of ``image``."""
    width, height = image.size
    new_w, new_h = max(1, round(width * keep)), max(1, round(height * keep))
    left, top = (width - new_w) // 2, (height - new_h) // 2
    return image.crop((left, top, left + new_w, top + new_h))


def mirrored(image: Image.Image) -> Image.Image:
    """``image`` flipped left to right."""
    return ImageOps.mirror(image)


def with_border(image: Image.Image, fraction: float = 0.08, colour=(255, 255, 255)) -> Image.Image:
    """``image`` inside a plain border ``fraction`` of its shorter side wide (a mat)."""
    width = max(1, round(min(image.size) * fraction))
    return ImageOps.expand(image.convert("RGB"), border=width, fill=colour)


def reencoded(image: Image.Image, scale: float = 0.5) -> Image.Image:
    """``image`` resized by ``scale`` (save it as a low-quality JPEG for the recompression)."""
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BICUBIC)


# -- look-alikes -------------------------------------------------------------------------


def framed_work(drawing: int, *, size: tuple[int, int] = (480, 600), frame: int = 0) -> Image.Image:
    """A photographed framed line drawing: drawing number ``drawing`` behind frame and mat number ``frame``.

    The wall, frame (a dark wood grain), mat, paper and light come from ``frame``; only
    the pen strokes on the paper come from ``drawing``. Two drawings in one frame share
    nearly every pixel's tone, as the lots of one framed-works sale do.
    """
    width, height = size
    setting = np.random.default_rng([7, frame])
    wall = np.linspace(200, 185, height)[:, None] + setting.normal(0, 2.0, (height, width))
    picture = np.repeat(wall[..., None], 3, axis=2) * np.array([1.0, 0.98, 0.95])
    margin, frame_width, mat_width = round(0.06 * width), round(0.07 * width), round(0.12 * width)
    grain = setting.normal(0, 1, (height, 1)) * 6 + np.sin(np.arange(width)[None, :] / 3.0) * 4
    outer = (margin, margin, width - margin, height - margin)
    picture[outer[1]:outer[3], outer[0]:outer[2]] = (np.array([92, 62, 38]) + grain[outer[1]:outer[3],
                                                                                    outer[0]:outer[2], None])
    inner = tuple(v + s * frame_width for v, s in zip(outer, (1, 1, -1, -1)))
    picture[inner[1]:inner[3], inner[0]:inner[2]] = (238, 235, 226)  # the mat
    paper = tuple(v + s * mat_width for v, s in zip(inner, (1, 1, -1, -1)))
    picture[paper[1]:paper[3], paper[0]:paper[2]] = (246, 242, 230)
    image = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle((paper[0] - 2, paper[1] - 2, paper[2] + 1, paper[3] + 1), outline=(205, 200, 190), width=2)
    pen = np.random.default_rng([11, drawing])
    left, top, right, bottom = paper[0] + 12, paper[1] + 12, paper[2] - 12, paper[3] - 12
    for _ in range(int(pen.integers(14, 22))):  # pen strokes: polylines of a few segments, thin and dark
        x, y = pen.uniform(left, right), pen.uniform(top, bottom)
        points = [(x, y)]
        for _ in range(int(pen.integers(3, 8))):
            x = float(np.clip(x + pen.normal(0, 30), left, right))
            y = float(np.clip(y + pen.normal(0, 30), top, bottom))
            points.append((x, y))
        tone = int(pen.integers(20, 90))
        draw.line(points, fill=(tone, tone, tone), width=int(pen.integers(1, 4)), joint="curve")
    return image.filter(ImageFilter.GaussianBlur(0.6))


def studio_backdrop(size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A plain studio backdrop: grey paper lit from above, darker towards the floor and the corners."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    light = 215 - 55 * (y / height) ** 1.5 - 40 * (((x - width / 2) / width) ** 2 + ((y - height / 3) / height) ** 2)
    noise = np.random.default_rng(5).normal(0, 1.5, (height, width))
    grey = np.clip(light + noise, 0, 255)
    return Image.fromarray(np.stack([grey, grey * 0.99, grey * 0.97], axis=2).astype(np.uint8))


def on_backdrop(cover: str | os.PathLike | Image.Image, backdrop: Image.Image, *, fraction: float = 0.3,
                position: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
    """``cover`` photographed small on ``backdrop``: scaled to ``fraction`` of its height, its centre at ``position``.

    ``position`` is (x, y) as fractions of the free room, 0 at the left/top edge, 1 at the right/bottom.
    """
    if isinstance(cover, Image.Image):
        front = cover.convert("RGB")
    else:
        with Image.open(cover) as opened:
            front = opened.convert("RGB")
    scene = backdrop.convert("RGB").copy()
    height = round(scene.height * fraction)
    front = front.resize((max(1, round(front.width * height / front.height)), height), Image.Resampling.LANCZOS)
    left = round((scene.width - front.width) * position[0])
    top = round((scene.height - front.height) * position[1])
    scene.paste(front, (left, top))
    return scene


# Flavours of one grey tone (luma within a few levels): a grey picture cannot tell them apart.
FLAVOURS = {"orange": (232, 120, 24), "apple": (92, 178, 64), "blueberry": (96, 132, 236), "raspberry": (226, 92, 150)}


def product_variant(flavour: str, *, size: int = 240) -> Image.Image:
    """A carton of one product line photographed on white, in ``flavour`` (a key of :data:`FLAVOURS`).

    The carton, its brand band, logo, lettering and pattern are the same for every flavour;
    the colour band and the fruit picture take the flavour's colour.
    """
    colour = FLAVOURS[flavour]
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = round(0.3 * size), round(0.7 * size), round(0.1 * size), round(0.94 * size)
    draw.polygon([(left, top + 14), ((left + right) // 2, top), (right, top + 14), (right, bottom), (left, bottom)],
                 fill=(236, 236, 232), outline=(150, 150, 150))
    draw.rectangle((left, top + 18, right, top + 44), fill=(34, 40, 60))  # the brand band, lettered in white
    draw.text((left + 8, top + 24), "GOOD DAY", fill=(250, 250, 250))
    draw.rectangle((left, round(0.62 * size), right, round(0.74 * size)), fill=colour)  # the flavour's band
    fruit = (round(0.5 * size), round(0.5 * size), round(0.09 * size))
    draw.ellipse((fruit[0] - fruit[2], fruit[1] - fruit[2], fruit[0] + fruit[2], fruit[1] + fruit[2]), fill=colour,
                 outline=(60, 60, 60), width=2)
    pattern = np.random.default_rng(3)
    for _ in range(40):  # the design's small print and dots, the same on every flavour
        x, y = pattern.uniform(left + 6, right - 14), pattern.uniform(round(0.76 * size), bottom - 6)
        draw.rectangle((x, y, x + pattern.uniform(3, 10), y + 2), fill=(70, 70, 70))
    draw.text((left + 8, round(0.64 * size)), "100% JUICE", fill=(30, 30, 30))
    return image.filter(ImageFilter.GaussianBlur(0.5))


def plain_fruit(flavour: str, *, size: int = 200) -> Image.Image:
    """A smooth fruit (a shaded disc) on white in ``flavour``'s colour: no texture for keypoints."""
    y, x = np.mgrid[0:size, 0:size] / size
    inside = (x - 0.5) ** 2 + (y - 0.52) ** 2 < 0.36 ** 2
    shade = 1.0 - 0.35 * np.clip(np.hypot(x - 0.4, y - 0.4) / 0.5, 0, 1)
    picture = np.where(inside[..., None], np.array(FLAVOURS[flavour])[None, None] * shade[..., None], 255.0)
    return Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))
