"""``timmlens.evaluate``: explain and score every image of a dataset, on one or many ranks."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import prepare_images
from ..interpretation.base import Explainer
from ..interpretation.metrics.evaluator import CURVE_METRICS
from ..interpretation.registry import create_explainer, resolve_method
from .distributed import (
    broadcast_from_rank0,
    gather_to_rank0,
    init_from_environment,
    rank_and_world,
    shard,
)
from .sources import Sample, as_source
from .summary import EvaluationSummary, RowStore, build_summary

METRICS = ("insertion", "deletion", "sensitivity")


def _metric_name(name: str) -> str:
    key = name.strip().lower().replace("-n", "").replace("sensitivity_n", "sensitivity")
    if key not in METRICS:
        raise ValueError(f"Unknown metric '{name}'. Available: {', '.join(METRICS)}.")
    return key


def _explainers(
    model: nn.Module, methods: Sequence[str | Explainer], options: Mapping[str, Mapping[str, Any]]
) -> dict[str, Explainer]:
    explainers: dict[str, Explainer] = {}
    for method in methods:
        if isinstance(method, Explainer):
            explainers[method.name] = method
        else:
            name = resolve_method(method).name
            explainers[name] = create_explainer(name, model, **options.get(name, {}))
    return explainers


def _rows_for_batch(
    model: nn.Module,
    samples: list[Sample],
    explainers: dict[str, Explainer],
    metric_names: list[str],
    scorer: Any,
) -> list[dict[str, Any]]:
    batch = prepare_images([s.image for s in samples], model)
    with torch.no_grad():
        predicted = model(batch.tensor).argmax(dim=1).tolist()
    targets = [
        s.label if s.label is not None else p for s, p in zip(samples, predicted, strict=True)
    ]
    rows = []
    for name, explainer in explainers.items():
        heatmaps = explainer.explain_batch(batch.tensor, targets)
        # Insertion and deletion share one pass over the perturbation chunks.
        curve_names = [m for m in metric_names if m in CURVE_METRICS]
        results = (
            dict(scorer.curves(batch.tensor, heatmaps, targets, metrics=curve_names))
            if curve_names
            else {}
        )
        if "sensitivity" in metric_names:
            results["sensitivity"] = scorer.sensitivity(batch.tensor, heatmaps, targets)
        scores = {metric: results[metric].per_image.tolist() for metric in metric_names}
        for i, sample in enumerate(samples):
            row = {
                "id": sample.id,
                "method": name,
                "label": sample.label,
                "predicted": predicted[i],
                "target": targets[i],
            }
            row.update({metric: scores[metric][i] for metric in metric_names})
            rows.append(row)
    return rows


def evaluate(
    model: nn.Module,
    data: Any,
    methods: Sequence[str | Explainer] = ("gradcam",),
    metrics: Sequence[str] = ("insertion", "deletion"),
    out: str | os.PathLike[str] = "results",
    *,
    batch_size: int = 8,
    rows_format: str = "jsonl",
    resume: bool = True,
    progress: bool = True,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Any] | None = None,
) -> EvaluationSummary:
    """Explain and score every image of ``data`` with every method and metric.

    Targets are the labels when the data has them, else each image's prediction.
    Rows (one per image and method) are appended to ``out/rows.jsonl`` (or ``.csv``)
    as batches finish, so a run that stopped resumes where it was (``resume=True``
    skips image/method pairs already written). The summary (mean and 95% CI per
    method and metric) goes to ``out/summary.json`` and is returned.

    Under ``torchrun`` each rank takes every ``world``-th pending image; rank 0
    gathers the rows after every round and writes them, so the files are those of a
    single-process run. Every rank returns the summary.

    Args:
        model: an ``ImageClassifier`` or timm model (on the device to use).
        data: an image folder (integer-named sub-folders give labels), a map-style
            ``Dataset`` yielding ``image`` or ``(image, label)``, or a ``DataLoader``.
        methods: method names (``gradcam``, ``gradcampp``, ``ig``, ``smoothgrad``,
            ``rollout``) or explainer instances.
        metrics: ``insertion``, ``deletion``, ``sensitivity`` (sensitivity-n).
        out: output folder.
        batch_size: images per explanation batch (per rank).
        rows_format: ``"jsonl"`` or ``"csv"``.
        method_options: constructor options per method name, e.g. ``{"ig": {"n_steps": 16}}``.
        metric_options: options for ``ExplanationMetrics`` (e.g. ``{"steps": 50}``).
    """
    from ..interpretation.metrics import ExplanationMetrics

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    init_from_environment()
    rank, world = rank_and_world()
    metric_names = [_metric_name(m) for m in metrics]
    explainers = _explainers(model, methods, method_options or {})
    scorer = ExplanationMetrics(model, **dict(metric_options or {}))
    samples = as_source(data)
    out_dir = Path(out)
    store = RowStore(out_dir / f"rows.{rows_format}", metric_names)
    if not resume and rank == 0 and store.path.exists():
        store.path.unlink()
    done = broadcast_from_rank0(store.done() if rank == 0 else None)
    pending = [
        i
        for i in range(len(samples))
        if any((samples[i].id, name) not in done for name in explainers)
    ]
    mine = shard(pending, rank, world)
    rounds = math.ceil(math.ceil(len(pending) / world) / batch_size) if pending else 0
    bar = tqdm(total=len(pending), desc="evaluate", unit="img", disable=not progress or rank != 0)
    for round_index in range(rounds):
        chunk = [
            samples[i] for i in mine[round_index * batch_size : (round_index + 1) * batch_size]
        ]
        rows = _rows_for_batch(model, chunk, explainers, metric_names, scorer) if chunk else []
        rows = [r for r in rows if (r["id"], r["method"]) not in done]
        gathered = gather_to_rank0(rows)
        if gathered is not None:
            store.append(gathered)
            bar.update(len({row["id"] for row in gathered}))
    bar.close()
    summary = None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = build_summary(store.read(), metric_names, store.path, out_dir / "summary.json")
    return broadcast_from_rank0(summary)
