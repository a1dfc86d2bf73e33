"""What an [`error_report`][timmlens.analysis.error_report.error_report] measures, and
the numbers behind it, without the HTML.

`prediction_rows` predicts a batch of labelled images (the report's pass 1);
`analyse_rows` turns every image's row into the counts, top-k accuracies, confusion pairs
and per-class accuracy of an [`ErrorReport`][]; `gallery_groups` picks the errors the
gallery shows. The result types are importable from `timmlens.analysis.error_report`.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import prepare_images
from ..evaluation.sources import Sample
from ..interpretation.base import predict

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
    """What [`error_report`][timmlens.analysis.error_report.error_report] found (usable
    without the HTML).

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
            f"error{'' if self.n_errors == 1 else 's'}; {accuracies}"
        )
        if self.n_unlabelled:
            text += f"; {self.n_unlabelled} without a label skipped"
        if self.confusion_pairs:
            top = self.confusion_pairs[0]
            text += f"; most frequent: {top.true_name} -> {top.predicted_name} ({top.count})"
        return text


# ----------------------------------------------------------------- pass 1: predict
def prediction_rows(model: nn.Module, samples: list[tuple[int, Sample]]) -> list[dict[str, Any]]:
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


def analyse_rows(
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
