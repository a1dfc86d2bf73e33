"""Matplotlib figures of explanations. Nothing here runs a model: pass tensors and arrays.

Every function returns a `matplotlib.figure.Figure` built without ``pyplot``
(no global state, no display needed); save it with [`save_figure`][].

Heatmaps are in model-input coordinates (as every explainer returns them); give the
original photo and its `ImageGeometry` (from
[`timmlens.data.prepare_images`][]) and they are drawn where the model looked on the
*original* photo, with the part the centre crop cut away left uncoloured.

The building blocks ([`draw_overlay`][], [`plot_grid`][], [`OverlayPanel`][], the colour
bar and crop drawing) live in `timmlens.viz.overlay`; they are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..data import ImageGeometry
from .arrays import DEFAULT_CMAP as DEFAULT_CMAP
from .arrays import DIVERGING_CMAP as DIVERGING_CMAP
from .arrays import HeatmapLike, PictureLike, to_numpy
from .labels import explanation_title, mpl_text, wrap_title
from .overlay import (
    _CHARS_PER_INCH,
    DEFAULT_ALPHA,
    OverlayPanel,
    _panel_height,
    draw_overlay,
    plot_grid,
)
from .overlay import COLORBAR_LABEL as COLORBAR_LABEL
from .overlay import CROP_MODES as CROP_MODES
from .overlay import add_colorbar as add_colorbar
from .overlay import scale_label as scale_label


def plot_overlay(
    image: PictureLike,
    heatmap: HeatmapLike,
    geometry: ImageGeometry | None = None,
    *,
    label: str | None = None,
    probability: float | None = None,
    method: str | None = None,
    note: str | None = None,
    title: str | None = None,
    cmap: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    show_original: bool = True,
    colorbar: bool = True,
    colorbar_label: str | None = None,
    crop: str = "mark",
) -> Figure:
    """The original photo and the heatmap over it (one figure, one or two axes).

    Args:
        image: the original photo.
        heatmap: ``(H, W)`` in model-input coordinates.
        geometry: from ``prepare_images(...).geometries[i]``; maps the heatmap onto the photo.
        label: the class name in the title, which reads e.g.
            ``"tiger cat (87.3%) - GradCAM [random weights]"``; ``title`` replaces it.
        probability: the class probability in the title.
        method: the method in the title.
        note: the bracketed note in the title.
        cmap: colormap (default `DEFAULT_CMAP`, `DIVERGING_CMAP` for signed maps).
        alpha: opacity of the heatmap.
        show_original: also show the bare photo on the left.
        colorbar: draw a labelled colour bar next to the overlay.
        crop: the part outside the model's crop: ``"mark"`` (hatched), ``"only"`` (left
            out), ``"plain"`` (uncoloured); see `CROP_MODES`.
    """
    text = title if title is not None else explanation_title(label, probability, method, note)
    text = wrap_title(text, round(4.2 * _CHARS_PER_INCH))
    ncols = 2 if show_original else 1
    fig = Figure(
        layout="constrained", figsize=(4.2 * ncols + 0.8, _panel_height(image, 4.2, [text]) + 0.1)
    )
    axes = np.atleast_1d(fig.subplots(1, ncols)).ravel()
    if show_original:
        draw_overlay(axes[0], image, None, geometry, title="original", crop=crop)
    draw_overlay(
        axes[-1],
        image,
        heatmap,
        geometry,
        cmap=cmap,
        alpha=alpha,
        title=text,
        colorbar=colorbar,
        colorbar_label=colorbar_label,
        crop=crop,
    )
    return fig


def plot_methods(
    image: PictureLike,
    heatmaps: Mapping[str, HeatmapLike],
    geometry: ImageGeometry | None = None,
    *,
    label: str | None = None,
    probability: float | None = None,
    note: str | None = None,
    scores: Mapping[str, str] | None = None,
    cmap: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    crop: str = "mark",
    ncols: int | None = None,
) -> Figure:
    """Several methods on one image: the photo, then one overlay per method.

    Args:
        heatmaps: method name -> ``(H, W)`` heatmap in model-input coordinates.
        scores: optional method name -> short text added under its title (e.g. AUCs).
    """
    panels = [OverlayPanel(image, None, None, "original")]
    for method, heatmap in heatmaps.items():
        extra = f"\n{scores[method]}" if scores and method in scores else ""
        panels.append(OverlayPanel(image, heatmap, geometry, f"{method}{extra}"))
    suptitle = explanation_title(label, probability, None, note)
    return plot_grid(
        panels, ncols=ncols, suptitle=suptitle or None, cmap=cmap, alpha=alpha, crop=crop
    )


def plot_images(
    images: Sequence[PictureLike],
    heatmaps: Sequence[HeatmapLike] | HeatmapLike,
    geometries: Sequence[ImageGeometry | None] | None = None,
    *,
    labels: Sequence[str | None] | None = None,
    probabilities: Sequence[float | None] | None = None,
    method: str | None = None,
    note: str | None = None,
    cmap: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    crop: str = "mark",
    ncols: int | None = 4,
) -> Figure:
    """One method on several images: one overlay per image, titled with its class.

    Args:
        images: the original photos.
        heatmaps: ``(B, H, W)`` or a sequence of ``(H, W)``, one per image.
        geometries: one per image (``PreparedBatch.geometries``), or ``None``.
        labels: per image, the explained class name.
        probabilities: per image, the probability of that class.
    """
    count = len(images)
    if len(heatmaps) != count:
        raise ValueError(f"{count} images but {len(heatmaps)} heatmaps; give one per image.")
    maps = [heatmaps[i] for i in range(count)]
    panels = []
    for i in range(count):
        title = explanation_title(
            labels[i] if labels else None, probabilities[i] if probabilities else None
        )
        geometry = geometries[i] if geometries else None
        panels.append(OverlayPanel(images[i], maps[i], geometry, title))
    suptitle = explanation_title(None, None, method, note)
    return plot_grid(
        panels, ncols=ncols, suptitle=suptitle or None, cmap=cmap, alpha=alpha, crop=crop
    )


def plot_architectures(
    image: PictureLike,
    results: Sequence[Mapping[str, Any]],
    *,
    suptitle: str | None = None,
    cmap: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    crop: str = "mark",
    ncols: int | None = None,
) -> Figure:
    """Several models on one image: one overlay per model.

    Args:
        results: per model a mapping with ``"model"`` (its name), ``"heatmap"``
            ``(H, W)``, and optionally ``"geometry"`` (each model crops differently),
            ``"label"``, ``"probability"``, ``"method"`` and ``"note"`` (e.g.
            ``"random weights"``).
    """
    panels = []
    for entry in results:
        head = str(entry.get("model", ""))
        if entry.get("note"):
            head = f"{head} [{entry['note']}]"
        body = explanation_title(entry.get("label"), entry.get("probability"), entry.get("method"))
        panels.append(
            OverlayPanel(image, entry["heatmap"], entry.get("geometry"), f"{head}\n{body}")
        )
    return plot_grid(panels, ncols=ncols, suptitle=suptitle, cmap=cmap, alpha=alpha, crop=crop)


def plot_layers(
    hierarchy: Any,
    *,
    images: Sequence[int] | None = None,
    note: str | None = None,
    cmap: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    crop: str = "mark",
    panel_size: float = 2.4,
) -> Figure:
    """A layer hierarchy as a grid: one row per image, the photo then early to late layers.

    Args:
        hierarchy: a `timmlens.analysis.LayerHierarchy` (from ``explain_layers``).
        images: which images of the batch to show (default all).
        note: added to the title (default the hierarchy's own, e.g. ``"random weights"``).
    """
    rows = list(range(hierarchy.heatmaps.shape[1])) if images is None else list(images)
    panels = []
    for i in rows:
        picture, geometry = hierarchy.pictures[i], hierarchy.geometries[i]
        head = explanation_title(hierarchy.labels[i], float(hierarchy.probabilities[i]))
        panels.append(OverlayPanel(picture, None, None, head))
        for layer, (h, w), maps in zip(
            hierarchy.layers, hierarchy.grid_sizes, hierarchy.heatmaps, strict=True
        ):
            panels.append(OverlayPanel(picture, maps[i], geometry, f"{layer}\n{h}x{w}"))
    note = note if note is not None else getattr(hierarchy, "note", None)
    suptitle = explanation_title(None, None, f"{hierarchy.method}, early to late layers", note)
    return plot_grid(
        panels,
        ncols=len(hierarchy.layers) + 1,
        suptitle=suptitle,
        cmap=cmap,
        alpha=alpha,
        crop=crop,
        panel_size=panel_size,
    )


def _curve_arrays(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(x (T,), y (T,))`` of a curve metric result (the mean curve over a batch)."""
    x, y = result.curve
    x, y = to_numpy(x), to_numpy(y)
    return x, (y.mean(axis=0) if y.ndim == 2 else y)


def plot_curves(
    insertion: Mapping[str, Any] | Any,
    deletion: Mapping[str, Any] | Any | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Insertion and deletion curves with their AUCs in the legend.

    Args:
        insertion: a curve metric result (``ExplanationMetrics.insertion``; anything with
            ``.curve -> (x (T,), y (T,) or (B, T))`` and ``float()`` = its AUC), or a
            mapping method name -> result.
        deletion: the same for deletion (optional).
        title: the figure title.

    Insertion: higher AUC is better; deletion: lower is better.
    """
    sets = [("insertion", insertion, "higher is better")]
    if deletion is not None:
        sets.append(("deletion", deletion, "lower is better"))
    fig = Figure(layout="constrained", figsize=(5.0 * len(sets), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(sets))).ravel()
    for ax, (name, results, better) in zip(axes, sets, strict=True):
        named = results if isinstance(results, Mapping) else {name: results}
        for method, result in named.items():
            x, y = _curve_arrays(result)
            ax.plot(x, y, label=mpl_text(f"{method} (AUC {float(result):.3f})"))
        ax.set_xlabel("fraction of pixels " + ("inserted" if name == "insertion" else "deleted"))
        ax.set_ylabel("target class score")
        ax.set_title(f"{name} ({better})", fontsize=10)
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(mpl_text(title), fontsize=11)
    return fig


def _attention_grid(maps: Any, token: str = "class") -> np.ndarray:
    """``(L, heads, h, w)`` class-token attention over patches from maps or a tensor."""
    if hasattr(maps, "cls_to_patches"):
        grid = maps.cls_to_patches(head=None, token=token)
        if getattr(maps, "batched", False):
            grid = grid[0]
        maps = grid
    array = to_numpy(maps)
    if array.ndim == 3:  # (L, h, w): heads already fused
        array = array[:, None]
    if array.ndim != 4:
        raise ValueError(
            f"attention maps must be (L, heads, h, w) or (L, h, w), got {array.shape}; pass "
            f"AttentionMaps or AttentionMaps.cls_to_patches() for one image."
        )
    return array


def _uniform_level(maps: Any, grid: np.ndarray) -> float:
    """Attention weight of a token under uniform attention: ``1 / N`` over all N tokens."""
    patches = grid.shape[-2] * grid.shape[-1]
    prefix = getattr(maps, "num_prefix_tokens", 0) or 0
    return 1.0 / (patches + int(prefix))


def plot_attention_maps(
    maps: Any,
    *,
    layers: Sequence[int] | None = None,
    max_heads: int = 6,
    token: str = "class",
    cmap: str = "viridis",
    title: str | None = None,
    scale: str = "shared",
) -> Figure:
    """The class token's attention to the patches, per block (rows) and head (columns).

    Args:
        maps: ``AttentionMaps`` of one image (``AttentionVisualizer.get_attention_maps``),
            or a tensor ``(L, heads, h, w)`` / ``(L, h, w)``.
        layers: which blocks to show (negative counts from the end); default all.
        max_heads: at most this many heads per row, then their mean in the last column.
        token: ``"class"`` or ``"distillation"`` (distilled DeiT).
        cmap: colormap (sequential; attention weights are non-negative).
        scale: ``"shared"`` (default): every map on one scale from 0 to the largest weight
            shown, so near-uniform attention looks flat; ``"per_map"``: each map scaled to
            its own maximum (shows structure in every map, also in noise: the title says so).

    The colour bar is labelled with the attention weight and marks the level of uniform
    attention (1/N over all N tokens); the title states the range shown. Prefix tokens
    are left out, so a row of the grid does not sum to 1.
    """
    if scale not in ("shared", "per_map"):
        raise ValueError(f"scale must be 'shared' or 'per_map', got {scale!r}.")
    grid = _attention_grid(maps, token)
    count = grid.shape[0]
    chosen = [i % count for i in (layers if layers is not None else range(count))]
    heads = grid.shape[1]
    shown_heads = min(heads, max_heads)
    with_mean = heads > 1
    cols = shown_heads + int(with_mean)
    rows_of_panels = []
    for layer in chosen:
        panels = [grid[layer, h] for h in range(shown_heads)]
        names = [f"head {h}" for h in range(shown_heads)]
        if with_mean:
            panels.append(grid[layer].mean(axis=0))
            names.append("mean")
        rows_of_panels.append((layer, panels, names))
    uniform = _uniform_level(maps, grid)
    top = max(float(np.max(p)) for _, panels, _ in rows_of_panels for p in panels)
    top = top if top > 0 else 1.0
    fig = Figure(layout="constrained", figsize=(1.6 * cols + 1.4, 1.6 * len(chosen) + 0.9))
    axes = fig.subplots(len(chosen), cols, squeeze=False)
    image = None
    for row, (layer, panels, names) in enumerate(rows_of_panels):
        for col, (panel, name) in enumerate(zip(panels, names, strict=True)):
            ax = axes[row, col]
            if scale == "per_map":
                peak = float(np.max(panel))
                panel = panel / peak if peak > 0 else panel
            image = ax.imshow(
                panel,
                cmap=cmap,
                interpolation="nearest",
                vmin=0.0,
                vmax=1.0 if scale == "per_map" else top,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
            if col == 0:
                ax.set_ylabel(f"block {layer}", fontsize=8)
    if scale == "per_map":
        label = "attention / the map's own maximum"
        stated = "each map scaled to its own maximum"
    else:
        label = f"attention weight ({token} token to patch)"
        stated = f"one scale for all maps: 0 to {top:.3g}; uniform attention 1/N = {uniform:.3g}"
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.04, pad=0.02, shrink=0.9)
    bar.set_label(mpl_text(label), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if scale == "shared" and uniform <= top:
        bar.ax.axhline(uniform, color="white", linewidth=1.2, linestyle="--")
        bar.ax.text(1.05, uniform, " 1/N", transform=bar.ax.get_yaxis_transform(), fontsize=6)
    text = f"{title}\n{stated}" if title else stated
    width = round((1.6 * cols + 1.4) * _CHARS_PER_INCH * 0.9)
    fig.suptitle(mpl_text(wrap_title(text, width)), fontsize=9)
    return fig


def plot_rollout(
    image: PictureLike,
    rollouts: Mapping[str, HeatmapLike] | HeatmapLike,
    geometry: ImageGeometry | None = None,
    *,
    label: str | None = None,
    probability: float | None = None,
    note: str | None = None,
    cmap: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    crop: str = "mark",
) -> Figure:
    """Attention rollout over the photo: the photo, then one overlay per rollout variant.

    Args:
        rollouts: ``(H, W)`` rollout, or a mapping such as
            ``{"rollout": plain, "class-specific rollout": weighted}``.
    """
    named = rollouts if isinstance(rollouts, Mapping) else {"attention rollout": rollouts}
    return plot_methods(
        image,
        named,
        geometry,
        label=label,
        probability=probability,
        note=note,
        cmap=cmap,
        alpha=alpha,
        crop=crop,
    )


#: default resolution of saved raster figures (and of the pictures inside PDF/SVG files)
DEFAULT_DPI = 150


def figure_path(path: str | os.PathLike[str]) -> Path:
    """The file a figure saved to ``path`` goes to: ``.png`` added when it has no suffix.

    Raises:
        OutputPathError: the suffix names no format matplotlib writes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ..errors import OutputPathError

    path = Path(path)
    if not path.suffix:
        return path.with_name(f"{path.name}.png")
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise OutputPathError(
            f"cannot save a figure as '{path}': '{path.suffix}' is not a figure format. Use "
            f".png, .pdf or .svg (papers: .pdf or .svg; also {', '.join(sorted(formats))})."
        )
    return path


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` to ``path``; returns the path written.

    The format follows the suffix (``.png``, ``.pdf``, ``.svg``, ...; none: ``.png`` is
    added); ``dpi`` sets the resolution of raster files and of the heatmaps inside vector
    ones. Parent folders are created.
    """
    path = figure_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
