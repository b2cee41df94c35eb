"""The picture of a match: each query beside its matches, the inlier keypoint pairs drawn between them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from ..engine.image_loading import load_rgb_image
from ..exceptions import ImageLoadError
from ..matching.copy_check import COPY, DIFFERENT, SAME_OBJECT
from ..matching.object_match import ObjectMatcher
from ..schema import IMAGE_PATH
from .contact_sheet import _label, _short

LINE_COLOUR = (30, 170, 60)
FRAME_COLOURS = {COPY: (40, 90, 200), SAME_OBJECT: (30, 170, 60), DIFFERENT: (200, 40, 40)}


def match_sheet(
    results: pd.DataFrame,
    matcher: ObjectMatcher,
    *,
    height: int = 240,
    max_matches: int = 3,
    max_lines: int = 80,
):
    """Draw each query beside its verified matches, with the inlier lines between them.

    One row per (query, match) pair: the query photo, the matched photo framed in the
    colour of its verdict (blue copy, green same object), and a line between each pair
    of inlier keypoints. A query without any verified match is shown beside its first
    candidate, framed in red.

    Parameters
    ----------
    results : DataFrame
        From :meth:`ObjectMatcher.match`.
    matcher : ObjectMatcher
        The matcher that made ``results``: it finds the photos and their features.
    height : int, default=240
        Height of each photo in pixels.
    max_matches : int, default=3
        Matches shown per query, best first.
    max_lines : int, default=80
        Inlier lines drawn per pair at most (an even sample of them).

    Returns
    -------
    PIL.Image.Image
        RGB; save it with ``.save("matches.png")``.
    """
    font = ImageFont.load_default(size=max(10, height // 18))
    panels = []
    for _, group in results.groupby("query", sort=False):
        verified = group[group["verdict"] != DIFFERENT].head(max_matches)
        for _, row in (verified if len(verified) else group.head(1)).iterrows():
            panels.append(_pair_panel(matcher, row, height, max_lines, font))
    if not panels:
        return Image.new("RGB", (2 * height, height), (255, 255, 255))
    sheet = Image.new("RGB", (max(panel.width for panel in panels), sum(panel.height for panel in panels)),
                      (255, 255, 255))
    top = 0
    for panel in panels:
        sheet.paste(panel, (0, top))
        top += panel.height
    return sheet


def _pair_panel(matcher: ObjectMatcher, row, height: int, max_lines: int, font):
    query_file = matcher.photo_file(row["query"])
    match_file = matcher.photo_file(row[IMAGE_PATH])
    query, query_scale = _scaled_to_height(query_file, height)
    match, match_scale = _scaled_to_height(match_file, height)
    line = font.getbbox("Ag")[3] + 2
    panel = Image.new("RGB", (query.width + match.width + 8, height + 2 * line + 4), (255, 255, 255))
    panel.paste(query, (0, 0))
    left = query.width + 8
    panel.paste(match, (left, 0))
    draw = ImageDraw.Draw(panel)
    if query_file is not None and match_file is not None:
        verification = matcher.verify(query_file, row[IMAGE_PATH])
        step = max(1, verification.inliers // max_lines)
        for (xa, ya), (xb, yb) in zip(verification.points_a[::step], verification.points_b[::step]):
            draw.line((xa * query_scale, ya * query_scale, left + xb * match_scale, yb * match_scale),
                      fill=LINE_COLOUR, width=1)
    draw.rectangle((left, 0, left + match.width - 1, height - 1), outline=FRAME_COLOURS[row["verdict"]], width=3)
    _label(draw, (2, height + 2), [_short(Path(str(row["query"])).name, query.width, font), "query"], font, line)
    caption = f"#{row['rank']} {row['verdict']}  {row['inliers']} inliers  d={row['feature_distance']:.3f}"
    _label(draw, (left + 2, height + 2), [_short(Path(str(row[IMAGE_PATH])).name, match.width, font),
                                          _short(caption, max(match.width, 2 * height), font)], font, line)
    return panel


def _scaled_to_height(photo: Path | None, height: int):
    """The photo scaled to ``height`` and the scale used; a grey tile when it cannot be read."""
    try:
        if photo is None:
            raise ImageLoadError(None, "missing", "no photo")
        with load_rgb_image(photo) as image:
            scale = height / image.height
            return image.resize((max(1, round(image.width * scale)), height)), scale
    except ImageLoadError:
        return Image.new("RGB", (height, height), (225, 225, 225)), 1.0
