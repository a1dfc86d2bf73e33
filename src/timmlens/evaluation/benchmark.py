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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import resolve_device
from ..errors import ImageInputError, ModelLoadError, OutputPathError, TimmLensError
from ..interpretation.metrics.registry import resolve_metric
from ..interpretation.registry import default_comparison, resolve_method
from .distributed import broadcast_from_rank0, rank_and_world
from .evaluator import evaluate
from .leaderboard import REFERENCE_METHODS, Leaderboard, build_leaderboard
from .profiles import check_profile
from .run_identity import load_model_seeded
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
    # seeded: a spec with random weights is the same model in a rerun, which then resumes
    model = load_model_seeded(spec)
    return model.to(device) if device is not None else model


def _describe_failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class _Runs:
    """One benchmark's evaluate runs, model by model, and what they gave."""

    data: Any
    metric_names: list[str]
    out_dir: Path
    references: list[str]
    #: ``batch_size``, ``overwrite``, ``progress``, ``targets``: passed to every ``evaluate``
    settings: dict[str, Any]
    method_options: dict[str, Any]
    metric_options: dict[str, Any]
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    not_applicable: dict[str, list[str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def run(
        self, name: str, spec: ModelSpec, wanted: list[str] | None, device: torch.device | None
    ) -> None:
        """``evaluate`` one model into ``out/<name>``; a model that fails is noted, a
        problem of the data or the folder (no readable image, another run in it) raised."""
        label = name if isinstance(spec, nn.Module) else os.fspath(spec)
        rank = rank_and_world()[0]
        try:
            model = _load(spec, device)
            chosen = [m for m in (wanted or default_comparison(model)) if m not in self.references]
            chosen += self.references
            applicable = [m for m in chosen if resolve_method(m).unavailable_reason(model) is None]
            self.not_applicable[name] = [m for m in chosen if m not in applicable]
            if self.settings["progress"] and rank == 0:
                print(f"benchmark: {label} -> {self.out_dir / name}", file=sys.stderr)
            summary = evaluate(
                model,
                self.data,
                methods=applicable,
                metrics=self.metric_names,
                out=self.out_dir / name,
                method_options=self.method_options,
                metric_options=self.metric_options,
                **self.settings,
            )
        except (ImageInputError, OutputPathError):
            raise  # the same for every model: going on would only repeat it
        except (TimmLensError, OSError, RuntimeError) as exc:
            # One model's failure (a spec that does not load, a model the methods cannot
            # explain) must not cost the others' results: report it and go on.
            self.failures[label] = _describe_failure(exc)
            warnings.warn(
                f"benchmark: model '{label}' failed and is left out: {self.failures[label]}",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        self.order += [m for m in applicable if m not in self.order]
        if rank == 0:
            self.rows[name] = RowStore(summary.rows_path, self.metric_names).read()

    def leaderboard(self, device: torch.device | None) -> Leaderboard:
        """The leaderboard of every model's rows (rank 0)."""
        return build_leaderboard(
            self.rows,
            self.order,
            self.metric_names,
            reference=self.references,
            failures=self.failures,
            not_applicable=self.not_applicable,
            settings={
                "steps": self.metric_options.get("steps"),
                "metric_options": self.metric_options,
                "method_options": self.method_options,
                "device": str(device) if device is not None else None,
                "profile": self.settings["profile"],
                "targets": self.settings["targets"],
            },
        )


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
    targets: str = "label",
    profile: str = "full",
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
        batch_size: as for ``evaluate``.
        overwrite: as for ``evaluate``.
        progress: as for ``evaluate``.
        method_options: constructor options per method (``{"ig": {"n_steps": 16}}``).
        metric_options: ``ExplanationMetrics`` options; ``steps`` overrides its ``steps``.
        plot: also write the PNG (matplotlib).
        targets: ``"label"`` (the true class where the data gives it, see ``evaluate``)
            or ``"prediction"``.
        profile: ``"full"`` or ``"quick"`` (16 curve steps, each method's quick options;
            the leaderboard says it is not comparable to papers).

    Returns:
        The `Leaderboard` (every rank returns it;
        rank 0 writes the files).

    Raises:
        ModelLoadError: no model ran (every failure listed).
        ImageInputError: no image of ``data`` could be read (raised at the first model:
            the data is the same for all).
        OutputPathError: another process is running in a model's folder.
    """
    check_profile(profile)
    metric_names = list(dict.fromkeys(resolve_metric(m, needs="heatmap").name for m in metrics))
    if not metric_names:
        raise ValueError("benchmark needs at least one metric, e.g. ['insertion', 'deletion'].")
    wanted = None if methods is None else [resolve_method(m).name for m in methods]
    run_device = resolve_device(device)
    named = _named_models(models)
    options = dict(metric_options or {})
    if steps is not None:
        options["steps"] = steps
    runs = _Runs(
        data,
        metric_names,
        Path(out),
        list(REFERENCE_METHODS) if reference else [],
        {
            "batch_size": batch_size,
            "overwrite": overwrite,
            "progress": progress,
            "targets": targets,
            "profile": profile,
        },
        dict(method_options or {}),
        options,
    )
    for name, spec in named.items():
        runs.run(name, spec, wanted, run_device)
    if not runs.order:  # every rank knows: no model ran
        listed = "; ".join(f"'{spec}': {why}" for spec, why in runs.failures.items())
        raise ModelLoadError(f"benchmark: no model ran. {listed}")
    if rank_and_world()[0] != 0:  # rank 0 holds the rows, builds and writes the leaderboard
        return broadcast_from_rank0(None)
    board = runs.leaderboard(run_device)
    board.write(runs.out_dir, plot=plot)
    if runs.failures and progress:
        print(
            f"benchmark: {len(runs.failures)} of {len(named)} model(s) failed and are left out: "
            + "; ".join(f"{spec} ({why})" for spec, why in runs.failures.items()),
            file=sys.stderr,
        )
    return broadcast_from_rank0(board)
