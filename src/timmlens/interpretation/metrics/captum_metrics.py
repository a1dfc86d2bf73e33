"""Explainer-level metrics computed by Captum: max-sensitivity and infidelity (Yeh et al. 2019).

Both perturb the *normalised* model input. Image-sized defaults are given as fractions
of the pixel range, so they mean the same for every model: a pixel range of 1 (pixels
in [0, 1]) is ``1 / std_c`` in channel ``c`` of the normalised input (about 4.4 for the
ImageNet std). Noise is drawn from a seeded CPU ``torch.Generator`` (reproducible on
every device; the global RNG is never touched) and moved to the model's device.

* **max-sensitivity** (`captum.metrics.sensitivity_max`): the largest relative
  change ``||E(x') - E(x)|| / ||E(x)||`` of the heatmap over ``n_perturb_samples``
  inputs ``x'`` drawn uniformly from the L-infinity ball of radius ``radius`` x pixel
  range around ``x``. Default radius 0.02 (Captum's default, here scaled to the pixel
  range): about 5 grey levels of 255, a change no viewer would notice and which should
  not change an explanation. Lower is better.
* **infidelity** (`captum.metrics.infidelity`): the mean squared error between the
  heatmap's prediction of an output change, ``sum(E(x) * I)``, and the actual change
  ``f(x) - f(x - I)`` for Gaussian noise ``I`` with standard deviation ``noise`` x pixel
  range. Default 0.02, the same ~5 grey levels: above 8-bit quantisation
  (1/255 = 0.004), so the perturbation is one a real photo could carry, and small
  enough for the output to respond almost linearly. The heatmap ``(B, H, W)`` gives
  each pixel one value, shared by its channels (its dot product with ``I`` sums the
  noise over channels). ``normalize=True`` (default) rescales the heatmap by its
  optimal factor first (Yeh et al., Eq. 3), because timmlens heatmaps are normalised
  and their scale means nothing. Lower is better.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ...models.introspect import data_config
from .._targets import CallableTargets
from ..scoring import target_scores
from .context import MetricContext
from .options import MetricOption, positive, positive_number
from .registry import register_metric
from .results import MetricResult


@runtime_checkable
class SupportsExplainBatch(Protocol):
    """Anything with ``explain_batch(inputs (B, C, H, W), target_class) -> (B, H, W)``."""

    def explain_batch(self, inputs: torch.Tensor, target_class: Any = None) -> torch.Tensor: ...


def pixel_range(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Normalised-input span of the [0, 1] pixel range per channel: ``(1, C, 1, 1)``."""
    std = torch.as_tensor(data_config(model)["std"], dtype=inputs.dtype, device=inputs.device)
    if std.numel() not in (1, inputs.shape[1]):
        std = std[:1]
    return (1.0 / std).view(1, -1, 1, 1).expand(1, inputs.shape[1], 1, 1)


def target_list(targets: torch.Tensor | CallableTargets) -> list[int] | CallableTargets:
    """Targets as Captum's metrics take them: a list of classes, or the callable target
    as it is (Captum's ``target`` and forward arguments pass a non-tensor unexpanded)."""
    return targets if isinstance(targets, CallableTargets) else targets.tolist()


def explain_with_grad(
    explainer: SupportsExplainBatch,
    inputs: torch.Tensor,
    targets: list[int] | CallableTargets,
) -> torch.Tensor:
    """``explainer``'s heatmaps ``(B, H, W)``, detached, with autograd enabled.

    Captum's metrics run their explanation function under ``torch.no_grad``; gradient
    methods need autograd back on.
    """
    with torch.enable_grad():
        maps = explainer.explain_batch(inputs, targets)
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3 or maps.shape[0] != inputs.shape[0]:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(
            f"{type(explainer).__name__}.explain_batch returned {shape} for a batch of "
            f"{inputs.shape[0]}; expected heatmaps of shape (B, H, W)."
        )
    return maps.detach()


def max_sensitivity(
    model: nn.Module,
    explainer: SupportsExplainBatch,
    inputs: torch.Tensor,
    targets: list[int] | CallableTargets,
    *,
    n_perturb_samples: int = 10,
    radius: float = 0.02,
    norm_ord: str | float = "fro",
    max_examples_per_batch: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Max-sensitivity of ``explainer`` per image: ``(B, C, H, W)`` -> ``(B,)`` float64 CPU.

    Args:
        radius: L-infinity radius as a fraction of the pixel range (default 0.02).
        n_perturb_samples: perturbed inputs per image (default 10, Captum's).
        norm_ord: norm of the heatmap difference (default Frobenius).
        max_examples_per_batch: perturbed inputs explained per call (default: the batch).
        seed: seed of the noise generator.
    """
    generator = torch.Generator().manual_seed(seed)
    scale = pixel_range(model, inputs) * radius

    def perturb(batch: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(batch.shape, generator=generator, dtype=torch.float32) * 2 - 1
        return batch + noise.to(batch) * scale

    def explain(
        batch: torch.Tensor | tuple[torch.Tensor, ...], target: list[int] | CallableTargets
    ) -> tuple[torch.Tensor]:
        # Captum iterates over the result as a tuple of per-input explanations.
        batch = batch[0] if isinstance(batch, tuple) else batch
        target = target if isinstance(target, CallableTargets) else list(target)
        return (explain_with_grad(explainer, batch, target),)

    from captum.metrics import sensitivity_max  # loaded on first use: Captum is heavy

    values = sensitivity_max(
        explain,
        inputs,
        perturb_func=perturb,
        n_perturb_samples=n_perturb_samples,
        norm_ord=norm_ord,
        max_examples_per_batch=_captum_batch(max_examples_per_batch, inputs, n_perturb_samples),
        target=targets if isinstance(targets, CallableTargets) else list(targets),
    )
    return values.detach().double().cpu().view(-1)


def infidelity(
    model: nn.Module,
    inputs: torch.Tensor,
    heatmaps: torch.Tensor,
    targets: list[int] | CallableTargets,
    *,
    score: str = "probability",
    n_perturb_samples: int = 32,
    noise: float = 0.02,
    normalize: bool = True,
    max_examples_per_batch: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Infidelity of heatmaps ``(B, H, W)`` for inputs ``(B, C, H, W)`` -> ``(B,)`` float64 CPU.

    Args:
        score: ``"probability"`` or ``"logit"``: the output ``f`` whose changes are predicted.
        n_perturb_samples: noise draws per image (default 32).
        noise: Gaussian standard deviation as a fraction of the pixel range (default 0.02).
        normalize: rescale heatmaps by the optimal factor first (default ``True``).
        max_examples_per_batch: perturbed inputs per forward (default: all).
        seed: seed of the noise generator.
    """
    generator = torch.Generator().manual_seed(seed)
    scale = pixel_range(model, inputs) * noise

    def perturb(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        draw = torch.randn(batch.shape, generator=generator, dtype=torch.float32)
        perturbation = draw.to(batch) * scale
        return perturbation, batch - perturbation

    def forward(batch: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        return target_scores(model(batch), batch_targets, score)

    attributions = heatmaps.to(inputs)[:, None].expand_as(inputs)
    from captum.metrics import infidelity as captum_infidelity

    values = captum_infidelity(
        forward,
        perturb,
        inputs,
        attributions,
        # the targets travel with the inputs: Captum expands both per perturbation alike
        additional_forward_args=(
            targets
            if isinstance(targets, CallableTargets)
            else torch.tensor(targets, device=inputs.device),
        ),
        n_perturb_samples=n_perturb_samples,
        max_examples_per_batch=_captum_batch(max_examples_per_batch, inputs, n_perturb_samples),
        normalize=normalize,
    )
    return values.detach().double().cpu().view(-1)


def _captum_batch(limit: int | None, inputs: torch.Tensor, n_perturb_samples: int) -> int:
    """Captum's ``max_examples_per_batch``: whole perturbation rounds of the batch, >= B."""
    batch = inputs.shape[0]
    if limit is None:
        return batch * n_perturb_samples
    return batch * min(max(limit // batch, 1), n_perturb_samples)


def _norm(value: Any) -> str | float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(
            f"max_sensitivity_norm must be a norm order torch.linalg.norm takes ('fro', 'nuc', "
            f"or a number), got {value!r}."
        )
    return value


def _flag(name: str) -> Any:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}.")
        return value

    return check


MAX_SENSITIVITY_OPTIONS: tuple[MetricOption, ...] = (
    MetricOption(
        "max_sensitivity_samples",
        10,
        "perturbed inputs per image (Captum's default)",
        positive("max_sensitivity_samples"),
    ),
    MetricOption(
        "max_sensitivity_radius",
        0.02,
        "L-infinity radius of the perturbations, a fraction of the pixel range (~5 grey levels)",
        positive_number("max_sensitivity_radius"),
    ),
    MetricOption(
        "max_sensitivity_norm", "fro", "norm of the heatmap difference (Frobenius)", _norm
    ),
)
INFIDELITY_OPTIONS: tuple[MetricOption, ...] = (
    MetricOption("infidelity_samples", 32, "noise draws per image", positive("infidelity_samples")),
    MetricOption(
        "infidelity_noise",
        0.02,
        "Gaussian noise std, a fraction of the pixel range (~5 grey levels)",
        positive_number("infidelity_noise"),
    ),
    MetricOption(
        "infidelity_normalize",
        True,
        "rescale each heatmap by its optimal factor first (Yeh et al., Eq. 3)",
        _flag("infidelity_normalize"),
    ),
)


@register_metric(
    "max-sensitivity",
    aliases=("max_sensitivity", "sensitivity_max"),
    higher_is_better=False,
    needs="explainer",
    summary="largest relative heatmap change under imperceptible input noise",
    reference="Yeh et al., NeurIPS 2019",
    options=MAX_SENSITIVITY_OPTIONS,
)
class MaxSensitivity:
    """Options: ``max_sensitivity_samples`` (10), ``max_sensitivity_radius`` (0.02),
    ``max_sensitivity_norm`` ("fro"), and the engine's ``seed``."""

    def compute(self, context: MetricContext) -> MetricResult:
        options = context.options
        settings = {
            "n_perturb_samples": options["max_sensitivity_samples"],
            "radius": options["max_sensitivity_radius"],
            "norm_ord": options["max_sensitivity_norm"],
            "seed": options["seed"],
        }
        values = max_sensitivity(
            context.model,
            context.explainer,
            context.inputs,
            target_list(context.targets),
            n_perturb_samples=settings["n_perturb_samples"],
            radius=float(settings["radius"]),
            norm_ord=settings["norm_ord"],
            max_examples_per_batch=options["max_batch"] or len(context.targets),
            seed=settings["seed"],
        )
        return context.result("max-sensitivity", values, False, settings)


@register_metric(
    "infidelity",
    higher_is_better=False,
    summary="squared error of the heatmap's prediction of output changes under input noise",
    reference="Yeh et al., NeurIPS 2019",
    options=INFIDELITY_OPTIONS,
)
class Infidelity:
    """Options: ``infidelity_samples`` (32), ``infidelity_noise`` (0.02),
    ``infidelity_normalize`` (True), and the engine's ``seed`` and ``score``."""

    def compute(self, context: MetricContext) -> MetricResult:
        options = context.options
        n_perturb_samples = options["infidelity_samples"]
        settings = {
            "n_perturb_samples": n_perturb_samples,
            "noise": options["infidelity_noise"],
            "normalize": options["infidelity_normalize"],
            "seed": options["seed"],
            "score": context.score,
        }
        values = infidelity(
            context.model,
            context.inputs,
            context.heatmaps,
            target_list(context.targets),
            score=context.score,
            n_perturb_samples=n_perturb_samples,
            noise=float(settings["noise"]),
            normalize=settings["normalize"],
            max_examples_per_batch=context.chunk_size(len(context.targets) * n_perturb_samples),
            seed=settings["seed"],
        )
        return context.result("infidelity", values, False, settings)
