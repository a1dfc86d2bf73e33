"""Pictures of explanations: matplotlib figures and interactive HTML. Never runs a model.

Static figures (:mod:`timmlens.viz.static`) need only matplotlib; interactive HTML
(:mod:`timmlens.viz.interactive`) needs plotly (``pip install "timmlens[interactive]"``)
and is imported on first use.
"""

from __future__ import annotations

from typing import Any

from .arrays import heatmap_on_picture, picture_array
from .labels import class_label, explanation_title, imagenet_class_names
from .sanity_plots import plot_randomization
from .static import (
    OverlayPanel,
    draw_overlay,
    plot_architectures,
    plot_attention_maps,
    plot_curves,
    plot_grid,
    plot_images,
    plot_layers,
    plot_methods,
    plot_overlay,
    plot_rollout,
    save_figure,
)

_INTERACTIVE = ("attention_figure", "explanation_figure", "explanation_html", "write_html")

__all__ = [
    "OverlayPanel",
    "attention_figure",
    "class_label",
    "draw_overlay",
    "explanation_figure",
    "explanation_html",
    "explanation_title",
    "heatmap_on_picture",
    "imagenet_class_names",
    "picture_array",
    "plot_architectures",
    "plot_attention_maps",
    "plot_curves",
    "plot_grid",
    "plot_images",
    "plot_layers",
    "plot_methods",
    "plot_overlay",
    "plot_randomization",
    "plot_rollout",
    "save_figure",
    "write_html",
]


def __getattr__(name: str) -> Any:
    # plotly is optional: import the interactive module only when it is asked for.
    if name in _INTERACTIVE:
        from . import interactive

        return getattr(interactive, name)
    raise AttributeError(f"module 'timmlens.viz' has no attribute {name!r}")
