"""Integrated Gradients (Sundararajan et al., 2017) through Captum, for any architecture.

IG attributes the target logit ``f`` to input pixels by integrating the gradient along
the straight path from a baseline ``x'`` to the input ``x``::

    IG(x) = (x - x') * integral_0^1 grad f(x' + a (x - x')) da

Captum evaluates the integral with an ``n_steps`` quadrature; *completeness* says the
attributions sum to ``f(x) - f(x')``, and the gap (the convergence delta) measures the
quadrature error. [`IntegratedGradients.attribute_full`][] returns it per image.

All tensors live in model-input (normalised) space, on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from ...data import ImagesInput
from .._targets import TargetInput
from ..base import Explanation
from ..registry import register_method
from .baselines import BaselineSpec, gaussian_blur, make_baseline
from .checks import check_positive_int
from .engine import CaptumInputExplainer

__all__ = ["IG_METHODS", "IGResult", "IntegratedGradients", "gaussian_blur", "make_baseline"]

IGMethod = Literal[
    "gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"
]
IG_METHODS: tuple[str, ...] = get_args(IGMethod)


@dataclass(frozen=True, eq=False, kw_only=True)
class IGResult(Explanation):
    """An [`Explanation`][timmlens.interpretation.base.Explanation] of IG with its completeness.

    Attributes (besides the [`Explanation`][] ones; ``attributions`` is
    ``(B, C, H, W)``, ``logits`` ``(B, K)``):
        convergence_delta: ``(B,)`` ``sum(attributions) - (f(x) - f(baseline))``, as Captum's
            ``return_convergence_delta=True`` defines it.
        score: ``(B,)`` the target logit at the input, ``f(x)``.
        baseline_score: ``(B,)`` the target logit at the baseline, ``f(baseline)``.
        baselines: ``(B, C, H, W)`` the baselines used.
    """

    convergence_delta: torch.Tensor
    score: torch.Tensor
    baseline_score: torch.Tensor
    baselines: torch.Tensor

    @property
    def relative_delta(self) -> torch.Tensor:
        """``(B,)`` ``|delta| / |f(x) - f(baseline)|``: the quadrature error relative to the
        logit change being explained (``inf``/``nan`` where input and baseline score the same)."""
        gap = (self.score - self.baseline_score).abs().to(self.convergence_delta.dtype)
        return self.convergence_delta.abs() / gap


@register_method(
    "ig",
    title="Integrated Gradients",
    kind="input",
    aliases=("integrated_gradients", "integratedgradients"),
    summary="path integral of input gradients from a baseline (pixel-level, any model)",
    paper="Sundararajan et al., Axiomatic Attribution for Deep Networks, ICML 2017",
    formula="(x - x') * sum_s w_s dy/dx(x' + a_s (x - x')), summed over channels",
    cost="n_steps forwards + n_steps backwards (n_steps=50)",
    quick_options={"n_steps": 4},
)
class IntegratedGradients(CaptumInputExplainer):
    """Integrated Gradients on the input pixels, via ``captum.attr.IntegratedGradients``.

    Works for any classifier (CNN, ViT, ...): it only needs gradients w.r.t. the input.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        n_steps: quadrature points along the path (>= 1). More steps, smaller
            convergence delta; 50 is usual, check `IGResult.relative_delta`.
        method: Captum's quadrature rule: ``"gausslegendre"`` (default, most accurate per
            step) or ``"riemann_left" | "riemann_right" | "riemann_middle" |
            "riemann_trapezoid"``.
        internal_batch_size: images per forward/backward chunk (Captum's meaning: steps
            times images). ``None`` picks the largest chunk that fits
            ``memory_budget_bytes``: one no-grad forward of a single image with hooks on
            every leaf module measures activation bytes per sample ``a``, and the chunk is
            ``budget // (2 * a)`` samples (`samples_per_chunk`). A chunk always holds
            at least one step for the whole batch.
        baseline: ``"black"`` (default), ``"blur"``, ``"noise"``, ``"uniform"`` or a
            tensor broadcastable to ``(B, C, H, W)`` in normalised input space; see
            `make_baseline`.
        memory_budget_bytes: budget for automatic chunking; ``None``: half the free CUDA
            memory, 2 GiB elsewhere.
        signed: heatmaps keep polarity (sum over channels, scaled to [-1, 1]) instead of
            absolute values min-max scaled to [0, 1].
        seed: seed of the ``"noise"`` and ``"uniform"`` baselines.

    Shapes:
        ``explainer(images, target_class)``: ``(H, W)`` for one image, ``(B, H, W)`` for
        a batch. [`attribute_full`][]: an `IGResult` (always batched).
    """

    captum_class = "IntegratedGradients"

    def __init__(
        self,
        model: nn.Module,
        n_steps: int = 50,
        method: IGMethod = "gausslegendre",
        internal_batch_size: int | None = None,
        baseline: BaselineSpec = "black",
        memory_budget_bytes: int | None = None,
        *,
        signed: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            baseline=baseline,
            memory_budget_bytes=memory_budget_bytes,
            signed=signed,
            seed=seed,
        )
        self.n_steps = check_positive_int(
            n_steps, "n_steps", "Use 50 (or more, until relative_delta is small)."
        )
        if method not in IG_METHODS:
            raise ValueError(
                f"unknown IG method {method!r}; expected one of {', '.join(IG_METHODS)}. "
                f"Try 'gausslegendre'."
            )
        self.method: IGMethod = method
        if internal_batch_size is not None:
            check_positive_int(
                internal_batch_size, "internal_batch_size", "Or pass None to size it from memory."
            )
        self.internal_batch_size = internal_batch_size

    def attribute_full(self, images: ImagesInput, target_class: TargetInput = None) -> IGResult:
        """Attributions, heatmaps and completeness for ``images`` (always batched).

        Costs one extra no-grad forward of inputs and baselines on top of the IG passes.
        """
        result = self.explain_full(images, target_class, completeness=True)
        assert isinstance(result, IGResult)
        return result

    def attribute(
        self, inputs: torch.Tensor, targets: list[int] | None, **kwargs: Any
    ) -> Explanation:
        """The explanation of ``inputs`` ``(B, C, H, W)``; ``completeness=True`` gives an
        `IGResult` (one extra forward of inputs and baselines)."""
        completeness = bool(kwargs.pop("completeness", False))
        if kwargs:
            raise TypeError(f"unexpected arguments for IntegratedGradients: {sorted(kwargs)}.")
        batch_size = inputs.shape[0]
        inputs = inputs.detach()
        baselines = self.baselines_for(inputs)
        # One no-grad forward resolves predicted classes (before walking the path: the
        # argmax changes along it), gives f(x), f(x') and measures activation memory.
        chosen, logits, per_sample = self.targets_for(
            inputs, targets, also=baselines if completeness else None
        )
        chunk = self.internal_batch_size or self.capacity(inputs, per_sample)
        chunk = max(chunk, batch_size)
        attributions = self.run(
            inputs,
            chosen,
            baselines=baselines,
            n_steps=self.n_steps,
            method=self.method,
            internal_batch_size=None if chunk >= batch_size * self.n_steps else chunk,
        )
        plain = self.explanation(attributions, chosen, logits)
        if not completeness:
            return plain
        assert logits is not None  # the probe ran on inputs and baselines
        picked = logits.gather(1, chosen.repeat(2)[:, None])[:, 0]
        score, baseline_score = picked[:batch_size], picked[batch_size:]
        total = attributions.flatten(1).double().sum(dim=1)
        return IGResult(
            heatmap=plain.heatmap,
            targets=chosen,
            logits=plain.logits,
            attributions=attributions,
            convergence_delta=total - (score.double() - baseline_score.double()),
            score=score,
            baseline_score=baseline_score,
            baselines=baselines,
        )
