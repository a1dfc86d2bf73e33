"""The leaderboard's figure: one panel per metric, a bar per method and model with its 95% CI.

Built as a `Figure` without ``pyplot`` (so the Agg canvas,
no display needed); save it with [`save_figure`][timmlens.viz.static.save_figure]. Nothing here
runs a model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from ..evaluation.leaderboard import Leaderboard

__all__ = ["leaderboard_figure"]

#: Reference rows are drawn hatched in grey so every bar reads against them.
_REFERENCE_COLOUR = "0.75"


def leaderboard_figure(board: Leaderboard, panel_width: float = 4.2) -> Figure:
    """Horizontal bars, methods (best first) down, one colour per model, error bars = 95% CI.

    A method a model did not run (not applicable) has no bar for that model. The
    reference rows (``randomcam``, ``centerprior``) are hatched, and a dotted line marks
    each reference's pooled mean across the panel.
    """
    methods, models = board.methods, board.models
    n_panels = len(board.metrics)
    height = 0.9 + 0.28 * len(methods) * max(1, len(models)) ** 0.5
    fig = Figure(figsize=(panel_width * n_panels, height), layout="constrained")
    axes = fig.subplots(1, n_panels, sharey=True, squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(models))]
    bar = 0.8 / max(1, len(models))
    positions = np.arange(len(methods))
    for ax, metric in zip(axes, board.metrics, strict=True):
        for k, model in enumerate(models):
            table = board.per_model.get(model, {})
            stats = [table.get(m, {}).get(metric) for m in methods]
            means = np.array([s.mean if s and s.n else math.nan for s in stats])
            cis = np.array([s.ci95 if s and s.n > 1 else 0.0 for s in stats])
            cis = np.where(np.isfinite(cis), cis, 0.0)
            offsets = positions - 0.4 + bar * (k + 0.5)
            ax.barh(
                offsets,
                means,
                height=bar,
                xerr=cis,
                color=colours[k],
                label=model,
                error_kw={"elinewidth": 0.8, "capsize": 1.5},
            )
        for i, method in enumerate(methods):
            if method in board.reference:
                ax.axhspan(i - 0.45, i + 0.45, color=_REFERENCE_COLOUR, alpha=0.35, lw=0)
                pooled = board.pooled[method][metric]
                if pooled.n and math.isfinite(pooled.mean):
                    ax.axvline(pooled.mean, color="0.4", ls=":", lw=0.9)
        arrow = "higher is better" if board.higher_is_better[metric] else "lower is better"
        ax.set_title(f"{metric} ({arrow})", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions, methods, fontsize=8)
    axes[0].invert_yaxis()  # best first, at the top
    if models:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(4, len(models)), fontsize=8
        )
    total = sum(board.images.values())
    fig.suptitle(
        f"Leaderboard: mean ± 95% CI over images ({total} model-image pairs); "
        f"grey rows are references",
        fontsize=10,
    )
    return fig
