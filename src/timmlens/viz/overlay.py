"""The building blocks of every static figure: one heatmap over one photo, and a grid of them.

[`draw_overlay`][] draws a heatmap (model-input coordinates) on the original photo it came
from, with the part the preprocessing cropped away hatched or cut; [`plot_grid`][] lays
[`OverlayPanel`][]s out in rows with shared or separate colour bars. The ready-made figures
in `timmlens.viz.static` are compositions of these. Like them, nothing here uses
``pyplot`` or runs a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..data import ImageGeometry
from .arrays import (
    DEFAULT_CMAP,
    DIVERGING_CMAP,
    HeatmapLike,
    PictureLike,
    crop_on_picture,
    heatmap_on_picture,
    picture_array,
    value_range,
)
from .labels import mpl_text, wrap_title

DEFAULT_ALPHA = 0.5
#: ``crop=``: how the part of the photo the preprocessing cut away is drawn. ``"mark"``:
#: the whole photo, with that part hatched and the crop outlined; ``"only"``: just the
#: crop the model saw; ``"plain"``: the whole photo, that part merely left uncoloured.
CROP_MODES = ("mark", "only", "plain")
COLORBAR_LABEL = "relevance"
#: characters of a 9 pt title per inch of axes width (wrapping between parts only)
_CHARS_PER_INCH = 11
_OUTSIDE_CROP = {"facecolor": (0.15, 0.15, 0.15, 0.5), "edgecolor": (1, 1, 1, 0.45)}


def _cmap_for(cmap: str | None, vmin: float) -> str:
    return cmap or (DIVERGING_CMAP if vmin < 0 else DEFAULT_CMAP)


def _check_crop(crop: str) -> None:
    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}.")


def scale_label(vmin: float, vmax: float, peak: float, base: str = COLORBAR_LABEL) -> str:
    """What the colour scale shows: signed, or saturated above a percentile, or plain."""
    if vmin < 0:
        return f"{base} (signed; blue < 0 < red)"
    if vmax < peak:
        return f"{base} (top 0.5% saturated)"
    return base


@dataclass
class OverlayPanel:
    """One picture of a grid: a heatmap over an original photo.

    Attributes:
        image: the original photo (PIL, ``HWC`` array, or a ``(3, H, W)`` tensor in [0, 1]).
        heatmap: ``(H, W)`` in model-input coordinates, or ``None`` for the bare photo.
        geometry: how ``image`` became the model input (``None``: the heatmap covers it).
        title: text above the panel (plain text, shown literally).
    """

    image: PictureLike
    heatmap: HeatmapLike | None = None
    geometry: ImageGeometry | None = None
    title: str = ""


def _outside_crop(
    geometry: ImageGeometry, size: tuple[int, int]
) -> tuple[list[tuple[float, float, float, float]], tuple[float, float, float, float]] | None:
    """Strips ``(x, y, w, h)`` of the photo outside the crop and the crop box (None: none)."""
    top, left, crop_h, crop_w = crop_on_picture(geometry)
    height, width = size
    y0, x0 = max(top, 0.0), max(left, 0.0)
    y1, x1 = min(top + crop_h, height), min(left + crop_w, width)
    if y0 < 0.5 and x0 < 0.5 and y1 > height - 0.5 and x1 > width - 0.5:
        return None
    strips = [
        (0, 0, width, y0),
        (0, y1, width, height - y1),
        (0, y0, x0, y1 - y0),
        (x1, y0, width - x1, y1 - y0),
    ]
    # Pixel centres sit at integers: a pixel spans [i - 0.5, i + 0.5].
    shifted = [(x - 0.5, y - 0.5, w, h) for x, y, w, h in strips if w > 0.5 and h > 0.5]
    return shifted, (x0 - 0.5, y0 - 0.5, x1 - x0, y1 - y0)


def _draw_crop(ax: Axes, geometry: ImageGeometry | None, size: tuple[int, int], crop: str) -> None:
    """Hatch what the model did not see (``"mark"``) or zoom to what it saw (``"only"``)."""
    if geometry is None or crop == "plain":
        return
    outside = _outside_crop(geometry, size)
    if outside is None:
        return
    strips, (x, y, w, h) = outside
    if crop == "only":
        ax.set_xlim(x, x + w)
        ax.set_ylim(y + h, y)
        return
    from matplotlib.patches import Rectangle

    for sx, sy, sw, sh in strips:
        ax.add_patch(Rectangle((sx, sy), sw, sh, hatch="//", linewidth=0, **_OUTSIDE_CROP))
    ax.add_patch(
        Rectangle((x, y), w, h, fill=False, edgecolor="white", linestyle="--", linewidth=1.0)
    )


def draw_overlay(
    ax: Axes,
    image: PictureLike,
    heatmap: HeatmapLike | None,
    geometry: ImageGeometry | None = None,
    *,
    cmap: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    title: str = "",
    colorbar: bool = False,
    colorbar_label: str | None = None,
    crop: str = "mark",
) -> Any:
    """Draw ``heatmap`` over ``image`` on ``ax``; returns the heatmap's ``AxesImage`` (or None).

    The axes show the original photo at its own size ``(H0, W0)``; ``crop`` (see
    `CROP_MODES`) says how the part outside the model's crop is drawn. The
    returned image's label (``get_label()``) is its colour bar's label.
    """
    _check_crop(crop)
    picture = picture_array(image)
    ax.imshow(picture)
    shown = None
    if heatmap is not None:
        on_picture = heatmap_on_picture(heatmap, picture.shape[:2], geometry)
        vmin, vmax = value_range(on_picture)
        finite = on_picture[np.isfinite(on_picture)]
        peak = float(np.abs(finite).max()) if finite.size else vmax
        shown = ax.imshow(
            np.ma.masked_invalid(on_picture),
            cmap=_cmap_for(cmap, vmin),
            alpha=alpha,
            vmin=vmin,
            vmax=vmax,
        )
        shown.set_label(colorbar_label or scale_label(vmin, vmax, peak))
        if colorbar:
            add_colorbar(shown, ax)
    _draw_crop(ax, geometry, picture.shape[:2], crop)
    ax.set_title(mpl_text(title), fontsize=9)
    ax.set_axis_off()
    return shown


def add_colorbar(shown: Any, axes: Axes | Sequence[Axes], label: str | None = None) -> Any:
    """A labelled colour bar for ``shown`` (an ``AxesImage``) beside ``axes``."""
    ax = axes if isinstance(axes, Axes) else list(axes)
    bar = shown.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, shrink=0.8)
    bar.solids.set_alpha(1.0)  # the scale itself, not its blend with the photo
    bar.set_label(mpl_text(label or shown.get_label()), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


def _panel_height(image: PictureLike, panel_width: float, titles: Sequence[str]) -> float:
    """Inches for one row of panels: the photo at its aspect ratio plus its title lines."""
    height, width = picture_array(image).shape[:2]
    aspect = min(1.6, max(0.4, height / width))
    lines = max((t.count("\n") + 1 for t in titles if t), default=0)
    return panel_width * aspect + 0.18 * lines + 0.15


def _grid_shape(count: int, ncols: int | None) -> tuple[int, int]:
    ncols = max(1, min(count, ncols or count))
    return math.ceil(count / ncols), ncols


def _colorbars(shown: list[tuple[Axes, Any]]) -> None:
    """One colour bar for the whole grid when the maps can share a scale, else one each.

    Maps share a scale when they have the same colormap, lower limit and label (e.g. the
    normalised CAMs of every layer, whose peaks differ only by interpolation): they are
    then drawn from that lower limit to the largest upper limit among them.
    """
    if not shown:
        return
    kinds = {(im.get_cmap().name, im.get_clim()[0], im.get_label()) for _, im in shown}
    if len(kinds) == 1:
        top = max(im.get_clim()[1] for _, im in shown)
        for _, image in shown:
            image.set_clim(image.get_clim()[0], top)
        add_colorbar(shown[0][1], [ax for ax, _ in shown])
        return
    for ax, image in shown:
        add_colorbar(image, ax)


def plot_grid(
    panels: Sequence[OverlayPanel],
    *,
    ncols: int | None = None,
    suptitle: str | None = None,
    cmap: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    panel_size: float = 3.2,
    colorbar: bool = True,
    crop: str = "mark",
) -> Figure:
    """Panels in a grid (``ncols`` per row, default all in one row); unused axes hidden.

    With ``colorbar`` the heatmaps get one labelled colour bar when they share a scale,
    else one each. Titles break only between their parts, never inside a name.
    """
    if not panels:
        raise ValueError("nothing to plot: pass at least one panel.")
    rows, cols = _grid_shape(len(panels), ncols)
    width = max(16, round(panel_size * _CHARS_PER_INCH))
    titles = [wrap_title(panel.title, width) for panel in panels]
    fig_width = panel_size * cols + 0.8
    heading = wrap_title(suptitle, round(fig_width * _CHARS_PER_INCH * 0.85)) if suptitle else ""
    fig = Figure(
        layout="constrained",
        figsize=(
            fig_width,
            rows * _panel_height(panels[0].image, panel_size, titles)
            + (0.25 * (heading.count("\n") + 1) if heading else 0.1),
        ),
    )
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    heat: list[tuple[Axes, Any]] = []
    for ax, panel, title in zip(axes, panels, titles, strict=False):
        shown = draw_overlay(
            ax,
            panel.image,
            panel.heatmap,
            panel.geometry,
            cmap=cmap,
            alpha=alpha,
            title=title,
            crop=crop,
        )
        if shown is not None:
            heat.append((ax, shown))
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if colorbar:
        _colorbars(heat)
    if heading:
        fig.suptitle(mpl_text(heading), fontsize=11)
    return fig
