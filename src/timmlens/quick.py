"""One-line explanations and side-by-side comparisons, with figures saved on the way.

* [`quick_explain`][] - predict, explain the predicted class with the best method for
  the family (see `default_method`), save a figure.
* [`compare_methods`][] - several methods on one image and one model.
* [`compare_architectures`][] - one method on one image across several models.

Heatmaps in the results are ``(H, W)`` CPU tensors in model-input coordinates (feed
them to any metric); the figures draw them on the original photo.

This module draws, so it sits above the methods (`timmlens.interpretation`) and
loads matplotlib; ``timmlens.interpretation`` re-exports its functions lazily, so
``import timmlens`` does not pay for matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from .data import ImageGeometry, ImagesInput, picture_of, prepare_images
from .interpretation._targets import CallableTargets, TargetFn, validate_targets
from .interpretation.base import num_outputs, predict
from .interpretation.registry import (
    create_explainer,
    default_comparison,
    default_method,
    layer_of,
    resolve_method,
)
from .models.weights_status import WeightsStatus, weights_status, with_weights_note
from .models.wrappers import unwrap_model
from .naming import class_name_of, model_name_of
from .saving import figure_png, geometry_json, save_explanation
from .viz.labels import class_heading, explanation_title
from .viz.static import (
    DEFAULT_DPI,
    plot_architectures,
    plot_curves,
    plot_methods,
    plot_overlay,
    save_figure,
)

PathLike = str | os.PathLike[str]
#: curve steps used for insertion/deletion in the comparisons (the metrics default is 224)
COMPARISON_METRIC_STEPS = 32


# ----------------------------------------------------------------- results
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
    """What [`quick_explain`][] found (the classes: see `ClassPrediction`).

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
    """What [`compare_methods`][] found.

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
    """What [`compare_architectures`][] found: one `ModelExplanation` per model."""

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


# ----------------------------------------------------------------- helpers
@dataclass
class _Prediction:
    tensor: torch.Tensor  # (1, C, H, W) model input
    picture: Any  # the original photo, or (3, H, W) tensor in [0, 1]
    geometry: ImageGeometry
    probabilities: torch.Tensor  # (num_classes,) on CPU

    @property
    def predicted(self) -> int:
        return int(self.probabilities.argmax())


def _predict(model: nn.Module, image: ImagesInput) -> _Prediction:
    """Preprocess one image and run one no-grad forward."""
    batch = prepare_images(image, model)
    if len(batch) != 1:
        raise ValueError(
            f"expected one image, got a batch of {len(batch)}; explain images one at a time "
            f"here, or use an explainer (GradCAM(model)(images)) for batches."
        )
    logits = predict(model, batch.tensor)
    return _Prediction(
        batch.tensor,
        picture_of(batch, 0, model),
        batch.geometries[0],
        logits[0].float().softmax(-1).cpu(),
    )


#: what the functions below explain: a class, or a callable target
Target = int | CallableTargets


def _resolve_target(
    prediction: _Prediction, target_class: int | str | TargetFn | None, model: nn.Module
) -> Target:
    """The class to explain: the prediction, ``target_class`` (an index or a class name),
    or a callable target (each explainer and metric checks what it returns)."""
    targets = validate_targets(target_class, 1, num_outputs(model), model)
    if isinstance(targets, CallableTargets):
        return targets
    return prediction.predicted if targets is None else targets[0]


def _explain(
    model: nn.Module,
    method: str,
    inputs: torch.Tensor,
    target: Target,
    options: Mapping[str, Any] | None,
) -> tuple[torch.Tensor, str | None]:
    """``(heatmap (H, W) on CPU, layer)`` of one registered method for one target."""
    explainer = create_explainer(method, model, **dict(options or {}))
    heatmap = explainer(inputs, target_class=target)
    if heatmap.ndim == 3:
        heatmap = heatmap[0]
    return heatmap.detach().float().cpu(), layer_of(explainer)


def _curve_metrics(
    model: nn.Module, inputs: torch.Tensor, heatmap: torch.Tensor, target: Target, steps: int
) -> dict[str, Any]:
    """``{"insertion": MetricResult, "deletion": MetricResult}`` in one stream of chunks."""
    from .interpretation.metrics import ExplanationMetrics

    metrics = ExplanationMetrics(model, steps=steps)
    return dict(metrics.compute(inputs, heatmap, target_class=target))


def _class_fields(
    model: nn.Module, prediction: _Prediction, target: Target, probability: float | None
) -> dict[str, Any]:
    """The predicted and explained classes, as every result dataclass names them."""
    custom = isinstance(target, CallableTargets)
    return {
        "predicted_class": prediction.predicted,
        "class_name": class_name_of(model, prediction.predicted),
        "probability": float(prediction.probabilities[prediction.predicted]),
        "target_class": None if custom else target,
        "target_name": target.label if custom else class_name_of(model, target),
        "target_probability": float("nan") if probability is None else probability,
        "probabilities": prediction.probabilities,
        "model_name": model_name_of(model),
        "weights": weights_status(model),
    }


def _heading(model: nn.Module, prediction: _Prediction, target: Target) -> tuple[str, float | None]:
    """The explained class and, when it is another class, the prediction, each with its
    own probability (``"target tabby (0.0%), predicted espresso (90.4%)"``); and the
    explained class's probability.

    A callable target has no class and no probability: its label names the callable,
    followed by the predicted class.
    """
    predicted = prediction.predicted
    predicted_name = class_name_of(model, predicted)
    predicted_probability = float(prediction.probabilities[predicted])
    if isinstance(target, CallableTargets):
        top = explanation_title(predicted_name, predicted_probability)
        return f"{target.label}, predicted {top}", None
    probability = float(prediction.probabilities[target])
    label = class_heading(
        class_name_of(model, target), probability, predicted_name, predicted_probability
    )
    return label, probability


# ----------------------------------------------------------------- public
def quick_explain(
    model: nn.Module,
    image: ImagesInput,
    save_path: PathLike | None = None,
    method: str | None = None,
    target_class: int | str | TargetFn | None = None,
    *,
    method_options: Mapping[str, Any] | None = None,
    note: str | None = None,
    cmap: str | None = None,
    alpha: float = 0.5,
    crop: str = "mark",
    dpi: int = DEFAULT_DPI,
) -> ExplanationResult:
    """Predict, explain, and draw a figure, in one call; saved only when ``save_path`` is given.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        image: one image (PIL, path, ``HWC`` array, or a preprocessed ``CHW`` tensor).
        save_path: where to save the figure (default ``None``: nothing is written); the
            format follows the suffix (``.png``, ``.pdf``, ``.svg``; none: ``.png`` added).
        method: a registry name (``"gradcam"``, ``"gradcampp"``, ``"ig"``,
            ``"smoothgrad"``, ``"rollout"``); ``None`` picks the family's best:
            class-specific attention rollout for ViT-like models with global attention,
            GradCAM at the family's default layer for every other model.
        target_class: the class to explain (an index or a class name such as ``"tabby"``),
            or a callable ``logits (1, K) -> scores (1,)`` (a class group's sum; the title
            then says "custom target (<name>)"); ``None`` explains the predicted class.
        method_options: constructor options of the explainer (``{"target_layer": ...}``).
        note: added to the title; a model with random weights or a new untrained head is
            labelled so in any case (`timmlens.models.weights_status`).
        cmap: colormap (default ``"inferno"``, see `timmlens.viz.static.DEFAULT_CMAP`).
        alpha: opacity of the overlay.
        crop: the part of the photo outside the model's crop: ``"mark"`` (hatched),
            ``"only"`` (left out) or ``"plain"``.
        dpi: resolution of the saved figure.

    Returns:
        An [`ExplanationResult`][] (heatmap ``(H, W)`` in model-input coordinates;
        ``result.save(path)`` writes it to ``.npz``, ``result.figure`` is the figure).
    """
    model = unwrap_model(model)  # torch.compile (warned), DataParallel, DDP
    name = resolve_method(method).name if method is not None else default_method(model)
    prediction = _predict(model, image)
    target = _resolve_target(prediction, target_class, model)
    heatmap, layer = _explain(model, name, prediction.tensor, target, method_options)
    label, probability = _heading(model, prediction, target)
    method_text = resolve_method(name).title + (f" @ {layer}" if layer else "")
    figure = plot_overlay(
        prediction.picture,
        heatmap,
        prediction.geometry,
        label=label,
        method=method_text,
        note=with_weights_note(model, note),
        cmap=cmap,
        alpha=alpha,
        crop=crop,
    )
    path = save_figure(figure, save_path, dpi=dpi) if save_path is not None else None
    return ExplanationResult(
        **_class_fields(model, prediction, target, probability),
        heatmap=heatmap,
        method=name,
        layer=layer,
        figure_path=path,
        geometry=prediction.geometry,
        image=prediction.picture,
        figure=figure,
    )


def _curves_path(save_path: Path | None) -> Path | None:
    if save_path is None:
        return None
    return save_path.with_name(f"{save_path.stem}_curves{save_path.suffix or '.png'}")


def compare_methods(
    model: nn.Module,
    image: ImagesInput,
    methods: Sequence[str] | None = None,
    save_path: PathLike | None = None,
    with_metrics: bool = False,
    target_class: int | str | TargetFn | None = None,
    *,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_steps: int = COMPARISON_METRIC_STEPS,
    note: str | None = None,
    cmap: str | None = None,
    alpha: float = 0.5,
    crop: str = "mark",
    dpi: int = DEFAULT_DPI,
) -> MethodComparison:
    """Several methods on one image, for the same class: one heatmap per method.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        image: one image.
        methods: registry names; default the registered methods that apply to the model
            and are ``compared_by_default``, in registry order
            (`default_comparison`: ``gradcam``,
            ``gradcampp``, ``ig``, ``smoothgrad``, plus ``rollout`` for ViTs, and any method
            you register; slow or specialised built-ins run only when named).
            Naming one that does not apply raises ``UnsupportedModelError``.
        save_path: where to save the overlay grid; with metrics the curves go next to it
            as ``<stem>_curves.png``.
        with_metrics: also compute insertion and deletion AUCs (``metric_steps`` steps)
            and plot their curves.
        target_class: the class to explain; ``None``: the predicted class.
        method_options: per method, constructor options, e.g. ``{"ig": {"n_steps": 16}}``.
        note: added to the titles; random weights and untrained heads are labelled anyway.
        cmap: colormap, as for [`quick_explain`][timmlens.quick.quick_explain].
        alpha: opacity of the overlay, as for `quick_explain`.
        crop: the part of the photo outside the crop, as for `quick_explain`.
        dpi: resolution of the saved figure.

    Returns:
        A [`MethodComparison`][]; ``heatmaps[name]`` is ``(H, W)`` on CPU.
    """
    model = unwrap_model(model)  # torch.compile (warned), DataParallel, DDP
    names = [resolve_method(m).name for m in methods] if methods else None
    if names is None:
        names = default_comparison(model)
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("no methods to compare; pass names such as ['gradcam', 'ig'].")
    options = method_options or {}
    prediction = _predict(model, image)
    target = _resolve_target(prediction, target_class, model)
    heatmaps: dict[str, torch.Tensor] = {}
    layers: dict[str, str | None] = {}
    for name in names:
        heatmaps[name], layers[name] = _explain(
            model, name, prediction.tensor, target, options.get(name)
        )
    metrics: dict[str, dict[str, Any]] = {}
    if with_metrics:
        for name, heatmap in heatmaps.items():
            metrics[name] = _curve_metrics(model, prediction.tensor, heatmap, target, metric_steps)
    label, probability = _heading(model, prediction, target)
    titles = {name: resolve_method(name).title for name in names}
    scores = {
        titles[name]: f"ins {float(m['insertion']):.3f} / del {float(m['deletion']):.3f}"
        for name, m in metrics.items()
    }
    figure = plot_methods(
        prediction.picture,
        {titles[name]: heatmaps[name] for name in names},
        prediction.geometry,
        label=f"{model_name_of(model)}: {label}",
        note=with_weights_note(model, note),
        scores=scores or None,
        cmap=cmap,
        alpha=alpha,
        crop=crop,
    )
    path = save_figure(figure, save_path, dpi=dpi) if save_path is not None else None
    curves_figure = curves_path = None
    if metrics:
        curves_figure = plot_curves(
            {titles[n]: m["insertion"] for n, m in metrics.items()},
            {titles[n]: m["deletion"] for n, m in metrics.items()},
            title=explanation_title(
                f"{model_name_of(model)}: {label}", None, None, with_weights_note(model, note)
            ),
        )
        curves_path = _curves_path(path)
        if curves_path is not None:
            save_figure(curves_figure, curves_path, dpi=dpi)
    return MethodComparison(
        **_class_fields(model, prediction, target, probability),
        heatmaps=heatmaps,
        layers=layers,
        metrics=metrics,
        figure=figure,
        figure_path=path,
        curves_figure=curves_figure,
        curves_path=curves_path,
        geometry=prediction.geometry,
        image=prediction.picture,
    )


def compare_architectures(
    models: Sequence[nn.Module] | Mapping[str, nn.Module],
    image: ImagesInput,
    method: str | None = "gradcam",
    save_path: PathLike | None = None,
    with_metrics: bool = False,
    target_class: int | str | TargetFn | None = None,
    *,
    notes: Mapping[str, str | None] | Sequence[str | None] | None = None,
    method_options: Mapping[str, Any] | None = None,
    metric_steps: int = COMPARISON_METRIC_STEPS,
    cmap: str | None = None,
    alpha: float = 0.5,
    crop: str = "mark",
    dpi: int = DEFAULT_DPI,
) -> ArchitectureComparison:
    """One image through several models, each explained with the same method.

    Args:
        models: the models, or a mapping display name -> model (default names: the
            ``ImageClassifier`` spec or the architecture).
        image: one image.
        method: a registry name used for every model (default ``"gradcam"``, so the maps
            differ because the models do); ``None`` or ``"auto"`` gives each model its
            family default (`default_method`).
        save_path: where to save the overlay grid (curves: ``<stem>_curves.png``).
        with_metrics: also compute insertion and deletion AUCs per model.
        target_class: one class for every model; ``None``: each model's predicted class.
        notes: per model a note for its title, by name or order; models with random
            weights or a new untrained head are labelled so in any case.
        method_options: constructor options of the explainer, for every model.
        cmap: colormap, as for [`quick_explain`][timmlens.quick.quick_explain].
        alpha: opacity of the overlay, as for `quick_explain`.
        crop: the part of the photo outside the crop, as for `quick_explain`.
        dpi: resolution of the saved figure.

    Returns:
        An [`ArchitectureComparison`][]; each heatmap is ``(H, W)`` in its own model's
        input coordinates (models crop differently; the figure undoes each crop).
    """
    named = dict(models) if isinstance(models, Mapping) else {}
    if not isinstance(models, Mapping):
        for model in models:
            base = name = model_name_of(model)
            suffix = 2
            while name in named:
                name, suffix = f"{base} #{suffix}", suffix + 1
            named[name] = model
    if not named:
        raise ValueError("no models given; pass a list of models or {name: model}.")
    if isinstance(notes, Mapping):
        note_of = {name: notes.get(name) for name in named}
    else:
        listed = list(notes or [])
        note_of = {name: listed[i] if i < len(listed) else None for i, name in enumerate(named)}
    entries: list[ModelExplanation] = []
    labels: list[str] = []
    picture = None
    for name, model in named.items():
        chosen = default_method(model) if method in (None, "auto") else resolve_method(method).name
        prediction = _predict(model, image)
        picture = picture if picture is not None else prediction.picture
        target = _resolve_target(prediction, target_class, model)
        heatmap, layer = _explain(model, chosen, prediction.tensor, target, method_options)
        metrics = (
            _curve_metrics(model, prediction.tensor, heatmap, target, metric_steps)
            if with_metrics
            else {}
        )
        label, probability = _heading(model, prediction, target)
        labels.append(label)
        entries.append(
            ModelExplanation(
                model=name,
                **_class_fields(model, prediction, target, probability),
                heatmap=heatmap,
                method=chosen,
                layer=layer,
                geometry=prediction.geometry,
                note=with_weights_note(model, note_of.get(name)),
                metrics=metrics,
            )
        )
    panels = [
        {
            "model": entry.model,
            "heatmap": entry.heatmap,
            "geometry": entry.geometry,
            "label": label,
            "method": resolve_method(entry.method).title,
            "note": entry.note,
        }
        for entry, label in zip(entries, labels, strict=True)
    ]
    figure = plot_architectures(picture, panels, cmap=cmap, alpha=alpha, crop=crop)
    path = save_figure(figure, save_path, dpi=dpi) if save_path is not None else None
    curves_figure = curves_path = None
    if with_metrics:

        def tag(entry: ModelExplanation) -> str:
            return f"{entry.model} [{entry.note}]" if entry.note else entry.model

        curves_figure = plot_curves(
            {tag(e): e.metrics["insertion"] for e in entries},
            {tag(e): e.metrics["deletion"] for e in entries},
            title="insertion / deletion per model",
        )
        curves_path = _curves_path(path)
        if curves_path is not None:
            save_figure(curves_figure, curves_path, dpi=dpi)
    return ArchitectureComparison(entries, figure, path, curves_figure, curves_path)
