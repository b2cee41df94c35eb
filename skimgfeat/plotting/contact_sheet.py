"""Contact sheets: each query photo beside its nearest neighbours, labelled, as one picture."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..engine.image_loading import load_rgb_image
from ..exceptions import ImageLoadError
from ..search.similarity import SimilarityIndex

BACKGROUND = (255, 255, 255)
MISSING_TILE = (225, 225, 225)
TEXT = (20, 20, 20)
QUERY_FRAME = (200, 40, 40)


def contact_sheet(results: pd.DataFrame, index: SimilarityIndex, *, thumbnail: int = 160) -> Image.Image:
    """Draw the result of :meth:`SimilarityIndex.search` or :func:`similar_items` as a picture.

    One row per query: the query photo (framed in red), then its neighbours by rank,
    each labelled with its name and cosine distance. A query is shown from its file
    when it is one, else as the indexed row it names; photos that cannot be found or
    read are grey tiles.

    Parameters
    ----------
    results : DataFrame
        Columns ``query``, ``rank``, the index's key column and ``distance``.
    index : SimilarityIndex
        Where the neighbours' photos are (:meth:`SimilarityIndex.photo_path`).
    thumbnail : int, default=160
        Side of the square each photo is fitted into, in pixels.

    Returns
    -------
    PIL.Image.Image
        RGB; save it with ``.save("sheet.png")``.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat.search.similarity import SimilarityIndex
    >>> index = SimilarityIndex(["a.jpg", "b.jpg", "c.jpg"], np.eye(3) + 0.1)
    >>> sheet = contact_sheet(index.similar(["a.jpg"], k=2), index, thumbnail=64)
    >>> sheet.width  # the query and its 2 neighbours, 64 px each
    192
    """
    font = ImageFont.load_default(size=max(9, thumbnail // 14))
    line = font.getbbox("Ag")[3] + 2
    queries = list(dict.fromkeys(results["query"]))
    k = int(results["rank"].max()) if len(results) else 0
    cell_height = thumbnail + 2 * line + 2
    sheet = Image.new("RGB", ((k + 1) * thumbnail, max(1, len(queries)) * cell_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for row, query in enumerate(queries):
        top = row * cell_height
        _paste(sheet, draw, _query_photo(query, index), (0, top), thumbnail, font)
        draw.rectangle((0, top, thumbnail - 1, top + thumbnail - 1), outline=QUERY_FRAME, width=3)
        _label(draw, (2, top + thumbnail + 1), [_short(Path(query).name, thumbnail, font), "query"], font, line)
        neighbours = results[results["query"] == query].sort_values("rank")
        for rank, name, distance in zip(neighbours["rank"], neighbours[index.key], neighbours["distance"]):
            left = int(rank) * thumbnail
            _paste(sheet, draw, index.photo_path(name), (left, top), thumbnail, font)
            label = [_short(Path(str(name)).name, thumbnail, font), f"#{rank}  d={distance:.3f}"]
            _label(draw, (left + 2, top + thumbnail + 1), label, font, line)
    return sheet


def _query_photo(query: str, index: SimilarityIndex) -> Path | None:
    if query in index:
        return index.photo_path(query)
    return Path(query) if os.path.isfile(query) else None


def _paste(sheet: Image.Image, draw: ImageDraw.ImageDraw, photo: Path | None, corner, size: int, font) -> None:
    left, top = corner
    try:
        if photo is None:
            raise ImageLoadError(None, "missing", "no photo")
        with load_rgb_image(photo, draft_size=(size, size)) as image:
            tile = ImageOps.contain(image, (size - 4, size - 4))
        sheet.paste(tile, (left + (size - tile.width) // 2, top + (size - tile.height) // 2))
    except ImageLoadError:
        draw.rectangle((left + 2, top + 2, left + size - 3, top + size - 3), fill=MISSING_TILE)
        draw.text((left + 6, top + size // 2), "no photo", fill=TEXT, font=font)


def _label(draw: ImageDraw.ImageDraw, corner, lines: list[str], font, line_height: int) -> None:
    left, top = corner
    for i, text in enumerate(lines):
        draw.text((left, top + i * line_height), text, fill=TEXT, font=font)


def _short(text: str, width: int, font) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if font.getlength(text) <= width - 4:
        return text
    while text and font.getlength(text + "...") > width - 4:
        text = text[:-1]
    return text + "..."
