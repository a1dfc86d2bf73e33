"""``ExplanationMetrics``: the front over the metric registry.

It checks the options, prepares images, heatmaps and targets once, and hands each
metric a :class:`~.context.MetricContext`; the metrics themselves live in
:mod:`.curves` (insertion, deletion), :mod:`.sensitivity` (sensitivity-n) and
:mod:`.captum_metrics` (max-sensitivity, infidelity), registered by name in
:mod:`.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..._model_state import explaining
from ...data import ImagesInput, PreparedBatch, model_device, prepare_images
from .._targets import CallableTargets, TargetInput, target_rows, validate_targets
from ..base import declares_num_classes, num_outputs, predict
from ..scoring import (
    SCORE_KINDS,
    chunk_size_for,
    estimate_sample_bytes,
    target_scores,
)
from . import captum_metrics, registry, sensitivity  # noqa: F401 - sensitivity registers
from ._inputs import (
    HeatmapInput,
    check_n_samples,
    positive_int,
    prepare_heatmaps,
    warn_if_constant,
)
from .context import MetricContext
from .curves import CURVE_METRICS, check_step_options
from .results import MetricResult
from .substrates import SubstrateSpec, check_substrate, describe

#: The metrics of heatmaps when this module was imported; :func:`registry.metrics` is live.
HEATMAP_METRICS: tuple[str, ...] = tuple(registry.metrics("heatmap"))


class ExplanationMetrics:
    """Quantitative checks of heatmaps for one model, batched on the model's device.

    ``metrics.insertion(image, heatmap, target_class=0)`` and friends take one image or a
    batch (anything :func:`timmlens.prepare_images` accepts) with heatmaps ``(H, W)`` or
    ``(B, H, W)`` (tensor or numpy, any resolution: upsampled bilinearly to the model
    input), and return a :class:`MetricResult`, which formats and compares like its
    float value (the mean over images) and carries curves, per-image values and settings.
    ``target_class=None`` scores each image's predicted class on the unperturbed image.

    Perturbed inputs are composed on the model's device from one rank mask per image
    and scored a chunk at a time in no-grad forwards
    (:func:`~timmlens.interpretation.scoring.score_in_chunks`); the model is put in eval
    mode for the call and left exactly as found.

    Args:
        model: a classifier returning ``(B, num_classes)`` logits.
        steps: curve steps, evenly spaced (``k_t = floor(t * H * W / steps)`` pixels at step
            ``t``). Default ``None``: 224 steps (RISE's 224 pixels per step at 224x224), or
            one pixel per step on inputs of fewer than 224 pixels.
        pixels_per_step: instead of ``steps``, change this many pixels per step (RISE's
            parameterisation: ``ceil(H * W / pixels_per_step)`` steps, the last one may
            be smaller). Giving both is an error.
        substrate: what deleted pixels become (deletion, and the removed subsets of
            sensitivity-n). Default ``"zeros"``: zeros of the normalised input, the dataset's
            mean colour, as in RISE. Also ``"blur"``, ``"mean"``, a number, a tensor
            broadcastable to ``(B, C, H, W)`` or a callable ``inputs -> tensor``.
        insertion_substrate: what insertion starts from. Default ``"blur"``: a Gaussian blur
            of the image, as in RISE.
        blur_kernel: blur kernel size, odd (default 11, RISE's).
        blur_sigma: blur standard deviation in pixels (default 5.0, RISE's).
        score: ``"probability"`` (default: softmax probability of the target, as RISE) or
            ``"logit"`` (the raw target logit; Ancona et al.'s sensitivity-n uses it). A
            callable ``target_class`` is applied to what a class index would select from:
            the softmax probabilities ``(B, K)`` under ``"probability"`` (so
            ``lambda p: p[:, group].sum(1)`` scores a class group's probability), the
            logits under ``"logit"``; either way ``lambda z: z[:, 7]`` scores as ``7`` does.
        max_batch: at most this many perturbed images per forward. Default ``None``: the
            chunk is set by ``memory_budget_bytes``.
        memory_budget_bytes: memory one chunk may use, estimated per image by a probe
            forward (see ``scoring.estimate_sample_bytes``). Default ``None``: a quarter of
            the free memory on CUDA, 512 MiB elsewhere. Applies with ``max_batch`` only
            when given explicitly (then both limits hold).
        n_samples: random subsets per image for sensitivity-n (default 64).
        sensitivity_n: features per subset: an int count, or a float fraction of them
            (default 0.1: 10% of the features).
        patch_size: sensitivity-n features are ``patch_size x patch_size`` patches (default
            1: single pixels, as Ancona et al.).
        seed: seed of every random draw (default 0); each call starts from it afresh.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        steps: int | None = None,
        pixels_per_step: int | None = None,
        substrate: SubstrateSpec = "zeros",
        insertion_substrate: SubstrateSpec = "blur",
        blur_kernel: int = 11,
        blur_sigma: float = 5.0,
        score: str = "probability",
        max_batch: int | None = None,
        memory_budget_bytes: int | None = None,
        n_samples: int = 64,
        sensitivity_n: int | float = 0.1,
        patch_size: int = 1,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}.")
        if declares_num_classes(model):
            num_outputs(model)  # a headless timm model: no class score to perturb
        check_step_options(steps, pixels_per_step)
        check_substrate(substrate, "substrate")
        check_substrate(insertion_substrate, "insertion_substrate")
        positive_int("blur_kernel", blur_kernel, allow_none=False)
        if blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd, got {blur_kernel}; try 11 (RISE's).")
        if (
            isinstance(blur_sigma, bool)
            or not isinstance(blur_sigma, (int, float))
            or not (blur_sigma > 0)
        ):
            raise ValueError(f"blur_sigma must be a positive number, got {blur_sigma!r}.")
        if score not in SCORE_KINDS:
            raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}.")
        positive_int("max_batch", max_batch)
        positive_int("memory_budget_bytes", memory_budget_bytes)
        check_n_samples(n_samples)
        positive_int("patch_size", patch_size, allow_none=False)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}.")
        self.model = model
        self.steps = steps
        self.pixels_per_step = pixels_per_step
        self.substrate = substrate
        self.insertion_substrate = insertion_substrate
        self.blur_kernel = blur_kernel
        self.blur_sigma = float(blur_sigma)
        self.score = score
        self.max_batch = max_batch
        self.memory_budget_bytes = memory_budget_bytes
        self.n_samples = n_samples
        self.sensitivity_n = sensitivity_n
        self.patch_size = patch_size
        self.seed = seed
        self._sample_bytes: dict[tuple[Any, ...], int] = {}
        #: chunk size (perturbed images per forward) of the last call
        self.last_chunk_size: int | None = None

    # -- public metrics ----------------------------------------------------------------
    def insertion(
        self, image: ImagesInput, heatmap: HeatmapInput, target_class: TargetInput = None
    ) -> MetricResult:
        """Insertion AUC (higher is better): blurred image, original pixels put back.

        Returns:
            A :class:`MetricResult`; ``.curve`` is ``(x (T,), y (T,) or (B, T))``.
        """
        return self.curves(image, heatmap, target_class, metrics=("insertion",))["insertion"]

    def deletion(
        self, image: ImagesInput, heatmap: HeatmapInput, target_class: TargetInput = None
    ) -> MetricResult:
        """Deletion AUC (lower is better): the image, most salient pixels replaced first.

        Returns:
            A :class:`MetricResult`; ``.curve`` is ``(x (T,), y (T,) or (B, T))``.
        """
        return self.curves(image, heatmap, target_class, metrics=("deletion",))["deletion"]

    def curves(
        self,
        image: ImagesInput,
        heatmap: HeatmapInput,
        target_class: TargetInput = None,
        metrics: Sequence[str] = CURVE_METRICS,
    ) -> dict[str, MetricResult]:
        """Insertion and deletion in one stream of chunks: ``{"insertion": r, "deletion": r}``."""
        names = self._check_names(metrics, CURVE_METRICS)
        return self.compute(image, heatmap, target_class, metrics=names)

    def sensitivity(
        self,
        image: ImagesInput,
        heatmap: HeatmapInput,
        target_class: TargetInput = None,
        *,
        n: int | float | None = None,
        patch_size: int | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
    ) -> MetricResult:
        """Sensitivity-n (higher is better), per image, averaged over images.

        Args:
            image: one image or a batch (anything ``prepare_images`` accepts).
            heatmap: ``(H, W)`` or ``(B, H, W)``, any resolution.
            target_class: int, one per image, or ``None`` for the predicted class.
            n: overrides the constructor's ``sensitivity_n`` for this call.
            patch_size: overrides the constructor's ``patch_size``.
            n_samples: overrides the constructor's ``n_samples``.
            seed: overrides the constructor's ``seed``.

        Returns:
            A :class:`MetricResult` with ``details["heatmap_sums"]`` and
            ``details["output_drops"]``, both ``(B, n_samples)``.
        """
        options = {"n": n, "patch_size": patch_size, "n_samples": n_samples, "seed": seed}
        batch = self._prepare(image)
        with explaining(self.model):
            maps = self._heatmaps(heatmap, batch)
            context = self._context(batch, target_class, True, heatmaps=maps, options=options)
            return registry.resolve_metric("sensitivity").run(context)

    def compute(
        self,
        image: ImagesInput,
        heatmap: HeatmapInput,
        target_class: TargetInput = None,
        metrics: Sequence[str] = CURVE_METRICS,
    ) -> dict[str, MetricResult]:
        """Any registered heatmap metrics of one set of heatmaps: ``{metric: result}``.

        The unperturbed images are scored only when a metric needs it (or to resolve
        ``target_class=None``); the curve metrics share one stream of chunks.
        """
        names = self._check_names(metrics, tuple(registry.metrics("heatmap")))
        batch = self._prepare(image)
        with explaining(self.model):
            maps = self._heatmaps(heatmap, batch)
            context = self._context(batch, target_class, False, heatmaps=maps, requested=names)
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
        ``metrics`` may hold any registered heatmap metric (:func:`registry.metrics`):
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
            shared = self._context(batch, target_class, True)
            results: dict[str, dict[str, MetricResult]] = {}
            for method, method_maps in maps.items():
                context = MetricContext(
                    self,
                    batch,
                    shared.targets,
                    method_maps,
                    requested=order,
                    known_scores=shared.known_scores,
                )
                row = self._run(context, order)
                results[method] = {name: row[name] for name in names}
        return results

    def max_sensitivity(
        self,
        explainer: captum_metrics.SupportsExplainBatch,
        image: ImagesInput,
        target_class: TargetInput = None,
        *,
        n_perturb_samples: int = 10,
        radius: float = 0.02,
        norm_ord: str | float = "fro",
        seed: int | None = None,
    ) -> MetricResult:
        """Max-sensitivity of an explainer, by :func:`captum.metrics.sensitivity_max` (lower is
        better).

        The largest relative heatmap change over ``n_perturb_samples`` (default 10) inputs
        drawn uniformly within ``radius`` (default 0.02 of the pixel range, ~5 grey
        levels) of the image in L-infinity; see :mod:`.captum_metrics`. Targets are fixed
        to the unperturbed image's (predicted) class. The explainer runs on at most
        ``max_batch`` perturbed images per call (default: one per image).

        Args:
            explainer: a timmlens ``Explainer`` or anything with
                ``explain_batch(inputs (B, C, H, W), target_class) -> (B, H, W)``.
        """
        if not isinstance(explainer, captum_metrics.SupportsExplainBatch):
            raise ValueError(
                f"max_sensitivity needs an explainer with explain_batch(inputs, target_class), "
                f"got {type(explainer).__name__}; e.g. timmlens.interpretation.GradCAM(model)."
            )
        positive_int("n_perturb_samples", n_perturb_samples, allow_none=False)
        if not radius > 0:
            raise ValueError(f"radius must be positive, got {radius!r}.")
        options = {
            "n_perturb_samples": n_perturb_samples,
            "radius": radius,
            "norm_ord": norm_ord,
            "seed": seed,
        }
        batch = self._prepare(image)
        with explaining(self.model):
            context = self._context(
                batch, target_class, False, explainer=explainer, options=options
            )
            return registry.resolve_metric("max-sensitivity").run(context)

    def infidelity(
        self,
        explainer_or_heatmap: captum_metrics.SupportsExplainBatch | HeatmapInput,
        image: ImagesInput,
        target_class: TargetInput = None,
        *,
        n_perturb_samples: int = 32,
        noise: float = 0.02,
        normalize: bool = True,
        seed: int | None = None,
    ) -> MetricResult:
        """Infidelity via :func:`captum.metrics.infidelity` (lower is better).

        Gaussian input noise of ``noise`` (default 0.02) x the pixel range,
        ``n_perturb_samples`` (default 32) draws per image, heatmaps rescaled optimally
        when ``normalize`` (default); see :mod:`.captum_metrics` for the reasoning.

        Args:
            explainer_or_heatmap: an explainer (see :meth:`max_sensitivity`), or heatmaps
                ``(H, W)`` / ``(B, H, W)`` as for :meth:`insertion`.
        """
        positive_int("n_perturb_samples", n_perturb_samples, allow_none=False)
        if not noise > 0:
            raise ValueError(f"noise must be positive, got {noise!r}.")
        options = {
            "n_perturb_samples": n_perturb_samples,
            "noise": noise,
            "normalize": normalize,
            "seed": seed,
        }
        batch = self._prepare(image)
        with explaining(self.model):
            context = self._context(batch, target_class, False, options=options)
            if isinstance(explainer_or_heatmap, captum_metrics.SupportsExplainBatch):
                maps = captum_metrics.explain_with_grad(
                    explainer_or_heatmap, batch.tensor, captum_metrics.target_list(context.targets)
                )
                context.heatmaps = self._heatmaps(maps, batch)
            else:
                context.heatmaps = self._heatmaps(explainer_or_heatmap, batch)
            return registry.resolve_metric("infidelity").run(context)

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

    def _context(
        self,
        batch: PreparedBatch,
        target_class: TargetInput,
        need_scores: bool,
        **fields: Any,
    ) -> MetricContext:
        """A context for ``batch`` with its targets (and unperturbed scores, if computed)."""
        targets, scores = self._targets(batch.tensor, target_class, need_scores)
        return MetricContext(self, batch, targets, known_scores=scores, **fields)

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
        probe_needed = self.max_batch is None or self.memory_budget_bytes is not None
        if probe_needed and key not in self._sample_bytes:  # one probe per input shape
            self._sample_bytes[key] = estimate_sample_bytes(self.model, inputs[:1])
        chunk = chunk_size_for(
            self.model,
            inputs[:1],
            n_jobs,
            self.max_batch,
            self.memory_budget_bytes,
            sample_bytes=self._sample_bytes.get(key),
        )
        self.last_chunk_size = chunk
        return chunk

    @torch.no_grad()
    def _targets(
        self, inputs: torch.Tensor, target_class: TargetInput, need_scores: bool
    ) -> tuple[torch.Tensor | CallableTargets, torch.Tensor | None]:
        """Targets ``(B,)`` long on device (or a callable target's
        :class:`~timmlens.interpretation._targets.CallableTargets`), and the unperturbed
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
        return resolved, target_scores(logits, resolved, self.score)

    def __repr__(self) -> str:
        return (
            f"ExplanationMetrics(model={type(self.model).__name__}, steps={self.steps}, "
            f"pixels_per_step={self.pixels_per_step}, substrate={describe(self.substrate)!r}, "
            f"insertion_substrate={describe(self.insertion_substrate)!r}, score={self.score!r}, "
            f"device={model_device(self.model)})"
        )
