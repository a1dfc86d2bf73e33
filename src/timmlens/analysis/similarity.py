"""How alike two explanations are: per-image similarity of two batches of heatmaps.

The metrics of Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018):

* **Spearman rank correlation** of the flattened maps (``spearman``), and of their
  absolute values (``spearman_abs``; for unsigned maps, such as GradCAM or IG with
  ``signed=False``, both are the same);
* **SSIM** (structural similarity) of the maps min-max normalised to ``[0, 1]``.

Every function takes two batches ``(B, H, W)`` on any device and returns one value per
image, ``(B,)``, on the inputs' device.

Conventions, stated once:

* **Ties** (GradCAM maps have many exact zeros) get the average of the ranks they span,
  as `scipy.stats.spearmanr` does; Spearman's rho is then Pearson's correlation of
  these average ranks. The ranks are computed here, exactly (``int64``), batched
  (torchmetrics' ``spearman_corrcoef`` sums the ranks of a tie group in ``int32``, which
  overflows once a group exceeds 65,535 pixels, e.g. 60 % zeros of a 384 x 384 map).
  Agreement with scipy is tested, also past that size.
* **A constant map** (all pixels equal, e.g. an all-zero GradCAM) has no ranking, so its
  Spearman correlation with anything is undefined: the result is ``NaN`` for that image
  (never 0, never a warning). Aggregate with ``torch.nanmean`` and count the ``NaN``s.
* **SSIM** (Wang et al. 2004) with a Gaussian window (``sigma = 1.5``, 11 x 11),
  ``data_range = 1``, ``K1 = 0.01``, ``K2 = 0.03``, on maps min-max normalised per image.
  The mean is taken over the pixels whose window lies inside the map, i.e. a 5-pixel
  border is left out, as in Wang et al.'s reference code and
  ``skimage.metrics.structural_similarity`` (which Adebayo et al. used; agreement with it
  is tested). A constant map normalises to all zeros (`normalize_maps`): two constant maps
  have SSIM 1, a constant and a structured map a low SSIM. Maps must be at least 11 x 11 pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..interpretation.base import normalize_maps

#: SSIM window: Gaussian with this sigma, 11 x 11 (skimage's rule
#: ``2 * int(3.5 * sigma + 0.5) + 1``).
SSIM_SIGMA = 1.5
SSIM_KERNEL_SIZE = 11
#: Pixels left out at each border when averaging the SSIM map.
SSIM_BORDER = (SSIM_KERNEL_SIZE - 1) // 2
#: SSIM's stabilising constants ``(K * data_range) ** 2`` with data range 1
SSIM_C1, SSIM_C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2

METRICS: tuple[str, ...] = ("spearman", "spearman_abs", "ssim")


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two heatmap batches and return them as ``(B, H, W)`` tensors."""
    for name, maps in (("reference", a), ("other", b)):
        if not isinstance(maps, torch.Tensor):
            raise TypeError(f"{name} heatmaps must be a torch tensor, got {type(maps).__name__}.")
        if maps.ndim != 3:
            raise ValueError(
                f"{name} heatmaps have shape {tuple(maps.shape)}; expected a batch (B, H, W) "
                f"(use maps[None] for one (H, W) map)."
            )
    if a.shape != b.shape:
        raise ValueError(
            f"heatmap batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}; compare "
            f"maps of the same images at the same input size."
        )
    if a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
        raise ValueError(f"heatmap batches of shape {tuple(a.shape)} are empty.")
    if a.device != b.device:
        raise ValueError(f"heatmaps on different devices: {a.device} and {b.device}.")
    for name, maps in (("reference", a), ("other", b)):
        if not torch.isfinite(maps).all():
            raise ValueError(f"{name} heatmaps contain NaN or inf; similarity is undefined.")
    return a, b


def _float_dtype(device: torch.device) -> torch.dtype:
    # float64 where the device has it (MPS does not).
    return torch.float32 if device.type == "mps" else torch.float64


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dimension, ties averaged: ``(B, N)`` -> ``(B, N)`` (1-based).

    Equal values get the mean of the ranks they span, like ``scipy.stats.rankdata``
    (``method="average"``): ``[0, 0, 5, 2]`` -> ``[1.5, 1.5, 4, 3]``. Exact for any
    ``N`` (positions are ``int64``); the result is float64 (float32 on MPS).
    """
    n = values.shape[-1]
    sorted_values, order = values.sort(dim=-1)
    positions = torch.arange(n, device=values.device).expand_as(order)
    # A tie group runs from its first position (where the value changes) to its last.
    starts_group = torch.ones_like(order, dtype=torch.bool)
    starts_group[..., 1:] = sorted_values[..., 1:] != sorted_values[..., :-1]
    ends_group = torch.ones_like(order, dtype=torch.bool)
    ends_group[..., :-1] = starts_group[..., 1:]
    first = torch.where(starts_group, positions, 0).cummax(dim=-1).values
    last = torch.where(ends_group, positions, n).flip(-1).cummin(dim=-1).values.flip(-1)
    mean_rank = (first + last).to(_float_dtype(values.device)) / 2 + 1
    return torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)


def pearson_columns(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson's correlation of each column of ``x`` with the same column of ``y``.

    ``(N, K)``, ``(N, K)`` -> ``(K,)`` in ``[-1, 1]`` (``N >= 2``); ``NaN`` where a column
    (scaled by its largest deviation from its mean) has a variance below ``sqrt(eps)``.
    """
    # The arithmetic (and its order) is that of torchmetrics' pearson_corrcoef, which this
    # replaced: the same inputs give the same bits as before.
    count = torch.full((x.shape[1],), float(x.shape[0]), dtype=x.dtype, device=x.device)
    mean_x, mean_y = x.mean(0), y.mean(0)
    centred_x, centred_y = x - mean_x, y - mean_y
    var_x, var_y = (centred_x**2).sum(0), (centred_y**2).sum(0)
    cov = (centred_x * centred_y).sum(0)
    # the largest deviation of each column, from its mean as n * mean / n rounds it
    dev_x = (x - mean_x * x.shape[0] / count).abs().max(dim=0).values
    dev_y = (y - mean_y * y.shape[0] / count).abs().max(dim=0).values
    var_x = var_x / (count - 1) * dev_x.pow(-2)
    var_y = var_y / (count - 1) * dev_y.pow(-2)
    cov = cov / (count - 1) / (dev_x * dev_y)
    bound = math.sqrt(torch.finfo(x.dtype).eps)
    degenerate = (var_x < bound) | (var_y < bound)
    degenerate |= ~torch.isfinite(var_x) | ~torch.isfinite(var_y) | ~torch.isfinite(cov)
    rho = (cov / (var_x * var_y).sqrt()).clamp(-1.0, 1.0)
    return rho.masked_fill(degenerate, float("nan"))


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """SSIM's window ``(1, 1, K, K)``: the outer product of a normalised 1-D Gaussian."""
    size = SSIM_KERNEL_SIZE
    dist = torch.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=dtype, device=device)
    line = torch.exp(-torch.pow(dist / SSIM_SIGMA, 2) / 2)
    line = (line / line.sum())[None]
    return torch.matmul(line.t(), line)[None, None]


def _is_constant(flat: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` -> ``(B,)`` bool: every entry of the row equals the first."""
    return (flat == flat[:, :1]).all(dim=1)


def spearman_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of two heatmap batches, per image.

    Args:
        a: ``(B, H, W)`` reference maps.
        b: ``(B, H, W)`` maps to compare, same shape and device.

    Returns:
        ``(B,)`` float32 in ``[-1, 1]`` on the inputs' device; ``NaN`` where either map
        is constant (no ranking to correlate). Ties get average ranks.
    """
    a, b = _check_pair(a, b)
    flat_a, flat_b = a.flatten(1), b.flatten(1)
    constant = _is_constant(flat_a) | _is_constant(flat_b)
    result = torch.full((a.shape[0],), float("nan"), device=a.device, dtype=torch.float32)
    keep = ~constant
    if keep.any():
        ranks_a = average_ranks(flat_a[keep])
        ranks_b = average_ranks(flat_b[keep])
        rho = pearson_columns(ranks_a.T, ranks_b.T)  # (N, K) columns are images
        result[keep] = rho.reshape(-1).clamp(-1, 1).to(torch.float32)
    return result


def ssim_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity of two heatmap batches, per image.

    Each map is min-max normalised to ``[0, 1]`` first (a constant map becomes zeros);
    then SSIM with an 11 x 11 Gaussian window (sigma 1.5), ``data_range=1``, averaged
    over the pixels at least 5 from the border (see the module docstring).

    Args:
        a: ``(B, H, W)`` reference maps, ``H, W >= 11``.
        b: ``(B, H, W)`` maps to compare.

    Returns:
        ``(B,)`` float32 on the inputs' device; 1 for identical maps.
    """
    a, b = _check_pair(a, b)
    height, width = a.shape[-2:]
    if height < SSIM_KERNEL_SIZE or width < SSIM_KERNEL_SIZE:
        raise ValueError(
            f"SSIM needs maps of at least {SSIM_KERNEL_SIZE} x {SSIM_KERNEL_SIZE} pixels (its "
            f"Gaussian window), got {height} x {width}; compare maps at the input resolution."
        )
    # Padded, then the border cropped (not a valid-only convolution): the convolution
    # then runs on the same shapes as in the torchmetrics version this replaced.
    pad = (SSIM_BORDER,) * 4
    x = F.pad(normalize_maps(a.float())[:, None], pad, mode="reflect")  # (B, 1, H+10, W+10)
    y = F.pad(normalize_maps(b.float())[:, None], pad, mode="reflect")
    window = _gaussian_window(x.dtype, x.device)
    stats = F.conv2d(torch.cat((x, y, x * x, y * y, x * y)), window).split(x.shape[0])
    mean_x, mean_y = stats[0], stats[1]  # each (B, 1, H, W)
    mean_x2, mean_y2, mean_xy = mean_x.pow(2), mean_y.pow(2), mean_x * mean_y
    var_x = torch.clamp(stats[2] - mean_x2, min=0.0)
    var_y = torch.clamp(stats[3] - mean_y2, min=0.0)
    contrast = 2 * (stats[4] - mean_xy) + SSIM_C2
    full = ((2 * mean_xy + SSIM_C1) * contrast) / (
        (mean_x2 + mean_y2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )
    inner = full[..., SSIM_BORDER : height - SSIM_BORDER, SSIM_BORDER : width - SSIM_BORDER]
    return inner.flatten(1).mean(dim=1).to(torch.float32)


def map_similarity(reference: torch.Tensor, other: torch.Tensor) -> dict[str, torch.Tensor]:
    """All similarity metrics of two heatmap batches, per image.

    Args:
        reference: ``(B, H, W)`` maps, e.g. of the original model.
        other: ``(B, H, W)`` maps, e.g. of a randomised model; same shape and device.

    Returns:
        ``{"spearman": (B,), "spearman_abs": (B,), "ssim": (B,)}`` float32 tensors on the
        inputs' device. Spearman values are ``NaN`` where a map is constant.
    """
    reference, other = _check_pair(reference, other)
    return {
        "spearman": spearman_per_image(reference, other),
        "spearman_abs": spearman_per_image(reference.abs(), other.abs()),
        "ssim": ssim_per_image(reference, other),
    }
