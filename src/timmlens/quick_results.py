"""What the one-line calls of `timmlens.quick` return: a heatmap or several, the classes
they explain, and the figures drawn from them.

Each result saves itself (``.save(path)`` writes ``.npz``, see
[`timmlens.load_explanation`][]) and shows its figure in a notebook. Heatmaps are
``(H, W)`` CPU tensors in model-input coordinates. Every name here is importable from
`timmlens.quick`, where users find them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from .data import ImageGeometry
from .interpretation.registry import resolve_method
from .models.weights_status import WeightsStatus
from .saving import figure_png, geometry_json, save_explanation
from .viz.labels import class_heading, explanation_title
from .viz.static import DEFAULT_DPI, save_figure

PathLike = str | os.PathLike[str]


@dataclass
class ClassPrediction:
    """The predicted and the explained class, as every result below carries them.

    Attributes:
        predicted_class: the model's top class.
        class_name: its name (ImageNet name for 1000-class models, else ``"class N"``).
        probability: its softmax probability.
        target_class: the class explained (the predicted one unless ``target_class`` given);
            ``None`` for a callable target, which has no class.
        target_name: the explained class's name; ``"custom target (<callable's name>)"``
            for a callable target.
        target_probability: the explained class's probability (NaN for a callable target).
        probabilities: ``(K,)`` every class's softmax probability (CPU).
        model_name: the model's spec or architecture.
        weights: whether the model's weights are trained (`WeightsStatus`).
    """

    predicted_class: int
    class_name: str
    probability: float
    target_class: int | None
    target_name: str
    target_probability: float
    probabilities: torch.Tensor | None = field(default=None, repr=False, kw_only=True)
    model_name: str = field(default="", kw_only=True)
    weights: WeightsStatus = field(default_factory=WeightsStatus, kw_only=True)

    @property
    def heading(self) -> str:
        """``"tabby (87.3%)"``, or ``"target tabby (0.0%), predicted espresso (90.4%)"``
        (``"custom target (group), predicted espresso (90.4%)"`` for a callable target)."""
        if self.target_class is None:
            predicted = explanation_title(self.class_name, self.probability)
            return f"{self.target_name}, predicted {predicted}"
        return class_heading(
            self.target_name, self.target_probability, self.class_name, self.probability
        )

    def _class_metadata(self) -> dict[str, Any]:
        return {
            "target_class": self.target_class,
            "target_name": self.target_name,
            "target_probability": self.target_probability,
            "predicted_class": self.predicted_class,
            "class_name": self.class_name,
            "probability": self.probability,
            "heading": self.heading,
        }


@dataclass
class ExplanationResult(ClassPrediction):
    """What [`quick_explain`][timmlens.quick.quick_explain] found (the classes: see
    `ClassPrediction`).

    Attributes:
        heatmap: ``(H, W)`` float CPU tensor in [0, 1], model-input coordinates.
        method: the registry name of the method used (``"gradcam"``, ``"rollout"``, ...).
        layer: the tapped layer of CAM methods, else ``None``.
        figure_path: where the figure was saved (``None`` if not saved).
        geometry: how the photo became the model input (maps ``heatmap`` back onto it).
        image: the original photo (a ``(3, H, W)`` tensor in [0, 1] for tensor inputs).
        figure: the matplotlib figure.
    """

    heatmap: torch.Tensor = field(repr=False)
    method: str
    layer: str | None
    figure_path: Path | None
    geometry: ImageGeometry = field(repr=False)
    image: Any = field(repr=False)
    figure: Figure | None = field(default=None, repr=False)

    def save(self, path: PathLike, *, image: bool = True) -> Path:
        """Write the heatmap and what made it to ``path`` (``.npz``; see
        [`timmlens.load_explanation`][]); ``image`` also stores the photo. Returns the path."""
        metadata = {
            "kind": "quick_explain",
            "model": {**_model_fields(self), "num_classes": _count(self.probabilities)},
            "method": self.method,
            "title": resolve_method(self.method).title,
            "layer": self.layer,
            **self._class_metadata(),
            "geometry": geometry_json(self.geometry),
        }
        return save_explanation(
            path,
            {self.method: self.heatmap},
            metadata,
            probabilities=self.probabilities,
            image=self.image if image else None,
        )

    def save_figure(self, path: PathLike, dpi: int = DEFAULT_DPI) -> Path:
        """Save the figure (format from the suffix: ``.png``, ``.pdf``, ``.svg``)."""
        if self.figure is None:
            raise ValueError("this result has no figure to save.")
        return save_figure(self.figure, path, dpi=dpi)

    def _repr_png_(self) -> bytes | None:
        return figure_png(self.figure) if self.figure is not None else None


@dataclass
class MethodComparison(ClassPrediction):
    """What [`compare_methods`][timmlens.quick.compare_methods] found.

    Attributes:
        heatmaps: method name -> ``(H, W)`` CPU heatmap in model-input coordinates.
        metrics: method name -> ``{"insertion": MetricResult, "deletion": MetricResult}``
            (empty unless ``with_metrics``).
        layers: method name -> tapped layer (CAM methods) or ``None``.
        figure, figure_path: the overlay grid and where it was saved.
        curves_figure, curves_path: the insertion/deletion curves (with metrics).
    """

    heatmaps: dict[str, torch.Tensor] = field(repr=False)
    layers: dict[str, str | None]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    figure: Figure | None = field(default=None, repr=False)
    figure_path: Path | None = None
    curves_figure: Figure | None = field(default=None, repr=False)
    curves_path: Path | None = None
    geometry: ImageGeometry | None = field(default=None, repr=False)
    image: Any = field(default=None, repr=False)

    def save(self, path: PathLike, *, image: bool = True) -> Path:
        """Write every method's heatmap, the scores and what made them to ``path`` (``.npz``;
        see [`timmlens.load_explanation`][]). Returns the path."""
        metadata = {
            "kind": "compare_methods",
            "model": {**_model_fields(self), "num_classes": _count(self.probabilities)},
            "method": next(iter(self.heatmaps)),
            "methods": list(self.heatmaps),
            "layers": self.layers,
            "layer": next(iter(self.layers.values()), None),
            **self._class_metadata(),
            "geometry": geometry_json(self.geometry),
            "scores": {
                name: {k: float(v) for k, v in m.items() if k in _CURVES}
                for name, m in self.metrics.items()
            },
        }
        return save_explanation(
            path,
            self.heatmaps,
            metadata,
            probabilities=self.probabilities,
            image=self.image if image else None,
        )

    def _repr_png_(self) -> bytes | None:
        return figure_png(self.figure) if self.figure is not None else None

    def table(self) -> list[dict[str, Any]]:
        """One row per method: ``{"method", "layer", "insertion", "deletion"}`` (floats or NaN)."""
        rows = []
        for name in self.heatmaps:
            scores = self.metrics.get(name, {})
            rows.append(
                {
                    "method": name,
                    "layer": self.layers.get(name),
                    **{k: float(scores[k]) if k in scores else float("nan") for k in _CURVES},
                }
            )
        return rows


@dataclass
class ModelExplanation(ClassPrediction):
    """One model's entry in an [`ArchitectureComparison`][]."""

    model: str
    heatmap: torch.Tensor = field(repr=False)
    method: str
    layer: str | None
    geometry: ImageGeometry = field(repr=False)
    note: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class ArchitectureComparison:
    """What [`compare_architectures`][timmlens.quick.compare_architectures] found: one
    `ModelExplanation` per model."""

    entries: list[ModelExplanation]
    figure: Figure | None = field(default=None, repr=False)
    figure_path: Path | None = None
    curves_figure: Figure | None = field(default=None, repr=False)
    curves_path: Path | None = None

    @property
    def heatmaps(self) -> dict[str, torch.Tensor]:
        """Model name -> ``(H, W)`` heatmap (each in its own model's input coordinates)."""
        return {entry.model: entry.heatmap for entry in self.entries}

    def _repr_png_(self) -> bytes | None:
        return figure_png(self.figure) if self.figure is not None else None


_CURVES = ("insertion", "deletion")


def _model_fields(result: ClassPrediction) -> dict[str, Any]:
    return {"name": result.model_name, "weights": result.weights.to_json()}


def _count(probabilities: torch.Tensor | None) -> int | None:
    return None if probabilities is None else int(probabilities.shape[-1])
