"""Integrated Gradients (Sundararajan et al., 2017) through Captum, for any architecture.

IG attributes the target logit ``f`` to input pixels by integrating the gradient along
the straight path from a baseline ``x'`` to the input ``x``::

    IG(x) = (x - x') * integral_0^1 grad f(x' + a (x - x')) da

Captum evaluates the integral with an ``n_steps`` quadrature; *completeness* says the
attributions sum to ``f(x) - f(x')``, and the gap (the convergence delta) measures the
quadrature error. :meth:`IntegratedGradients.attribute_full` returns it per image.

All tensors live in model-input (normalised) space, on the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torchvision.transforms.functional as TF
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from torch import nn

from ...data import ImagesInput, normalization
from .._targets import TargetInput
from ..base import Explainer, normalize_maps

BaselineName = Literal["black", "blur", "noise", "uniform"]
BaselineSpec = BaselineName | torch.Tensor
IGMethod = Literal[
    "gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"
]

BASELINE_NAMES: tuple[str, ...] = get_args(BaselineName)
IG_METHODS: tuple[str, ...] = get_args(IGMethod)

#: Memory budget on devices whose free memory we cannot query (CPU, MPS): 2 GiB.
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 2**30
#: Fraction of the currently free CUDA memory used when no budget is given.
CUDA_FREE_MEMORY_FRACTION = 0.5
#: A backward pass keeps roughly every forward activation plus its gradient alive.
ACTIVATION_BYTES_FACTOR = 2.0
#: "blur" baseline: Gaussian sigma as a fraction of the shorter image side (28 px at 224).
BLUR_SIGMA_FRACTION = 1 / 8
#: "noise" baseline: pixel values ~ N(0.5, 0.25^2), clipped to [0, 1].
NOISE_PIXEL_MEAN, NOISE_PIXEL_STD = 0.5, 0.25


# --------------------------------------------------------------------------------------
# Shared helpers (also used by SmoothGrad)
# --------------------------------------------------------------------------------------


class TargetLogit(nn.Module):
    """``model``'s logit for each row's target class: ``(N, C, H, W), (N,)`` -> ``(N,)``.

    The targets travel as a forward argument, so Captum expands them alongside the
    inputs whatever its expansion order (step-major for IG, sample-major for
    NoiseTunnel).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs)
        return logits.gather(1, targets.to(logits.device).view(-1, 1))[:, 0]


def attribution_heatmap(attributions: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """Per-pixel maps from input attributions: ``(B, C, H, W)`` -> ``(B, H, W)``.

    ``signed=False``: absolute value summed over channels, min-max normalised to [0, 1].
    ``signed=True``: plain sum over channels (polarity kept), divided by each map's largest
    absolute value, so values lie in [-1, 1] with 0 meaning "no effect".
    """
    if not signed:
        return normalize_maps(attributions.abs().sum(dim=1))
    maps = attributions.sum(dim=1)
    scale = maps.flatten(1).abs().amax(dim=1).view(-1, 1, 1)
    return torch.where(scale > 0, maps / scale.clamp_min(1e-30), torch.zeros_like(maps))


def resolve_memory_budget(device: torch.device, budget_bytes: int | None) -> int:
    """Bytes one chunk of gradient evaluations may use.

    An explicit ``budget_bytes`` wins. Otherwise: on CUDA, half of the memory free right
    now; elsewhere :data:`DEFAULT_MEMORY_BUDGET_BYTES` (2 GiB).
    """
    if budget_bytes is not None:
        return budget_bytes
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FREE_MEMORY_FRACTION)
    return DEFAULT_MEMORY_BUDGET_BYTES


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (list, tuple)):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)


@torch.no_grad()
def forward_with_activation_bytes(
    model: nn.Module, inputs: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """One no-grad forward that also measures activation memory.

    Forward hooks on every leaf module add up the bytes of their outputs; that is close
    to what autograd keeps for the backward pass (an overestimate where modules work in
    place, an underestimate for fused kernels, which :data:`ACTIVATION_BYTES_FACTOR`
    covers).

    Returns:
        The model's output for ``inputs`` ``(B, K)`` and the activation bytes per sample.
    """
    total = 0

    def count(_module: nn.Module, _args: Any, output: Any) -> None:
        nonlocal total
        total += sum(t.numel() * t.element_size() for t in _tensors(output))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        logits = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    per_sample = inputs[0].numel() * inputs.element_size() + total // inputs.shape[0]
    return logits, max(1, per_sample)


def samples_per_chunk(bytes_per_sample: int, budget_bytes: int) -> int:
    """How many forward+backward samples fit the budget (at least 1).

    Rule: ``budget // (ACTIVATION_BYTES_FACTOR * bytes_per_sample)``, with
    ``bytes_per_sample`` from :func:`forward_with_activation_bytes`.
    """
    return max(1, int(budget_bytes // (ACTIVATION_BYTES_FACTOR * bytes_per_sample)))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with reflect padding (torchvision): ``(B, C, H, W)`` -> same shape.

    The kernel spans ``+-3 sigma`` (odd size), cut to ``2 * min(H, W) - 1`` so reflect
    padding stays valid. Blur and per-channel normalisation commute (the kernel sums to
    one), so normalised inputs may be blurred directly.
    """
    height, width = images.shape[-2:]
    radius = min(math.ceil(3 * sigma), min(height, width) - 1)
    if sigma <= 0 or radius < 1:
        return images.clone()
    size = 2 * radius + 1
    return TF.gaussian_blur(images, [size, size], [sigma, sigma])


def validate_baseline(baseline: Any) -> BaselineSpec:
    """Check a baseline spec at construction time (names and tensor ranks)."""
    if isinstance(baseline, torch.Tensor):
        if not baseline.is_floating_point():
            raise ValueError(
                f"baseline tensor has dtype {baseline.dtype}; expected a float tensor in the "
                f"model's normalised input space (shape (C, H, W), (1, C, H, W) or (B, C, H, W))."
            )
        if baseline.ndim > 4 or baseline.numel() == 0:
            raise ValueError(
                f"baseline tensor of shape {tuple(baseline.shape)} cannot broadcast to a "
                f"(B, C, H, W) batch; expected (C, H, W), (1, C, H, W), (B, C, H, W) or "
                f"(C, 1, 1)."
            )
        if not torch.isfinite(baseline).all():
            raise ValueError("baseline tensor contains NaN or inf.")
        return baseline
    if not isinstance(baseline, str) or baseline not in BASELINE_NAMES:
        raise ValueError(
            f"unknown baseline {baseline!r}; expected one of {', '.join(BASELINE_NAMES)} or a "
            f"tensor in normalised input space broadcastable to (B, C, H, W). Try 'black'."
        )
    return baseline


def make_baseline(
    baseline: BaselineSpec, inputs: torch.Tensor, model: nn.Module, seed: int = 0
) -> torch.Tensor:
    """The IG start point for ``inputs`` ``(B, C, H, W)``, in normalised input space.

    * ``"black"``: the black picture (pixel 0), i.e. ``(0 - mean) / std`` per channel.
    * ``"blur"``: the input blurred with sigma ``min(H, W) / 8`` (:func:`gaussian_blur`).
    * ``"noise"``: pixels ~ ``N(0.5, 0.25^2)`` clipped to [0, 1], then normalised.
    * ``"uniform"``: pixels ~ ``U[0, 1]``, then normalised.
    * a tensor: taken as normalised input, broadcast to the batch.

    Random baselines are drawn from a generator seeded with ``seed`` on the inputs'
    device, one ``(1, C, H, W)`` picture shared by the batch, so an image gets the same
    baseline alone or inside any batch.

    Returns:
        A contiguous ``(B, C, H, W)`` tensor on ``inputs``' device and dtype.
    """
    baseline = validate_baseline(baseline)
    if isinstance(baseline, torch.Tensor):
        try:
            shape = torch.broadcast_shapes(baseline.shape, inputs.shape)
        except RuntimeError:
            shape = None
        if shape != inputs.shape:
            raise ValueError(
                f"baseline tensor of shape {tuple(baseline.shape)} does not broadcast to the "
                f"input batch {tuple(inputs.shape)}; expected (C, H, W) = "
                f"{tuple(inputs.shape[1:])}, (1, C, H, W) or (B, C, H, W). Build it at the "
                f"model's input size, or use baseline='black'."
            )
        out = baseline.to(device=inputs.device, dtype=inputs.dtype).expand(inputs.shape)
        return out.contiguous()
    if baseline == "blur":
        sigma = min(inputs.shape[-2:]) * BLUR_SIGMA_FRACTION
        return gaussian_blur(inputs.detach(), sigma)
    mean, std = normalization(model, inputs)
    one = (1, *inputs.shape[1:])
    if baseline == "black":
        pixels = torch.zeros(one, device=inputs.device, dtype=inputs.dtype)
    else:
        generator = torch.Generator(device=inputs.device).manual_seed(seed)
        if baseline == "noise":
            draw = torch.randn(one, generator=generator, device=inputs.device)
            pixels = (NOISE_PIXEL_MEAN + NOISE_PIXEL_STD * draw).clamp(0, 1)
        else:  # "uniform"
            pixels = torch.rand(one, generator=generator, device=inputs.device)
        pixels = pixels.to(inputs.dtype)
    return ((pixels - mean) / std).expand(inputs.shape).contiguous()


def _check_positive_int(value: Any, name: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}. {hint}")
    return value


def _check_budget(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"memory_budget_bytes must be a positive integer number of bytes or None (auto), "
            f"got {value!r}. Try 2 * 2**30 for 2 GiB."
        )
    return value


# --------------------------------------------------------------------------------------
# Integrated Gradients
# --------------------------------------------------------------------------------------


@dataclass
class IGResult:
    """Everything one Integrated Gradients run computed, batched.

    Attributes:
        attributions: ``(B, C, H, W)`` raw IG attributions (normalised input space).
        heatmap: ``(B, H, W)`` the maps :meth:`IntegratedGradients.explain` returns.
        convergence_delta: ``(B,)`` ``sum(attributions) - (f(x) - f(baseline))``, as Captum's
            ``return_convergence_delta=True`` defines it.
        targets: ``(B,)`` the explained classes.
        score: ``(B,)`` the target logit at the input, ``f(x)``.
        baseline_score: ``(B,)`` the target logit at the baseline, ``f(baseline)``.
        baselines: ``(B, C, H, W)`` the baselines used.
    """

    attributions: torch.Tensor
    heatmap: torch.Tensor
    convergence_delta: torch.Tensor
    targets: torch.Tensor
    score: torch.Tensor
    baseline_score: torch.Tensor
    baselines: torch.Tensor

    @property
    def relative_delta(self) -> torch.Tensor:
        """``(B,)`` ``|delta| / |f(x) - f(baseline)|``: the quadrature error relative to the
        logit change being explained (``inf``/``nan`` where input and baseline score the same)."""
        gap = (self.score - self.baseline_score).abs().to(self.convergence_delta.dtype)
        return self.convergence_delta.abs() / gap


class IntegratedGradients(Explainer):
    """Integrated Gradients on the input pixels, via ``captum.attr.IntegratedGradients``.

    Works for any classifier (CNN, ViT, ...): it only needs gradients w.r.t. the input.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        n_steps: quadrature points along the path (>= 1). More steps, smaller
            convergence delta; 50 is usual, check :attr:`IGResult.relative_delta`.
        method: Captum's quadrature rule: ``"gausslegendre"`` (default, most accurate per
            step) or ``"riemann_left" | "riemann_right" | "riemann_middle" |
            "riemann_trapezoid"``.
        internal_batch_size: images per forward/backward chunk (Captum's meaning: steps
            times images). ``None`` picks the largest chunk that fits
            ``memory_budget_bytes``: one no-grad forward of a single image with hooks on
            every leaf module measures activation bytes per sample ``a``, and the chunk is
            ``budget // (2 * a)`` samples (:func:`samples_per_chunk`). A chunk always holds
            at least one step for the whole batch.
        baseline: ``"black"`` (default), ``"blur"``, ``"noise"``, ``"uniform"`` or a
            tensor broadcastable to ``(B, C, H, W)`` in normalised input space; see
            :func:`make_baseline`.
        memory_budget_bytes: budget for automatic chunking; ``None``: half the free CUDA
            memory, 2 GiB elsewhere.
        signed: heatmaps keep polarity (sum over channels, scaled to [-1, 1]) instead of
            absolute values min-max scaled to [0, 1].
        seed: seed of the ``"noise"`` and ``"uniform"`` baselines.

    Shapes:
        ``explainer(images, target_class)``: ``(H, W)`` for one image, ``(B, H, W)`` for
        a batch. :meth:`attribute_full`: an :class:`IGResult` (always batched).
    """

    name = "integrated_gradients"

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
        super().__init__(model)
        self.n_steps = _check_positive_int(
            n_steps, "n_steps", "Use 50 (or more, until relative_delta is small)."
        )
        if method not in IG_METHODS:
            raise ValueError(
                f"unknown IG method {method!r}; expected one of {', '.join(IG_METHODS)}. "
                f"Try 'gausslegendre'."
            )
        self.method: IGMethod = method
        if internal_batch_size is not None:
            _check_positive_int(
                internal_batch_size, "internal_batch_size", "Or pass None to size it from memory."
            )
        self.internal_batch_size = internal_batch_size
        self.baseline = validate_baseline(baseline)
        self.memory_budget_bytes = _check_budget(memory_budget_bytes)
        self.signed = bool(signed)
        self.seed = int(seed)
        self.forward_func = TargetLogit(model)
        self._captum = CaptumIntegratedGradients(self.forward_func)
        self._last_result: IGResult | None = None

    def attribute_full(self, images: ImagesInput, target_class: TargetInput = None) -> IGResult:
        """Attributions, heatmaps and completeness for ``images`` (always batched).

        Costs one extra no-grad forward of inputs and baselines on top of the IG passes.
        """
        batch = self.prepare(images)
        self.explain_batch(batch.tensor, target_class, completeness=True)
        assert self._last_result is not None
        return self._last_result

    def baselines_for(self, inputs: torch.Tensor) -> torch.Tensor:
        """The baselines ``(B, C, H, W)`` used for preprocessed ``inputs`` ``(B, C, H, W)``."""
        return make_baseline(self.baseline, inputs, self.model, self.seed)

    def attribute(
        self, inputs: torch.Tensor, targets: list[int] | None, **kwargs: Any
    ) -> torch.Tensor:
        """Heatmaps ``(B, H, W)``; ``completeness=True`` also keeps a full :class:`IGResult`."""
        completeness = bool(kwargs.pop("completeness", False))
        if kwargs:
            raise TypeError(f"unexpected arguments for IntegratedGradients: {sorted(kwargs)}.")
        batch_size = inputs.shape[0]
        inputs = inputs.detach()
        baselines = self.baselines_for(inputs)
        bytes_per_sample: int | None = None
        scores: tuple[torch.Tensor, torch.Tensor] | None = None

        # One no-grad forward resolves predicted classes (before walking the path: the
        # argmax changes along it), gives f(x), f(x') and measures activation memory.
        if targets is None or completeness:
            probe = torch.cat([inputs, baselines]) if completeness else inputs
            logits, bytes_per_sample = forward_with_activation_bytes(self.model, probe)
            if targets is None:
                target_t = logits[:batch_size].argmax(dim=1)
            else:
                target_t = torch.tensor(targets, device=logits.device, dtype=torch.long)
            if completeness:
                picked = logits.gather(1, target_t.repeat(2)[:, None])[:, 0]
                scores = (picked[:batch_size], picked[batch_size:])
        else:
            target_t = torch.tensor(targets, device=inputs.device, dtype=torch.long)
        self.last_targets = target_t

        chunk = self.internal_batch_size
        if chunk is None:
            if bytes_per_sample is None:
                _, bytes_per_sample = forward_with_activation_bytes(self.model, inputs[:1])
            budget = resolve_memory_budget(inputs.device, self.memory_budget_bytes)
            chunk = samples_per_chunk(bytes_per_sample, budget)
        chunk = max(chunk, batch_size)
        attributions = self._captum.attribute(
            inputs,
            baselines=baselines,
            additional_forward_args=(target_t,),
            n_steps=self.n_steps,
            method=self.method,
            internal_batch_size=None if chunk >= batch_size * self.n_steps else chunk,
        )
        attributions = attributions.detach()
        heatmap = attribution_heatmap(attributions, self.signed)
        if scores is not None:
            total = attributions.flatten(1).double().sum(dim=1)
            delta = total - (scores[0].double() - scores[1].double())
            self._last_result = IGResult(
                attributions=attributions,
                heatmap=heatmap,
                convergence_delta=delta,
                targets=target_t,
                score=scores[0],
                baseline_score=scores[1],
                baselines=baselines,
            )
        return heatmap
