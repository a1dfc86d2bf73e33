"""``timmlens.benchmark``: methods x models x metrics through ``evaluate``, as a leaderboard.

Each model gets its own ``evaluate`` run in ``out/<model>/`` (rows, summary, run
identity), so a benchmark resumes, refuses to mix runs and scales under ``torchrun``
exactly as ``evaluate`` does. The leaderboard (`leaderboard`) is built from those
rows and written next to them: ``leaderboard.md``, ``leaderboard.json``,
``leaderboard.png``. A model that does not load is reported and the others go on.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import resolve_device
from ..errors import ModelLoadError, TimmLensError
from ..interpretation.metrics.registry import resolve_metric
from ..interpretation.registry import default_comparison, resolve_method
from .distributed import broadcast_from_rank0, rank_and_world
from .evaluator import evaluate
from .leaderboard import REFERENCE_METHODS, Leaderboard, build_leaderboard
from .summary import RowStore

__all__ = ["ModelSpec", "benchmark"]

ModelSpec = str | os.PathLike[str] | nn.Module


def _folder_name(spec: ModelSpec, index: int) -> str:
    """A folder name for a model: its spec made file-safe, or its class for a module."""
    if isinstance(spec, nn.Module):
        return f"{type(spec).__name__}-{index}"
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", os.fspath(spec)).strip("-.")
    return text or f"model-{index}"


def _named_models(models: Sequence[ModelSpec] | Mapping[str, ModelSpec]) -> dict[str, ModelSpec]:
    """``{name: spec or module}``; names are unique (a repeated one gets ``-2``, ...)."""
    if isinstance(models, Mapping):
        return {str(name): spec for name, spec in models.items()}
    if isinstance(models, (str, os.PathLike, nn.Module)):
        models = [models]
    named: dict[str, ModelSpec] = {}
    for index, spec in enumerate(models):
        name, number = _folder_name(spec, index), 1
        while name in named:
            number += 1
            name = f"{_folder_name(spec, index)}-{number}"
        named[name] = spec
    if not named:
        raise ValueError("benchmark needs at least one model, e.g. ['bundled:efficientnet_lite0'].")
    return named


def _load(spec: ModelSpec, device: torch.device | None) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec  # the caller's model: used where it is, never moved
    from ..models import load_model

    model = load_model(spec)
    return model.to(device) if device is not None else model


def _describe_failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def benchmark(
    models: Sequence[ModelSpec] | Mapping[str, ModelSpec],
    data: Any,
    methods: Sequence[str] | None = None,
    metrics: Sequence[str] = ("insertion", "deletion"),
    out: str | os.PathLike[str] = "leaderboard",
    *,
    steps: int | None = None,
    reference: bool = True,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    plot: bool = True,
) -> Leaderboard:
    """Score methods on several models and rank them: a leaderboard with reference rows.

    Every model runs [`evaluate`][timmlens.evaluation.evaluate] into ``out/<model>/`` (its
    rows, ``summary.json`` and ``run.json``: a rerun resumes, another run's rows are
    refused), then ``out/leaderboard.md``, ``out/leaderboard.json`` and
    ``out/leaderboard.png`` are written from all rows.

    Args:
        models: model specs (``"bundled:efficientnet_lite0"``, timm names, ``hf-hub:``
            ids, folders) or modules; or ``{name: spec or module}`` to name the folders.
            A spec that does not load is reported (warning, ``failures``, the markdown's
            last section) and the other models go on; if none loads,
            [`ModelLoadError`][timmlens.errors.ModelLoadError] lists them all.
        data: what ``evaluate`` takes (an image folder, a dataset, a loader).
        methods: registry names; default: each model's ``compare_methods`` defaults.
            Methods that do not apply to a model (attention on a CNN) are left out for it.
        metrics: heatmap metrics of the registry
            (``timmlens.interpretation.metrics.metrics("heatmap")``); an unknown name
            raises before any model is loaded, listing the known ones.
        out: output folder.
        steps: insertion/deletion steps (fewer: cheaper, coarser curves); default RISE's.
        reference: add the reference rows ``randomcam`` and ``centerprior`` (a seeded
            random CAM and a centred Gaussian) so every number reads against chance and
            the centre bias of photos.
        device: where models loaded from specs run (``"cpu"``, ``"cuda"``, ...); checked
            first ([`DeviceError`][timmlens.errors.DeviceError]). Modules stay where they are.
        batch_size, overwrite, progress: as for ``evaluate``.
        method_options: constructor options per method (``{"ig": {"n_steps": 16}}``).
        metric_options: ``ExplanationMetrics`` options; ``steps`` overrides its ``steps``.
        plot: also write the PNG (matplotlib).

    Returns:
        The `Leaderboard` (every rank returns it;
        rank 0 writes the files).
    """
    metric_names = list(dict.fromkeys(resolve_metric(m, needs="heatmap").name for m in metrics))
    if not metric_names:
        raise ValueError("benchmark needs at least one metric, e.g. ['insertion', 'deletion'].")
    wanted = None if methods is None else [resolve_method(m).name for m in methods]
    references = list(REFERENCE_METHODS) if reference else []
    run_device = resolve_device(device)
    named = _named_models(models)
    options = dict(metric_options or {})
    if steps is not None:
        options["steps"] = steps
    out_dir = Path(out)
    rank = rank_and_world()[0]
    rows: dict[str, list[dict[str, Any]]] = {}
    failures: dict[str, str] = {}
    skipped_methods: dict[str, list[str]] = {}
    order: list[str] = []
    for name, spec in named.items():
        label = name if isinstance(spec, nn.Module) else os.fspath(spec)
        try:
            model = _load(spec, run_device)
            chosen = [m for m in (wanted or default_comparison(model)) if m not in references]
            chosen += references
            applicable = [m for m in chosen if resolve_method(m).unavailable_reason(model) is None]
            skipped_methods[name] = [m for m in chosen if m not in applicable]
            if progress and rank == 0:
                print(f"benchmark: {label} -> {out_dir / name}", file=sys.stderr)
            summary = evaluate(
                model,
                data,
                methods=applicable,
                metrics=metric_names,
                out=out_dir / name,
                batch_size=batch_size,
                overwrite=overwrite,
                progress=progress,
                method_options=method_options,
                metric_options=options,
            )
        except (TimmLensError, OSError, RuntimeError) as exc:
            # One model's failure (a spec that does not load, a model the methods cannot
            # explain) must not cost the others' results: report it and go on.
            failures[label] = _describe_failure(exc)
            warnings.warn(
                f"benchmark: model '{label}' failed and is left out: {failures[label]}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        order += [m for m in applicable if m not in order]
        if rank == 0:
            rows[name] = RowStore(summary.rows_path, metric_names).read()
    if not order:  # every rank knows: no model ran
        listed = "; ".join(f"'{spec}': {why}" for spec, why in failures.items())
        raise ModelLoadError(f"benchmark: no model ran. {listed}")
    if rank != 0:  # rank 0 holds the rows, builds and writes the leaderboard
        return broadcast_from_rank0(None)
    board = build_leaderboard(
        rows,
        order,
        metric_names,
        reference=references,
        failures=failures,
        not_applicable=skipped_methods,
        settings={
            "steps": options.get("steps"),
            "metric_options": options,
            "method_options": dict(method_options or {}),
            "device": str(run_device) if run_device is not None else None,
        },
    )
    board.write(out_dir, plot=plot)
    if failures and progress:
        print(
            f"benchmark: {len(failures)} of {len(named)} model(s) failed and are left out: "
            + "; ".join(f"{spec} ({why})" for spec, why in failures.items()),
            file=sys.stderr,
        )
    return broadcast_from_rank0(board)
