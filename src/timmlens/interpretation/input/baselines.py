"""Baselines of the input methods: what a removed or "absent" pixel becomes.

A baseline lives in normalised input space, like the model's inputs: named ones
(``"black"``, ``"blur"``, ``"noise"``, ``"uniform"``, `make_baseline`) are built per
batch; a tensor is taken as given. `reference_distribution` is the seeded set of
baselines DeepLiftShap and GradientShap average over.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
import torchvision.transforms.functional as TF
from torch import nn

from ...data import normalization

__all__ = [
    "BASELINE_NAMES",
    "BaselineName",
    "BaselineSpec",
    "gaussian_blur",
    "make_baseline",
    "reference_distribution",
    "validate_baseline",
]

BaselineName = Literal["black", "blur", "noise", "uniform"]
BaselineSpec = BaselineName | torch.Tensor
BASELINE_NAMES: tuple[str, ...] = get_args(BaselineName)

#: "blur" baseline: Gaussian sigma as a fraction of the shorter image side (28 px at 224).
BLUR_SIGMA_FRACTION = 1 / 8
#: "noise" baseline: pixel values ~ N(0.5, 0.25^2), clipped to [0, 1].
NOISE_PIXEL_MEAN, NOISE_PIXEL_STD = 0.5, 0.25


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
    * ``"blur"``: the input blurred with sigma ``min(H, W) / 8`` (`gaussian_blur`).
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


def reference_distribution(
    baseline: BaselineSpec,
    inputs: torch.Tensor,
    model: nn.Module,
    count: int,
    noise: float,
    seed: int,
) -> torch.Tensor:
    """A seeded distribution of ``count`` baselines ``(count, C, H, W)`` for ``inputs``.

    A named baseline (one picture for the whole batch, see
    `make_baseline`) and ``count - 1`` copies
    of it plus Gaussian pixel noise of std ``noise`` (pixel units, then normalised),
    drawn from a generator seeded with ``seed`` on the inputs' device. A tensor
    ``(k, C, H, W)`` is the distribution itself.
    """
    if isinstance(baseline, torch.Tensor) and baseline.ndim == 4:
        return baseline.to(device=inputs.device, dtype=inputs.dtype)
    base = make_baseline(baseline, inputs[:1], model, seed)
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    shape = (count - 1, *inputs.shape[1:])
    draws = torch.randn(shape, generator=generator, device=inputs.device).to(inputs.dtype)
    _, std = normalization(model, inputs)
    return torch.cat([base, base + noise * draws / std])
