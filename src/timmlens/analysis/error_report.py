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

The numbers (prediction rows, counts, confusion pairs, per-class accuracy) and the result
types are computed in `timmlens.analysis.error_analysis`; the result types are importable
from here too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
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
from ..evaluation.sources import ImageFolderSource, Sample, source_for
from ..interpretation.base import Explainer
from ..interpretation.registry import as_explainer, resolve_method
from ..models.introspect import (
    class_label,
    model_class_names,
    model_name_of,
    num_outputs,
)
from ..models.weights_status import weights_status
from ..viz.report_html import CARD_IMAGE_SIDE, render_card, render_report
from .error_analysis import JSON_DECIMALS as JSON_DECIMALS
from .error_analysis import TOP_K as TOP_K
from .error_analysis import ClassAccuracy as ClassAccuracy
from .error_analysis import ConfusionPair as ConfusionPair
from .error_analysis import ErrorCase as ErrorCase
from .error_analysis import ErrorReport, analyse_rows, gallery_groups, prediction_rows


# ----------------------------------------------------------------- pass 1: predict
def _predict_shard(
    model: nn.Module, source: Any, batch_size: int, show: bool
) -> list[dict[str, Any]]:
    """This rank's prediction rows (`prediction_rows`): every ``world``-th image, batched."""
    rank, world = rank_and_world()
    mine = shard(range(len(source)), rank, world)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(mine), desc="predict", unit="img", disable=not show)
    with bar, fail_together("predict"):
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            rows += prediction_rows(model, [(i, source[i]) for i in chunk])
            bar.update(len(chunk))
    return rows


def _analyse_on_rank0(
    rows: list[dict[str, Any]] | None,
    model: nn.Module,
    method_name: str,
    data: Any,
    num_classes: int,
    name: Callable[[int], str],
) -> ErrorReport:
    """The report's numbers (`analyse_rows`), computed on rank 0 from every rank's rows
    (``None`` on the other ranks) and sent to every rank.

    Raises:
        ValueError: no image has a label (on every rank, with rank 0's message).
    """
    rank, _ = rank_and_world()
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
                outcome = analyse_rows(rows or [], num_classes, name, head)
            except ValueError as exc:  # a user error: every rank raises it as it is
                outcome = str(exc)
    outcome = broadcast_from_rank0(outcome)
    if isinstance(outcome, str):
        raise ValueError(outcome)
    return outcome  # type: ignore[return-value]


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


def _explain_shown(
    model: nn.Module,
    explainer: Explainer,
    source: Any,
    report: ErrorReport,
    rows: list[dict[str, Any]] | None,
    *,
    batch_size: int,
    image_side: int,
    keep_heatmaps: bool,
    show: bool,
) -> list[dict[str, Any]]:
    """This rank's cards (`_cards`) of the errors the gallery shows (``report.shown``):
    every ``world``-th one, in batches. ``rows``: the prediction rows (rank 0 has them)."""
    rank, world = rank_and_world()
    errors = {e.id: e.to_dict() for e in report.errors}
    index_of = {row["id"]: row["index"] for row in rows or []}  # rank 0 has the rows
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
    return cards


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


def _check_arguments(batch_size: int, max_examples: int | None, top_pairs: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if max_examples is not None and max_examples < 0:
        raise ValueError(f"max_examples must be >= 0 or None, got {max_examples}.")
    if top_pairs is not None and top_pairs < 0:
        raise ValueError(f"top_pairs must be >= 0 or None, got {top_pairs}.")


def _labelled_source(model: nn.Module, data: Any) -> Any:
    """``data`` as samples labelled with the model's class indices (folder names resolved).

    Raises:
        ValueError: a folder in which no image has a label.
    """
    source = source_for(data, model)
    if isinstance(source, ImageFolderSource) and all(label is None for label in source.labels):
        raise ValueError(
            f"no image under '{source.root}' has a label: put them in sub-folders named by "
            f"class (index, class name or WordNet id); files directly in the folder have none."
        )
    return source


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
    _check_arguments(batch_size, max_examples, top_pairs)
    init_from_environment()
    rank, _ = rank_and_world()
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

    source = _labelled_source(model, data)
    show = progress and rank == 0

    # Pass 1: predict every image (each rank its shard), analyse on rank 0.
    gathered = gather_to_rank0(_predict_shard(model, source, batch_size, show))
    report = _analyse_on_rank0(gathered, model, method_name, data, num_classes, name)
    report.max_examples = max_examples

    # Pass 2: explain and draw the errors shown in the gallery (each rank its shard).
    groups = gallery_groups(report.confusion_pairs, max_examples)
    report.shown = [i for group in groups for i in group["ids"]]
    cards = _explain_shown(
        model,
        explainer,
        source,
        report,
        gathered,
        batch_size=batch_size,
        image_side=image_side,
        keep_heatmaps=keep_heatmaps,
        show=show,
    )
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
