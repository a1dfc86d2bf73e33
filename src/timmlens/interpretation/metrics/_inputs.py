"""Heatmap checks: any resolution, tensor or numpy, in; ``(B, H, W)`` float32 on device out."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..._warnings import warn_caller
from ...errors import MetricInputError

HeatmapInput = torch.Tensor | np.ndarray


def positive_int(name: str, value: object, allow_none: bool = True) -> None:
    """Raise unless ``value`` is a positive int (or ``None`` when ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}."
        )


def check_n_samples(n_samples: object) -> None:
    """Sensitivity-n's subsets per image: a positive int, at least 3 for a correlation."""
    positive_int("n_samples", n_samples, allow_none=False)
    if n_samples < 3:  # type: ignore[operator]
        raise ValueError(f"n_samples must be >= 3 for a correlation, got {n_samples}.")


class TiedHeatmapWarning(UserWarning):
    """A heatmap is constant: its pixel ranking is only the tie-breaking rule."""


def prepare_heatmaps(
    heatmap: HeatmapInput,
    batch_size: int,
    size: tuple[int, int],
    device: torch.device,
    name: str = "heatmap",
) -> torch.Tensor:
    """Check heatmaps for a batch and bring them to the model input's resolution.

    Args:
        heatmap: ``(H, W)`` for one image, ``(B, H, W)`` (or ``(B, 1, H, W)``) for a batch
            of ``B``; a torch tensor or numpy array of any real dtype and any resolution.
        batch_size: number of images the heatmaps belong to.
        size: ``(H, W)`` of the model input; other resolutions are upsampled bilinearly
            (``align_corners=False``, the convention of ``F.interpolate`` and timm).
        device: the model's device.

    Returns:
        ``(B, H, W)`` float32 on ``device``, detached.

    Raises:
        ValueError: wrong type, dimensions or count, or empty;
            [`MetricInputError`][timmlens.errors.MetricInputError] (a ``ValueError``) for
            NaN / inf values.
    """
    if isinstance(heatmap, np.ndarray):
        kind = heatmap.dtype.kind
        if kind not in "fiub":
            raise ValueError(f"{name} has numpy dtype {heatmap.dtype}; expected real numbers.")
        heatmap = torch.from_numpy(np.ascontiguousarray(heatmap))
    if not isinstance(heatmap, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch tensor or numpy array of shape (H, W) or (B, H, W), got "
            f"{type(heatmap).__name__}."
        )
    if heatmap.is_complex():
        raise ValueError(f"{name} is complex ({heatmap.dtype}); expected real numbers.")
    maps = heatmap.detach()
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(
            f"{name} has shape {tuple(heatmap.shape)}; expected (H, W) for one image or (B, H, W) "
            f"for a batch. For per-channel attributions (B, C, H, W), reduce the channels "
            f"first, e.g. attributions.abs().sum(1)."
        )
    if maps.shape[0] != batch_size:
        raise ValueError(
            f"{name} has {maps.shape[0]} map(s) (shape {tuple(heatmap.shape)}) for {batch_size} "
            f"image(s); give one heatmap per image: (H, W) for one image, (B, H, W) for B images."
        )
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"{name} of shape {tuple(heatmap.shape)} is empty.")
    maps = maps.to(device=device, dtype=torch.float32)
    bad = ~torch.isfinite(maps)
    if bad.any():
        raise MetricInputError(
            f"{name} contains {int(bad.sum())} NaN/inf value(s) (in image(s) "
            f"{sorted(set(bad.flatten(1).any(1).nonzero().flatten().tolist()))}); pixels cannot be "
            f"ranked. Fix the explanation, or replace them: torch.nan_to_num(heatmap, nan=0.0)."
        )
    if tuple(maps.shape[1:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return maps


def warn_if_constant(maps: torch.Tensor, name: str = "heatmap") -> None:
    """Warn for each constant map ``(B, H, W)``: its ranking is pixel order, top-left first."""
    flat = maps.flatten(1)
    constant = (flat.max(dim=1).values == flat.min(dim=1).values).nonzero().flatten().tolist()
    if constant:
        warn_caller(
            f"{name} for image(s) {constant} is constant, so every pixel ties: the ranking falls "
            f"back to pixel order (row-major, top-left first) and the metric says nothing about "
            f"the explanation.",
            TiedHeatmapWarning,
        )
