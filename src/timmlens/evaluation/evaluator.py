"""``timmlens.evaluate``: explain and score every image of a dataset, on one or many ranks."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .._warnings import warn_caller
from ..data import prepare_images
from ..errors import ImageInputError, RunMismatchError
from ..interpretation.base import Explainer, predict
from ..interpretation.metrics.registry import resolve_metric
from ..interpretation.registry import as_explainer, resolve_method
from ..models.introspect import class_namer, data_config
from .cost import ForwardCounter, ForwardPlan, plan_forwards
from .distributed import (
    broadcast_from_rank0,
    fail_together,
    gather_to_rank0,
    init_from_environment,
    rank_and_world,
    shard,
)
from .lock import run_lock
from .maps import map_path, maps_settings, save_batch_maps
from .profiles import profile_options, quick_hint
from .run_identity import (
    RUN_FILE,
    build_identity,
    check_resumable,
    merged,
    method_identity,
    read_identity,
    write_identity,
)
from .sources import DatasetSource, Sample, no_readable_images, source_for
from .summary import NAME_KEYS, EvaluationSummary, RowStore, build_summary, with_names

#: The heatmap metrics registered at import; `_metric_name` asks the registry live.
ROW_FORMATS = ("jsonl", "csv")
ON_ERROR = ("skip", "fail")
TARGETS = ("label", "prediction")
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
    by_label: bool = True,
) -> list[dict[str, Any]]:
    """Rows of ``samples`` (inputs ``(B, C, H, W)``) for each method whose row is not yet
    ``complete``; a method is run only on the images that still need it. With ``maps``
    (``{"dir", "model", "layers", "geometries"}``) each heatmap is also saved. ``cost``
    measures the forwards of each method's explaining and scoring (for the progress bar).
    ``by_label=False`` explains every image's prediction, its label only recorded."""
    # Eval mode: a model handed over in train mode predicts without dropout.
    logits = predict(model, inputs)
    predicted = logits.argmax(dim=1).tolist()
    targets = [
        s.label if s.label is not None and by_label else p
        for s, p in zip(samples, predicted, strict=True)
    ]
    rows = []
    class_name = class_namer(model)
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
                "class_name": class_name,
            }
            save_batch_maps(maps["dir"], name, samples, needed, heatmaps, context)
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
            row = with_names(row, class_name)
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


@dataclass
class _Run:
    """What one ``evaluate`` call works with, built once from its arguments."""

    model: nn.Module
    samples: Sequence[Sample]
    explainers: dict[str, Explainer]
    method_ids: dict[str, dict[str, Any]]
    metric_names: list[str]
    metric_options: dict[str, Any]
    scorer: Any
    out_dir: Path
    store: RowStore
    batch_size: int
    on_error: str
    progress: bool
    #: ``{"dir", "model", "layers"}`` with ``save_maps=True``, else ``None``
    maps: dict[str, Any] | None = None
    #: what is explained: ``"label"`` (the true class where known) or ``"prediction"``
    targets: str = "label"
    profile: str = "full"


def _check_other_format(out_dir: Path, store: RowStore) -> None:
    """Refuse a folder holding the rows of a run in the other format: both runs would write
    (and replace each other's) ``summary.json``."""
    for fmt in ROW_FORMATS:
        other = out_dir / f"rows.{fmt}"
        if other != store.path and other.exists() and other.stat().st_size > 0:
            mine = store.path.suffix.lstrip(".")
            raise RunMismatchError(
                f"'{out_dir}' holds the rows of a {fmt} run ({other.name}); this run writes "
                f"{mine} and its summary.json would replace that run's: resume it with "
                f"--format {fmt} (rows_format='{fmt}'), use a new output folder (--out), or "
                f"--overwrite (overwrite=True) to discard its rows."
            )


def _open_output(
    out_dir: Path,
    store: RowStore,
    identity: dict[str, Any],
    metric_names: list[str],
    fresh: bool,
    class_name: Callable[[int | None], str | None],
) -> tuple[dict[str, Any], dict[tuple[str, str], dict[str, Any]]]:
    """Check ``out_dir`` can take this run's rows; the identity it records and its rows.

    Runs on rank 0 only. ``fresh`` discards earlier rows (of either format) and identity first.
    The rows kept are named again by ``class_name`` (`class_namer`): a file of an older
    timmlens, without name columns, is rewritten with them, and names follow the model's
    (its identity, checked first, fixes the indices; names given anew may differ).
    """
    if fresh:
        for path in [*(out_dir / f"rows.{fmt}" for fmt in ROW_FORMATS), out_dir / RUN_FILE]:
            path.unlink(missing_ok=True)
    _check_other_format(out_dir, store)
    store.repair()
    rows = store.read()
    old = read_identity(out_dir) if rows else None
    if rows:
        check_resumable(out_dir, old, identity)
    recorded = merged(old, identity)
    store.widen(metric_names)
    named = [with_names(row, class_name) for row in rows]
    pairs = zip(rows, named, strict=True)
    if any(row.get(k) != new[k] for row, new in pairs for k in NAME_KEYS.values()):
        store.rewrite(named)  # atomic: the same rows, their class names added or renewed
    write_identity(out_dir, recorded)
    return recorded, {(row["id"], row["method"]): row for row in named}


def _open_output_on_all_ranks(
    rank: int, run: _Run, fresh: bool, held: ExitStack
) -> tuple[dict[str, Any] | None, dict[tuple[str, str], dict[str, Any]], set[tuple[str, str]]]:
    """Rank 0 locks and opens the output; every rank learns the rows done, or raises with
    rank 0. The lock (`run_lock`) is entered on ``held``: it lasts as long as that stack.

    A row is done when it has every requested metric; the others are computed (again).
    """
    recorded: dict[str, Any] | None = None
    existing: dict[tuple[str, str], dict[str, Any]] = {}
    complete: set[tuple[str, str]] | None = None
    with fail_together("opening the output folder"):
        if rank == 0:
            held.enter_context(run_lock(run.out_dir))
            identity = build_identity(
                *(run.model, run.method_ids, run.metric_names, run.metric_options, run.samples),
                *(run.targets, run.profile),
            )
            recorded, existing = _open_output(
                run.out_dir, run.store, identity, run.metric_names, fresh, class_namer(run.model)
            )
            names = run.metric_names
            complete = {key for key, row in existing.items() if all(m in row for m in names)}
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


def _run_batch(
    run: _Run, indices: list[int], complete: set[tuple[str, str]], meter: _CostMeter
) -> list[dict[str, Any]]:
    """The rows of the images ``indices`` (this rank), and one entry per unreadable one."""
    chunk, inputs, unreadable, geometries = _load_batch(
        run.model, run.samples, indices, run.on_error
    )
    batch_maps = None if run.maps is None else {**run.maps, "geometries": geometries}
    rows = (
        _rows_for_batch(
            run.model,
            chunk,
            inputs,
            run.explainers,
            run.metric_names,
            run.scorer,
            complete,
            batch_maps,
            meter,
            run.targets == "label",
        )
        if inputs is not None
        else []
    )
    return rows + [{"id": key, _SKIPPED: reason} for key, reason in unreadable.items()]


def _run_pending(
    run: _Run,
    pending: list[int],
    existing: dict[tuple[str, str], dict[str, Any]],
    complete: set[tuple[str, str]],
) -> tuple[dict[str, str], bool]:
    """Compute the pending images' rows round by round; rank 0 appends them to the store.

    ``existing`` (rank 0) is updated in place. Returns the skipped ids -> reason (rank 0)
    and whether a row was replaced (then the file holds a key twice).
    """
    rank, world = rank_and_world()
    mine = shard(pending, rank, world)
    # Every rank runs the same number of rounds (gathers), a short or skipped batch included.
    size = run.batch_size
    rounds = math.ceil(math.ceil(len(pending) / world) / size) if pending else 0
    skipped: dict[str, str] = {}
    replaced = False
    plan = _plan(run, mine, complete)
    if run.progress:
        # before the bar: what the run will cost, so a long one can be stopped now
        tqdm.write(f"evaluate: {plan}{quick_hint(plan.total, run.metric_options)}", file=sys.stderr)
    bar = tqdm(total=plan.total, desc="evaluate", unit="fwd", disable=not run.progress)
    with bar, ForwardCounter(run.model, bar.update) as counter:
        meter = _CostMeter(plan, counter, bar)
        for round_index in range(rounds):
            indices = mine[round_index * size : (round_index + 1) * size]
            with fail_together("explaining and scoring"):
                rows = _run_batch(run, indices, complete, meter)
            gathered = gather_to_rank0(rows)
            # Rank 0 writes while the others wait in the next round's check: a failed write
            # (disk full) must stop them too, not leave them waiting.
            with fail_together("writing rows"):
                if gathered is not None:
                    replaced |= _record(gathered, existing, skipped, run.store)
            bar.set_postfix_str(f"{min(len(mine), (round_index + 1) * size)}/{len(mine)} img")
    return skipped, replaced


def _plan(run: _Run, mine: list[int], complete: set[tuple[str, str]]) -> ForwardPlan:
    """The forwards this rank's images ``mine`` will cost (resumed rows left out)."""
    ids = [_sample_id(run.samples, i) for i in mine]
    pairs = {name: sum((i, name) not in complete for i in ids) for name in run.explainers}
    _, height, width = data_config(run.model)["input_size"]
    return plan_forwards(
        run.explainers, run.metric_names, run.scorer, (height, width), pairs, len(mine)
    )


def _new_run(
    model: nn.Module,
    data: Any,
    methods: Sequence[str | Explainer],
    metrics: Sequence[str],
    out: str | os.PathLike[str],
    rows_format: str,
    method_options: Mapping[str, Mapping[str, Any]] | None,
    metric_options: Mapping[str, Any] | None,
) -> _Run:
    """The explainers, scorer, samples and rows store of a run (1 image per batch, no
    progress: the caller sets those)."""
    from ..interpretation.metrics import ExplanationMetrics

    metric_names = list(dict.fromkeys(_metric_name(m) for m in metrics))
    explainers, method_ids = _explainers(model, methods, method_options or {})
    scorer = ExplanationMetrics(model, **dict(metric_options or {}))
    samples = source_for(data, model)
    out_dir = Path(out)
    store = RowStore(out_dir / f"rows.{rows_format}", metric_names)
    return _Run(
        *(model, samples, explainers, method_ids, metric_names, dict(metric_options or {})),
        *(scorer, out_dir, store, 1, "skip", False),
    )


def _check_arguments(batch_size: int, rows_format: str, on_error: str, targets: str) -> None:
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if rows_format not in ROW_FORMATS:
        raise ValueError(f"rows_format must be one of {ROW_FORMATS}, got {rows_format!r}.")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")


def _with_maps(run: _Run, complete: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Set up ``save_maps``; the complete rows that also have their map file.

    A row without its map (a run without save_maps, or killed between the two) is done again.
    """
    run.maps = maps_settings(run.out_dir, run.model, run.explainers)
    return {key for key in complete if map_path(run.maps["dir"], key[1], key[0]).is_file()}


def _pending(run: _Run, complete: set[tuple[str, str]]) -> list[int]:
    """The indices of the images some method still lacks a complete row for."""
    return [
        i
        for i in range(len(run.samples))
        if any((_sample_id(run.samples, i), name) not in complete for name in run.explainers)
    ]


def _finish(
    run: _Run,
    rank: int,
    recorded: dict[str, Any] | None,
    existing: dict[tuple[str, str], dict[str, Any]],
    skipped: dict[str, str],
    replaced: bool,
) -> EvaluationSummary:
    """Compact the rows file if needed and write the summary (rank 0); every rank gets it.

    Raises:
        ImageInputError: no row at all, and images were skipped: none could be read.
    """
    summary = None
    with fail_together("writing the summary"):
        if rank == 0:
            if replaced or run.store.had_duplicates:
                run.store.rewrite(list(existing.values()))  # one line per (id, method) again
            rows = [row for row in existing.values() if row["method"] in run.explainers]
            if not rows and skipped:
                raise no_readable_images(run.samples, skipped)
            summary = build_summary(
                rows,
                run.metric_names,
                run.store.path,
                run.out_dir / "summary.json",
                recorded,
                skipped,
            )
    return broadcast_from_rank0(summary)


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
    targets: str = "label",
    profile: str = "full",
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
    header; a new metric rewrites the file, atomically, with the wider header first. A
    folder holds rows of one format (a CSV run on JSONL rows is refused). Random weights
    are the same in another process only if seeded
    ([`load_model_seeded`][timmlens.evaluation.load_model_seeded]).

    **One run per folder**: ``out/run.lock`` (``fcntl.flock``) stops a second run at once
    and ends with its process. **Crash safety.** A last line cut by a kill is dropped
    (warned) and computed again; Ctrl-C keeps finished rows. **Progress.** The run first
    prints its cost in forwards (`cost`; a long full run is pointed to ``profile="quick"``),
    then counts them chunk by chunk with an ETA (unknown costs measured on the first batch).
    Under ``torchrun`` each rank takes every ``world``-th pending image; rank 0 gathers and
    writes the rows every round. Every rank returns the summary.

    Args:
        model: an ``ImageClassifier`` or timm model (on the device to use).
        data: an image folder, a ``Dataset`` of ``image`` or ``(image, label)``, a loader.
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
        resume: ``False`` is ``overwrite=True`` (older code).
        overwrite: discard the rows and identity already in ``out`` and start afresh.
        progress: print the cost and show the progress bar (rank 0 only).
        on_error: an image that cannot be read (a broken file, a dataset item raising
            ``OSError``): ``"skip"`` (default) warns, leaves it out and lists it in the
            summary; ``"fail"`` raises [`ImageInputError`][timmlens.errors.ImageInputError].
            If none could be read, the run raises it, naming the data and files.
        method_options: constructor options per method name, e.g. ``{"ig": {"n_steps": 16}}``.
        metric_options: options for ``ExplanationMetrics`` (e.g. ``{"steps": 50}``).
        save_maps: also keep every heatmap: ``out/maps/<method>/<image id>.npz`` (the
            ``(H, W)`` map, probabilities, classes, geometry, model and weights status;
            read with [`timmlens.load_explanation`][]). Each file is written atomically;
            on resume a row whose map file is missing is computed again.
        targets: ``"label"`` (labels as `source_for` reads them) or ``"prediction"``.
        profile: ``"full"`` or ``"quick"`` (`profile_options`: marked not comparable).

    Raises:
        RunMismatchError: ``out`` holds rows of another run (one line: what differs).
        RowsFileError: a rows line before the last is damaged (names file and line).
        OutputPathError: another process is running in ``out``.
        ImageInputError: no image could be read (see ``on_error``).
    """
    _check_arguments(batch_size, rows_format, on_error, targets)
    init_from_environment()
    rank = rank_and_world()[0]
    method_options, metric_options = profile_options(
        profile, methods, method_options, metric_options
    )
    run = _new_run(model, data, methods, metrics, out, rows_format, method_options, metric_options)
    run.batch_size, run.on_error, run.progress = batch_size, on_error, progress and rank == 0
    run.targets, run.profile = targets, profile
    with ExitStack() as held:  # the folder's lock, on rank 0, until the summary is written
        recorded, existing, complete = _open_output_on_all_ranks(
            rank, run, overwrite or not resume, held
        )
        if save_maps:
            complete = _with_maps(run, complete)
        skipped, replaced = _run_pending(run, _pending(run, complete), existing, complete)
        return _finish(run, rank, recorded, existing, skipped, replaced)
