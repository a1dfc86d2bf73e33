"""Pictures of explanations: matplotlib figures and interactive HTML. Never runs a model.

Static figures (`timmlens.viz.static`) need only matplotlib; interactive HTML
(`timmlens.viz.interactive`) needs plotly (``pip install "timmlens[interactive]"``).
Every name is imported on first use (PEP 562), so importing this package (or
`timmlens.viz.labels`) loads neither matplotlib nor plotly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .arrays import heatmap_on_picture, picture_array
    from .concept_figure import (
        concept_colors,
        factorization_overlay,
        plot_concepts,
        plot_factorization,
    )
    from .interactive import attention_figure, explanation_figure, explanation_html, write_html
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

_EXPORTS = {
    "OverlayPanel": ".static",
    "attention_figure": ".interactive",
    "class_label": ".labels",
    "concept_colors": ".concept_figure",
    "draw_overlay": ".static",
    "explanation_figure": ".interactive",
    "explanation_html": ".interactive",
    "explanation_title": ".labels",
    "factorization_overlay": ".concept_figure",
    "heatmap_on_picture": ".arrays",
    "imagenet_class_names": ".labels",
    "picture_array": ".arrays",
    "plot_architectures": ".static",
    "plot_attention_maps": ".static",
    "plot_concepts": ".concept_figure",
    "plot_factorization": ".concept_figure",
    "plot_curves": ".static",
    "plot_grid": ".static",
    "plot_images": ".static",
    "plot_layers": ".static",
    "plot_methods": ".static",
    "plot_overlay": ".static",
    "plot_randomization": ".sanity_plots",
    "plot_rollout": ".static",
    "save_figure": ".static",
    "write_html": ".interactive",
}

__all__ = [
    "OverlayPanel",
    "attention_figure",
    "class_label",
    "concept_colors",
    "draw_overlay",
    "explanation_figure",
    "explanation_html",
    "explanation_title",
    "factorization_overlay",
    "heatmap_on_picture",
    "imagenet_class_names",
    "picture_array",
    "plot_architectures",
    "plot_attention_maps",
    "plot_concepts",
    "plot_curves",
    "plot_factorization",
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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
