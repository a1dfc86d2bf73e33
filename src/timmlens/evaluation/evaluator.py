"""``timmlens.evaluate``: explain and score every image of a dataset, on one or many ranks."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .._warnings import warn_caller
from ..data import prepare_images
from ..errors import ImageInputError
from ..interpretation.base import Explainer, predict
from ..interpretation.metrics.registry import resolve_metric
from ..interpretation.registry import as_explainer, resolve_method
from ..models.introspect import data_config, num_outputs
from .cost import ForwardCounter, ForwardPlan, plan_forwards
from .distributed import (
    broadcast_from_rank0,
    fail_together,
    gather_to_rank0,
    init_from_environment,
    rank_and_world,
    shard,
)
from .run_identity import (
    RUN_FILE,
    build_identity,
    check_resumable,
    merged,
    method_identity,
    read_identity,
    write_identity,
)
from .sources import DatasetSource, Sample, as_source
from .summary import EvaluationSummary, RowStore, build_summary

#: The heatmap metrics registered at import; `_metric_name` asks the registry live.
ROW_FORMATS = ("jsonl", "csv")
#: the folder of ``out`` that ``save_maps=True`` fills
MAPS_DIR = "maps"
ON_ERROR = ("skip", "fail")
#: what a dataset item or image file that cannot be read raises (PIL: OSError subclasses
#: and DecompressionBombError, a plain Exception)
_UNREADABLE = (OSError, ImageInputError, Image.DecompressionBombError)
#: marks a gathered entry as "this image was skipped" rather than a row
_SKIPPED = "_skipped"


def _metric_name(name: str) -> str:
    return resolve_metric(name, needs="heatmap").name


def _explainers(
    model: nn.Module, methods: Sequence[str | Explainer], options: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, Explainer], dict[str, dict[str, Any]]]:
    """The explainers by name, and each one's identity (class and options)."""
    explainers: dict[str, Explainer] = {}
    identities: dict[str, dict[str, Any]] = {}
    for method in methods:
        from_name = not isinstance(method, Explainer)
        name = resolve_method(method).name if from_name else method.name
        given = options.get(name) if from_name else None
        explainers[name] = as_explainer(method, model, **(given or {}))
        identities[name] = method_identity(explainers[name], given, from_name)
    return explainers, identities


def _sample_id(samples: Sequence[Sample], index: int) -> str:
    # A dataset's ids are its indices: no need to load the item (and its image) for it.
    return str(index) if isinstance(samples, DatasetSource) else samples[index].id


def _read_item(samples: Sequence[Sample], index: int) -> Sample:
    """``samples[index]``; a dataset's decoder failing on a broken file is unreadable too."""
    try:
        return samples[index]
    except RuntimeError as exc:  # torchvision.io.decode_image on a damaged file
        raise ImageInputError(str(exc).strip() or type(exc).__name__) from exc


def map_path(maps_dir: Path, method: str, image_id: str) -> Path:
    """Where ``evaluate(save_maps=True)`` keeps one image's map: ``maps/<method>/<id>.npz``.

    The id's folders are kept (``3/cat.jpg`` -> ``maps/gradcam/3/cat.jpg.npz``); ``..``
    and absolute parts are dropped, so a map never lands outside ``maps_dir``.
    """
    parts = [p for p in PurePosixPath(image_id.replace("\\", "/")).parts if p not in ("/", "..")]
    return maps_dir.joinpath(method, *parts[:-1], f"{parts[-1] if parts else '_'}.npz")


def _save_maps(
    maps_dir: Path,
    name: str,
    samples: list[Sample],
    needed: list[int],
    heatmaps: torch.Tensor,
    context: dict[str, Any],
) -> None:
    """One ``.npz`` per image of ``needed`` (heatmap ``(H, W)`` + metadata), atomically."""
    from ..saving import geometry_json, save_explanation

    for position, i in enumerate(needed):
        sample = samples[i]
        probabilities = context["probabilities"][i]
        save_explanation(
            map_path(maps_dir, name, sample.id),
            {name: heatmaps[position]},
            {
                "kind": "evaluate",
                "id": sample.id,
                "method": name,
                "layer": context["layers"].get(name),
                "model": context["model"],
                "label": sample.label,
                "target_class": context["targets"][i],
                "target_probability": float(probabilities[context["targets"][i]]),
                "predicted_class": context["predicted"][i],
                "geometry": geometry_json(context["geometries"][i]),
            },
            probabilities=probabilities,
        )


def _load_batch(
    model: nn.Module,
    samples: Sequence[Sample],
    indices: Sequence[int],
    on_error: str,
    command: str = "evaluate",
) -> tuple[list[Sample], torch.Tensor | None, dict[str, str], list[Any]]:
    """The readable samples, their batch ``(B, C, H, W)``, the unreadable ids -> reason and
    the readable images' geometries. ``command`` names the caller in the skip warning."""
    good: list[Sample] = []
    tensors: list[torch.Tensor] = []
    geometries: list[Any] = []
    skipped: dict[str, str] = {}
    for index in indices:
        sample = None
        try:
            sample = _read_item(samples, index)
            prepared = prepare_images([sample.image], model)
            tensors.append(prepared.tensor)
            geometries.append(prepared.geometries[0])
        except _UNREADABLE as exc:
            image_id = sample.id if sample is not None else _sample_id(samples, index)
            reason = str(exc).strip().splitlines()[0].removeprefix("image 0: ")
            if on_error == "fail":
                raise ImageInputError(
                    f"image '{image_id}' cannot be read: {reason} Fix or remove it, or skip "
                    f"unreadable images with --on-error skip (on_error='skip')."
                ) from exc
            warn_caller(f"{command}: skipped image '{image_id}': {reason}", RuntimeWarning)
            skipped[image_id] = reason
            continue
        good.append(sample)
    return good, (torch.cat(tensors) if tensors else None), skipped, geometries


def _rows_for_batch(
    model: nn.Module,
    samples: list[Sample],
    inputs: torch.Tensor,
    explainers: dict[str, Explainer],
    metric_names: list[str],
    scorer: Any,
    complete: set[tuple[str, str]],
    maps: dict[str, Any] | None = None,
    cost: _CostMeter | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``samples`` (inputs ``(B, C, H, W)``) for each method whose row is not yet
    ``complete``; a method is run only on the images that still need it. With ``maps``
    (``{"dir", "model", "layers", "geometries"}``) each heatmap is also saved. ``cost``
    measures the forwards of each method's explaining and scoring (for the progress bar)."""
    # Eval mode: a model handed over in train mode predicts without dropout.
    logits = predict(model, inputs)
    predicted = logits.argmax(dim=1).tolist()
    targets = [
        s.label if s.label is not None else p for s, p in zip(samples, predicted, strict=True)
    ]
    rows = []
    for name, explainer in explainers.items():
        needed = [i for i, sample in enumerate(samples) if (sample.id, name) not in complete]
        if not needed:
            continue
        subset, subset_targets = inputs[needed], [targets[i] for i in needed]
        mark = cost.mark() if cost else 0
        heatmaps = explainer.explain_batch(subset, subset_targets)
        middle = cost.mark() if cost else 0
        if maps is not None:
            context = {
                **maps,
                "probabilities": logits.float().softmax(-1).cpu(),
                "targets": targets,
                "predicted": predicted,
            }
            _save_maps(maps["dir"], name, samples, needed, heatmaps, context)
        # any registered heatmap metric; insertion and deletion share one pass of chunks
        results = scorer.compute(subset, heatmaps, subset_targets, metrics=metric_names)
        if cost:
            cost.record(name, len(needed), middle - mark, cost.mark() - middle)
        scores = {metric: results[metric].per_image.tolist() for metric in metric_names}
        for position, i in enumerate(needed):
            row = {
                "id": samples[i].id,
                "method": name,
                "label": samples[i].label,
                "predicted": predicted[i],
                "target": targets[i],
            }
            row.update({metric: scores[metric][position] for metric in metric_names})
            rows.append(row)
    return rows


class _CostMeter:
    """The run's forwards: a plan up front, the bar's total widened by what the first batch
    of a method with an unknown cost measured. Counts through a `ForwardCounter`."""

    def __init__(self, plan: ForwardPlan, counter: ForwardCounter, bar: Any) -> None:
        self.plan, self.counter, self.bar = plan, counter, bar
        self.explain: dict[str, float] = {}
        self.score: dict[str, float] = {}

    def mark(self) -> int:
        return self.counter.images

    def record(self, method: str, images: int, explain: int, score: int) -> None:
        if method in self.explain or not images:
            return
        self.explain[method], self.score[method] = explain / images, score / images
        if self.plan.unknown:
            total = self.plan.measured(self.explain, self.score).total
            # never below what already ran (a measured cost can exceed the later batches')
            self.bar.total = max(total, self.bar.n)
            self.bar.refresh()


def _open_output(
    out_dir: Path,
    store: RowStore,
    identity: dict[str, Any],
    metric_names: list[str],
    fresh: bool,
) -> tuple[dict[str, Any], dict[tuple[str, str], dict[str, Any]]]:
    """Check ``out_dir`` can take this run's rows; the identity it records and its rows.

    Runs on rank 0 only. ``fresh`` discards earlier rows and identity first.
    """
    siblings = [out_dir / f"rows.{fmt}" for fmt in ROW_FORMATS]
    if fresh:
        for path in [*siblings, out_dir / RUN_FILE]:
            path.unlink(missing_ok=True)
    store.repair()
    rows = store.read()
    holds_rows = bool(rows) or any(
        p != store.path and p.exists() and p.stat().st_size > 0 for p in siblings
    )
    old = read_identity(out_dir) if holds_rows else None
    if holds_rows:
        check_resumable(out_dir, old, identity)
    recorded = merged(old, identity)
    store.widen(metric_names)
    write_identity(out_dir, recorded)
    return recorded, {(row["id"], row["method"]): row for row in rows}


def _open_output_on_all_ranks(
    rank: int, open_output: Any, metric_names: list[str]
) -> tuple[dict[str, Any] | None, dict[tuple[str, str], dict[str, Any]], set[tuple[str, str]]]:
    """Rank 0 opens the output; every rank learns the rows done, or raises with rank 0.

    A row is done when it has every requested metric; the others are computed (again).
    """
    recorded: dict[str, Any] | None = None
    existing: dict[tuple[str, str], dict[str, Any]] = {}
    complete: set[tuple[str, str]] | None = None
    with fail_together("opening the output folder"):
        if rank == 0:
            recorded, existing = open_output()
            complete = {key for key, row in existing.items() if all(m in row for m in metric_names)}
    return recorded, existing, broadcast_from_rank0(complete)


def _record(
    gathered: list[dict[str, Any]],
    existing: dict[tuple[str, str], dict[str, Any]],
    skipped: dict[str, str],
    store: RowStore,
) -> bool:
    """Append one round's rows (rank 0); note skipped ids. Whether a row was replaced."""
    replaced = False
    new_rows = []
    for row in gathered:
        if _SKIPPED in row:
            skipped[row["id"]] = row[_SKIPPED]
            continue
        key = (row["id"], row["method"])
        replaced = replaced or key in existing
        # A row computed again for a new metric keeps the metrics it had.
        existing[key] = {**existing.get(key, {}), **row}
        new_rows.append(existing[key])
    store.append(new_rows)
    return replaced


def _run_pending(
    model: nn.Module,
    samples: Sequence[Sample],
    pending: list[int],
    explainers: dict[str, Explainer],
    metric_names: list[str],
    scorer: Any,
    store: RowStore,
    existing: dict[tuple[str, str], dict[str, Any]],
    complete: set[tuple[str, str]],
    batch_size: int,
    on_error: str,
    progress: bool,
    maps: dict[str, Any] | None = None,
) -> tuple[dict[str, str], bool]:
    """Compute the pending images' rows round by round; rank 0 appends them to ``store``.

    ``existing`` (rank 0) is updated in place. Returns the skipped ids -> reason (rank 0)
    and whether a row was replaced (then the file holds a key twice).
    """
    rank, world = rank_and_world()
    mine = shard(pending, rank, world)
    # Every rank runs the same number of rounds (gathers), a short or skipped batch included.
    rounds = math.ceil(math.ceil(len(pending) / world) / batch_size) if pending else 0
    skipped: dict[str, str] = {}
    replaced = False
    plan = _plan(model, samples, mine, explainers, metric_names, scorer, complete)
    if progress:
        # before the bar: what the run will cost, so a long one can be stopped now
        tqdm.write(f"evaluate: {plan}", file=sys.stderr)
    bar = tqdm(total=plan.total, desc="evaluate", unit="fwd", disable=not progress)
    with bar, ForwardCounter(model, bar.update) as counter:
        meter = _CostMeter(plan, counter, bar)
        for round_index in range(rounds):
            indices = mine[round_index * batch_size : (round_index + 1) * batch_size]
            with fail_together("explaining and scoring"):
                chunk, inputs, unreadable, geometries = _load_batch(
                    model, samples, indices, on_error
                )
                batch_maps = None if maps is None else {**maps, "geometries": geometries}
                rows = (
                    _rows_for_batch(
                        model,
                        chunk,
                        inputs,
                        explainers,
                        metric_names,
                        scorer,
                        complete,
                        batch_maps,
                        meter,
                    )
                    if inputs is not None
                    else []
                )
            rows += [{"id": key, _SKIPPED: reason} for key, reason in unreadable.items()]
            gathered = gather_to_rank0(rows)
            # Rank 0 writes while the others wait in the next round's check: a failed write
            # (disk full) must stop them too, not leave them waiting.
            with fail_together("writing rows"):
                if gathered is not None:
                    replaced |= _record(gathered, existing, skipped, store)
            bar.set_postfix_str(f"{min(len(mine), (round_index + 1) * batch_size)}/{len(mine)} img")
    return skipped, replaced


def _plan(
    model: nn.Module,
    samples: Sequence[Sample],
    mine: list[int],
    explainers: dict[str, Explainer],
    metric_names: list[str],
    scorer: Any,
    complete: set[tuple[str, str]],
) -> ForwardPlan:
    """The forwards this rank's images ``mine`` will cost (resumed rows left out)."""
    ids = [_sample_id(samples, i) for i in mine]
    pairs = {name: sum((i, name) not in complete for i in ids) for name in explainers}
    _, height, width = data_config(model)["input_size"]
    return plan_forwards(explainers, metric_names, scorer, (height, width), pairs, len(mine))


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
    overwrite: bool = False,
    on_error: str = "skip",
    progress: bool = True,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Any] | None = None,
    save_maps: bool = False,
) -> EvaluationSummary:
    """Explain and score every image of ``data`` with every method and metric.

    Targets are the labels when the data has them, else each image's prediction.
    Rows (one per image and method) are appended to ``out/rows.jsonl`` (or ``.csv``)
    as batches finish, so a run that stopped resumes where it was. The summary (mean
    and 95% CI per method and metric, the run identity, the skipped images) goes to
    ``out/summary.json`` (strict JSON: ``null`` for NaN) and is returned.

    **Run identity.** ``out/run.json`` records what made the rows: the model (spec or
    class, SHA-256 of its state dict, preprocessing), each method's class and options,
    the metric options (defaults filled in; ``max_batch``/``memory_budget_bytes`` left
    out, they change only speed), the timmlens version and the image list (count, ids;
    for a folder also file sizes and labels). A run resumes only rows of the same
    identity; otherwise it raises [`RunMismatchError`][timmlens.errors.RunMismatchError] naming what
    differs. New methods and new metrics are a resume: a row lacking a requested metric
    is computed again (its other metrics kept). A CSV file's columns are fixed by its
    header; a new metric rewrites the file, atomically, with the wider header first.

    **Crash safety.** A last line cut by a kill is dropped with a warning naming the file
    and line, and computed again. ``KeyboardInterrupt`` leaves every finished batch's rows.

    **Progress.** Before it starts, the run prints what it will cost in forwards (one image
    through the model; `cost`): predictions, explaining and
    scoring, from the pending images, the methods and the metric settings. The progress
    bar counts those forwards chunk by chunk (a forward hook on the model, removed at the
    end), with an ETA; a method or metric whose cost is not known in advance is measured
    on its first batch and the total widened.

    Under ``torchrun`` each rank takes every ``world``-th pending image; rank 0
    gathers the rows after every round and writes them, so the files are those of a
    single-process run. Every rank returns the summary.

    Args:
        model: an ``ImageClassifier`` or timm model (on the device to use).
        data: an image folder (integer-named sub-folders give labels), a map-style
            ``Dataset`` yielding ``image`` or ``(image, label)``, or a ``DataLoader``.
        methods: registry names (any of [`methods`][timmlens.interpretation.registry.methods],
            e.g. ``gradcam``, ``ig``; aliases accepted) or explainer instances (their class
            and the settings they hold are in the identity). Rows are keyed by the
            registry name, an instance's too.
        metrics: names from the metric registry
            (``timmlens.interpretation.metrics.metrics("heatmap")``: ``insertion``,
            ``deletion``, ``sensitivity`` (sensitivity-n), ``infidelity``, and any you register).
        out: output folder.
        batch_size: images per explanation batch (per rank).
        rows_format: ``"jsonl"`` or ``"csv"``.
        resume: ``False`` is ``overwrite=True`` (the name older code used).
        overwrite: discard the rows and identity already in ``out`` and start afresh.
        progress: print the cost and show the progress bar (rank 0 only).
        on_error: an image that cannot be read (a broken file, a dataset item raising
            ``OSError``): ``"skip"`` (default) warns, leaves it out and lists it in the
            summary; ``"fail"`` raises [`ImageInputError`][timmlens.errors.ImageInputError].
        method_options: constructor options per method name, e.g. ``{"ig": {"n_steps": 16}}``.
        metric_options: options for ``ExplanationMetrics`` (e.g. ``{"steps": 50}``).
        save_maps: also keep every heatmap: ``out/maps/<method>/<image id>.npz`` (the
            ``(H, W)`` map, probabilities, classes, geometry, model and weights status;
            read with [`timmlens.load_explanation`][]). Each file is written atomically;
            on resume a row whose map file is missing is computed again.

    Raises:
        RunMismatchError: ``out`` holds rows of another run (one line: what differs).
        RowsFileError: a rows line before the last is damaged (names file and line).
    """
    from ..interpretation.metrics import ExplanationMetrics

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if rows_format not in ROW_FORMATS:
        raise ValueError(f"rows_format must be one of {ROW_FORMATS}, got {rows_format!r}.")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
    init_from_environment()
    rank = rank_and_world()[0]
    metric_names = list(dict.fromkeys(_metric_name(m) for m in metrics))
    explainers, method_ids = _explainers(model, methods, method_options or {})
    scorer = ExplanationMetrics(model, **dict(metric_options or {}))
    samples = as_source(data, num_classes=num_outputs(model))
    out_dir = Path(out)
    store = RowStore(out_dir / f"rows.{rows_format}", metric_names)

    def open_output() -> tuple[dict[str, Any], dict[tuple[str, str], dict[str, Any]]]:
        identity = build_identity(
            model, method_ids, metric_names, dict(metric_options or {}), samples
        )
        return _open_output(out_dir, store, identity, metric_names, overwrite or not resume)

    recorded, existing, complete = _open_output_on_all_ranks(rank, open_output, metric_names)
    maps = None
    if save_maps:
        from ..interpretation.registry import layer_of
        from ..models.introspect import model_metadata

        maps = {
            "dir": out_dir / MAPS_DIR,
            "model": model_metadata(model),
            "layers": {name: layer_of(e) for name, e in explainers.items()},
        }
        # A row without its map (a run without save_maps, or killed between the two) is redone.
        complete = {key for key in complete if map_path(maps["dir"], key[1], key[0]).is_file()}
    pending = [
        i
        for i in range(len(samples))
        if any((_sample_id(samples, i), name) not in complete for name in explainers)
    ]
    skipped, replaced = _run_pending(
        model,
        samples,
        pending,
        explainers,
        metric_names,
        scorer,
        store,
        existing,
        complete,
        batch_size,
        on_error,
        progress and rank == 0,
        maps,
    )
    summary = None
    with fail_together("writing the summary"):
        if rank == 0:
            if replaced or store.had_duplicates:
                store.rewrite(list(existing.values()))  # one line per (id, method) again
            rows = [row for row in existing.values() if row["method"] in explainers]
            summary = build_summary(
                rows, metric_names, store.path, out_dir / "summary.json", recorded, skipped
            )
    return broadcast_from_rank0(summary)
