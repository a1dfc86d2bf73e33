"""One-line explanations and side-by-side comparisons, with figures saved on the way.

* [`quick_explain`][] - predict, explain the predicted class with the best method for
  the family (see `default_method`), save a figure.
* [`compare_methods`][] - several methods on one image and one model.
* [`compare_architectures`][] - one method on one image across several models.

Heatmaps in the results are ``(H, W)`` CPU tensors in model-input coordinates (feed
them to any metric); the figures draw them on the original photo. The result types
(`ExplanationResult`, `MethodComparison`, `ArchitectureComparison`) are defined in
`timmlens.quick_results` and importable from here.

This module draws, so it sits above the methods (`timmlens.interpretation`) and
loads matplotlib; ``timmlens.interpretation`` re-exports its functions lazily, so
``import timmlens`` does not pay for matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from .data import ImageGeometry, ImagesInput, picture_of, prepare_images
from .interpretation._targets import CallableTargets, TargetFn, validate_targets
from .interpretation.base import predict
from .interpretation.registry import (
    create_explainer,
    default_comparison,
    default_method,
    layer_of,
    resolve_method,
)
from .models.introspect import class_name_of, model_name_of, num_outputs, unwrap_model
from .models.weights_status import weights_status, with_weights_note
from .quick_results import ArchitectureComparison as ArchitectureComparison
from .quick_results import ClassPrediction as ClassPrediction
from .quick_results import ExplanationResult as ExplanationResult
from .quick_results import MethodComparison as MethodComparison
from .quick_results import ModelExplanation, PathLike
from .viz.labels import class_heading, explanation_title
from .viz.static import (
    DEFAULT_DPI,
    plot_architectures,
    plot_curves,
    plot_methods,
    plot_overlay,
    save_figure,
)

#: curve steps used for insertion/deletion in the comparisons (the metrics default is 224)
COMPARISON_METRIC_STEPS = 32


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


def _save_figures(
    figure: Figure, curves_figure: Figure | None, save_path: PathLike | None, dpi: int
) -> tuple[Path | None, Path | None]:
    """``(grid path, curves path)``: the overlay grid saved at ``save_path``, the curves
    (when drawn) next to it as ``<stem>_curves.png``; ``None`` for what was not saved."""
    path = save_figure(figure, save_path, dpi=dpi) if save_path is not None else None
    curves_path = _curves_path(path) if curves_figure is not None else None
    if curves_path is not None:
        save_figure(curves_figure, curves_path, dpi=dpi)
    return path, curves_path


def _comparison_names(model: nn.Module, methods: Sequence[str] | None) -> list[str]:
    """The registry names to compare, each once: ``methods`` resolved (aliases to names),
    or the model's `default_comparison`."""
    names = [resolve_method(m).name for m in methods] if methods else None
    if names is None:
        names = default_comparison(model)
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("no methods to compare; pass names such as ['gradcam', 'ig'].")
    return names


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
    names = _comparison_names(model, methods)
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
    heading, note = f"{model_name_of(model)}: {label}", with_weights_note(model, note)
    titles = {name: resolve_method(name).title for name in names}
    scores = {
        titles[name]: f"ins {float(m['insertion']):.3f} / del {float(m['deletion']):.3f}"
        for name, m in metrics.items()
    }
    figure = plot_methods(
        prediction.picture,
        {titles[name]: heatmaps[name] for name in names},
        prediction.geometry,
        label=heading,
        note=note,
        scores=scores or None,
        cmap=cmap,
        alpha=alpha,
        crop=crop,
    )
    curves_figure = None
    if metrics:
        curves_figure = plot_curves(
            {titles[n]: m["insertion"] for n, m in metrics.items()},
            {titles[n]: m["deletion"] for n, m in metrics.items()},
            title=explanation_title(heading, None, None, note),
        )
    path, curves_path = _save_figures(figure, curves_figure, save_path, dpi)
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


def _named_models(
    models: Sequence[nn.Module] | Mapping[str, nn.Module],
) -> dict[str, nn.Module]:
    """Display name -> model: the mapping as given, or each model's spec or architecture
    (``"resnet18 #2"`` for the second model of the same name)."""
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
    return named


def _notes_by_name(
    notes: Mapping[str, str | None] | Sequence[str | None] | None, names: Sequence[str]
) -> dict[str, str | None]:
    """Each model's note for its title, from a mapping by name or a list in model order."""
    if isinstance(notes, Mapping):
        return {name: notes.get(name) for name in names}
    listed = list(notes or [])
    return {name: listed[i] if i < len(listed) else None for i, name in enumerate(names)}


def _explain_model(
    name: str,
    model: nn.Module,
    image: ImagesInput,
    method: str | None,
    target_class: int | str | TargetFn | None,
    options: Mapping[str, Any] | None,
    with_metrics: bool,
    metric_steps: int,
    note: str | None,
) -> tuple[ModelExplanation, str, Any]:
    """One model's entry of an architecture comparison (its heatmap ``(H, W)`` on CPU, and
    with metrics its insertion/deletion results), its heading and its picture of ``image``."""
    chosen = default_method(model) if method in (None, "auto") else resolve_method(method).name
    prediction = _predict(model, image)
    target = _resolve_target(prediction, target_class, model)
    heatmap, layer = _explain(model, chosen, prediction.tensor, target, options)
    metrics = (
        _curve_metrics(model, prediction.tensor, heatmap, target, metric_steps)
        if with_metrics
        else {}
    )
    label, probability = _heading(model, prediction, target)
    entry = ModelExplanation(
        model=name,
        **_class_fields(model, prediction, target, probability),
        heatmap=heatmap,
        method=chosen,
        layer=layer,
        geometry=prediction.geometry,
        note=with_weights_note(model, note),
        metrics=metrics,
    )
    return entry, label, prediction.picture


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
    named = _named_models(models)
    note_of = _notes_by_name(notes, list(named))
    entries: list[ModelExplanation] = []
    labels: list[str] = []
    picture = None
    for name, model in named.items():
        entry, label, own_picture = _explain_model(
            name,
            model,
            image,
            method,
            target_class,
            method_options,
            with_metrics,
            metric_steps,
            note_of.get(name),
        )
        picture = picture if picture is not None else own_picture
        entries.append(entry)
        labels.append(label)
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
    curves_figure = None
    if with_metrics:

        def tag(entry: ModelExplanation) -> str:
            return f"{entry.model} [{entry.note}]" if entry.note else entry.model

        curves_figure = plot_curves(
            {tag(e): e.metrics["insertion"] for e in entries},
            {tag(e): e.metrics["deletion"] for e in entries},
            title="insertion / deletion per model",
        )
    path, curves_path = _save_figures(figure, curves_figure, save_path, dpi)
    return ArchitectureComparison(entries, figure, path, curves_figure, curves_path)
