"""What a result shows in a notebook cell as HTML (``_repr_html_``): its figure as an
inline PNG, a heading, and one caption per image with the class names as text.

The figure alone already draws each map on its photo under its classes; the captions
repeat the classes as text, which a reader can search and copy and a screen reader can
read, and the ``alt`` text carries them too. Every label goes through
[`escape`][timmlens.viz.html_page.escape]: a class called ``<b>`` is shown, not rendered.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from .arrays import PictureLike, downscaled, picture_array, png_data_uri
from .html_page import escape

#: the long side of a photo shown beside a figure (pixels)
THUMBNAIL_SIDE = 160


def png_img(png: bytes, alt: str, style: str = "max-width:100%") -> str:
    """An ``<img>`` of PNG bytes, inline as a ``data:image/png;base64`` URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}" style="{style}">'


def picture_img(picture: PictureLike, alt: str, max_side: int = THUMBNAIL_SIDE) -> str:
    """An ``<img>`` of a photo (PIL, array, ``(3, H, W)`` tensor in [0, 1]), shrunk to
    ``max_side`` pixels on its long side."""
    small = downscaled(picture_array(picture), max_side)
    return f'<img src="{png_data_uri(small)}" alt="{escape(alt)}">'


def result_html(
    png: bytes,
    heading: str,
    captions: Sequence[str] = (),
    *,
    note: str | None = None,
    details: str | None = None,
    beside: str = "",
) -> str:
    """A result's HTML fragment for a notebook cell (not a page: no ``<html>``).

    Args:
        png: the result's figure, PNG bytes.
        heading: what made it (``"GradCAM @ layer4"``), shown bold.
        captions: one line per image (``"target bee (28.3%), predicted cat (40.1%)"``),
            numbered from 0 as the batch is.
        note: a weights note (``"random weights"``), shown after the heading.
        details: one more line in small print (shapes, counts).
        beside: HTML shown left of the figure (e.g. the photo of `picture_img`).
    """
    head = f"<strong>{escape(heading)}</strong>" + (f" [{escape(note)}]" if note else "")
    alt = "; ".join([heading, *captions])
    figure = png_img(png, alt)
    if beside:
        figure = (
            '<div style="display:flex;gap:12px;align-items:flex-start">'
            f"<div>{beside}</div><div>{figure}</div></div>"
        )
    items = "".join(f"<li>{escape(caption)}</li>" for caption in captions)
    listed = f'<ol start="0" style="margin:4px 0">{items}</ol>' if captions else ""
    small = f'<div style="font-size:smaller;opacity:0.8">{escape(details)}</div>' if details else ""
    return f'<div class="timmlens-result"><div>{head}</div>{figure}{listed}{small}</div>'
