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
from captum.attr import GradientAttribution, NoiseTunnel, Saliency
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from torch import nn

from ..base import Explainer
from .integrated_gradients import (
    IG_METHODS,
    BaselineSpec,
    IGMethod,
    TargetLogit,
    _check_budget,
    _check_positive_int,
    attribution_heatmap,
    forward_with_activation_bytes,
    make_baseline,
    resolve_memory_budget,
    samples_per_chunk,
    validate_baseline,
)

NTType = Literal["smoothgrad", "smoothgrad_sq", "vargrad"]
SmoothGradBase = Literal["saliency", "ig"]

NT_TYPES: tuple[str, ...] = get_args(NTType)
SMOOTHGRAD_BASES: tuple[str, ...] = get_args(SmoothGradBase)


class RangeNoiseTunnel(NoiseTunnel):
    """Captum's ``NoiseTunnel`` with per-image noise scale and reproducible draws.

    ``stdevs`` must be a one-element tuple holding a ``(B,)`` tensor of per-image
    standard deviations. Noise for sample ``j`` is ``stdevs[b] * N_j`` where ``N_j`` is
    the ``j``-th ``(C, H, W)`` draw of :attr:`generator`: draws happen sample by sample in
    order, so chunking (``nt_samples_batch_size``) does not change them. Call
    :meth:`reseed` before each ``attribute``.
    """

    def __init__(self, attribution_method: GradientAttribution) -> None:
        super().__init__(attribution_method)
        self.generator: torch.Generator | None = None

    def reseed(self, device: torch.device, seed: int) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def _add_noise_to_inputs(  # type: ignore[override]
        self,
        nt_samples_partition: int,
        inputs: tuple[torch.Tensor, ...],
        stdevs: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, ...]:
        if self.generator is None:
            raise RuntimeError("RangeNoiseTunnel.reseed(device, seed) must be called first.")
        noisy = []
        for x, stdev in zip(inputs, stdevs, strict=True):
            batch, *rest = x.shape
            draws = torch.stack(
                [
                    torch.randn(rest, generator=self.generator, device=x.device)
                    for _ in range(nt_samples_partition)
                ]
            ).to(x.dtype)  # (k, C, H, W)
            scale = stdev.to(device=x.device, dtype=x.dtype).view(batch, 1, *[1] * len(rest))
            noise = (scale * draws.unsqueeze(0)).reshape(batch * nt_samples_partition, *rest)
            sample = x.repeat_interleave(nt_samples_partition, dim=0) + noise
            noisy.append(sample.requires_grad_() if self.is_gradient_method else sample)
        return tuple(noisy)


def noise_stdevs(inputs: torch.Tensor, noise_level: float) -> torch.Tensor:
    """Per-image noise scale ``noise_level * (x.max() - x.min())``: ``(B, ...)`` -> ``(B,)``."""
    flat = inputs.detach().flatten(1)
    return noise_level * (flat.amax(dim=1) - flat.amin(dim=1))


class SmoothGrad(Explainer):
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
            :class:`~timmlens.interpretation.IntegratedGradients` for the rule).
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
        a batch; :attr:`last_attributions` holds the raw ``(B, C, H, W)`` attributions.
    """

    name = "smoothgrad"

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
        super().__init__(model)
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
        self.n_samples = _check_positive_int(n_samples, "n_samples", "Try 25 (Smilkov et al.).")
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
            _check_positive_int(
                nt_samples_batch_size, "nt_samples_batch_size", "Or None to size it from memory."
            )
        self.nt_samples_batch_size = nt_samples_batch_size
        self.seed = int(seed)
        self.n_steps = _check_positive_int(n_steps, "n_steps", "Try 16 for SmoothGrad over IG.")
        if method not in IG_METHODS:
            raise ValueError(
                f"unknown IG method {method!r}; expected one of {', '.join(IG_METHODS)}."
            )
        self.method: IGMethod = method
        self.baseline = validate_baseline(baseline)
        self.memory_budget_bytes = _check_budget(memory_budget_bytes)
        self.signed = bool(signed)
        self.forward_func = TargetLogit(model)
        inner: GradientAttribution = (
            Saliency(self.forward_func)
            if base == "saliency"
            else CaptumIntegratedGradients(self.forward_func)
        )
        self._tunnel = RangeNoiseTunnel(inner)
        #: raw ``(B, C, H, W)`` attributions of the last call
        self.last_attributions: torch.Tensor | None = None

    def _chunking(
        self, bytes_per_sample: int | None, batch_size: int, device: torch.device
    ) -> tuple[int, int | None]:
        """``(nt_samples_batch_size, IG internal_batch_size)`` that fit the memory budget.

        ``bytes_per_sample`` (from :func:`forward_with_activation_bytes`) may be ``None``
        only for ``base="saliency"`` with an explicit ``nt_samples_batch_size``.
        """
        if bytes_per_sample is None:
            assert self.nt_samples_batch_size is not None and self.base == "saliency"
            return self.nt_samples_batch_size, None
        capacity = samples_per_chunk(
            bytes_per_sample, resolve_memory_budget(device, self.memory_budget_bytes)
        )
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
    ) -> torch.Tensor:
        """Heatmaps ``(B, H, W)`` for preprocessed ``inputs`` ``(B, C, H, W)``."""
        if kwargs:
            raise TypeError(f"unexpected arguments for SmoothGrad: {sorted(kwargs)}.")
        inputs = inputs.detach()
        batch_size = inputs.shape[0]
        bytes_per_sample: int | None = None
        if targets is None:
            # The predicted class of the clean image, not of each noisy copy.
            logits, bytes_per_sample = forward_with_activation_bytes(self.model, inputs)
            target_t = logits.argmax(dim=1)
        else:
            target_t = torch.tensor(targets, device=inputs.device, dtype=torch.long)
        self.last_targets = target_t
        if bytes_per_sample is None and (self.nt_samples_batch_size is None or self.base == "ig"):
            _, bytes_per_sample = forward_with_activation_bytes(self.model, inputs[:1])
        per_chunk, internal = self._chunking(bytes_per_sample, batch_size, inputs.device)

        extra: dict[str, Any] = {}
        if self.base == "saliency":
            extra["abs"] = False
        else:
            extra["baselines"] = make_baseline(self.baseline, inputs, self.model, self.seed)
            extra["n_steps"] = self.n_steps
            extra["method"] = self.method
            extra["internal_batch_size"] = internal
        self._tunnel.reseed(inputs.device, self.seed)
        attributions = self._tunnel.attribute(
            inputs,
            nt_type=self.nt_type,
            nt_samples=self.n_samples,
            nt_samples_batch_size=per_chunk,
            stdevs=(noise_stdevs(inputs, self.noise_level),),
            additional_forward_args=(target_t,),
            **extra,
        )
        self.last_attributions = attributions.detach()
        return attribution_heatmap(self.last_attributions, self.signed)
