"""Insertion and deletion curves (RISE, Petsiuk et al., BMVC 2018) from rank masks.

Pixels are ranked once per image, most salient first. Step ``t`` of a curve changes the
``k_t`` top-ranked pixels: ``x_t = where(rank < k_t, finish, start)``.

* **Deletion** starts from the image and puts the deletion substrate (default: zeros of
  the model input, as in RISE) in place of the most salient pixels; a faithful heatmap
  makes the target score fall fast: lower AUC is better.
* **Insertion** starts from a blurred copy (default: Gaussian, kernel 11, sigma 5) and
  puts the original pixels back, most salient first; higher AUC is better.

Curves have ``n_steps + 1`` points, from 0 pixels changed to all of them; ``x`` is the
fraction changed, in [0, 1], and the AUC is the trapezoid rule over ``(x, y)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchvision.transforms import functional as TF

#: Default number of steps: 224, i.e. RISE's 224 pixels per step at 224 x 224.
DEFAULT_STEPS = 224

SubstrateSpec = str | float | int | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
SUBSTRATE_NAMES: tuple[str, ...] = ("zeros", "blur", "mean")


def pixel_ranks(heatmaps: torch.Tensor) -> torch.Tensor:
    """Position of every pixel in its image's saliency order: ``(B, H, W)`` -> ``(B, H*W)``.

    Rank 0 is the most salient pixel. Ties are broken by a stable sort: among equal
    values the pixel with the lower row-major index (top-left first) ranks first.
    Returns int32 ranks on the heatmaps' device.
    """
    flat = heatmaps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    positions = torch.arange(flat.shape[1], device=flat.device, dtype=torch.int32)
    ranks = torch.empty(flat.shape, device=flat.device, dtype=torch.int32)
    ranks.scatter_(1, order, positions.expand_as(flat).contiguous())
    return ranks


def check_step_options(steps: int | None, pixels_per_step: int | None) -> None:
    """Validate ``steps`` / ``pixels_per_step`` before any image is seen."""
    if steps is not None and pixels_per_step is not None:
        raise ValueError(
            f"give either steps={steps} or pixels_per_step={pixels_per_step}, not both: steps "
            f"spaces the curve evenly, pixels_per_step changes a fixed number of pixels per step."
        )
    for name, value in (("steps", steps), ("pixels_per_step", pixels_per_step)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if value <= 0:
            raise ValueError(
                f"{name} must be a positive int, got {value}; try steps=224 (RISE's setting at "
                f"224x224) or pixels_per_step=224."
            )


def step_counts(
    num_pixels: int, steps: int | None = None, pixels_per_step: int | None = None
) -> torch.Tensor:
    """How many pixels are changed at each curve point: ``(n_steps + 1,)`` CPU long.

    * ``pixels_per_step=p`` (RISE): ``k_t = min(t * p, num_pixels)`` for
      ``t = 0 .. ceil(num_pixels / p)``; the last step may change fewer pixels.
    * ``steps=n``: ``n`` even steps, ``k_t = floor(t * num_pixels / n)``; ``n`` may not exceed
      ``num_pixels``.
    * neither: ``steps = min(224, num_pixels)``, which at 224x224 is exactly RISE's
      224 pixels per step.

    Raises:
        ValueError: both given, a non-positive value, or more steps than pixels.
    """
    check_step_options(steps, pixels_per_step)
    if pixels_per_step is not None:
        n_steps = math.ceil(num_pixels / pixels_per_step)
        return (torch.arange(n_steps + 1) * pixels_per_step).clamp_max(num_pixels)
    if steps is None:
        steps = min(DEFAULT_STEPS, num_pixels)
    elif steps > num_pixels:
        raise ValueError(
            f"steps={steps} is more than the {num_pixels} pixels of the model input; each step "
            f"must change at least one pixel. Use steps <= {num_pixels} or pixels_per_step=1."
        )
    return torch.arange(steps + 1) * num_pixels // steps


def check_substrate(spec: SubstrateSpec, name: str) -> None:
    """Validate a substrate spec's type (its shape is checked against the input later)."""
    if isinstance(spec, str):
        if spec not in SUBSTRATE_NAMES:
            raise ValueError(
                f"{name}={spec!r} is not a known substrate; use one of {SUBSTRATE_NAMES}, a "
                f"number, a tensor broadcastable to (B, C, H, W), or a callable inputs -> tensor."
            )
    elif isinstance(spec, bool) or not (
        isinstance(spec, (int, float, torch.Tensor)) or callable(spec)
    ):
        raise ValueError(
            f"{name} must be one of {SUBSTRATE_NAMES}, a number, a tensor or a callable; got "
            f"{type(spec).__name__}."
        )


def make_substrate(
    spec: SubstrateSpec, inputs: torch.Tensor, blur_kernel: int = 11, blur_sigma: float = 5.0
) -> torch.Tensor:
    """The replacement images for ``inputs`` ``(B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        spec: ``"zeros"`` (zeros of the normalised model input, i.e. the dataset's mean
            colour: RISE's deletion substrate); ``"blur"`` (Gaussian blur, ``blur_kernel``
            x ``blur_kernel``, ``blur_sigma``, reflect padding: RISE's insertion start);
            ``"mean"`` (each image's per-channel mean); a number (a constant); a tensor
            broadcastable to ``inputs``; or a callable ``inputs -> tensor``.
        inputs: normalised model input on the model's device.
    """
    if isinstance(spec, str):
        if spec == "zeros":
            return torch.zeros_like(inputs)
        if spec == "blur":
            return TF.gaussian_blur(inputs, [blur_kernel, blur_kernel], [blur_sigma, blur_sigma])
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).contiguous()
    if isinstance(spec, (int, float)):
        return torch.full_like(inputs, float(spec))
    substrate = spec(inputs) if callable(spec) and not isinstance(spec, torch.Tensor) else spec
    if not isinstance(substrate, torch.Tensor):
        raise ValueError(
            f"the substrate callable returned {type(substrate).__name__}; it must return a tensor "
            f"broadcastable to the input {tuple(inputs.shape)}."
        )
    try:
        substrate = torch.broadcast_to(substrate.to(inputs), inputs.shape)
    except RuntimeError as exc:
        raise ValueError(
            f"substrate of shape {tuple(substrate.shape)} does not broadcast to the model input "
            f"{tuple(inputs.shape)}; give (C, H, W), (1, C, H, W), (B, C, H, W) or (C, 1, 1)."
        ) from exc
    if not torch.isfinite(substrate).all():
        raise ValueError("the substrate contains NaN or inf.")
    return substrate.contiguous()


def trapezoid_auc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Area under each curve: x ``(T,)``, y ``(B, T)`` -> ``(B,)`` float64 (trapezoid rule)."""
    return torch.trapezoid(y.double(), x.double(), dim=-1)
