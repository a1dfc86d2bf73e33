"""Image parameterisations and transformation robustness for feature visualisation.

Optimising pixels directly gives high-frequency noise that drives a unit without
looking like anything. Two preconditioned parameterisations fix that:

* ``"fourier"`` (Olah et al., Distill 2017; lucent, horama's ``fourier``): the image is
  the inverse real FFT of a free complex spectrum scaled by ``1 / f^decay``, so every
  frequency band moves at the rate natural images have;
* ``"maco"`` (Fel et al., NeurIPS 2023; horama's ``maco``): the spectrum's *magnitude*
  is fixed to that of natural images and only the *phase* is optimised, which keeps the
  image's energy where natural images have it and scales to ViTs and large models.

Both standardise the spatial image, re-correlate its colours with the ImageNet colour
correlation's square root and squash it with a sigmoid into [0, 1] (horama's
``values_range=(0, 1)``); the formulas are horama 0.3's, written out here because horama
downloads the MACO spectrum at run time and imports torchvision's detection ops, and
checked equal to it in the tests.

The MACO magnitude spectrum ships in the package (``assets/maco_spectrum.npy``,
``(3, 224, 113)`` float16: the mean FFT magnitude of colour-decorrelated natural photos,
made by ``tools/maco_spectrum.py`` from scikit-image's photos); it is resized to the
requested size as horama resizes its own (bilinear, antialiased).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "COLOR_CORRELATION_SVD_SQRT",
    "MACO_SPECTRUM_PATH",
    "Robustness",
    "fourier_image",
    "fourier_scale",
    "maco_image",
    "maco_magnitude",
    "recorrelate_colors",
    "transformed_copies",
]

#: The square root of ImageNet's colour correlation (lucid's, horama's): maps decorrelated
#: colour components to RGB, ``rgb = components @ M``.
COLOR_CORRELATION_SVD_SQRT = (
    (0.56282854, 0.58447580, 0.58447580),
    (0.19482528, 0.00000000, -0.19482528),
    (0.04329450, -0.10823626, 0.06494176),
)

MACO_SPECTRUM_PATH = Path(__file__).with_name("assets") / "maco_spectrum.npy"


def _standardize(tensor: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation over the whole tensor (horama's ``standardize``)."""
    tensor = tensor - tensor.mean()
    return tensor / (tensor.std() + 1e-4)


def recorrelate_colors(image: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` decorrelated components -> ``(3, H, W)`` correlated RGB (before squashing)."""
    matrix = torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=image.dtype, device=image.device)
    # (H*W, 3) @ M as horama computes it, so both round alike
    pixels = image.permute(1, 2, 0).reshape(-1, 3) @ matrix
    return pixels.view(image.shape[1], image.shape[2], 3).permute(2, 0, 1)


def _to_unit_range(components: torch.Tensor) -> torch.Tensor:
    """Standardise, re-correlate colours and squash into (0, 1): ``(3, H, W)`` -> same."""
    return torch.sigmoid(recorrelate_colors(_standardize(components)))


@lru_cache(maxsize=1)
def _shipped_spectrum() -> torch.Tensor:
    """The shipped magnitude spectrum ``(3, 224, 113)`` float32 on the CPU."""
    array = np.load(MACO_SPECTRUM_PATH, allow_pickle=False)
    return torch.from_numpy(array.astype(np.float32))


def maco_magnitude(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The natural-image magnitude spectrum for a ``size`` x ``size`` image.

    Returns:
        ``(3, size, size // 2 + 1)`` float32 on ``device``: the shipped spectrum resized
        bilinearly with antialiasing, exactly as horama's ``init_maco_buffer`` resizes its own.
    """
    shape = (size, size // 2 + 1)
    magnitude = F.interpolate(
        _shipped_spectrum().unsqueeze(0),
        size=shape,
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0]
    return magnitude.to(device)


def maco_image(magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """MACO: fixed magnitude, free phase -> image.

    Args:
        magnitude: ``(3, H, W // 2 + 1)`` from ``maco_magnitude``.
        phase: ``(3, H, W // 2 + 1)`` the optimised phase (standardised first).

    Returns:
        ``(3, H, W)`` RGB in (0, 1).
    """
    phase = _standardize(phase)
    spectrum = torch.complex(torch.cos(phase) * magnitude, torch.sin(phase) * magnitude)
    return _to_unit_range(torch.fft.irfft2(spectrum))


def fourier_scale(
    size: int, decay_power: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The ``1 / f^decay`` spectrum scaler (horama's ``get_fft_scale``): ``(1, S, S//2+1)``."""
    freq_y = torch.fft.fftfreq(size).unsqueeze(1)
    freq_x = torch.fft.fftfreq(size)[: size // 2 + 1 + int(size % 2 == 1)]
    frequencies = torch.sqrt(freq_x**2 + freq_y**2)
    scale = 1.0 / torch.maximum(frequencies, torch.tensor(1.0 / size)) ** decay_power
    scale = scale * math.sqrt(size * size)
    return scale.to(torch.complex64)[None].to(device)


def fourier_image(spectrum: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Fourier preconditioning: spectrum ``(3, H, W//2+1)`` complex -> ``(3, H, W)`` in (0, 1)."""
    spectrum = _standardize(spectrum) * scale
    return _to_unit_range(torch.fft.irfft2(spectrum))


@dataclass(frozen=True)
class Robustness:
    """Random transformations applied to each step's image before the model sees it.

    The visualisation must drive the unit wherever it sits and whatever its exact scale
    and orientation (Olah et al. 2017, "transformation robustness"); this also removes the
    adversarial high-frequency patterns an unconstrained optimum has.

    Attributes:
        copies: transformed copies per step (one batch through the model).
        jitter: largest shift, as a fraction of the image side (lucent: 8-16 px of 224).
        scale: ``(low, high)`` range of the zoom factor.
        degrees: largest rotation, either way.
        noise: standard deviation of Gaussian pixel noise added to each copy (horama: 0.05
            in its value range).
    """

    copies: int = 2
    jitter: float = 0.05
    scale: tuple[float, float] = (0.9, 1.1)
    degrees: float = 10.0
    noise: float = 0.02

    def __post_init__(self) -> None:
        if not isinstance(self.copies, int) or isinstance(self.copies, bool) or self.copies < 1:
            raise ValueError(f"Robustness.copies must be an int >= 1, got {self.copies!r}.")
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"Robustness.scale must be 0 < low <= high, got {self.scale!r}.")
        if self.jitter < 0 or self.degrees < 0 or self.noise < 0:
            raise ValueError("Robustness.jitter, degrees and noise must be >= 0.")


def transformed_copies(
    image: torch.Tensor, robustness: Robustness, generator: torch.Generator
) -> torch.Tensor:
    """Randomly shifted, zoomed and rotated copies of ``image``, differentiable.

    One affine map per copy (``grid_sample`` with reflection padding, so no black border
    the unit could learn to use); the random draws come from ``generator`` on the CPU, so
    a seed gives the same copies on every device.

    Args:
        image: ``(3, H, W)`` in [0, 1].
        robustness: the transformation ranges.
        generator: a CPU ``torch.Generator``.

    Returns:
        ``(copies, 3, H, W)``.
    """
    n = robustness.copies
    uniform = torch.rand((n, 4), generator=generator, dtype=torch.float64)
    low, high = robustness.scale
    zoom = low + (high - low) * uniform[:, 0]
    angle = torch.deg2rad(robustness.degrees * (2 * uniform[:, 1] - 1))
    # affine_grid works in [-1, 1] coordinates: a shift of 2 * jitter is jitter * side.
    shift = 2 * robustness.jitter * (2 * uniform[:, 2:] - 1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(device=image.device, dtype=image.dtype)
    batch = image.unsqueeze(0).expand(n, -1, -1, -1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    copies = F.grid_sample(batch, grid, padding_mode="reflection", align_corners=False)
    if robustness.noise > 0:
        noise = torch.randn(copies.shape, generator=generator, dtype=torch.float32)
        copies = copies + robustness.noise * noise.to(device=image.device, dtype=image.dtype)
    return copies
