"""What perturbed pixels become: the substrates of deletion, insertion and sensitivity-n."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

from .options import MetricOption, positive

SubstrateSpec = str | float | int | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
SUBSTRATE_NAMES: tuple[str, ...] = ("zeros", "blur", "blur_reflect", "mean")

#: scipy.ndimage's default Gaussian truncation (radius = int(4 * sigma + 0.5)).
_SCIPY_TRUNCATE = 4.0


@lru_cache(maxsize=8)
def _rise_kernel_1d(size: int, sigma: float) -> tuple[float, ...]:
    """The 1-D factor of RISE's ``gkern(size, sigma)``: ``(size,)`` weights summing to 1.

    RISE smooths an ``size x size`` delta with ``scipy.ndimage.gaussian_filter(delta,
    sigma)`` (mode ``"reflect"``, truncate 4). The filter is separable, so the kernel is
    the outer product of this vector with itself: the Gaussian of radius
    ``int(4 * sigma + 0.5)`` (20 at sigma 5, wider than the window) whose tails are
    folded back into the window by half-sample reflection, as scipy does. Computed here
    so insertion needs no scipy; a test checks it against scipy.
    """
    radius = int(_SCIPY_TRUNCATE * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    centre, period = size // 2, 2 * size
    kernel = torch.zeros(size, dtype=torch.float64)
    for i in range(size):
        # output[i] = sum_j w[j] * delta[reflect(i + j)]: collect the taps landing on the centre
        position = (torch.arange(-radius, radius + 1) + i) % period
        position = torch.where(position >= size, period - 1 - position, position)
        kernel[i] = weights[position == centre].sum()
    return tuple(kernel.tolist())


def rise_kernel(size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's ``gkern(size, sigma)`` (Petsiuk et al., ``evaluation.py``): ``(size, size)`` float64.

    Equal to ``scipy.ndimage.gaussian_filter`` of a ``size x size`` delta with ``sigma``.
    """
    factor = torch.tensor(_rise_kernel_1d(size, float(sigma)), dtype=torch.float64)
    return factor[:, None] * factor[None, :]


def rise_blur(inputs: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's insertion start: ``conv2d(inputs, gkern(size, sigma), padding=size // 2)``.

    Each channel is blurred on its own (RISE's kernel is diagonal across channels) with
    **zero padding**, as RISE's ``nn.functional.conv2d(x, kern, padding=klen // 2)``; on
    the normalised model input zero is the dataset's mean colour, so the border fades
    towards it. The kernel is float32, as RISE's (``kern.astype('float32')``).

    Args:
        inputs: ``(B, C, H, W)``.

    Returns:
        ``(B, C, H, W)``, same dtype and device.
    """
    channels = inputs.shape[1]
    kernel = rise_kernel(size, sigma).to(torch.float32).to(inputs)
    weight = kernel.expand(channels, 1, size, size)
    return F.conv2d(inputs, weight, padding=size // 2, groups=channels)


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


def _substrate_check(name: str) -> Callable[[Any], Any]:
    def check(spec: Any) -> Any:
        check_substrate(spec, name)
        return spec

    return check


def _blur_kernel(value: Any) -> int:
    positive("blur_kernel")(value)
    if value % 2 == 0:
        raise ValueError(f"blur_kernel must be odd, got {value}; try 11 (RISE's).")
    return value


def _blur_sigma(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0):
        raise ValueError(f"blur_sigma must be a positive number, got {value!r}.")
    return float(value)


#: What deleted pixels become (deletion, sensitivity-n's removed subsets, AOPC).
SUBSTRATE = MetricOption(
    "substrate",
    "zeros",
    "what removed pixels become: 'zeros' (the dataset's mean colour, as RISE), 'blur', "
    "'blur_reflect', 'mean', a number, a tensor broadcastable to (B, C, H, W) or a callable "
    "inputs -> tensor",
    _substrate_check("substrate"),
)
#: What insertion starts from.
INSERTION_SUBSTRATE = MetricOption(
    "insertion_substrate",
    "blur",
    "what insertion starts from: 'blur' is RISE's exactly (gkern(blur_kernel, blur_sigma), "
    "zero padding); 'blur_reflect' torchvision's truncated Gaussian; or as substrate",
    _substrate_check("insertion_substrate"),
)
BLUR_KERNEL = MetricOption("blur_kernel", 11, "blur kernel size, odd (RISE's 11)", _blur_kernel)
BLUR_SIGMA = MetricOption(
    "blur_sigma", 5.0, "blur standard deviation in pixels (RISE's 5.0)", _blur_sigma
)
#: The options of a metric that fills removed pixels with the substrate.
SUBSTRATE_OPTIONS: tuple[MetricOption, ...] = (SUBSTRATE, BLUR_KERNEL, BLUR_SIGMA)


def make_substrate(
    spec: SubstrateSpec, inputs: torch.Tensor, blur_kernel: int = 11, blur_sigma: float = 5.0
) -> torch.Tensor:
    """The replacement images for ``inputs`` ``(B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        spec: ``"zeros"`` (zeros of the normalised model input, i.e. the dataset's mean
            colour: RISE's deletion substrate); ``"blur"`` (RISE's insertion start exactly:
            ``gkern(blur_kernel, blur_sigma)`` with zero padding, see `rise_blur`);
            ``"blur_reflect"`` (torchvision's Gaussian blur, kernel truncated at
            ``blur_kernel`` with renormalised weights and reflect padding: timmlens'
            earlier default insertion start, up to 0.8 away from RISE's at the border);
            ``"mean"`` (each image's per-channel mean); a number (a constant); a tensor
            broadcastable to ``inputs``; or a callable ``inputs -> tensor``.
        inputs: normalised model input on the model's device.
    """
    if isinstance(spec, str):
        if spec == "zeros":
            return torch.zeros_like(inputs)
        if spec == "blur":
            return rise_blur(inputs, blur_kernel, blur_sigma)
        if spec == "blur_reflect":
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
