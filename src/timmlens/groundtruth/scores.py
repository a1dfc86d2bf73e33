"""Scores of heatmaps against a known answer: how much of the map lies on the evidence.

All take heatmaps ``(B, H, W)`` and boolean evidence masks ``(B, H, W)`` of the same size
(model-input coordinates) and return one value per image, ``(B,)`` float64 on the CPU;
an image whose map holds no positive relevance scores NaN (undefined), not 0.

- relevance mass accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022): the share
  of the positive relevance that falls inside the mask;
- relevance rank accuracy (ibid.): the share of the ``|mask|`` most relevant pixels that
  lie inside it (ties broken by pixel order, as ``torch.topk``);
- pointing game (Zhang et al., ECCV 2016), here with no tolerance: whether the maximum
  lies inside the mask (1 or 0);
- energy pointing game (Wang et al., Score-CAM, CVPRW 2020): the share of the positive
  relevance inside the mask's bounding box.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _checked(heatmaps: torch.Tensor, masks: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, ...]:
    """``(B, H*W)`` float64 positive relevance and ``(B, H*W)`` bool masks."""
    maps = torch.as_tensor(heatmaps).detach().to("cpu", torch.float64)
    truth = torch.as_tensor(masks).to("cpu").bool()
    if maps.ndim == 2:
        maps, truth = maps[None], truth[None] if truth.ndim == 2 else truth
    if maps.shape != truth.shape or maps.ndim != 3:
        raise ValueError(
            f"heatmaps {tuple(maps.shape)} and masks {tuple(truth.shape)} must both be "
            "(B, H, W) of the same size; resize the masks to the model input first."
        )
    if not torch.isfinite(maps).all():
        bad = sorted({int(i) for i in torch.nonzero(~torch.isfinite(maps))[:, 0]})
        raise ValueError(f"heatmaps of images {bad} hold NaN or infinite values.")
    return maps.clamp_min(0).flatten(1), truth.flatten(1)


def _share(inside: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.nan)


def relevance_mass_accuracy(heatmaps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(B,)``: positive relevance inside the mask / all positive relevance."""
    maps, truth = _checked(heatmaps, masks)
    return _share((maps * truth).sum(1), maps.sum(1))


def relevance_rank_accuracy(heatmaps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(B,)``: share of the ``|mask|`` highest-relevance pixels that lie in the mask."""
    maps, truth = _checked(heatmaps, masks)
    values = torch.full((maps.shape[0],), torch.nan, dtype=torch.float64)
    for i, (row, mask) in enumerate(zip(maps, truth, strict=True)):
        size = int(mask.sum())
        if size and row.max() > 0:
            top = torch.topk(row, size, sorted=False).indices
            values[i] = float(mask[top].sum()) / size
    return values


def pointing_hits(heatmaps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(B,)``: 1 where the map's maximum lies inside the mask, else 0 (NaN: no relevance)."""
    maps, truth = _checked(heatmaps, masks)
    hits = truth.gather(1, maps.argmax(1, keepdim=True))[:, 0].double()
    return torch.where(maps.amax(1) > 0, hits, torch.nan)


def bounding_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` bool: each mask's bounding box filled (empty stays empty)."""
    truth = torch.as_tensor(masks).bool()
    rows, cols = truth.any(2), truth.any(1)
    index_h = torch.arange(truth.shape[1])
    index_w = torch.arange(truth.shape[2])

    def span(hit: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        low = torch.where(hit, index, index.numel()).amin(1, keepdim=True)
        high = torch.where(hit, index, -1).amax(1, keepdim=True)
        return (index >= low) & (index <= high)

    return span(rows, index_h)[:, :, None] & span(cols, index_w)[:, None, :]


def energy_pointing_game(heatmaps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(B,)``: positive relevance inside the mask's bounding box / all of it."""
    return relevance_mass_accuracy(heatmaps, bounding_boxes(torch.as_tensor(masks)))


#: The scores of the known-answer tables, by column name.
SCORES: dict[str, Score] = {
    "mass accuracy": relevance_mass_accuracy,
    "rank accuracy": relevance_rank_accuracy,
    "pointing game": pointing_hits,
    "energy pointing game": energy_pointing_game,
}
