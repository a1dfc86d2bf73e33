"""Matplotlib figures of explanations. Nothing here runs a model: pass tensors and arrays.

Every function returns a `matplotlib.figure.Figure` built without ``pyplot``
(no global state, no display needed); save it with [`save_figure`][].

Heatmaps are in model-input coordinates (as every explainer returns them); give the
original photo and its `ImageGeometry` (from
[`timmlens.data.prepare_images`][]) and they are drawn where the model looked on the
*original* photo, with the part the centre crop cut away left uncoloured.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..data import ImageGeometry
from .arrays import (
    HeatmapLike,
    PictureLike,
    heatmap_on_picture,
    picture_array,
    to_numpy,
    value_range,
)
from .labels import explanation_title, mpl_text

DEFAULT_CMAP = "jet"
DEFAULT_ALPHA = 0.5


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


def draw_overlay(
    ax: Axes,
    image: PictureLike,
    heatmap: HeatmapLike | None,
    geometry: ImageGeometry | None = None,
    *,
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
    title: str = "",
    colorbar: bool = False,
) -> Any:
    """Draw ``heatmap`` over ``image`` on ``ax``; returns the heatmap's ``AxesImage`` (or None).

    The axes show the original photo at its own size ``(H0, W0)``.
    """
    picture = picture_array(image)
    ax.imshow(picture)
    shown = None
    if heatmap is not None:
        on_picture = heatmap_on_picture(heatmap, picture.shape[:2], geometry)
        vmin, vmax = value_range(on_picture)
        shown = ax.imshow(
            np.ma.masked_invalid(on_picture), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax
        )
        if colorbar:
            bar = ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, shrink=0.8)
            bar.solids.set_alpha(1.0)  # the scale itself, not its blend with the photo
    ax.set_title(mpl_text(title), fontsize=9)
    ax.set_axis_off()
    return shown


def _grid_shape(count: int, ncols: int | None) -> tuple[int, int]:
    ncols = max(1, min(count, ncols or count))
    return math.ceil(count / ncols), ncols


def plot_grid(
    panels: Sequence[OverlayPanel],
    *,
    ncols: int | None = None,
    suptitle: str | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
    panel_size: float = 3.2,
) -> Figure:
    """Panels in a grid (``ncols`` per row, default all in one row); unused axes hidden."""
    if not panels:
        raise ValueError("nothing to plot: pass at least one panel.")
    rows, cols = _grid_shape(len(panels), ncols)
    fig = Figure(
        layout="constrained",
        figsize=(panel_size * cols, panel_size * rows + (0.5 if suptitle else 0.2)),
    )
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    width = max(16, round(panel_size * 11))  # characters that fit above a panel at 9 pt
    for ax, panel in zip(axes, panels, strict=False):
        title = "\n".join(textwrap.fill(line, width) for line in panel.title.splitlines())
        draw_overlay(
            ax, panel.image, panel.heatmap, panel.geometry, cmap=cmap, alpha=alpha, title=title
        )
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(mpl_text(suptitle), fontsize=11)
    return fig


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
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
    show_original: bool = True,
    colorbar: bool = True,
) -> Figure:
    """The original photo and the heatmap over it (one figure, one or two axes).

    Args:
        image: the original photo.
        heatmap: ``(H, W)`` in model-input coordinates.
        geometry: from ``prepare_images(...).geometries[i]``; maps the heatmap onto the photo.
        label: the class name in the title, which reads e.g.
            ``"tiger cat (87.3%) - gradcam [random weights]"``; ``title`` replaces it.
        probability: the class probability in the title.
        method: the method in the title.
        note: the bracketed note in the title.
        cmap: colormap of the heatmap.
        alpha: opacity of the heatmap.
        show_original: also show the bare photo on the left.
        colorbar: draw a colour bar next to the overlay.
    """
    text = title if title is not None else explanation_title(label, probability, method, note)
    ncols = 2 if show_original else 1
    fig = Figure(layout="constrained", figsize=(4.2 * ncols + 0.6, 4.4))
    axes = np.atleast_1d(fig.subplots(1, ncols)).ravel()
    if show_original:
        draw_overlay(axes[0], image, None, title="original")
    draw_overlay(
        axes[-1], image, heatmap, geometry, cmap=cmap, alpha=alpha, title=text, colorbar=colorbar
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
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
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
    return plot_grid(panels, ncols=ncols, suptitle=suptitle or None, cmap=cmap, alpha=alpha)


def plot_images(
    images: Sequence[PictureLike],
    heatmaps: Sequence[HeatmapLike] | HeatmapLike,
    geometries: Sequence[ImageGeometry | None] | None = None,
    *,
    labels: Sequence[str | None] | None = None,
    probabilities: Sequence[float | None] | None = None,
    method: str | None = None,
    note: str | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
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
    return plot_grid(panels, ncols=ncols, suptitle=suptitle or None, cmap=cmap, alpha=alpha)


def plot_architectures(
    image: PictureLike,
    results: Sequence[Mapping[str, Any]],
    *,
    suptitle: str | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
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
    return plot_grid(panels, ncols=ncols, suptitle=suptitle, cmap=cmap, alpha=alpha)


def plot_layers(
    hierarchy: Any,
    *,
    images: Sequence[int] | None = None,
    note: str | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
    panel_size: float = 2.4,
) -> Figure:
    """A layer hierarchy as a grid: one row per image, the photo then early to late layers.

    Args:
        hierarchy: a `timmlens.analysis.LayerHierarchy` (from ``explain_layers``).
        images: which images of the batch to show (default all).
        note: added to the title, e.g. ``"random weights"``.
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
    suptitle = explanation_title(None, None, f"{hierarchy.method}, early to late layers", note)
    return plot_grid(
        panels,
        ncols=len(hierarchy.layers) + 1,
        suptitle=suptitle,
        cmap=cmap,
        alpha=alpha,
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


def plot_attention_maps(
    maps: Any,
    *,
    layers: Sequence[int] | None = None,
    max_heads: int = 6,
    token: str = "class",
    cmap: str = "viridis",
    title: str | None = None,
) -> Figure:
    """The class token's attention to the patches, per block (rows) and head (columns).

    Args:
        maps: ``AttentionMaps`` of one image (``AttentionVisualizer.get_attention_maps``),
            or a tensor ``(L, heads, h, w)`` / ``(L, h, w)``.
        layers: which blocks to show (negative counts from the end); default all.
        max_heads: at most this many heads per row, then their mean in the last column.
        token: ``"class"`` or ``"distillation"`` (distilled DeiT).

    Each map is scaled to its own maximum (prefix tokens removed, so rows do not sum to 1).
    """
    grid = _attention_grid(maps, token)
    count = grid.shape[0]
    chosen = [i % count for i in (layers if layers is not None else range(count))]
    heads = grid.shape[1]
    shown_heads = min(heads, max_heads)
    with_mean = heads > 1
    cols = shown_heads + int(with_mean)
    fig = Figure(layout="constrained", figsize=(1.6 * cols + 0.8, 1.6 * len(chosen) + 0.6))
    axes = fig.subplots(len(chosen), cols, squeeze=False)
    for row, layer in enumerate(chosen):
        panels = [grid[layer, h] for h in range(shown_heads)]
        names = [f"head {h}" for h in range(shown_heads)]
        if with_mean:
            panels.append(grid[layer].mean(axis=0))
            names.append("mean")
        for col, (panel, name) in enumerate(zip(panels, names, strict=True)):
            ax = axes[row, col]
            ax.imshow(panel, cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
            if col == 0:
                ax.set_ylabel(f"block {layer}", fontsize=8)
    if title:
        fig.suptitle(mpl_text(title), fontsize=10)
    return fig


def plot_rollout(
    image: PictureLike,
    rollouts: Mapping[str, HeatmapLike] | HeatmapLike,
    geometry: ImageGeometry | None = None,
    *,
    label: str | None = None,
    probability: float | None = None,
    note: str | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
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
    )


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix; parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
