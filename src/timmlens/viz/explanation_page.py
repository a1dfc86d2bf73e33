"""The small self-contained explanation page (no plotly); nothing here runs a model.

The page needs no library and no network: a few kilobytes of plain JavaScript draw on
a ``<canvas>``. It shows the original photo with a heatmap over it, one button per
method, an opacity slider, a colormap menu, zoom (wheel) and pan (drag; double-click
resets), the value under the pointer, a labelled colour bar, the part of the photo the
preprocessing crop cut away hatched, and for ViTs a second view with a slider over the
attention blocks.

Why not plotly: plotly.js alone is 4.8 MB, so every page was 5-7 MB. Here the photo is
a JPEG of at most ``max_image_side`` pixels, and each map a greyscale PNG of at most
``max_side`` cells per side whose 8-bit levels span the map's own range (the colour bar
and the hover values are mapped back from them): pages of a few hundred kilobytes.

The page is [`render_page`][timmlens.viz.html_page.render_page] with the data of its
views as JSON and its script and style as package data (``assets/explanation.js``,
``assets/explanation.css``). Labels reach the page only as escaped HTML or as JSON set
with ``textContent``, so a class called ``<script>alert(1)</script>`` is shown, never run.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import ImageGeometry
from .arrays import (
    HeatmapLike,
    PictureLike,
    crop_on_picture,
    downscaled,
    heatmap_on_picture,
    jpeg_data_uri,
    nearest_sample,
    picture_array,
    scaled_size,
    value_range,
)
from .html_page import PAGE_STYLE, render_page

#: colormaps offered in the menu (matplotlib names); the first of a view is its default
COLORMAPS = ("inferno", "viridis", "magma", "jet", "gray", "RdBu_r")


@dataclass
class PageView:
    """One interactive view: a set of maps over the photo, switched by buttons or a slider.

    Attributes:
        title: the view's heading (plain text).
        maps: name -> ``(H, W)`` map in model-input coordinates (or a patch grid).
        control: ``"buttons"`` (one per map) or ``"slider"`` (attention blocks).
        colormap: the default colormap (`COLORMAPS`).
        opacity: the default opacity of the maps.
        label: the colour bar's label.
        max_side: maps are sampled to at most this many cells per side.
        stretch: colours span each map's own min to max (stated on the page), not 0 to max.
    """

    title: str
    maps: Mapping[str, HeatmapLike]
    control: str = "buttons"
    colormap: str = "inferno"
    opacity: float = 0.5
    label: str = "relevance"
    max_side: int = 224
    stretch: bool = False


def _lut(name: str) -> str:
    """256 RGB entries of a matplotlib colormap as one hex string."""
    from matplotlib import colormaps

    colours = colormaps[name](np.linspace(0, 1, 256))[:, :3]
    return bytes(np.round(colours * 255).astype(np.uint8).ravel()).hex()


def encode_map(full: np.ndarray, max_side: int, stretch: bool = False) -> dict[str, Any]:
    """A map on the photo ``(H0, W0)`` (NaN outside the crop) as an 8-bit greyscale PNG.

    Returns ``{"png", "lo", "hi", "vmin", "vmax"}``: level ``q`` of the PNG's grey channel
    is the value ``lo + q / 255 * (hi - lo)`` (its alpha is 0 where the map is NaN);
    ``vmin``/``vmax`` are the colour limits (`timmlens.viz.arrays.value_range`,
    or the map's min and max with ``stretch``).
    """
    vmin, vmax = value_range(full)
    finite = full[np.isfinite(full)]
    lo = float(min(finite.min(), vmin)) if finite.size else vmin
    hi = float(max(finite.max(), vmax)) if finite.size else vmax
    if stretch and finite.size and float(finite.max()) > float(finite.min()):
        vmin, vmax = float(finite.min()), float(finite.max())
    small = nearest_sample(full, *scaled_size(*full.shape, max_side))
    valid = np.isfinite(small)
    span = hi - lo if hi > lo else 1.0
    levels = np.round(np.clip((np.nan_to_num(small, nan=lo) - lo) / span, 0, 1) * 255)
    pixels = np.stack([levels.astype(np.uint8), (valid * 255).astype(np.uint8)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)  # (h, w, 2): "LA"
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"png": uri, "lo": lo, "hi": hi, "vmin": float(vmin), "vmax": float(vmax)}


def write_page(
    path: str | os.PathLike[str],
    image: PictureLike,
    views: Sequence[PageView],
    geometry: ImageGeometry | None = None,
    *,
    title: str = "timmlens explanation",
    subtitle: str = "",
    max_image_side: int = 640,
) -> Path:
    """Write one self-contained page with ``views`` of the photo ``image``; returns the path.

    ``title`` and ``subtitle`` are plain text (escaped here). When the page has drawn its
    views, ``<html data-timmlens-plotted>`` holds their count; JavaScript errors are
    counted in ``data-timmlens-errors``.
    """
    if not views:
        raise ValueError("no views to show; pass at least one PageView.")
    picture = picture_array(image)
    height, width = picture.shape[:2]
    crop = None
    if geometry is not None:
        top, left, crop_h, crop_w = crop_on_picture(geometry)
        crop = [left, top, crop_w, crop_h]
    data = {
        "photo": jpeg_data_uri(downscaled(picture, max_image_side), quality=85),
        "width": width,
        "height": height,
        "crop": crop,
        "colormaps": {name: _lut(name) for name in COLORMAPS},
        "views": [],
    }
    for view in views:
        if not view.maps:
            raise ValueError(f"view '{view.title}' has no maps.")
        if view.control not in ("buttons", "slider"):
            raise ValueError(f"control must be 'buttons' or 'slider', got {view.control!r}.")
        maps = []
        for name, heatmap in view.maps.items():
            full = heatmap_on_picture(heatmap, (height, width), geometry)
            maps.append({"name": str(name), **encode_map(full, view.max_side, view.stretch)})
        data["views"].append(
            {
                "title": view.title,
                "control": view.control,
                "colormap": view.colormap if view.colormap in COLORMAPS else COLORMAPS[0],
                "opacity": float(view.opacity),
                "label": view.label,
                "stretch": view.stretch,
                "maps": maps,
            }
        )
    page = render_page(
        title,
        '<div id="timmlens-views"></div>',
        subtitle=subtitle,
        styles=(PAGE_STYLE, "explanation.css"),
        scripts=("explanation.js",),
        data=data,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
