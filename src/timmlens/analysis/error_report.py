"""``error_report``: what a classifier gets wrong on labelled data, and where it looked.

Two passes over the data, on one process or under ``torchrun``:

1. **predict** every labelled image (batched, no grad): predicted class, the true
   class's probability and rank. From these rows come the counts, top-k accuracy, the
   confusion pairs (true -> predicted, most frequent first) and per-class accuracy.
2. **explain** the errors shown in the gallery (``max_examples``, most frequent pairs
   first): per batch one explainer call on the error inputs stacked twice, with targets
   ``[predicted..., true...]``, so every card shows where the model saw the class it
   chose next to where it saw the class it should have chosen.

Rank 0 writes one self-contained HTML page (`timmlens.viz.report_html`) and a JSON
summary next to it (``report.json`` for ``report.html``) that lists every error, shown or
not. Every rank returns the same [`ErrorReport`][].
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .._outputs import ensure_writable_file
from ..data import picture_of, prepare_images
from ..evaluation.distributed import (
    broadcast_from_rank0,
    fail_together,
    gather_to_rank0,
    init_from_environment,
    rank_and_world,
    shard,
)
from ..evaluation.sources import ImageFolderSource, Sample, as_source
from ..interpretation.base import Explainer, predict
from ..interpretation.registry import as_explainer, resolve_method
from ..models.introspect import (
    class_label,
    label_resolver_for,
    model_class_names,
    model_name_of,
    num_outputs,
)
from ..models.weights_status import weights_status
from ..viz.report_html import CARD_IMAGE_SIDE, render_card, render_report

#: accuracies reported: top-1, and top-5 for models with at least 5 classes
TOP_K = (1, 5)
#: decimals of the probabilities in the JSON summary
JSON_DECIMALS = 6


# ----------------------------------------------------------------- results
@dataclass(frozen=True)
class ErrorCase:
    """One misclassified image.

    Attributes:
        id: the image's id (path relative to the folder, or dataset index).
        true, true_name: the label and its class name.
        predicted, predicted_name: the model's top class and its name.
        p_true, p_predicted: softmax probabilities of the two classes.
        true_rank: rank of the true class among the model's scores (1 = top; >= 2 here).
    """

    id: str
    true: int
    true_name: str
    predicted: int
    predicted_name: str
    p_true: float
    p_predicted: float
    true_rank: int

    def to_dict(self) -> dict[str, Any]:
        row = vars(self).copy()
        row["p_true"] = round(self.p_true, JSON_DECIMALS)
        row["p_predicted"] = round(self.p_predicted, JSON_DECIMALS)
        return row


@dataclass(frozen=True)
class ConfusionPair:
    """Images of class ``true`` predicted as ``predicted``: how many, and which."""

    true: int
    true_name: str
    predicted: int
    predicted_name: str
    count: int
    ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "ids": list(self.ids)}


@dataclass(frozen=True)
class ClassAccuracy:
    """Accuracy on the images of one class.

    Attributes:
        index, name: the class.
        n, correct, accuracy: its images, how many were predicted right, the ratio.
        confused_with, confused_with_name, confused_count: the class its images were most
            often mistaken for, and how often (``None``/``""``/0 without errors).
    """

    index: int
    name: str
    n: int
    correct: int
    accuracy: float
    confused_with: int | None
    confused_with_name: str
    confused_count: int

    def to_dict(self) -> dict[str, Any]:
        row = vars(self).copy()
        return {"class": row.pop("index"), **row}


@dataclass
class ErrorReport:
    """What [`error_report`][] found (usable without the HTML).

    Attributes:
        model, method, data: what was run on what.
        num_classes: the model's number of classes.
        n_images: images in the data; ``n_labelled`` of them have a label (the others,
            ``n_unlabelled``, are skipped); ``n_correct`` + ``n_errors`` = ``n_labelled``.
        accuracy: top-1 accuracy on the labelled images.
        top_k: ``{1: top-1 accuracy, 5: top-5 accuracy}`` (5 only with >= 5 classes).
        confusion_pairs: every (true, predicted) pair, most frequent first.
        per_class: one row per class present in the labels, by class index.
        errors: every misclassified image, in data order.
        shown: ids of the errors drawn in the gallery, in gallery order.
        max_examples: the gallery cap used (``None``: no cap).
        html_path, json_path: the files written.
        heatmaps: with ``keep_heatmaps=True``, id -> ``(predicted-class map, true-class
            map)`` for the errors shown, ``(H, W)`` CPU tensors in model-input coordinates.
        weights: the model's weights note (``"random weights"``, ...; ``None`` when
            trained), shown in the page's title.
    """

    model: str
    method: str
    data: str
    num_classes: int
    n_images: int
    n_labelled: int
    n_unlabelled: int
    n_correct: int
    n_errors: int
    accuracy: float
    top_k: dict[int, float]
    confusion_pairs: list[ConfusionPair]
    per_class: list[ClassAccuracy]
    errors: list[ErrorCase]
    shown: list[str] = field(default_factory=list)
    max_examples: int | None = None
    html_path: Path | None = None
    json_path: Path | None = None
    heatmaps: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    weights: str | None = None

    @property
    def n_left_out(self) -> int:
        """Errors not drawn in the gallery (all of them are in ``errors`` and the JSON)."""
        return self.n_errors - len(self.shown)

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary (also what the HTML page is rendered from)."""
        return {
            "model": self.model,
            "weights": self.weights,
            "method": self.method,
            "data": self.data,
            "num_classes": self.num_classes,
            "counts": {
                "images": self.n_images,
                "labelled": self.n_labelled,
                "unlabelled": self.n_unlabelled,
                "correct": self.n_correct,
                "errors": self.n_errors,
            },
            "accuracy": self.accuracy,
            "top_k": {str(k): value for k, value in self.top_k.items()},
            "confusion_pairs": [pair.to_dict() for pair in self.confusion_pairs],
            "per_class": [row.to_dict() for row in self.per_class],
            "errors": [error.to_dict() for error in self.errors],
            "gallery": {
                "shown": len(self.shown),
                "left_out": self.n_left_out,
                "max_examples": self.max_examples,
            },
            "html": self.html_path.name if self.html_path else None,
        }

    def __str__(self) -> str:
        accuracies = ", ".join(f"top-{k} {value:.1%}" for k, value in self.top_k.items())
        text = (
            f"{self.n_labelled} labelled images: {self.n_correct} correct, {self.n_errors} "
            f"errors; {accuracies}"
        )
        if self.n_unlabelled:
            text += f"; {self.n_unlabelled} without a label skipped"
        if self.confusion_pairs:
            top = self.confusion_pairs[0]
            text += f"; most frequent: {top.true_name} -> {top.predicted_name} ({top.count})"
        return text


# ----------------------------------------------------------------- pass 1: predict
def _predict(model: nn.Module, samples: list[tuple[int, Sample]]) -> list[dict[str, Any]]:
    """Rows ``{index, id, label, predicted, p_true, p_predicted, true_rank}`` of a batch.

    Images without a label get a row with ``label=None`` and are not run.
    """
    rows: list[dict[str, Any]] = [
        {"index": i, "id": s.id, "label": None} for i, s in samples if s.label is None
    ]
    labelled = [(i, s) for i, s in samples if s.label is not None]
    if not labelled:
        return rows
    batch = prepare_images([s.image for _, s in labelled], model)
    logits = predict(model, batch.tensor).float()
    labels = torch.tensor([s.label for _, s in labelled], device=logits.device)
    probabilities = logits.softmax(dim=1)
    predicted = logits.argmax(dim=1)
    true_logit = logits.gather(1, labels[:, None])
    # Rank as argmax breaks ties (first index wins), so rank 1 <=> predicted == label.
    before = torch.arange(logits.shape[1], device=logits.device)[None] < labels[:, None]
    ranks = 1 + (logits > true_logit).sum(1) + ((logits == true_logit) & before).sum(1)
    p_true = probabilities.gather(1, labels[:, None])[:, 0]
    p_predicted = probabilities.gather(1, predicted[:, None])[:, 0]
    for k, (index, sample) in enumerate(labelled):
        rows.append(
            {
                "index": index,
                "id": sample.id,
                "label": int(sample.label),  # type: ignore[arg-type]
                "predicted": int(predicted[k]),
                "p_true": float(p_true[k]),
                "p_predicted": float(p_predicted[k]),
                "true_rank": int(ranks[k]),
            }
        )
    return rows


def _analyse(
    rows: list[dict[str, Any]],
    num_classes: int,
    name: Callable[[int], str],
    head: dict[str, Any],
) -> ErrorReport:
    """Counts, accuracies, confusion pairs and per-class rows from all prediction rows."""
    rows = sorted(rows, key=lambda row: row["index"])
    labelled = [row for row in rows if row["label"] is not None]
    if not labelled:
        raise ValueError(
            f"none of the {len(rows)} images has a label, so there are no errors to find. "
            f"Put images in sub-folders named by class (index, class name or WordNet id), "
            f"or give a Dataset that yields (image, label)."
        )
    errors = [
        ErrorCase(
            row["id"],
            row["label"],
            name(row["label"]),
            row["predicted"],
            name(row["predicted"]),
            row["p_true"],
            row["p_predicted"],
            row["true_rank"],
        )
        for row in labelled
        if row["predicted"] != row["label"]
    ]
    grouped: dict[tuple[int, int], list[str]] = defaultdict(list)
    for error in errors:
        grouped[(error.true, error.predicted)].append(error.id)
    pairs = [
        ConfusionPair(true, name(true), predicted, name(predicted), len(ids), tuple(ids))
        for (true, predicted), ids in sorted(
            grouped.items(), key=lambda item: (-len(item[1]), item[0])
        )
    ]
    per_class = []
    totals = Counter(row["label"] for row in labelled)
    for index in sorted(totals):
        mistaken = Counter(e.predicted for e in errors if e.true == index)
        confused, count = (
            min(mistaken.items(), key=lambda item: (-item[1], item[0])) if mistaken else (None, 0)
        )
        correct = totals[index] - sum(mistaken.values())
        per_class.append(
            ClassAccuracy(
                index,
                name(index),
                totals[index],
                correct,
                correct / totals[index],
                confused,
                name(confused) if confused is not None else "",
                count,
            )
        )
    top_k = {
        k: sum(row["true_rank"] <= k for row in labelled) / len(labelled)
        for k in TOP_K
        if k <= num_classes
    }
    return ErrorReport(
        **head,
        num_classes=num_classes,
        n_images=len(rows),
        n_labelled=len(labelled),
        n_unlabelled=len(rows) - len(labelled),
        n_correct=len(labelled) - len(errors),
        n_errors=len(errors),
        accuracy=top_k[1],
        top_k=top_k,
        confusion_pairs=pairs,
        per_class=per_class,
        errors=errors,
    )


def gallery_groups(
    pairs: Sequence[ConfusionPair], max_examples: int | None
) -> list[dict[str, Any]]:
    """The gallery: ``{"number", "pair", "ids"}`` per confusion pair with a card shown.

    Pairs in order (most frequent first), images in data order, at most ``max_examples``
    images in all (``None``: every error).
    """
    left = math.inf if max_examples is None else max_examples
    groups = []
    for number, pair in enumerate(pairs):
        if left <= 0:
            break
        ids = list(pair.ids[: int(min(left, len(pair.ids)))])
        left -= len(ids)
        groups.append({"number": number, "pair": pair.to_dict(), "ids": ids})
    return groups


# ----------------------------------------------------------------- pass 2: explain
def explain_errors(
    explainer: Explainer, inputs: torch.Tensor, predicted: Sequence[int], true: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps of misclassified inputs for their predicted and their true class.

    One explainer call on the batch stacked twice, targets ``[predicted..., true...]``.

    Args:
        explainer: any explainer (``GradCAM(model)``, ...).
        inputs: ``(E, C, H, W)`` preprocessed error images.
        predicted: ``E`` predicted class indices.
        true: ``E`` true class indices.

    Returns:
        ``(predicted_maps (E, H, W), true_maps (E, H, W))`` on the model's device.
    """
    count = inputs.shape[0]
    if len(predicted) != count or len(true) != count:
        raise ValueError(
            f"{count} inputs but {len(predicted)} predicted and {len(true)} true classes; give "
            f"one of each per input."
        )
    maps = explainer.explain_batch(torch.cat([inputs, inputs]), [*predicted, *true])
    return maps[:count], maps[count:]


def _cards(
    model: nn.Module,
    explainer: Explainer,
    samples: list[Sample],
    errors: list[dict[str, Any]],
    *,
    image_side: int,
    keep_heatmaps: bool,
) -> list[dict[str, Any]]:
    """``{"id", "html"}`` (and ``"maps"``) per error of one batch."""
    batch = prepare_images([s.image for s in samples], model)
    predicted_maps, true_maps = explain_errors(
        explainer, batch.tensor, [e["predicted"] for e in errors], [e["true"] for e in errors]
    )
    predicted_maps, true_maps = predicted_maps.detach().cpu(), true_maps.detach().cpu()
    out = []
    for k, error in enumerate(errors):
        picture = picture_of(batch, k, model)
        card = {
            "id": error["id"],
            "html": render_card(
                error,
                picture,
                predicted_maps[k],
                true_maps[k],
                batch.geometries[k],
                max_side=image_side,
            ),
        }
        if keep_heatmaps:
            card["maps"] = (predicted_maps[k].clone(), true_maps[k].clone())
        out.append(card)
    return out


# ----------------------------------------------------------------- the entry point
def _describe_data(data: Any) -> str:
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    if isinstance(data, DataLoader):
        return f"DataLoader({type(data.dataset).__name__}, {len(data.dataset)} items)"  # type: ignore[arg-type]
    size = f", {len(data)} items" if hasattr(data, "__len__") else ""
    return f"{type(data).__name__}{size}"


def _output_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``report.html`` -> (it, ``report.json``); a path without .html is a folder."""
    path = Path(out)
    if path.suffix.lower() not in {".html", ".htm"}:
        path = path / "report.html"
    return path, path.with_suffix(".json")


def check_output(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The HTML and JSON paths of ``out``, checked writable before anything is computed.

    Raises:
        OutputPathError: a file where the folder should be, a folder where a file should
            be, or a place this process cannot write in.
    """
    html_path, json_path = _output_paths(out)
    ensure_writable_file(html_path, "report file")
    ensure_writable_file(json_path, "report JSON file")
    return html_path, json_path


def _explainer(
    model: nn.Module, method: str | Explainer, options: Mapping[str, Any] | None
) -> Explainer:
    if isinstance(method, Explainer) and options:
        raise ValueError("method_options apply to a method name, not an explainer instance.")
    return as_explainer(method, model, **dict(options or {}))


def error_report(
    model: nn.Module,
    data: Any,
    out: str | os.PathLike[str] = "report.html",
    *,
    method: str | Explainer = "gradcam",
    batch_size: int = 8,
    max_examples: int | None = 100,
    top_pairs: int | None = 10,
    method_options: Mapping[str, Any] | None = None,
    image_side: int = CARD_IMAGE_SIDE,
    keep_heatmaps: bool = False,
    progress: bool = True,
) -> ErrorReport:
    """Find what ``model`` gets wrong on labelled ``data`` and show where it looked.

    Predicts every image, finds the misclassified ones, explains each shown error for both
    the predicted and the true class, and writes one self-contained HTML report (numbers,
    most frequent confusion pairs, per-class accuracy, an error gallery grouped by
    confusion pair) plus a JSON summary next to it (``report.json`` for ``report.html``)
    that lists every error.

    Under ``torchrun`` each rank predicts every ``world``-th image and draws its share of
    the cards; rank 0 gathers and writes the files, which are those of a one-process run.
    Every rank returns the report. The model is left as it was found (mode, gradients).

    Args:
        model: an ``ImageClassifier`` or timm model (on the device to use).
        data: an image folder whose sub-folders name the classes (class index, the model's
            class names, and for ImageNet models any ImageNet name, synonym or WordNet id;
            files directly in the folder have no label), a map-style ``Dataset`` yielding
            ``(image, label)`` (label an int, a class name or ``None``), or a ``DataLoader``.
            Images without a label are skipped and counted.
        out: the HTML file (``.html``), or a folder to write ``report.html`` in.
        method: a registry name (any of [`methods`][timmlens.interpretation.registry.methods],
            e.g. ``gradcam``, ``ig``) or an explainer instance.
        batch_size: images per prediction batch, errors per explanation batch (per rank;
            an explanation batch holds each error twice).
        max_examples: errors drawn in the gallery, most frequent pairs first (``None``:
            all); only those are explained. The JSON always lists every error.
        top_pairs: rows of the confusion-pair table in the HTML (``None``: all).
        method_options: constructor options of the method (``{"n_steps": 16}`` for IG).
        image_side: long side in pixels of each picture on a card.
        keep_heatmaps: keep the two heatmaps of each shown error in ``ErrorReport.heatmaps``.
        progress: show progress bars (rank 0).

    Raises:
        ValueError: no image has a label; a folder or label names no class of the model
            (the message lists close matches); bad arguments.
        OutputPathError: ``out`` cannot be written (checked before anything is computed).
        DistributedRunError: under ``torchrun``, on the ranks that did not fail when
            another did (every rank stops, with the failing rank's message).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if max_examples is not None and max_examples < 0:
        raise ValueError(f"max_examples must be >= 0 or None, got {max_examples}.")
    if top_pairs is not None and top_pairs < 0:
        raise ValueError(f"top_pairs must be >= 0 or None, got {top_pairs}.")
    init_from_environment()
    rank, world = rank_and_world()
    html_path, json_path = _output_paths(out)
    with fail_together("the output check"):
        if rank == 0:  # the only rank that writes
            check_output(out)
    explainer = _explainer(model, method, method_options)
    method_name = resolve_method(method).name if isinstance(method, str) else explainer.name
    num_classes = num_outputs(model)
    class_names = model_class_names(model)

    def name(index: int) -> str:
        return class_label(index, num_classes, class_names)

    source = as_source(data, labels=label_resolver_for(model))
    if isinstance(source, ImageFolderSource) and all(label is None for label in source.labels):
        raise ValueError(
            f"no image under '{source.root}' has a label: put them in sub-folders named by "
            f"class (index, class name or WordNet id); files directly in the folder have none."
        )

    # Pass 1: predict every image (each rank its shard), analyse on rank 0.
    mine = shard(range(len(source)), rank, world)
    rows: list[dict[str, Any]] = []
    show = progress and rank == 0
    bar = tqdm(total=len(mine), desc="predict", unit="img", disable=not show)
    with bar, fail_together("predict"):
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            rows += _predict(model, [(i, source[i]) for i in chunk])
            bar.update(len(chunk))
    gathered = gather_to_rank0(rows)
    outcome: ErrorReport | str | None = None
    with fail_together("the analysis"):
        if rank == 0:
            head = {
                "model": model_name_of(model),
                "weights": weights_status(model).note,  # "random weights" heads the page
                "method": method_name,
                "data": _describe_data(data),
            }
            try:
                outcome = _analyse(gathered or [], num_classes, name, head)
            except ValueError as exc:  # a user error: every rank raises it as it is
                outcome = str(exc)
    outcome = broadcast_from_rank0(outcome)
    if isinstance(outcome, str):
        raise ValueError(outcome)
    report: ErrorReport = outcome  # type: ignore[assignment]
    report.max_examples = max_examples

    # Pass 2: explain and draw the errors shown in the gallery (each rank its shard).
    groups = gallery_groups(report.confusion_pairs, max_examples)
    report.shown = [i for group in groups for i in group["ids"]]
    errors = {e.id: e.to_dict() for e in report.errors}
    index_of = {row["id"]: row["index"] for row in gathered or []}  # rank 0 has the rows
    positions = broadcast_from_rank0([index_of[i] for i in report.shown] if rank == 0 else None)
    my_errors = shard(list(zip(report.shown, positions, strict=True)), rank, world)
    cards: list[dict[str, Any]] = []
    bar = tqdm(total=len(my_errors), desc="explain", unit="err", disable=not show)
    with bar, fail_together("explain"):
        for start in range(0, len(my_errors), batch_size):
            chunk = my_errors[start : start + batch_size]
            cards += _cards(
                model,
                explainer,
                [source[index] for _, index in chunk],
                [errors[error_id] for error_id, _ in chunk],
                image_side=image_side,
                keep_heatmaps=keep_heatmaps,
            )
            bar.update(len(chunk))
    all_cards = gather_to_rank0(cards)
    with fail_together("writing the report"):
        if rank == 0:
            _write(report, groups, all_cards or [], html_path, json_path, top_pairs, keep_heatmaps)
    return broadcast_from_rank0(report if rank == 0 else None)


def _write(
    report: ErrorReport,
    groups: list[dict[str, Any]],
    all_cards: list[dict[str, Any]],
    html_path: Path,
    json_path: Path,
    top_pairs: int | None,
    keep_heatmaps: bool,
) -> None:
    """Rank 0: the HTML page and the JSON summary, and their paths on ``report``."""
    report.html_path, report.json_path = html_path, json_path
    if keep_heatmaps:
        report.heatmaps = {card["id"]: card["maps"] for card in all_cards}
    summary = report.to_dict()
    page = render_report(
        summary,
        groups,
        {card["id"]: card["html"] for card in all_cards},
        top_pairs=top_pairs,
    )
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(page, encoding="utf-8")
    json_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
