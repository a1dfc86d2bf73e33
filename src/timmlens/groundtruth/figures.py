"""A figure of every method on a few known-answer images, the evidence outlined."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..interpretation.registry import as_explainer
from .benchmark import method_options, model_inputs
from .generator import KnownAnswerSet
from .scores import relevance_mass_accuracy


def method_maps(
    model: nn.Module, data: KnownAnswerSet, methods: Sequence[str]
) -> dict[str, np.ndarray]:
    """``{method: (N, H, W)}`` maps of the true class (slow methods at their quick options)."""
    inputs = model_inputs(model, data)
    labels = torch.as_tensor(data.labels)
    maps = {}
    for name in methods:
        options = method_options(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            heatmaps = as_explainer(name, model, **options)(inputs, target_class=labels)
        maps[name] = heatmaps.reshape(len(data), *inputs.shape[-2:]).float().cpu().numpy()
    return maps


def evidence_figure(
    model: nn.Module,
    data: KnownAnswerSet,
    methods: Sequence[str],
    title: str,
    path: str | Path,
    columns: int = 10,
    dpi: int = 80,
    mass_in_titles: bool = False,
) -> Path:
    """For each image, the image then every method's map, ``columns`` to a row; the
    evidence outlined in cyan (with ``mass_in_titles``, each map's relevance mass
    accuracy in its title)."""
    from matplotlib.figure import Figure

    maps = method_maps(model, data, methods)
    panels = len(methods) + 1
    rows_per_image = -(-panels // columns)
    rows = rows_per_image * len(data)
    height = 1.4 * rows + 0.5
    figure = Figure(figsize=(1.3 * columns, height))
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    evidence = torch.from_numpy(data.evidence)
    masses = {
        name: relevance_mass_accuracy(torch.from_numpy(maps[name]), evidence)
        for name in (methods if mass_in_titles else ())
    }
    for index in range(len(data)):
        cells = [(data.class_names[data.labels[index]], data.images[index], None)]
        for name in methods:
            label = f"{name}: {float(masses[name][index]):.2f}" if mass_in_titles else name
            cells.append((label, maps[name][index], "inferno"))
        for position, (label, picture, cmap) in enumerate(cells):
            row, col = divmod(position, columns)
            ax = axes[index * rows_per_image + row, col]
            ax.set_axis_on()
            ax.imshow(picture, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
            ax.contour(data.evidence[index], levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_title(label, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))  # tight_layout ignores suptitle
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    from PIL import Image

    with Image.open(path) as picture:  # a 256-colour palette: a third of the bytes
        quantized = picture.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    quantized.save(path, optimize=True)
    return path
