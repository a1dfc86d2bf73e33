"""Figures of the sanity checks (`timmlens.analysis.sanity`). Nothing here runs a model.

[`plot_randomization`][] draws how similar each step's explanation stays to the
original one as the model is randomised, and optionally the maps themselves. Like
`timmlens.viz.static`, it builds a `Figure` without
``pyplot``; save it with [`save_figure`][timmlens.viz.static.save_figure].
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..data import ImageGeometry
from .arrays import PictureLike, to_numpy, value_range
from .labels import mpl_text
from .static import DEFAULT_ALPHA, DEFAULT_CMAP, draw_overlay

#: Line style per similarity metric.
METRIC_STYLES = {"spearman": "-", "spearman_abs": ":", "ssim": "--"}
METRIC_TITLES = {"spearman": "Spearman", "spearman_abs": "Spearman |.|", "ssim": "SSIM"}
#: Map panels per row under the curves.
MAX_MAP_COLUMNS = 8

Band = Literal["range", "std"] | None


def _short(name: str) -> str:
    """A unit label without the ``backbone.`` of an ``ImageClassifier``."""
    return name.removeprefix("backbone.")


def _band(values: np.ndarray, band: Band) -> tuple[np.ndarray, np.ndarray] | None:
    """Lower and upper edge per step of ``values`` ``(steps, B)``, NaN ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps stay NaN
        if band == "range":
            return np.nanmin(values, axis=1), np.nanmax(values, axis=1)
        if band == "std":
            mean, std = np.nanmean(values, axis=1), np.nanstd(values, axis=1)
            return mean - std, mean + std
    return None


def draw_similarity_curves(
    ax: Axes,
    result: Any,
    *,
    methods: Sequence[str] | None = None,
    metrics: Sequence[str] = ("spearman", "ssim"),
    band: Band = "range",
) -> None:
    """Similarity to the original explanation per step on ``ax``.

    One line per method and metric: the mean over images (NaN left out; Spearman
    solid, its absolute-value variant dotted, SSIM dashed; one colour per method), with
    a shaded band from the smallest to the largest image (``band="range"``), mean +- one
    standard deviation (``"std"``) or none (``None``).
    """
    methods = list(methods) if methods is not None else list(result.methods)
    steps = list(result.steps)
    x = np.arange(len(steps))
    for number, method in enumerate(methods):
        color = f"C{number % 10}"
        for metric in metrics:
            if metric not in METRIC_STYLES:
                raise ValueError(
                    f"unknown metric '{metric}'; use one of {', '.join(METRIC_STYLES)}."
                )
            values = to_numpy(result.similarity[method][metric])  # (steps, B)
            mean = to_numpy(result.mean(method, metric))
            ax.plot(
                x,
                mean,
                METRIC_STYLES[metric],
                color=color,
                marker="o",
                markersize=3,
                label=mpl_text(f"{method} {METRIC_TITLES[metric]}"),
            )
            edges = _band(values, band)
            if edges is not None and values.shape[1] > 1:
                ax.fill_between(x, edges[0], edges[1], color=color, alpha=0.12, linewidth=0)
    ax.set_xticks(x)
    ax.set_xticklabels([mpl_text(_short(s)) for s in steps], rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.3, len(steps) - 0.7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("similarity to the original map")
    mode = "cascading" if result.cascading else "independent"
    ax.set_xlabel(
        "randomised from the top down to this unit"
        if result.cascading
        else "this unit randomised alone"
    )
    count = int(result.targets.numel())
    ax.set_title(f"model parameter randomisation ({mode}), mean over {count} image(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=max(1, len(metrics)), loc="best")


def _draw_map(
    ax: Axes,
    heatmap: Any,
    image: PictureLike | None,
    geometry: ImageGeometry | None,
    title: str,
    cmap: str,
    alpha: float,
) -> None:
    if image is not None:
        draw_overlay(ax, image, heatmap, geometry, cmap=cmap, alpha=alpha, title=title)
        return
    array = to_numpy(heatmap)
    vmin, vmax = value_range(array)
    ax.imshow(array, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(mpl_text(title), fontsize=8)
    ax.set_axis_off()


def plot_randomization(
    result: Any,
    image: PictureLike | None = None,
    method: str | None = None,
    geometry: ImageGeometry | None = None,
    *,
    index: int = 0,
    show_maps: bool | None = None,
    metrics: Sequence[str] = ("spearman", "ssim"),
    band: Band = "range",
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
    title: str | None = None,
) -> Figure:
    """The parameter randomisation test as a figure.

    Top: `draw_similarity_curves` (x: the steps, labelled by the unit randomised
    last; ``"original"`` is the unrandomised copy). Below, optionally, one image's maps
    for one method: the original map, then the map after each step.

    Args:
        result: a `RandomizationResult`.
        image: the original photo of image ``index`` (PIL, ``HWC`` array): the maps are
            drawn over it (with ``geometry`` they sit where the model looked). Without
            it the maps are shown alone.
        method: the method whose maps are shown (default: the first).
        geometry: ``prepare_images(...).geometries[index]`` for ``image``.
        index: which image of the batch the maps belong to.
        show_maps: draw the maps; ``None``: when ``image`` or ``method`` is given.
        metrics: which similarity metrics to draw (``"spearman"``, ``"spearman_abs"``,
            ``"ssim"``).
        band: ``"range"`` (min..max over images), ``"std"`` or ``None``.
        cmap: colour map of the maps.
        alpha: opacity of the maps.
        title: the figure title.

    Returns:
        A figure whose first axes hold the curves (one line per method and metric), then
        one axes per map panel.
    """
    if show_maps is None:
        show_maps = image is not None or method is not None
    method = method if method is not None else result.methods[0]
    if method not in result.methods:
        raise ValueError(
            f"no method '{method}' in this result; it has {', '.join(result.methods)}."
        )
    count = int(result.targets.numel())
    if not -count <= index < count:
        raise IndexError(f"index {index} is out of range for {count} image(s).")

    panels: list[tuple[Any, str]] = []
    if show_maps:
        panels.append((result.original[method][index], "original"))
        for step in range(1, len(result.steps)):
            panels.append((result.randomized[method][step, index], _short(result.steps[step])))
    cols = max(1, min(len(panels), MAX_MAP_COLUMNS))
    map_rows = math.ceil(len(panels) / cols) if panels else 0
    width = max(8.0, 1.7 * cols)
    fig = Figure(layout="constrained", figsize=(width, 4.2 + 1.9 * map_rows))
    grid = fig.add_gridspec(1 + map_rows, cols, height_ratios=[2.4] + [1.0] * map_rows)
    draw_similarity_curves(fig.add_subplot(grid[0, :]), result, metrics=metrics, band=band)
    for number, (heatmap, label) in enumerate(panels):
        ax = fig.add_subplot(grid[1 + number // cols, number % cols])
        _draw_map(ax, heatmap, image, geometry, label, cmap, alpha)
    if show_maps:
        target = int(result.targets[index])
        fig.suptitle(
            mpl_text(title or f"{method}, image {index % count} (class {target}): maps per step"),
            fontsize=11,
        )
    elif title:
        fig.suptitle(mpl_text(title), fontsize=11)
    return fig
