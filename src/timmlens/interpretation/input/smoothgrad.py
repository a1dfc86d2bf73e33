"""SmoothGrad, SmoothGrad-squared and VarGrad through Captum's ``NoiseTunnel``.

SmoothGrad (Smilkov et al., 2017) averages an attribution over noisy copies of the
input, ``x + N(0, sigma^2)``, which removes much of the high-frequency noise of raw
gradients. As in the paper, ``sigma`` is a fraction of each image's value range:
``sigma = noise_level * (x.max() - x.min())`` (Captum's default is an absolute
``stdevs=1.0``, far too strong for normalised images).

Noise is drawn from a private ``torch.Generator`` seeded with ``seed`` on the model's
device: the global RNG is untouched, and one noise picture is drawn per sample and
shared by the batch (scaled per image), so an image gets the same map alone or in a
batch, whatever ``nt_samples_batch_size``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import nn

from .._captum import range_noise_tunnel
from ..base import Explanation
from ..registry import register_method
from .baselines import BaselineSpec
from .checks import check_positive_int
from .engine import CaptumInputExplainer
from .integrated_gradients import IG_METHODS, IGMethod

NTType = Literal["smoothgrad", "smoothgrad_sq", "vargrad"]
SmoothGradBase = Literal["saliency", "ig"]

NT_TYPES: tuple[str, ...] = get_args(NTType)
SMOOTHGRAD_BASES: tuple[str, ...] = get_args(SmoothGradBase)


def noise_stdevs(inputs: torch.Tensor, noise_level: float) -> torch.Tensor:
    """Per-image noise scale ``noise_level * (x.max() - x.min())``: ``(B, ...)`` -> ``(B,)``."""
    flat = inputs.detach().flatten(1)
    return noise_level * (flat.amax(dim=1) - flat.amin(dim=1))


@register_method(
    "smoothgrad",
    title="SmoothGrad",
    kind="input",
    summary="input gradients averaged over noisy copies (pixel-level, any model)",
    paper="Smilkov et al., SmoothGrad: removing noise by adding noise, 2017",
    formula="mean_j dy/dx(x + N(0, (noise_level * range(x))^2))",
    cost="n_samples forwards + n_samples backwards (n_samples=25; x n_steps with base='ig')",
    quick_options={"n_samples": 4},
)
class SmoothGrad(CaptumInputExplainer):
    """SmoothGrad / SmoothGrad² / VarGrad over input gradients or Integrated Gradients.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        nt_type: ``"smoothgrad"`` (mean of sample attributions), ``"smoothgrad_sq"``
            (mean of their squares) or ``"vargrad"`` (their variance).
        n_samples: noisy samples per image (>= 1).
        noise_level: noise std as a fraction of each image's value range (>= 0; the
            paper finds 0.1-0.2 best; 0 gives the plain gradient).
        base: the attribution averaged: ``"saliency"`` (input gradients) or ``"ig"``
            (Integrated Gradients with ``n_steps``, ``method`` and ``baseline``).
        nt_samples_batch_size: noisy samples per image in one chunk; ``None`` sizes the
            chunk from ``memory_budget_bytes`` (see
            [`IntegratedGradients`][timmlens.interpretation.IntegratedGradients] for the rule).
        seed: seed of the noise (and of random IG baselines).
        n_steps: IG integration steps when ``base="ig"``.
        method: IG quadrature rule when ``base="ig"``.
        baseline: IG baseline when ``base="ig"``.
        memory_budget_bytes: budget for automatic chunking; ``None``: half the free CUDA
            memory, 2 GiB elsewhere.
        signed: heatmaps keep polarity (sum over channels, scaled to [-1, 1]); meaningful
            for ``"smoothgrad"`` only, the other two are non-negative.

    The base attribution keeps signed gradients (Captum's ``Saliency(abs=False)``):
    ``"smoothgrad"`` averages signed gradients as in the paper, and ``"vargrad"`` is the
    variance of the gradients themselves, not of their absolute values. The absolute
    value is taken only when the heatmap is made.

    Shapes:
        ``explainer(images, target_class)``: ``(H, W)`` for one image, ``(B, H, W)`` for
        a batch; [`explain_full`][timmlens.interpretation.base.Explainer.explain_full]
        also gives the raw ``(B, C, H, W)`` attributions.
    """

    def __init__(
        self,
        model: nn.Module,
        nt_type: NTType = "smoothgrad",
        n_samples: int = 25,
        noise_level: float = 0.15,
        base: SmoothGradBase = "saliency",
        nt_samples_batch_size: int | None = None,
        seed: int = 0,
        *,
        n_steps: int = 16,
        method: IGMethod = "gausslegendre",
        baseline: BaselineSpec = "black",
        memory_budget_bytes: int | None = None,
        signed: bool = False,
    ) -> None:
        super().__init__(
            model,
            baseline=baseline,
            memory_budget_bytes=memory_budget_bytes,
            signed=signed,
            seed=seed,
        )
        if nt_type not in NT_TYPES:
            raise ValueError(
                f"unknown nt_type {nt_type!r}; expected one of {', '.join(NT_TYPES)}. "
                f"Try 'smoothgrad'."
            )
        if base not in SMOOTHGRAD_BASES:
            raise ValueError(
                f"unknown base {base!r}; expected 'saliency' (input gradients) or 'ig' "
                f"(Integrated Gradients)."
            )
        self.nt_type: NTType = nt_type
        self.base: SmoothGradBase = base
        self.n_samples = check_positive_int(n_samples, "n_samples", "Try 25 (Smilkov et al.).")
        if (
            isinstance(noise_level, bool)
            or not isinstance(noise_level, (int, float))
            or not noise_level >= 0
            or noise_level == float("inf")
        ):
            raise ValueError(
                f"noise_level must be a finite number >= 0 (a fraction of each image's value "
                f"range), got {noise_level!r}. Try 0.15; 0.1-0.2 works best in the paper."
            )
        self.noise_level = float(noise_level)
        if nt_samples_batch_size is not None:
            check_positive_int(
                nt_samples_batch_size, "nt_samples_batch_size", "Or None to size it from memory."
            )
        self.nt_samples_batch_size = nt_samples_batch_size
        self.n_steps = check_positive_int(n_steps, "n_steps", "Try 16 for SmoothGrad over IG.")
        if method not in IG_METHODS:
            raise ValueError(
                f"unknown IG method {method!r}; expected one of {', '.join(IG_METHODS)}."
            )
        self.method: IGMethod = method

    def captum_method(self, forward_func: nn.Module, device: torch.device) -> Any:
        from captum.attr import IntegratedGradients, Saliency

        inner = (
            Saliency(forward_func) if self.base == "saliency" else IntegratedGradients(forward_func)
        )
        return range_noise_tunnel(inner, torch.Generator(device=device).manual_seed(self.seed))

    def _chunking(
        self, inputs: torch.Tensor, bytes_per_sample: int | None
    ) -> tuple[int, int | None]:
        """``(nt_samples_batch_size, IG internal_batch_size)`` that fit the memory budget."""
        if self.nt_samples_batch_size is not None and self.base == "saliency":
            return self.nt_samples_batch_size, None
        capacity = self.capacity(inputs, bytes_per_sample)
        batch_size = inputs.shape[0]
        steps = self.n_steps if self.base == "ig" else 1
        per_chunk = self.nt_samples_batch_size or min(
            self.n_samples, max(1, capacity // (batch_size * steps))
        )
        if self.base != "ig":
            return per_chunk, None
        rows = batch_size * per_chunk
        return per_chunk, max(rows, min(capacity, rows * steps))

    def attribute(
        self, inputs: torch.Tensor, targets: list[int] | None, **kwargs: Any
    ) -> Explanation:
        """The explanation of preprocessed ``inputs`` ``(B, C, H, W)``."""
        if kwargs:
            raise TypeError(f"unexpected arguments for SmoothGrad: {sorted(kwargs)}.")
        inputs = inputs.detach()
        # The predicted class of the clean image, not of each noisy copy.
        chosen, logits, bytes_per_sample = self.targets_for(inputs, targets)
        per_chunk, internal = self._chunking(inputs, bytes_per_sample)
        extra: dict[str, Any] = {"abs": False}
        if self.base == "ig":
            extra = {
                "baselines": self.baselines_for(inputs),
                "n_steps": self.n_steps,
                "method": self.method,
                "internal_batch_size": internal,
            }
        attributions = self.run(
            inputs,
            chosen,
            nt_type=self.nt_type,
            nt_samples=self.n_samples,
            nt_samples_batch_size=per_chunk,
            stdevs=(noise_stdevs(inputs, self.noise_level),),
            **extra,
        )
        return self.explanation(attributions, chosen, logits)
