"""Which method finds the evidence? Every method scored against the known answer.

For one known-answer model, every registered method that applies explains the true class
of the same test images; each map is scored against the deciding object's mask
(`timmlens.groundtruth.scores`) and by the faithfulness metrics, image by image,
so rankings can be compared pairwise and each metric's ranking of the methods can be set
against the known one (`timmlens.evaluation.paired`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..interpretation.metrics import ExplanationMetrics
from ..interpretation.metrics.registry import resolve_metric
from ..interpretation.registry import as_explainer, methods, resolve_method, supports
from .generator import KnownAnswerSet
from .scores import SCORES

#: Methods that score many perturbed copies per image: run on fewer images.
SLOW_METHODS = (
    "occlusion",
    "featureablation",
    "shapley",
    "kernelshap",
    "lime",
    "rise",
    "scorecam",
    "ablationcam",
)
#: The faithfulness metrics compared with the known answer, and their settings.
FAITHFULNESS = (
    "insertion",
    "deletion",
    "road_morf",
    "road_lerf",
    "aopc",
    "average_drop",
    "increase_in_confidence",
    "sensitivity",
)
METRIC_OPTIONS: dict[str, Any] = {"steps": 16}
#: Reference rows: what a map that knows nothing about the model scores.
REFERENCES = ("randomcam", "centerprior")


@dataclass
class MethodScores:
    """One method's per-image values on a known-answer test set (NaN: not run there).

    Attributes:
        method: registry name.
        scores: ``{score name: (N,)}`` against the evidence mask.
        metrics: ``{metric name: (N,)}`` faithfulness values.
        images: how many of the N images the method explained.
        options: the constructor options it ran with.
        seconds: time spent explaining.
    """

    method: str
    scores: dict[str, np.ndarray]
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    images: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def method_options(method: str) -> dict[str, Any]:
    """The constructor options ``method`` runs with here: its quick settings if it is slow."""
    return dict(resolve_method(method).quick_options) if method in SLOW_METHODS else {}


def model_inputs(model: nn.Module, data: KnownAnswerSet) -> torch.Tensor:
    """``(N, 3, H, W)`` model inputs of ``data.images`` through the model's own data config."""
    from ..data import prepare_images

    return prepare_images(list(data.images), model).tensor


def _explain(
    explainer: Any, inputs: torch.Tensor, labels: torch.Tensor, batch: int
) -> torch.Tensor:
    maps = []
    for start in range(0, len(inputs), batch):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            part = explainer(
                inputs[start : start + batch], target_class=labels[start : start + batch]
            )
        maps.append(part.reshape(-1, *inputs.shape[-2:]).float().cpu())
    return torch.cat(maps)


def _padded(values: torch.Tensor | np.ndarray, total: int) -> np.ndarray:
    out = np.full(total, np.nan)
    array = np.asarray(torch.as_tensor(values).detach().cpu(), dtype=np.float64).reshape(-1)
    out[: array.size] = array
    return out


def score_method(
    model: nn.Module,
    method: str,
    data: KnownAnswerSet,
    inputs: torch.Tensor,
    *,
    images: int,
    metrics: Sequence[str] = FAITHFULNESS,
    metric_images: int | None = None,
    batch: int = 50,
) -> MethodScores:
    """Explain the first ``images`` test images with ``method`` and score every map."""
    options = method_options(method)
    explainer = as_explainer(method, model, **options)
    labels = torch.as_tensor(data.labels[:images])
    started = time.perf_counter()
    maps = _explain(explainer, inputs[:images], labels, batch)
    seconds = time.perf_counter() - started
    truth = torch.as_tensor(data.evidence[:images])
    total = len(data)
    scores = {name: _padded(score(maps, truth), total) for name, score in SCORES.items()}
    result = MethodScores(method, scores, images=images, options=options, seconds=seconds)
    if metrics:
        evaluator = ExplanationMetrics(model, **METRIC_OPTIONS)
        scored = images if metric_images is None else min(images, metric_images)
        for start in range(0, scored, batch):
            part = evaluator.compute(
                inputs[start : start + batch],
                maps[start : start + batch],
                target_class=labels[start : start + batch],
                metrics=list(metrics),
            )
            for name, value in part.items():
                result.metrics.setdefault(name, []).append(value.per_image.cpu())
        result.metrics = {
            name: _padded(torch.cat(parts), total) for name, parts in result.metrics.items()
        }
    return result


def benchmark_model(
    model: nn.Module,
    data: KnownAnswerSet,
    *,
    method_names: Sequence[str] | None = None,
    slow_images: int = 100,
    metrics: Sequence[str] = FAITHFULNESS,
    metric_images: int | None = None,
    progress: bool = True,
) -> dict[str, MethodScores]:
    """Every applicable method (or ``method_names``) on ``data``: ``{method: MethodScores}``.

    Slow perturbation methods explain only the first ``slow_images`` images, at their
    registered quick settings; every other method explains all of them.
    """
    from tqdm.auto import tqdm

    check_size(model, data)
    if method_names is None:
        names = [name for name in methods() if supports(model, name)]
    else:
        names = [resolve_method(name).name for name in method_names]
        for name in names:
            reason = resolve_method(name).unavailable_reason(model)
            if reason:
                raise UnsupportedModelError(f"{name} does not apply to this model: {reason}")
    inputs = model_inputs(model, data)
    results = {}
    for name in tqdm(names, desc="methods", disable=not progress, leave=False):
        images = min(len(data), slow_images) if name in SLOW_METHODS else len(data)
        results[name] = score_method(
            model, name, data, inputs, images=images, metrics=metrics, metric_images=metric_images
        )
    return results


def check_size(model: nn.Module, data: KnownAnswerSet) -> None:
    """Refuse images of another size than the model's input (a known-answer model's 64 px)."""
    from ..data import data_config

    expected = tuple(data_config(model)["input_size"][-2:])
    found = tuple(data.images.shape[1:3])
    if found != expected:
        raise ValueError(
            f"the images are {found[0]}x{found[1]} px but the model takes {expected[0]}x"
            f"{expected[1]} (its data config); a resized image moves the evidence masks off "
            f"the objects. Draw them at the model's size: generate(n, size={expected[0]})."
        )


def metric_direction(name: str) -> bool:
    """Whether a higher value of metric ``name`` is better."""
    return bool(resolve_metric(name).higher_is_better)
