"""``ExplanationMetrics``: the front over the metric registry.

It checks the options, prepares images, heatmaps and targets once, and hands each
metric a `MetricContext`; the metrics themselves live in
`curves` (insertion, deletion), `sensitivity` (sensitivity-n) and
`captum_metrics` (max-sensitivity, infidelity), registered by name in
`registry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..._model_state import explaining
from ...data import ImagesInput, PreparedBatch, prepare_images
from ...models.introspect import declares_num_classes, model_device, num_outputs
from .._targets import CallableTargets, TargetInput, target_rows, validate_targets
from ..base import predict
from ..scoring import (
    SCORE_KINDS,
    chunk_size_for,
    estimate_sample_bytes,
    target_scores,
)
from . import captum_metrics, confidence, registry, sensitivity  # noqa: F401 - they register
from ._inputs import (
    HeatmapInput,
    check_n_samples,
    positive_int,
    prepare_heatmaps,
    warn_if_constant,
)
from .confidence import CONFIDENCE_METRICS, DEFAULT_AOPC_PATCH, DEFAULT_AOPC_STEPS
from .context import MetricContext
from .curves import CURVE_METRICS, check_step_options, check_tie_order
from .results import MetricResult
from .road import (
    DEFAULT_NOISE,
    DEFAULT_PERCENTILES,
    check_noise,
    check_order,
    check_percentiles,
)
from .substrates import SubstrateSpec, check_substrate, describe

#: The metrics of heatmaps when this module was imported; [`registry.metrics`][] is live.
HEATMAP_METRICS: tuple[str, ...] = tuple(registry.metrics("heatmap"))


class ExplanationMetrics:
    """Quantitative checks of heatmaps for one model, batched on the model's device.

    ``metrics.insertion(image, heatmap, target_class=0)`` and friends take one image or a
    batch (anything [`timmlens.prepare_images`][] accepts) with heatmaps ``(H, W)`` or
    ``(B, H, W)`` (tensor or numpy, any resolution: upsampled bilinearly to the model
    input), and return a `MetricResult`, which formats and compares like its
    float value (the mean over images) and carries curves, per-image values and settings.
    ``target_class=None`` scores each image's predicted class on the unperturbed image.

    Perturbed inputs are composed on the model's device from one rank mask per image
    and scored a chunk at a time in no-grad forwards
    ([`score_in_chunks`][timmlens.interpretation.scoring.score_in_chunks]); the model is put in eval
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
            mean colour, as in RISE. Also ``"blur"``, ``"blur_reflect"``, ``"mean"``, a
            number, a tensor broadcastable to ``(B, C, H, W)`` or a callable
            ``inputs -> tensor``.
        insertion_substrate: what insertion starts from. Default ``"blur"``: RISE's blur
            exactly, ``gkern(blur_kernel, blur_sigma)`` (scipy's Gaussian of a delta, tails
            reflected into the window) applied with zero padding, so at 224x224 with 224
            pixels per step insertion equals RISE's ``evaluation.py`` wherever the heatmap's
            values are distinct (among ties RISE's order depends on numpy's unstable sort;
            ``tie_order="rise"`` gives its stable-sort order, see
            ``timmlens.interpretation.metrics.pixel_ranks``). ``"blur_reflect"``
            is torchvision's truncated Gaussian with reflect padding (timmlens' default
            before; insertion AUCs differ by up to ~0.02).
        blur_kernel: blur kernel size, odd (default 11, RISE's).
        blur_sigma: blur standard deviation in pixels (default 5.0, RISE's).
        tie_order: how equal heatmap values are ranked: ``"row_major"`` (default, top-left
            pixel first) or ``"rise"`` (bottom-right first, RISE's reversed argsort); see
            `pixel_ranks`. Applies to insertion, deletion and ROAD.
        road_percentiles: ROAD's removal levels in percent of pixels (default 10, 20, ...,
            90), strictly increasing, each in (0, 100).
        road_noise: standard deviation of ROAD's imputation noise in normalised input
            units (default 0.01, the authors').
        aopc_patch_size: AOPC's square regions, in pixels (default 9, Samek et al.'s).
        aopc_steps: AOPC's perturbation steps ``L`` (default 100, Samek et al.'s; at most
            the number of patches).
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
        tie_order: str = "row_major",
        road_percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        road_noise: float = DEFAULT_NOISE,
        aopc_patch_size: int = DEFAULT_AOPC_PATCH,
        aopc_steps: int = DEFAULT_AOPC_STEPS,
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
        check_tie_order(tie_order)
        road_percentiles = check_percentiles(road_percentiles)
        check_noise(road_noise)
        positive_int("aopc_patch_size", aopc_patch_size, allow_none=False)
        positive_int("aopc_steps", aopc_steps, allow_none=False)
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
        self.tie_order = tie_order
        self.road_percentiles = road_percentiles
        self.road_noise = float(road_noise)
        self.aopc_patch_size = aopc_patch_size
        self.aopc_steps = aopc_steps
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
            A `MetricResult`; ``.curve`` is ``(x (T,), y (T,) or (B, T))``.
        """
        return self.curves(image, heatmap, target_class, metrics=("insertion",))["insertion"]

    def deletion(
        self, image: ImagesInput, heatmap: HeatmapInput, target_class: TargetInput = None
    ) -> MetricResult:
        """Deletion AUC (lower is better): the image, most salient pixels replaced first.

        Returns:
            A `MetricResult`; ``.curve`` is ``(x (T,), y (T,) or (B, T))``.
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
            A `MetricResult` with ``details["heatmap_sums"]`` and
            ``details["output_drops"]``, both ``(B, n_samples)``.
        """
        options = {"n": n, "patch_size": patch_size, "n_samples": n_samples, "seed": seed}
        batch = self._prepare(image)
        with explaining(self.model):
            maps = self._heatmaps(heatmap, batch)
            context = self._context(batch, target_class, True, heatmaps=maps, options=options)
            return registry.resolve_metric("sensitivity").run(context)

    def road(
        self,
        image: ImagesInput,
        heatmap: HeatmapInput,
        target_class: TargetInput = None,
        order: str = "morf",
        percentiles: Sequence[float] | None = None,
        noise: float | None = None,
        seed: int | None = None,
        score: str | None = None,
    ) -> MetricResult:
        """ROAD (Rong et al., ICML 2022): the target's score with ``p`` % of the pixels
        removed and filled by noisy linear imputation, at each percentile ``p``.

        Args:
            image: one image or a batch (anything ``prepare_images`` accepts).
            heatmap: ``(H, W)`` or ``(B, H, W)``, any resolution; no NaN.
            target_class: int, one per image, or ``None`` for the predicted class.
            order: ``"morf"`` (most relevant first, lower is better) or ``"lerf"`` (least
                relevant first, higher is better).
            percentiles: share of pixels *removed*, in percent, strictly increasing in
                (0, 100); default the constructor's ``road_percentiles`` (10, ..., 90).
                (pytorch-grad-cam's ``percentile`` is the share kept: its MoRF at 80
                is ours at 20.)
            noise: imputation noise std in normalised input units (default the
                constructor's ``road_noise``, 0.01); 0 gives the plain linear imputation.
            seed: seed of the noise (default the constructor's ``seed``); the global
                random state is never touched.
            score: ``"probability"`` (or ``"prob"``) or ``"logit"``; default the
                constructor's ``score``.

        Returns:
            A `MetricResult` named ``road_morf`` / ``road_lerf``: ``.curve`` is
            ``(x (P,), y (P,) or (B, P))``, x the fraction removed; the value is the mean
            of the curve over percentiles.
        """
        check_order(order)
        if score == "prob":
            score = "probability"
        if score is not None and score not in SCORE_KINDS:
            raise ValueError(f"score must be one of {SCORE_KINDS} (or 'prob'), got {score!r}.")
        if percentiles is not None:
            percentiles = check_percentiles(percentiles)
        if noise is not None:
            check_noise(noise)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int, got {seed!r}.")
        options = {"road_percentiles": percentiles, "road_noise": noise, "seed": seed}
        options["score"] = score
        batch = self._prepare(image)
        name = f"road_{order}"
        with explaining(self.model):
            maps = self._heatmaps(heatmap, batch)
            context = self._context(
                batch, target_class, False, heatmaps=maps, options=options, requested=(name,)
            )
            return registry.resolve_metric(name).run(context)

    def confidence(
        self, image: ImagesInput, heatmap: HeatmapInput, target_class: TargetInput = None
    ) -> dict[str, MetricResult]:
        """Average Drop and Increase in Confidence (Chattopadhay et al. 2018) from one
        forward of ``image x normalised map`` per image (see `confidence`).

        Returns:
            ``{"average_drop": r, "increase_in_confidence": r}``, both in percent; each
            result's ``details`` hold ``"original_scores"`` and ``"masked_scores"`` ``(B,)``.
        """
        return self.compute(image, heatmap, target_class, metrics=CONFIDENCE_METRICS)

    def average_drop(
        self, image: ImagesInput, heatmap: HeatmapInput, target_class: TargetInput = None
    ) -> MetricResult:
        """Average Drop in % (lower is better): ``100 * max(0, Y - O) / Y`` averaged."""
        return self.confidence(image, heatmap, target_class)["average_drop"]

    def increase_in_confidence(
        self, image: ImagesInput, heatmap: HeatmapInput, target_class: TargetInput = None
    ) -> MetricResult:
        """Increase in Confidence in % of images (higher is better): ``O > Y``."""
        return self.confidence(image, heatmap, target_class)["increase_in_confidence"]

    def aopc(
        self,
        image: ImagesInput,
        heatmap: HeatmapInput,
        target_class: TargetInput = None,
        *,
        patch_size: int | None = None,
        steps: int | None = None,
    ) -> MetricResult:
        """AOPC (Samek et al. 2017, higher is better): the mean drop of the target score as
        ``patch_size`` patches are removed, most relevant first, over ``steps + 1`` points.

        Args:
            patch_size: overrides the constructor's ``aopc_patch_size`` (default 9).
            steps: overrides the constructor's ``aopc_steps`` (default 100).

        Returns:
            A `MetricResult`; ``.curve`` is ``(x, y)``, x the patches removed
            ``(L + 1,)``, y the target's score.
        """
        options = {"aopc_patch_size": patch_size, "aopc_steps": steps}
        batch = self._prepare(image)
        with explaining(self.model):
            maps = self._heatmaps(heatmap, batch)
            context = self._context(batch, target_class, False, heatmaps=maps, options=options)
            return registry.resolve_metric("aopc").run(context)

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
        """Max-sensitivity of an explainer, by `captum.metrics.sensitivity_max` (lower is
        better).

        The largest relative heatmap change over ``n_perturb_samples`` (default 10) inputs
        drawn uniformly within ``radius`` (default 0.02 of the pixel range, ~5 grey
        levels) of the image in L-infinity; see `captum_metrics`. Targets are fixed
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
        """Infidelity via `captum.metrics.infidelity` (lower is better).

        Gaussian input noise of ``noise`` (default 0.02) x the pixel range,
        ``n_perturb_samples`` (default 32) draws per image, heatmaps rescaled optimally
        when ``normalize`` (default); see `captum_metrics` for the reasoning.

        Args:
            explainer_or_heatmap: an explainer (see [`max_sensitivity`][]), or heatmaps
                ``(H, W)`` / ``(B, H, W)`` as for [`insertion`][].
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
        return resolved, target_scores(logits, resolved, self.score)

    def __repr__(self) -> str:
        return (
            f"ExplanationMetrics(model={type(self.model).__name__}, steps={self.steps}, "
            f"pixels_per_step={self.pixels_per_step}, substrate={describe(self.substrate)!r}, "
            f"insertion_substrate={describe(self.insertion_substrate)!r}, score={self.score!r}, "
            f"device={model_device(self.model)})"
        )
