"""What perturbed pixels become: the substrates of deletion, insertion and sensitivity-n."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import functional as TF

SubstrateSpec = str | float | int | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
SUBSTRATE_NAMES: tuple[str, ...] = ("zeros", "blur", "mean")


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


def describe(spec: SubstrateSpec) -> Any:
    """A substrate spec as the results' settings record it (tensors by shape)."""
    if isinstance(spec, torch.Tensor):
        return f"tensor{tuple(spec.shape)}"
    if callable(spec) and not isinstance(spec, str):
        return getattr(spec, "__name__", type(spec).__name__)
    return spec
