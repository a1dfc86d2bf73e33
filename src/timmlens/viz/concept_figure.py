"""The concept figure of one image: every concept's map in its own colour, with a legend.

The picture pytorch-grad-cam's ``show_factorization_on_image`` draws, from the
[`ConceptExplanation`][timmlens.analysis.concept_explorer.ConceptExplanation] of
`timmlens.analysis.explain_concepts`: each pixel takes the colour of the concept with
the largest (min-max scaled) map there, as bright as that map, blended with the image;
the legend gives each concept's top classes and its contribution to the logit. Nothing
here runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .arrays import PictureLike, picture_array, to_numpy
from .labels import mpl_text, wrap_title

if TYPE_CHECKING:
    from ..analysis.concept_explorer import ConceptExplanation
    from ..analysis.dff import ConceptFactorization


def concept_colors(count: int) -> np.ndarray:
    """``(count, 3)`` RGB in [0, 1]: ``gist_rainbow`` at ``0, 1/count, ...`` (the original
    DFF code's and pytorch-grad-cam's colours)."""
    cmap = colormaps["gist_rainbow"]
    return np.array([cmap(i / count)[:3] for i in range(count)], dtype=np.float32)


def factorization_overlay(
    picture: np.ndarray, maps: Any, colors: np.ndarray | None = None, image_weight: float = 0.5
) -> np.ndarray:
    """Concept maps coloured and blended with the picture, as pytorch-grad-cam blends them.

    Each pixel keeps only the concept whose map is largest there, drawn in that concept's
    colour scaled by the map's value (pytorch-grad-cam sets the HSV value to it, which for
    these fully saturated colours is the same scaling).

    Args:
        picture: ``(H, W, 3)`` RGB, ``uint8`` or floats in [0, 1].
        maps: ``(K, H, W)`` maps scaled to [0, 1].
        colors: ``(K, 3)`` RGB in [0, 1]; ``None``: [`concept_colors`][].
        image_weight: the picture's share of the blend.

    Returns:
        ``(H, W, 3)`` ``uint8``.
    """
    maps = to_numpy(maps)
    image = picture_array(picture).astype(np.float32) / 255.0
    colors = concept_colors(maps.shape[0]) if colors is None else np.asarray(colors)
    winner = maps.argmax(axis=0)
    strength = np.take_along_axis(maps, winner[None], axis=0)[0]
    mask = colors[winner] * strength[..., None]
    blended = image * image_weight + mask * (1 - image_weight)
    return (blended * 255).clip(0, 255).astype(np.uint8)


def _title(explanation: ConceptExplanation) -> str:
    result = explanation.factorization
    head = f"{explanation.target_label}: logit {explanation.logit:.2f}"
    if explanation.contributions is not None:
        assert explanation.floor is not None and explanation.residual is not None
        head += (
            f" = concepts {float(explanation.contributions.sum()):.2f}"
            f" + floor {explanation.floor:.2f} + residual {explanation.residual:.2f}"
        )
    return f"{head}; {result.n_concepts} concepts of {result.layer.removeprefix('backbone.')}"


def _figure_with_legend(
    panels: Sequence[tuple[np.ndarray, str]],
    labels: Sequence[str],
    colors: np.ndarray,
    title: str,
    panel_width: float,
) -> Figure:
    """Panels in one row, a suptitle, and one legend line per concept beneath them."""
    height, width = panels[0][0].shape[:2]
    panel_height = panel_width * height / width
    legend_height = 0.17 * len(labels) + 0.2
    wrapped = wrap_title(title, 35 * len(panels))
    title_height = 0.3 + 0.16 * (wrapped.count("\n") + 1)  # suptitle lines + panel titles
    fig = Figure(
        figsize=(len(panels) * panel_width + 0.2, panel_height + legend_height + title_height)
    )
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (shown, name) in zip(axes, panels, strict=True):
        ax.imshow(shown)
        ax.set_title(mpl_text(name), fontsize=9)
        ax.set_axis_off()
    handles = [Line2D([0], [0], color=colors[k], lw=5) for k in range(len(labels))]
    fig.legend(
        handles, [mpl_text(label) for label in labels], loc="lower center", fontsize=8,
        frameon=False,
    )  # fmt: skip
    fig.suptitle(mpl_text(wrapped), fontsize=9)
    fig.subplots_adjust(
        left=0.02, right=0.98, top=1 - title_height / fig.get_figheight(),
        bottom=legend_height / fig.get_figheight(), wspace=0.05,
    )  # fmt: skip
    return fig


def plot_factorization(
    result: ConceptFactorization,
    pictures: Sequence[PictureLike],
    names: Sequence[str] | None = None,
    image_weight: float = 0.5,
    top_k: int = 2,
    panel_width: float = 2.6,
) -> Figure:
    """The concepts of a batch: each image's overlay, one shared legend.

    Args:
        result: from `timmlens.analysis.deep_feature_factorization`.
        pictures: per image, what to draw on, at the model input's size (e.g.
            ``timmlens.data.denormalize(batch.tensor, model)``).
        names: per image, a panel title.
        image_weight: the picture's share of the overlay.
        top_k: classes named per concept in the legend.
        panel_width: inches per panel.
    """
    colors = concept_colors(result.n_concepts)
    # one scale per concept over the batch: a concept absent from an image stays dark there
    # (pytorch-grad-cam scales every image on its own, which lights it up anyway)
    maps = result.normalized_maps(across_batch=True)
    titles = list(names) if names is not None else [f"image {i + 1}" for i in range(len(maps))]
    panels = [
        (factorization_overlay(picture, maps[i], colors, image_weight), titles[i])
        for i, picture in enumerate(pictures)
    ]
    title = (
        f"{result.n_concepts} concepts of {result.layer.removeprefix('backbone.')} "
        f"(relative NMF error {result.relative_error:.2f})"
    )
    return _figure_with_legend(panels, result.legend_labels(top_k), colors, title, panel_width)


def plot_concepts(
    explanation: ConceptExplanation,
    image_weight: float = 0.5,
    top_k: int = 2,
    panel_width: float = 3.2,
) -> Figure:
    """The image beside its concept overlay, with one legend line per concept.

    Args:
        explanation: from `timmlens.analysis.explain_concepts`.
        image_weight: the picture's share of the overlay.
        top_k: classes named per concept in the legend.
        panel_width: inches per panel.

    Returns:
        A matplotlib ``Figure`` (save it with
        [`save_figure`][timmlens.viz.static.save_figure]).
    """
    result = explanation.factorization
    picture = picture_array(explanation.picture)
    colors = concept_colors(result.n_concepts)
    overlay = factorization_overlay(
        picture, result.normalized_maps()[0], colors, image_weight=image_weight
    )
    panels = [(picture, "input"), (overlay, "concepts")]
    return _figure_with_legend(
        panels, explanation.legend_labels(top_k), colors, _title(explanation), panel_width
    )
