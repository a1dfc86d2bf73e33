"""Interactive figures of explanations; nothing here runs a model.

[`explanation_html`][] writes a small self-contained page without plotly
(`timmlens.viz.explanation_page`, a few hundred kilobytes). The plotly figures
([`explanation_figure`][], [`attention_figure`][]) are for notebooks, where plotly.js
is already loaded; [`write_html`][] embeds plotly.js (4.8 MB) in the page it writes. They show the
original photo with the heatmap over it; an opacity slider, a colormap menu, zoom and
pan (drag, scroll, double-click to reset) and hover values; one button per method; for
ViTs a second plot with a slider over the attention blocks.

Every label that reaches the page (class names, method and model names, titles) is
HTML-escaped, so a class called ``<script>alert(1)</script>`` is shown, not run.

plotly is an optional dependency: ``pip install "timmlens[interactive]"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageGeometry
from .arrays import (
    HeatmapLike,
    PictureLike,
    downscaled,
    heatmap_on_picture,
    jpeg_data_uri,
    nearest_sample,
    picture_array,
    scaled_size,
    value_range,
)
from .html_page import ERRORS_ATTRIBUTE as ERRORS_ATTRIBUTE  # re-exported: the page attributes
from .html_page import READY_ATTRIBUTE, render_page
from .html_page import escape as _escape
from .labels import explanation_title

COLORSCALES = ("Jet", "Viridis", "Inferno", "Hot", "Greys", "RdBu")
OPACITY_STEPS = tuple(round(0.1 * i, 1) for i in range(11))

_MARK_PLOTTED = (
    'var root = document.documentElement; root.setAttribute("{ready}", '
    'String(Number(root.getAttribute("{ready}")) + 1));'
)


def require_plotly() -> Any:
    """``plotly.graph_objects``, or an ImportError that says how to install it."""
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        raise ImportError(
            "Interactive HTML needs plotly, an optional dependency of timmlens. Install it "
            'with: pip install "timmlens[interactive]"  (or: pip install plotly). The static '
            "figures in timmlens.viz.static need only matplotlib."
        ) from exc
    return go


def _template_safe(text: str) -> str:
    """An escaped label inside a plotly hovertemplate (``%{...}`` would be a placeholder)."""
    return _escape(text).replace("%", "&#37;")


# ------------------------------------------------------------------ pictures
def _pixel_axis(count: int, full: int) -> dict[str, float]:
    """``x0``/``dx`` placing ``count`` cells over ``full`` original pixels (centres at i)."""
    step = full / count
    return {"start": step / 2 - 0.5, "step": step}


def _base_figure(picture: np.ndarray, max_image_side: int) -> Any:
    go = require_plotly()
    height, width = picture.shape[:2]
    shown_h, shown_w = scaled_size(height, width, max_image_side)
    xs, ys = _pixel_axis(shown_w, width), _pixel_axis(shown_h, height)
    fig = go.Figure()
    fig.add_trace(
        go.Image(
            source=jpeg_data_uri(downscaled(picture, max_image_side), quality=90),
            x0=xs["start"],
            dx=xs["step"],
            y0=ys["start"],
            dy=ys["step"],
            hoverinfo="skip",
            name="photo",
        )
    )
    fig.update_xaxes(visible=False, range=[-0.5, width - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[height - 0.5, -0.5], scaleanchor="x", constrain="domain")
    return fig


def _heat_trace(
    picture: np.ndarray,
    heatmap: HeatmapLike,
    geometry: ImageGeometry | None,
    name: str,
    *,
    colorscale: str,
    opacity: float,
    max_side: int,
    visible: bool,
    stretch: bool = False,
) -> Any:
    """A heatmap trace over the photo; ``stretch`` spans the colours from the map's min to max."""
    go = require_plotly()
    height, width = picture.shape[:2]
    full = heatmap_on_picture(heatmap, (height, width), geometry)
    zmin, zmax = value_range(full)
    finite = full[np.isfinite(full)]
    if stretch and finite.size and float(finite.max()) > float(finite.min()):
        zmin, zmax = float(finite.min()), float(finite.max())
    small = nearest_sample(full, *scaled_size(height, width, max_side)).astype(np.float32)
    xs, ys = _pixel_axis(small.shape[1], width), _pixel_axis(small.shape[0], height)
    return go.Heatmap(
        z=np.round(small, 4),
        x0=xs["start"],
        dx=xs["step"],
        y0=ys["start"],
        dy=ys["step"],
        zmin=zmin,
        zmax=zmax,
        colorscale=colorscale,
        opacity=opacity,
        hoverongaps=False,
        hovertemplate=(
            f"x %{{x:.0f}}, y %{{y:.0f}}<br>{_template_safe(name)}: %{{z:.3f}}<extra></extra>"
        ),
        name=_escape(name),
        visible=visible,
        colorbar={"thickness": 14, "len": 0.8},
    )


def _controls(
    fig: Any, heat_indices: list[int], *, colorscale: str, opacity: float, slider_y: float
) -> None:
    """Opacity slider and colormap menu acting on the heatmap traces."""
    steps = [
        {"method": "restyle", "label": f"{value:.1f}", "args": [{"opacity": value}, heat_indices]}
        for value in OPACITY_STEPS
    ]
    active = min(range(len(OPACITY_STEPS)), key=lambda i: abs(OPACITY_STEPS[i] - opacity))
    sliders = list(fig.layout.sliders or [])
    sliders.append(
        {
            "active": active,
            "currentvalue": {"prefix": "heatmap opacity: "},
            "pad": {"t": 10},
            "y": slider_y,
            "len": 0.9,
            "steps": steps,
        }
    )
    names = [colorscale, *[c for c in COLORSCALES if c != colorscale]]
    menus = list(fig.layout.updatemenus or [])
    menus.append(
        {
            "type": "dropdown",
            "x": 1.0,
            "xanchor": "right",
            "y": 1.12,
            "yanchor": "top",
            "showactive": True,
            "buttons": [
                {
                    "method": "restyle",
                    "label": f"colormap: {name}",
                    "args": [{"colorscale": name}, heat_indices],
                }
                for name in names
            ],
        }
    )
    fig.update_layout(sliders=sliders, updatemenus=menus)


# ------------------------------------------------------------------ figures
def explanation_figure(
    image: PictureLike,
    heatmaps: Mapping[str, HeatmapLike],
    geometry: ImageGeometry | None = None,
    *,
    label: str | None = None,
    probability: float | None = None,
    note: str | None = None,
    title: str | None = None,
    colorscale: str = "Jet",
    opacity: float = 0.5,
    max_side: int = 224,
    max_image_side: int = 640,
) -> Any:
    """A plotly figure: the photo, one heatmap per method (buttons), opacity and colormap.

    Args:
        image: the original photo.
        heatmaps: method name -> ``(H, W)`` heatmap in model-input coordinates.
        geometry: how the photo became the model input (``PreparedBatch.geometries[i]``).
        label: the class name in the title (``title`` replaces the title).
        probability: its probability in the title.
        note: a note in the title.
        max_side: heatmaps are sampled to at most this many cells per side (file size).
        max_image_side: the embedded photo is downscaled to at most this size.
    """
    if not heatmaps:
        raise ValueError("no heatmaps given; pass {method name: (H, W) heatmap}.")
    picture = picture_array(image)
    fig = _base_figure(picture, max_image_side)
    names = list(heatmaps)
    for i, name in enumerate(names):
        fig.add_trace(
            _heat_trace(
                picture,
                heatmaps[name],
                geometry,
                name,
                colorscale=colorscale,
                opacity=opacity,
                max_side=max_side,
                visible=i == 0,
            )
        )
    heat = list(range(1, len(names) + 1))
    heading = title if title is not None else explanation_title(label, probability, None, note)
    buttons = []
    for i, name in enumerate(names):
        visible = [True] + [j == i for j in range(len(names))]
        text = explanation_title(None, None, name) if not heading else f"{heading} - {name}"
        buttons.append(
            {
                "method": "update",
                "label": _escape(name),
                "args": [{"visible": visible}, {"title.text": _escape(text)}],
            }
        )
    first = f"{heading} - {names[0]}" if heading else names[0]
    fig.update_layout(
        title={"text": _escape(first), "x": 0.02},
        updatemenus=[
            {
                "type": "buttons",
                "direction": "right",
                "x": 0.0,
                "xanchor": "left",
                "y": 1.12,
                "yanchor": "top",
                "showactive": True,
                "buttons": buttons,
            }
        ],
        margin={"l": 20, "r": 20, "t": 110, "b": 90},
        height=640,
        dragmode="zoom",
    )
    _controls(fig, heat, colorscale=colorscale, opacity=opacity, slider_y=0.0)
    return fig


def attention_figure(
    image: PictureLike,
    layers: Mapping[str, HeatmapLike] | Sequence[HeatmapLike],
    geometry: ImageGeometry | None = None,
    *,
    title: str = "class-token attention per block",
    colorscale: str = "Viridis",
    opacity: float = 0.6,
    max_side: int = 112,
    max_image_side: int = 640,
) -> Any:
    """A plotly figure: the photo with one attention map per block, chosen with a slider.

    Args:
        layers: per block, the class token's attention to the patches ``(h, w)`` (the
            patch grid, e.g. ``AttentionMaps.cls_to_patches(head="mean")[l]``) or at input
            size ``(H, W)``; a mapping gives the blocks' names.
        geometry: how the photo became the model input (the patch grid covers the input).
        max_side: maps are sampled to at most this many cells per side (patch grids are
            coarse, so the default is half that of method heatmaps).
    """
    named = (
        dict(layers)
        if isinstance(layers, Mapping)
        else {f"block {i}": m for i, m in enumerate(layers)}
    )
    if not named:
        raise ValueError("no attention maps given; pass one (h, w) map per block.")
    picture = picture_array(image)
    fig = _base_figure(picture, max_image_side)
    names = list(named)
    last = len(names) - 1
    for i, name in enumerate(names):
        fig.add_trace(
            _heat_trace(
                picture,
                named[name],
                geometry,
                name,
                colorscale=colorscale,
                opacity=opacity,
                max_side=max_side,
                visible=i == last,
                stretch=True,  # attention rows are near 1/N: show their contrast
            )
        )
    steps = [
        {
            "method": "update",
            "label": _escape(name),
            "args": [
                {"visible": [True] + [j == i for j in range(len(names))]},
                {"title.text": _escape(f"{title} - {name}")},
            ],
        }
        for i, name in enumerate(names)
    ]
    fig.update_layout(
        title={"text": _escape(f"{title} - {names[last]}"), "x": 0.02},
        sliders=[
            {
                "active": last,
                "currentvalue": {"prefix": "attention block: "},
                "pad": {"t": 10},
                "y": 0.0,
                "len": 0.9,
                "steps": steps,
            }
        ],
        margin={"l": 20, "r": 20, "t": 110, "b": 210},
        height=760,
        dragmode="zoom",
    )
    _controls(
        fig, list(range(1, len(names) + 1)), colorscale=colorscale, opacity=opacity, slider_y=-0.2
    )
    return fig


def write_html(
    path: str | os.PathLike[str],
    figures: Any | Sequence[Any],
    *,
    title: str = "timmlens explanation",
    subtitle: str = "",
) -> Path:
    """Write one self-contained HTML page with ``figures`` (plotly.js embedded once).

    ``title`` and ``subtitle`` are plain text (escaped here). When the page has drawn its
    figures, ``<html data-timmlens-plotted>`` holds their count; JavaScript errors are
    counted in ``data-timmlens-errors``.
    """
    import plotly.io as pio

    require_plotly()
    figures = list(figures) if isinstance(figures, (list, tuple)) else [figures]
    parts = []
    config = {"scrollZoom": True, "displaylogo": False, "responsive": True}
    for i, fig in enumerate(figures):
        parts.append(
            pio.to_html(
                fig,
                full_html=False,
                include_plotlyjs=i == 0,
                div_id=f"timmlens-figure-{i}",
                config=config,
                post_script=_MARK_PLOTTED.format(ready=READY_ATTRIBUTE),
            )
        )
    page = render_page(title, "\n".join(parts), subtitle=subtitle)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


#: plotly colorscale names of older calls -> the page's colormaps
_PAGE_COLORMAPS = {
    "jet": "jet",
    "viridis": "viridis",
    "inferno": "inferno",
    "greys": "gray",
    "gray": "gray",
    "rdbu": "RdBu_r",
    "rdbu_r": "RdBu_r",
    "magma": "magma",
}


def explanation_html(
    path: str | os.PathLike[str],
    image: PictureLike,
    heatmaps: Mapping[str, HeatmapLike],
    geometry: ImageGeometry | None = None,
    *,
    attention: Mapping[str, HeatmapLike] | Sequence[HeatmapLike] | None = None,
    label: str | None = None,
    probability: float | None = None,
    note: str | None = None,
    model_name: str | None = None,
    colorscale: str = "inferno",
    opacity: float = 0.5,
) -> Path:
    """One small self-contained page for one image: method overlays (buttons) and, for
    ViTs, attention per block (a slider). Needs no plotly (see `timmlens.viz.explanation_page`).

    Args:
        path: the ``.html`` file to write.
        image: the original photo.
        heatmaps: method name -> ``(H, W)`` heatmap in model-input coordinates.
        geometry: how the photo became the model input (the cut-away part is hatched).
        attention: per block, the class token's attention ``(h, w)`` (e.g.
            ``AttentionMaps.cls_to_patches(head="mean")[l]``); adds the second view.
        label: the class name, shown in the titles (escaped).
        probability: its probability, shown in the titles.
        note: shown in the titles (escaped); a note such as ``"random weights"`` also
            heads the page.
        model_name: shown in the titles (escaped).
        colorscale: the default colormap (``inferno``, ``viridis``, ``magma``, ``jet``,
            ``gray``, ``RdBu_r``; the menu offers them all).
        opacity: the default opacity of the heatmap.

    Returns:
        The path written (a page of a few hundred kilobytes).
    """
    from .explanation_page import PageView, write_page

    if not heatmaps:
        raise ValueError("no heatmaps given; pass {method name: (H, W) heatmap}.")
    colormap = _PAGE_COLORMAPS.get(colorscale.lower(), "inferno")
    heading = explanation_title(label, probability, None, note)
    views = [
        PageView(
            heading or "explanation",
            {str(k): v for k, v in heatmaps.items()},
            colormap=colormap,
            opacity=opacity,
        )
    ]
    if attention is not None:
        blocks = (
            dict(attention)
            if isinstance(attention, Mapping)
            else {f"block {i}": m for i, m in enumerate(attention)}
        )
        views.append(
            PageView(
                "class-token attention per block",
                blocks,
                control="slider",
                colormap="viridis",
                opacity=0.6,
                label="attention weight",
                max_side=112,
            )
        )
    page_title = " - ".join(t for t in (model_name, heading) if t) or "timmlens explanation"
    subtitle = (
        "Heatmaps are computed on the model input and mapped back onto the original photo; "
        "the hatched border is what the preprocessing crop cut away (the model never saw "
        "it). Wheel to zoom, drag to pan, double-click to reset, hover for values."
    )
    return write_page(path, image, views, geometry, title=page_title, subtitle=subtitle)
