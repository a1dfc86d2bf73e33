"""Sanity checks for explanations (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

An explanation that does not change when the model's weights are destroyed cannot be
explaining what the model learned. Two tests make that measurable:

* **Model parameter randomisation** ([`parameter_randomization_test`][]): re-initialise
  the model's units from the logits down (*cascading*), or one at a time (*independent*),
  and compare each explanation with the original one.
* **Data randomisation** ([`data_randomization_test`][]): compare the explanations of
  the model with those of the same architecture trained on randomly permuted labels
  (the user trains that model; timmlens only compares).

Similarity is measured per image with
[`map_similarity`][timmlens.analysis.similarity.map_similarity] (Spearman rank
correlation, with and without absolute values, and SSIM).

Which units are re-initialised and how is in `timmlens.analysis.randomization`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._model_state import model_lock
from ..data import ImagesInput, prepare_images
from ..interpretation._targets import TargetInput, validate_targets
from ..interpretation.base import Explainer, predict
from ..interpretation.registry import create_explainer, layer_of, resolve_method
from ..models.introspect import num_outputs
from .randomization import RandomizationUnit, cascade_units, randomize_unit
from .similarity import METRICS, map_similarity

MethodInput = str | Explainer

#: Label of the row before any unit is randomised.
REFERENCE_STEP = "original"


# --------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------


@dataclass
class _Method:
    label: str
    name: str | None  # registry name, or None for an instance
    options: dict[str, Any]
    instance: Explainer | None


def _methods(
    model: nn.Module,
    methods: Sequence[MethodInput] | MethodInput,
    method_options: Mapping[str, Mapping[str, Any]] | None,
    allow_instances: bool = True,
) -> list[_Method]:
    if isinstance(methods, (str, Explainer)):
        methods = [methods]
    methods = list(methods)
    if not methods:
        raise ValueError("methods is empty; give at least one, e.g. methods=('gradcam', 'ig').")
    options = {resolve_method(k).name: dict(v) for k, v in (method_options or {}).items()}
    parsed: list[_Method] = []
    for method in methods:
        if isinstance(method, str):
            name = resolve_method(method).name
            parsed.append(_Method(name, name, options.get(name, {}), None))
        elif isinstance(method, Explainer):
            if not allow_instances:
                raise TypeError(
                    f"{type(method).__name__} instance given, but this test explains two "
                    f"models; pass method names (with method_options=) instead."
                )
            if method.model is not model:
                raise ValueError(
                    f"the {type(method).__name__} explains another model than the one tested; "
                    f"build it on the same model object."
                )
            layer = layer_of(method)
            label = f"{method.name}@{layer}" if layer else method.name
            parsed.append(_Method(label, None, {}, method))
        else:
            raise TypeError(
                f"methods entries must be registry names ('gradcam', 'ig', ...) or Explainer "
                f"instances, got {type(method).__name__}."
            )
    unused = set(options) - {m.name for m in parsed if m.name}
    if unused:
        raise ValueError(
            f"method_options given for {', '.join(sorted(unused))}, which is not in methods "
            f"({', '.join(m.label for m in parsed)})."
        )
    counts: dict[str, int] = {}
    for method in parsed:
        counts[method.label] = counts.get(method.label, 0) + 1
        if counts[method.label] > 1:
            method.label = f"{method.label}#{counts[method.label]}"
    return parsed


def _copy_with_explainers(
    model: nn.Module, methods: Sequence[_Method]
) -> tuple[nn.Module, list[Explainer]]:
    """A deep copy of ``model`` and one explainer per method bound to the copy.

    Explainer instances are copied together with the model (one ``deepcopy`` call), so
    their resolved layers point into the copy.
    """
    instances = [m.instance for m in methods if m.instance is not None]
    with model_lock(model):  # not mid-way through another thread's explanation
        copied_model, *copied_instances = copy.deepcopy((model, *instances))
    remaining = iter(copied_instances)
    explainers = []
    for method in methods:
        if method.instance is not None:
            explainers.append(next(remaining))
        else:
            assert method.name is not None
            explainers.append(create_explainer(method.name, copied_model, **method.options))
    return copied_model, explainers


def _explain(explainer: Explainer, inputs: torch.Tensor, targets: list[int]) -> torch.Tensor:
    maps = explainer.explain_batch(inputs, targets)
    if maps.ndim != 3 or maps.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"{type(explainer).__name__} returned maps of shape {tuple(maps.shape)}; "
            f"expected (B, H, W) for B={inputs.shape[0]}."
        )
    return maps.detach().float()


def _predicted(model: nn.Module, inputs: torch.Tensor) -> list[int]:
    return predict(model, inputs).argmax(dim=1).tolist()


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


def _nanmean(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.nanmean(values.float(), dim=dim)


def _format_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    table = [[str(c) for c in columns]] + [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


@dataclass
class RandomizationResult:
    """What [`parameter_randomization_test`][] measured.

    Rows ("steps"): step 0 is the copy *before* any randomisation (it measures how
    reproducible the method is: 1 for deterministic methods); step ``i >= 1`` is after
    randomising ``units[:i]`` (cascading) or ``units[i - 1]`` alone (independent).

    Attributes:
        methods: method labels (registry names such as ``"gradcam"``; instances are
            labelled by their ``name`` and layer).
        units: the randomised units' names, in the order used (top-down by default).
        cascading: cascading (``True``) or independent (``False``) randomisation.
        targets: ``(B,)`` long, the class every step explains.
        original: method -> ``(B, H, W)`` maps of the user's model (CPU).
        randomized: method -> ``(steps, B, H, W)`` maps at each step (CPU).
        similarity: method -> metric (``"spearman"``, ``"spearman_abs"``, ``"ssim"``) ->
            ``(steps, B)`` similarity of each step's map with the original (CPU, NaN
            where Spearman is undefined because a map is constant), for the first seed.
        seed: the (first) seed the units were drawn from.
        seeds: every seed the test ran with (``seeds=``); one cascade per seed.
        seed_similarity: method -> metric -> ``(seeds, steps, B)``, every seed's
            similarities (``similarity`` is its first row).

    With several seeds, `mean`, `table` and `falls` average over the
    seeds and images together, and `spread` says how far the seeds disagree: one
    seed's randomised weights can leave a map more or less like the original by chance.
    """

    methods: tuple[str, ...]
    units: tuple[str, ...]
    cascading: bool
    targets: torch.Tensor
    original: dict[str, torch.Tensor] = field(repr=False)
    randomized: dict[str, torch.Tensor] = field(repr=False)
    similarity: dict[str, dict[str, torch.Tensor]] = field(repr=False)
    seed: int = 0
    unit_details: tuple[RandomizationUnit, ...] = field(default=(), repr=False)
    seeds: tuple[int, ...] = ()
    seed_similarity: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> tuple[str, ...]:
        """Row labels: ``"original"`` (nothing randomised), then each unit."""
        return (REFERENCE_STEP, *self.units)

    def _check(self, method: str, metric: str) -> None:
        if method not in self.similarity:
            raise KeyError(
                f"no method '{method}' in this result; it has {', '.join(self.methods)}."
            )
        if metric not in self.similarity[method]:
            raise KeyError(f"no metric '{metric}'; use one of {', '.join(METRICS)}.")

    def _by_seed(self, method: str, metric: str) -> torch.Tensor:
        """``(seeds, steps, B)`` similarities (one seed row without ``seed_similarity``)."""
        self._check(method, metric)
        if method in self.seed_similarity:
            return self.seed_similarity[method][metric]
        return self.similarity[method][metric][None]

    def mean(self, method: str, metric: str = "spearman") -> torch.Tensor:
        """``(steps,)`` mean similarity over images and seeds (NaN entries left out)."""
        values = self._by_seed(method, metric)
        return _nanmean(values.transpose(0, 1).flatten(1), dim=1)

    def seed_means(self, method: str, metric: str = "spearman") -> torch.Tensor:
        """``(seeds, steps)``: each seed's mean over images (NaN entries left out)."""
        return _nanmean(self._by_seed(method, metric), dim=2)

    def spread(self, method: str, metric: str = "spearman") -> dict[str, torch.Tensor]:
        """How much the seeds disagree, per step: each ``(steps,)``.

        ``"sd"``: standard deviation of the per-seed means over images (0 for one seed);
        ``"min"`` / ``"max"``: the lowest and highest per-image value over every seed
        and image (NaN left out).
        """
        values = self._by_seed(method, metric)
        means = self.seed_means(method, metric)
        count = (~torch.isnan(means)).sum(dim=0)
        centred = torch.where(torch.isnan(means), 0.0, means - _nanmean(means.T, dim=1))
        sd = (centred.pow(2).sum(dim=0) / (count - 1).clamp_min(1)).sqrt()
        flat = values.transpose(0, 1).flatten(1)
        finite = ~torch.isnan(flat)
        low = torch.where(finite, flat, torch.inf).min(dim=1).values
        high = torch.where(finite, flat, -torch.inf).max(dim=1).values
        nothing = ~finite.any(dim=1)
        return {
            "sd": sd,
            "min": torch.where(nothing, torch.nan, low),
            "max": torch.where(nothing, torch.nan, high),
        }

    def table(self) -> list[dict[str, Any]]:
        """One row per method and step: ``method, step, unit, spearman, spearman_abs, ssim``
        (means over images and seeds, NaN left out) and ``undefined`` (images whose
        Spearman is NaN, counted over seeds). With several seeds also ``spearman_sd`` and
        ``ssim_sd`` (standard deviation of the per-seed means, `spread`).
        """
        rows = []
        several = len(self.seeds) > 1
        for method in self.methods:
            means = {metric: self.mean(method, metric) for metric in METRICS}
            spreads = {m: self.spread(method, m)["sd"] for m in ("spearman", "ssim") if several}
            undefined = torch.isnan(self._by_seed(method, "spearman")).sum(dim=(0, 2))
            for step, unit in enumerate(self.steps):
                row: dict[str, Any] = {"method": method, "step": step, "unit": unit}
                row.update({metric: float(means[metric][step]) for metric in METRICS})
                row.update({f"{m}_sd": float(sd[step]) for m, sd in spreads.items()})
                row["undefined"] = int(undefined[step])
                rows.append(row)
        return rows

    def falls(self, method: str, metric: str = "spearman", margin: float = 0.5) -> bool:
        """Whether the explanation changed clearly under randomisation.

        Rule: the mean ``metric`` over images after the last step is at least ``margin``
        below its mean at step 0 (the unrandomised copy, 1 for deterministic methods).
        In the cascading test the last step has every unit randomised; in the
        independent test it has only the last (lowest) unit randomised, so look at
        `mean` for the others. If the metric is undefined for every image at the
        last step (every map constant, e.g. all-zero GradCAMs) nothing of the original
        structure is left, which counts as a fall.

        Raises:
            ValueError: the metric is undefined at step 0 (the original maps are constant).
        """
        means = self.mean(method, metric)
        reference, last = float(means[0]), float(means[-1])
        if math.isnan(reference):
            raise ValueError(
                f"{metric} of {method} is undefined at step 0 (constant original maps); "
                f"there is nothing to compare. Use metric='ssim'."
            )
        return math.isnan(last) or last <= reference - margin

    def chance(self, method: str, metric: str = "spearman") -> float:
        """Similarity of unrelated maps: each image's original map against the next image's.

        The floor the curves are read against: maps of different images share only what
        the method and architecture impose on every map (a centre bias, border effects),
        so randomised maps that sink to this level kept nothing image-specific. Mean over
        the ``B`` pairs (image ``i`` with image ``i + 1``, cyclically); NaN for one image.
        """
        self._check(method, metric)
        original = self.original[method]
        if original.shape[0] < 2:
            return math.nan
        shifted = original.roll(1, dims=0)
        return float(_nanmean(map_similarity(original, shifted)[metric], dim=0))

    def summary(self) -> str:
        """A text table of `table` with the chance level and a verdict per method."""
        mode = "cascading" if self.cascading else "independent"
        seeds = self.seeds or (self.seed,)
        head = (
            f"Model parameter randomisation ({mode}), {self.targets.numel()} image(s), "
            f"{len(self.units)} units, seed(s) {', '.join(map(str, seeds))}; similarity of "
            f"each step's map with the original"
        )
        sd_columns = ("spearman_sd", "ssim_sd") if len(seeds) > 1 else ()
        columns = ("method", "step", "unit", *METRICS, *sd_columns, "undefined")
        body = _format_rows(self.table(), columns)
        verdicts = [
            f"{method}: Spearman {'falls' if self.falls(method) else 'does NOT fall'}, "
            f"SSIM {'falls' if self.falls(method, 'ssim') else 'does NOT fall'} "
            f"(rule: last step <= step 0 - 0.5); chance level (maps of different images): "
            f"Spearman {self.chance(method):.3f}, SSIM {self.chance(method, 'ssim'):.3f}"
            for method in self.methods
            if not math.isnan(float(self.mean(method)[0]))
        ]
        return "\n".join([head, body, *verdicts])

    def __str__(self) -> str:
        return self.summary()


@dataclass
class DataRandomizationResult:
    """What [`data_randomization_test`][] measured.

    Attributes:
        methods: method names.
        targets: ``(B,)`` classes the model explained.
        random_targets: ``(B,)`` classes the random-label model explained.
        original: method -> ``(B, H, W)`` maps of the model (CPU).
        randomized: method -> ``(B, H, W)`` maps of the random-label model (CPU).
        similarity: method -> metric -> ``(B,)`` (CPU; NaN where Spearman is undefined).
    """

    methods: tuple[str, ...]
    targets: torch.Tensor
    random_targets: torch.Tensor
    original: dict[str, torch.Tensor] = field(repr=False)
    randomized: dict[str, torch.Tensor] = field(repr=False)
    similarity: dict[str, dict[str, torch.Tensor]] = field(repr=False)

    def mean(self, method: str, metric: str = "spearman") -> float:
        """Mean similarity over images (NaN entries left out; NaN if all are)."""
        if method not in self.similarity:
            raise KeyError(
                f"no method '{method}' in this result; it has {', '.join(self.methods)}."
            )
        if metric not in self.similarity[method]:
            raise KeyError(f"no metric '{metric}'; use one of {', '.join(METRICS)}.")
        return float(_nanmean(self.similarity[method][metric], dim=0))

    def table(self) -> list[dict[str, Any]]:
        """One row per method: ``method, spearman, spearman_abs, ssim`` (means)."""
        return [
            {"method": method, **{metric: self.mean(method, metric) for metric in METRICS}}
            for method in self.methods
        ]

    def summary(self) -> str:
        head = (
            f"Data randomisation, {self.targets.numel()} image(s): similarity of the "
            f"random-label model's maps with the model's"
        )
        return "\n".join([head, _format_rows(self.table(), ("method", *METRICS))])

    def __str__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------


def _similarity_rows(original: torch.Tensor, maps: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in map_similarity(original, maps.to(original.device)).items()}


def parameter_randomization_test(
    model: nn.Module,
    images: ImagesInput,
    methods: Sequence[MethodInput] | MethodInput = ("gradcam", "ig"),
    *,
    target_class: TargetInput = None,
    cascading: bool = True,
    layers: Sequence[str | nn.Module] | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> RandomizationResult:
    """Adebayo et al.'s model parameter randomisation test.

    Explains ``images`` with each method on ``model``, then on a deep copy whose units are
    re-initialised one by one (`cascade_units`, `randomize_unit`), and
    compares every step's maps with the original ones per image
    ([`map_similarity`][timmlens.analysis.similarity.map_similarity]). The user's model is never
    modified.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        images: anything [`prepare_images`][timmlens.data.prepare_images] accepts.
        methods: registry names (any of
            [`methods`][timmlens.interpretation.registry.methods], e.g. ``"gradcam"``,
            ``"ig"``) and/or [`Explainer`][] instances built on ``model`` (they are
            deep-copied together with it).
        target_class: class(es) to explain; ``None``: each image's class as predicted by
            the *original* model, kept fixed at every step.
        cascading: ``True``: randomise cumulatively from the top (one copy for the whole
            cascade); ``False``: each unit alone on a fresh copy of the original.
        layers: explicit units (module names, parameter names), in the order to use;
            ``None``: all units, top-down.
        seed: base seed of the re-initialisation (see `randomize_unit`).
        seeds: several base seeds instead of ``seed``: the whole test runs once per seed
            and the result reports the mean over seeds and images and the spread
            between seeds (`RandomizationResult.spread`). One seed can mislead:
            on the bundled EfficientNet-Lite0 (four skimage photos) GradCAM's fully
            randomised mean Spearman is -0.06 with seed 0 alone and 0.14 with seed 2
            (docs/sanity_checks.md).
        method_options: registry name -> constructor options, e.g.
            ``{"ig": {"n_steps": 32}}``.
        progress: show a tqdm progress bar.

    Returns:
        A `RandomizationResult`; ``similarity[method][metric]`` is
        ``(len(units) + 1, B)``.
    """
    seed_list = _check_seeds(seed if seeds is None else seeds, single=seeds is None)
    parsed = _methods(model, methods, method_options)
    batch = prepare_images(images, model)
    inputs = batch.tensor
    validated = validate_targets(target_class, inputs.shape[0], num_outputs(model), model)
    targets = validated if validated is not None else _predicted(model, inputs)
    units = cascade_units(model, layers, inputs[:1])

    originals: dict[str, torch.Tensor] = {}
    for method in parsed:
        explainer = method.instance
        if explainer is None:
            explainer = create_explainer(method.name or "", model, **method.options)
        originals[method.label] = _explain(explainer, inputs, targets)

    steps: dict[str, list[torch.Tensor]] = {m.label: [] for m in parsed}
    sims: dict[str, list[list[dict[str, torch.Tensor]]]] = {m.label: [] for m in parsed}

    def record(explainers: Sequence[Explainer], first_seed: bool) -> None:
        for method, explainer in zip(parsed, explainers, strict=True):
            maps = _explain(explainer, inputs, targets)
            sims[method.label][-1].append(_similarity_rows(originals[method.label], maps))
            if first_seed:  # maps of the first seed only: they are large
                steps[method.label].append(maps.cpu())

    mode = "cascading" if cascading else "independent"
    bar = tqdm(
        total=(len(units) + 1) * len(seed_list),
        desc=f"randomisation ({mode})",
        disable=not progress,
    )
    try:
        for index, unit_seed in enumerate(seed_list):
            for rows in sims.values():
                rows.append([])
            copied, explainers = _copy_with_explainers(model, parsed)
            record(explainers, index == 0)
            bar.update()
            for unit in units:
                bar.set_postfix_str(f"seed {unit_seed}: {unit.name}", refresh=False)
                if not cascading:
                    copied, explainers = _copy_with_explainers(model, parsed)
                randomize_unit(copied, unit, seed=unit_seed)
                record(explainers, index == 0)
                bar.update()
            del copied, explainers
    finally:
        bar.close()

    by_seed = {
        label: {
            metric: torch.stack([torch.stack([row[metric] for row in rows]) for rows in seed_rows])
            for metric in METRICS
        }
        for label, seed_rows in sims.items()
    }
    return RandomizationResult(
        methods=tuple(m.label for m in parsed),
        units=tuple(unit.name for unit in units),
        cascading=cascading,
        targets=torch.tensor(targets, dtype=torch.long),
        original={label: maps.cpu() for label, maps in originals.items()},
        randomized={label: torch.stack(maps) for label, maps in steps.items()},
        similarity={
            label: {metric: values[0] for metric, values in metrics.items()}
            for label, metrics in by_seed.items()
        },
        seed=seed_list[0],
        unit_details=tuple(units),
        seeds=tuple(seed_list),
        seed_similarity=by_seed if len(seed_list) > 1 else {},
    )


def _check_seeds(seeds: int | Sequence[int], single: bool) -> list[int]:
    """``seeds`` as a list of distinct ints (one for ``seed=``)."""
    values = [seeds] if single else seeds
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"seeds must be a sequence of ints, e.g. seeds=(0, 1, 2); got {seeds!r}.")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int)]
    name = "seed" if single else "seeds"
    if bad or not values:
        raise ValueError(f"{name} must be int(s), e.g. seeds=(0, 1, 2); got {seeds!r}.")
    if len(set(values)) != len(values):
        raise ValueError(f"seeds {tuple(values)} repeat a seed; give distinct seeds.")
    return [int(v) for v in values]


def data_randomization_test(
    model: nn.Module,
    random_label_model: nn.Module,
    images: ImagesInput,
    methods: Sequence[str] | str = ("gradcam", "ig"),
    *,
    target_class: TargetInput = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> DataRandomizationResult:
    """Adebayo et al.'s data randomisation test.

    ``random_label_model`` is the same architecture trained on randomly permuted labels
    (train it yourself: it should fit the training set without generalising). An
    explanation that depends on the relation between images and labels looks different
    for it; one that mostly reflects the input or the architecture does not.

    Args:
        model: the model trained on the true labels.
        random_label_model: the model trained on permuted labels.
        images: anything [`prepare_images`][timmlens.data.prepare_images] accepts; each model
            preprocesses them with its own data config, and the maps must come out at the
            same size.
        methods: registry names (instances are bound to one model, so they are refused).
        target_class: class(es) both models explain; ``None``: each model explains its
            own prediction.
        method_options: registry name -> constructor options.

    Neither model is modified.
    """
    parsed = _methods(model, methods, method_options, allow_instances=False)
    sides = []
    for which in (model, random_label_model):
        inputs = prepare_images(images, which).tensor
        validated = validate_targets(target_class, inputs.shape[0], num_outputs(which), which)
        targets = validated if validated is not None else _predicted(which, inputs)
        maps = {
            m.label: _explain(create_explainer(m.name or "", which, **m.options), inputs, targets)
            for m in parsed
        }
        sides.append((targets, maps))
    (targets, original), (random_targets, randomized) = sides
    for label in original:
        if original[label].shape != randomized[label].shape:
            raise ValueError(
                f"{label}: the models' maps differ in size ({tuple(original[label].shape)} vs "
                f"{tuple(randomized[label].shape)}); both models must take the same input size."
            )
    return DataRandomizationResult(
        methods=tuple(m.label for m in parsed),
        targets=torch.tensor(targets, dtype=torch.long),
        random_targets=torch.tensor(random_targets, dtype=torch.long),
        original={label: maps.cpu() for label, maps in original.items()},
        randomized={label: maps.cpu() for label, maps in randomized.items()},
        similarity={
            label: _similarity_rows(original[label], randomized[label]) for label in original
        },
    )
