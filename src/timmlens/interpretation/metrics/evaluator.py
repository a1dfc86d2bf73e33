"""``ExplanationMetrics``: the front over the metric registry.

It checks the options against what the registered metrics declare, prepares images,
heatmaps and targets once, and hands each metric a `MetricContext`; the metrics
themselves, with their options, live in `curves` (insertion, deletion), `sensitivity`
(sensitivity-n), `captum_metrics` (max-sensitivity, infidelity), `road` and
`confidence` (Average Drop, Increase in Confidence, AOPC), registered by name in
`registry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from ..._model_state import explaining
from ...data import ImagesInput, PreparedBatch, prepare_images
from ...models.introspect import declares_num_classes, model_device, num_outputs
from .._targets import CallableTargets, TargetInput, target_rows, validate_targets
from ..base import predict
from ..scoring import chunk_size_for, estimate_sample_bytes, target_scores
from . import registry
from ._inputs import HeatmapInput, prepare_heatmaps, warn_if_constant
from .captum_metrics import SupportsExplainBatch, explain_with_grad, target_list
from .context import MetricContext
from .curves import CURVE_METRICS
from .options import MetricOption, defaults, merge_options
from .results import MetricResult
from .substrates import describe

#: What an explanation is for `ExplanationMetrics.run`: heatmaps, or an explainer to make them.
Explanation = HeatmapInput | SupportsExplainBatch


class ExplanationMetrics:
    """Quantitative checks of heatmaps for one model, batched on the model's device.

    ``metrics.insertion(image, heatmap, target_class=0)``, ``deletion``, ``sensitivity``,
    ``run(name, ...)`` for any registered metric and ``compute`` for several take one image
    or a batch (anything [`timmlens.prepare_images`][] accepts) with heatmaps ``(H, W)``
    or ``(B, H, W)`` (tensor or numpy, any resolution: upsampled bilinearly to the model
    input), and return a `MetricResult`, which formats and compares like its float value
    (the mean over images) and carries curves, per-image values and settings.
    ``target_class=None`` scores each image's predicted class on the unperturbed image.

    Perturbed inputs are composed on the model's device from one rank mask per image
    and scored a chunk at a time in no-grad forwards
    ([`score_in_chunks`][timmlens.interpretation.scoring.score_in_chunks]); the model is put in eval
    mode for the call and left exactly as found.

    Args:
        model: a classifier returning ``(B, num_classes)`` logits.
        options: any option a registered metric declares, or the engine's; `option_specs`
            lists them with their defaults and docs, as does the metrics guide.
            The engine's: ``score`` (``"probability"``, the target's softmax as RISE, or
            ``"logit"``; a callable ``target_class`` is applied to what a class index would
            select from), ``seed`` (0; each call starts from it afresh), ``max_batch`` and
            ``memory_budget_bytes`` (the chunking; ``None`` sizes chunks by a quarter of the
            free CUDA memory, 512 MiB elsewhere, estimated by a probe forward).
            The metrics': ``steps``, ``pixels_per_step``, ``substrate``,
            ``insertion_substrate``, ``blur_kernel``, ``blur_sigma``, ``tie_order``
            (insertion, deletion); ``sensitivity_n``, ``patch_size``, ``n_samples``
            (sensitivity-n); ``road_percentiles``, ``road_noise`` (ROAD);
            ``aopc_patch_size``, ``aopc_steps`` (AOPC); ``infidelity_samples``,
            ``infidelity_noise``, ``infidelity_normalize``; ``max_sensitivity_samples``,
            ``max_sensitivity_radius``, ``max_sensitivity_norm``. With the defaults,
            insertion at 224x224 equals RISE's ``evaluation.py`` wherever the heatmap's
            values are distinct (among ties RISE's order depends on numpy's unstable
            sort; ``tie_order="rise"`` gives its stable-sort order, see `pixel_ranks`).

    Raises:
        TypeError: an option no metric declares (the message lists the valid ones).
        ValueError: a value its option refuses (e.g. ``sensitivity_n=1.5``).
    """

    def __init__(self, model: nn.Module, **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}.")
        if declares_num_classes(model):
            num_outputs(model)  # a headless timm model: no class score to perturb
        self.model = model
        #: every option's value: the defaults with the given ones on top (read-only)
        self.options: Mapping[str, Any] = MappingProxyType(
            _resolve(options, None, None, "ExplanationMetrics")
        )
        self._sample_bytes: dict[tuple[Any, ...], int] = {}
        #: chunk size (perturbed images per forward) of the last call
        self.last_chunk_size: int | None = None

    @staticmethod
    def option_specs(metrics: Sequence[str] | None = None) -> dict[str, MetricOption]:
        """The options of ``metrics`` (default: every registered metric) and the engine's,
        by name: each a `MetricOption` with its default, check and doc."""
        names = None if metrics is None else [registry.resolve_metric(m).name for m in metrics]
        return registry.declared_options(names)

    @staticmethod
    def defaults() -> dict[str, Any]:
        """Every declared option's default, by name."""
        return defaults(registry.declared_options())

    # -- the seed's three metrics -------------------------------------------------------
    def insertion(
        self,
        image: ImagesInput,
        heatmap: HeatmapInput,
        target_class: TargetInput = None,
        **options: Any,
    ) -> MetricResult:
        """Insertion AUC (higher is better): blurred image, original pixels put back.

        Returns:
            A `MetricResult`; ``.curve`` is ``(x (T,), y (T,) or (B, T))``.
        """
        return self.run("insertion", image, heatmap, target_class, **options)

    def deletion(
        self,
        image: ImagesInput,
        heatmap: HeatmapInput,
        target_class: TargetInput = None,
        **options: Any,
    ) -> MetricResult:
        """Deletion AUC (lower is better): the image, most salient pixels replaced first.

        Returns:
            A `MetricResult`; ``.curve`` is ``(x (T,), y (T,) or (B, T))``.
        """
        return self.run("deletion", image, heatmap, target_class, **options)

    def sensitivity(
        self,
        image: ImagesInput,
        heatmap: HeatmapInput,
        target_class: TargetInput = None,
        **options: Any,
    ) -> MetricResult:
        """Sensitivity-n (higher is better), per image, averaged over images.

        Args:
            image: one image or a batch (anything ``prepare_images`` accepts).
            heatmap: ``(H, W)`` or ``(B, H, W)``, any resolution.
            target_class: int, one per image, or ``None`` for the predicted class.
            options: for this call, over the constructor's: ``sensitivity_n``,
                ``patch_size``, ``n_samples``, ``seed``, ...

        Returns:
            A `MetricResult` with ``details["heatmap_sums"]`` and
            ``details["output_drops"]``, both ``(B, n_samples)``.
        """
        return self.run("sensitivity", image, heatmap, target_class, **options)

    # -- any metric by name -------------------------------------------------------------
    def run(
        self,
        metric: str,
        image: ImagesInput,
        explanation: Explanation,
        target_class: TargetInput = None,
        **options: Any,
    ) -> MetricResult:
        """Metric ``metric`` (a registered name or alias) of one explanation.

        Args:
            metric: e.g. ``"road_morf"``, ``"aopc"``, ``"infidelity"``, ``"max-sensitivity"``.
            image: one image or a batch (anything ``prepare_images`` accepts).
            explanation: heatmaps ``(H, W)`` / ``(B, H, W)`` (any resolution), or an
                explainer (anything with ``explain_batch(inputs (B, C, H, W),
                target_class) -> (B, H, W)``), which the ``needs="explainer"`` metrics
                (max-sensitivity) require and which heatmap metrics call once.
            target_class: int, one per image, a callable, or ``None`` (predicted class).
            options: options of this metric (or the engine's) for this call, over the
                constructor's: ``run("road_morf", x, h, road_noise=0)``.

        Raises:
            ValueError: an unknown metric; an explainer metric given heatmaps.
            TypeError: an option this metric does not declare.
        """
        spec = registry.resolve_metric(metric)
        values = self._call_options((spec.name,), options)
        is_explainer = isinstance(explanation, SupportsExplainBatch)
        if spec.needs == "explainer" and not is_explainer:
            raise ValueError(
                f"metric '{spec.name}' needs an explainer with explain_batch(inputs, "
                f"target_class), got {type(explanation).__name__}; e.g. "
                f"timmlens.interpretation.GradCAM(model)."
            )
        batch = self._prepare(image)
        with explaining(self.model):
            context = self._context(batch, target_class, False, values, requested=(spec.name,))
            if spec.needs == "explainer":
                context.explainer = explanation  # type: ignore[assignment]
            else:
                maps = (
                    explain_with_grad(explanation, batch.tensor, target_list(context.targets))  # type: ignore[arg-type]
                    if is_explainer
                    else explanation
                )
                context.heatmaps = self._heatmaps(maps, batch)  # type: ignore[arg-type]
            return spec.run(context)

    def compute(
        self,
        image: ImagesInput,
        heatmap: HeatmapInput,
        target_class: TargetInput = None,
        metrics: Sequence[str] = CURVE_METRICS,
        **options: Any,
    ) -> dict[str, MetricResult]:
        """Any registered heatmap metrics of one set of heatmaps: ``{metric: result}``.

        The unperturbed images are scored only when a metric needs it (or to resolve
        ``target_class=None``); metrics computed together share their work (insertion and
        deletion one stream of chunks, ROAD's two orders one imputation, Average Drop and
        Increase in Confidence one forward). ``options`` apply to this call only.
        """
        names = self._check_names(metrics, tuple(registry.metrics("heatmap")))
        values = self._call_options(names, options)
        batch = self._prepare(image)
        with explaining(self.model):
            maps = self._heatmaps(heatmap, batch)
            context = self._context(
                batch, target_class, False, values, heatmaps=maps, requested=names
            )
            return self._run(context, names)

    def evaluate_all(
        self,
        image: ImagesInput,
        heatmaps: Mapping[str, HeatmapInput],
        target_class: TargetInput = None,
        metrics: Sequence[str] = ("insertion", "deletion", "sensitivity"),
    ) -> dict[str, dict[str, MetricResult]]:
        """Several methods' heatmaps on the same images: ``{method: {metric: result}}``.

        The images are prepared and the targets resolved once for all methods.
        ``metrics`` may hold any registered heatmap metric ([`registry.metrics`][]):
        ``"insertion"``, ``"deletion"``, ``"sensitivity"``, ``"infidelity"``, ...
        """
        names = self._check_names(metrics, tuple(registry.metrics("heatmap")))
        if not isinstance(heatmaps, Mapping) or not heatmaps:
            raise ValueError(
                "heatmaps must be a non-empty mapping {method name: heatmap}, e.g. "
                "{'gradcam': heatmap}."
            )
        batch = self._prepare(image)
        # the curve metrics first, in their usual order: one stream of chunks for them
        order = (
            *(n for n in CURVE_METRICS if n in names),
            *(n for n in names if n not in CURVE_METRICS),
        )
        with explaining(self.model):
            maps = {
                method: self._heatmaps(value, batch, name=f"heatmaps[{method!r}]")
                for method, value in heatmaps.items()
            }
            shared = self._context(batch, target_class, True, self.options)
            results: dict[str, dict[str, MetricResult]] = {}
            for method, method_maps in maps.items():
                context = MetricContext(
                    self.model,
                    self.options,
                    self.chunk_size,
                    batch,
                    shared.targets,
                    method_maps,
                    requested=order,
                    known_scores=shared.known_scores,
                )
                row = self._run(context, order)
                results[method] = {name: row[name] for name in names}
        return results

    # -- internals ---------------------------------------------------------------------
    @staticmethod
    def _check_names(names: Sequence[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
        """``names`` as registry names (aliases resolved), each one of ``allowed``."""
        names = (names,) if isinstance(names, str) else tuple(names)
        resolved, unknown = [], []
        for name in names:
            try:
                key = registry.resolve_metric(name).name
            except ValueError:
                key = None
            if key in allowed:
                resolved.append(key)
            else:
                unknown.append(name)
        if unknown or not names:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {allowed}.")
        return tuple(resolved)

    def _run(self, context: MetricContext, names: Sequence[str]) -> dict[str, MetricResult]:
        return {name: registry.resolve_metric(name).run(context) for name in names}

    def _call_options(self, names: Sequence[str], given: Mapping[str, Any]) -> Mapping[str, Any]:
        """The constructor's options with ``given`` on top, checked against what ``names``
        (and the engine) declare."""
        if not given:
            return self.options
        where = f"ExplanationMetrics ({', '.join(names)})"
        return _resolve(given, self.options, names, where)

    def _context(
        self,
        batch: PreparedBatch,
        target_class: TargetInput,
        need_scores: bool,
        options: Mapping[str, Any],
        **fields: Any,
    ) -> MetricContext:
        """A context for ``batch`` with its targets (and unperturbed scores, if computed)."""
        score = options["score"]
        targets, scores = self._targets(batch.tensor, target_class, need_scores, score)
        return MetricContext(
            self.model, options, self.chunk_size, batch, targets, known_scores=scores, **fields
        )

    def _prepare(self, image: ImagesInput | PreparedBatch) -> PreparedBatch:
        return image if isinstance(image, PreparedBatch) else prepare_images(image, self.model)

    def _heatmaps(
        self, heatmap: HeatmapInput, batch: PreparedBatch, name: str = "heatmap"
    ) -> torch.Tensor:
        height, width = batch.tensor.shape[-2:]
        maps = prepare_heatmaps(heatmap, len(batch), (height, width), batch.tensor.device, name)
        warn_if_constant(maps, name)
        return maps

    def chunk_size(self, inputs: torch.Tensor, n_jobs: int) -> int:
        """Perturbed images per forward for ``n_jobs`` copies of inputs ``(B, C, H, W)``.

        ``max_batch`` if given (capped by ``memory_budget_bytes`` if that is given too),
        else the memory budget divided by the probe estimate per image; then balanced so
        the chunks have equal sizes.
        """
        key = (tuple(inputs.shape[1:]), inputs.dtype, inputs.device)
        max_batch, budget = self.options["max_batch"], self.options["memory_budget_bytes"]
        probe_needed = max_batch is None or budget is not None
        if probe_needed and key not in self._sample_bytes:  # one probe per input shape
            self._sample_bytes[key] = estimate_sample_bytes(self.model, inputs[:1])
        chunk = chunk_size_for(
            self.model,
            inputs[:1],
            n_jobs,
            max_batch,
            budget,
            sample_bytes=self._sample_bytes.get(key),
        )
        self.last_chunk_size = chunk
        return chunk

    @torch.no_grad()
    def _targets(
        self, inputs: torch.Tensor, target_class: TargetInput, need_scores: bool, score: str
    ) -> tuple[torch.Tensor | CallableTargets, torch.Tensor | None]:
        """Targets ``(B,)`` long on device (or a callable target's
        `CallableTargets`), and the unperturbed
        scores ``(B,)`` if computed.

        The unperturbed images are scored only for ``target_class=None`` or ``need_scores``.
        """
        size = inputs.shape[0]
        try:
            classes: int | None = num_outputs(self.model)
        except ValueError:
            classes = None
        targets = None
        if target_class is not None and classes is not None:
            targets = validate_targets(
                target_class, size, classes, self.model, "ExplanationMetrics"
            )
            if not need_scores:
                return target_rows(targets, inputs.device), None  # type: ignore[return-value]
        logits = predict(self.model, inputs, self.chunk_size(inputs, size))
        if targets is None:
            targets = validate_targets(
                target_class, size, logits.shape[1], self.model, "ExplanationMetrics"
            )
        resolved = logits.argmax(dim=1) if targets is None else target_rows(targets, logits.device)
        return resolved, target_scores(logits, resolved, score)

    def __repr__(self) -> str:
        base = self.defaults()
        given = {
            name: describe(value)
            for name, value in self.options.items()
            if name not in base or not _same(value, base[name])
        }
        settings = "".join(f", {name}={value!r}" for name, value in given.items())
        return (
            f"ExplanationMetrics(model={type(self.model).__name__}{settings}, "
            f"device={model_device(self.model)})"
        )


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, torch.Tensor) or isinstance(default, torch.Tensor):
        return value is default
    try:
        return bool(value == default)
    except (TypeError, ValueError, RuntimeError):
        return False


def _resolve(
    given: Mapping[str, Any],
    base: Mapping[str, Any] | None,
    metrics: Sequence[str] | None,
    where: str,
) -> dict[str, Any]:
    """``given`` checked against the options of ``metrics`` (``None``: every metric) and
    the engine's, on top of ``base`` (``None``: the defaults); then each metric's joint
    check (``steps`` with ``pixels_per_step``)."""
    declared = registry.declared_options(metrics)
    if base is None:
        base = defaults(registry.declared_options())
    values = merge_options(declared, given, base, where)
    specs = [registry.resolve_metric(name) for name in (metrics or registry.metrics())]
    for check in dict.fromkeys(spec.check for spec in specs if spec.check is not None):
        check(values)
    return values
