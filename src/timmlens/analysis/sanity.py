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

Which units are re-initialised and how is in `timmlens.analysis.randomization`; the
result types are in `timmlens.analysis.sanity_results` (importable from here too).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
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
from .sanity_results import REFERENCE_STEP as REFERENCE_STEP
from .sanity_results import DataRandomizationResult, RandomizationResult
from .similarity import METRICS, map_similarity

MethodInput = str | Explainer


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
# The tests
# --------------------------------------------------------------------------------------


def _similarity_rows(original: torch.Tensor, maps: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in map_similarity(original, maps.to(original.device)).items()}


def _randomized_explainers(
    model: nn.Module,
    methods: Sequence[_Method],
    units: Sequence[RandomizationUnit],
    seed: int,
    cascading: bool,
) -> Iterator[tuple[RandomizationUnit | None, list[Explainer]]]:
    """Each step's explainers, bound to a copy of ``model``: ``(None, explainers)`` on an
    untouched copy (step 0), then ``(unit, explainers)`` once ``unit`` is randomised,
    together with the units before it (``cascading``, one copy) or alone (a fresh copy)."""
    copied, explainers = _copy_with_explainers(model, methods)
    yield None, explainers
    for unit in units:
        if not cascading:
            copied, explainers = _copy_with_explainers(model, methods)
        randomize_unit(copied, unit, seed=seed)
        yield unit, explainers


def _explain_steps(
    model: nn.Module,
    methods: Sequence[_Method],
    inputs: torch.Tensor,
    targets: list[int],
    originals: dict[str, torch.Tensor],
    units: Sequence[RandomizationUnit],
    seeds: Sequence[int],
    cascading: bool,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Explain ``inputs`` (``(B, C, H, W)``) at every step of the randomisation, per seed.

    Returns:
        ``(randomized, by_seed)``: method -> the first seed's maps ``(steps, B, H, W)``
        (CPU); method -> metric -> similarity with ``originals`` ``(seeds, steps, B)``.
    """
    steps: dict[str, list[torch.Tensor]] = {m.label: [] for m in methods}
    sims: dict[str, list[list[dict[str, torch.Tensor]]]] = {m.label: [] for m in methods}
    mode = "cascading" if cascading else "independent"
    bar = tqdm(
        total=(len(units) + 1) * len(seeds), desc=f"randomisation ({mode})", disable=not progress
    )
    try:
        for index, unit_seed in enumerate(seeds):
            for rows in sims.values():
                rows.append([])
            for unit, explainers in _randomized_explainers(
                model, methods, units, unit_seed, cascading
            ):
                if unit is not None:
                    bar.set_postfix_str(f"seed {unit_seed}: {unit.name}", refresh=False)
                for method, explainer in zip(methods, explainers, strict=True):
                    maps = _explain(explainer, inputs, targets)
                    sims[method.label][-1].append(_similarity_rows(originals[method.label], maps))
                    if index == 0:  # maps of the first seed only: they are large
                        steps[method.label].append(maps.cpu())
                bar.update()
            del explainers  # the copy goes before the next seed's copy is made
    finally:
        bar.close()
    by_seed = {
        label: {
            metric: torch.stack([torch.stack([row[metric] for row in rows]) for rows in seed_rows])
            for metric in METRICS
        }
        for label, seed_rows in sims.items()
    }
    return {label: torch.stack(maps) for label, maps in steps.items()}, by_seed


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

    randomized, by_seed = _explain_steps(
        model, parsed, inputs, targets, originals, units, seed_list, cascading, progress
    )
    return RandomizationResult(
        methods=tuple(m.label for m in parsed),
        units=tuple(unit.name for unit in units),
        cascading=cascading,
        targets=torch.tensor(targets, dtype=torch.long),
        original={label: maps.cpu() for label, maps in originals.items()},
        randomized=randomized,
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
