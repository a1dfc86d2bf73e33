"""The pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
ECCV 2016): does the heatmap's maximum fall on the object?

A hit is counted when the maximum lies inside the object's region or within
``tolerance`` pixels of it (15 in the paper); the score is hits / (hits + misses).
Unlike insertion and deletion it needs ground truth (boxes or masks) but no model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...data import ImageGeometry, heatmap_to_original
from ...errors import MetricInputError

DEFAULT_TOLERANCE = 15.0


@dataclass(frozen=True, eq=False)
class PointingResult:
    """Pointing-game outcome of a batch; behaves like its float `value`.

    Attributes:
        hits: ``(B,)`` float64 on CPU: 1 hit, 0 miss, NaN where the image has no object
            (empty mask, no box), which is left out of the rate.
        points: ``(B, 2)`` long on CPU, ``(row, col)`` of each heatmap's maximum; ``-1``
            for a constant heatmap, which points nowhere and counts as a miss.
        tolerance: the tolerance in pixels.
    """

    hits: torch.Tensor
    points: torch.Tensor
    tolerance: float

    @property
    def value(self) -> float:
        """The hit rate over images that have an object (NaN if none has)."""
        scored = self.hits[~torch.isnan(self.hits)]
        return float(scored.mean()) if scored.numel() else math.nan

    hit_rate = value

    def __float__(self) -> float:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:
        scored = int((~torch.isnan(self.hits)).sum())
        return (
            f"PointingResult(hit_rate={self.value:.4f}, images={scored}, "
            f"tolerance={self.tolerance:g})"
        )


def maximum_points(heatmaps: torch.Tensor) -> torch.Tensor:
    """``(row, col)`` of each map's maximum, ``(B, H, W)`` -> ``(B, 2)`` long.

    NaN (outside the crop, after mapping onto the photo) never wins; a map without a
    maximum (constant, or all NaN) gets ``(-1, -1)``. Ties go to the first pixel in
    row-major order, as ``argmax`` does.
    """
    flat = heatmaps.flatten(1).float()
    flat = torch.where(torch.isnan(flat), torch.full_like(flat, -math.inf), flat)
    best = flat.argmax(dim=1)
    finite = torch.where(torch.isinf(flat), torch.full_like(flat, math.inf), flat)
    constant = flat.max(dim=1).values <= finite.min(dim=1).values
    width = heatmaps.shape[-1]
    points = torch.stack([best // width, best % width], dim=1)
    return torch.where(constant[:, None], torch.full_like(points, -1), points)


def _hits_in_masks(points: torch.Tensor, masks: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``(B,)`` whether each point lies within ``tolerance`` pixels of its mask ``(B, H, W)``."""
    height, width = masks.shape[-2:]
    rows = torch.arange(height, device=masks.device).view(1, -1, 1)
    cols = torch.arange(width, device=masks.device).view(1, 1, -1)
    point = points.to(masks.device)
    distance2 = (rows - point[:, 0].view(-1, 1, 1)) ** 2 + (cols - point[:, 1].view(-1, 1, 1)) ** 2
    return ((distance2 <= tolerance**2) & masks).flatten(1).any(dim=1)


def _hits_in_boxes(points: torch.Tensor, boxes: list[torch.Tensor], tolerance: float) -> list[bool]:
    """Whether each point's pixel centre lies within ``tolerance`` of one of its boxes."""
    hits = []
    for point, image_boxes in zip(points.tolist(), boxes, strict=True):
        y, x = point[0] + 0.5, point[1] + 0.5
        x1, y1, x2, y2 = image_boxes.double().unbind(dim=1)
        dx = torch.clamp(torch.maximum(x1 - x, x - x2), min=0)
        dy = torch.clamp(torch.maximum(y1 - y, y - y2), min=0)
        hits.append(bool((dx**2 + dy**2 <= tolerance**2).any()))
    return hits


def _as_boxes(boxes: Any, batch: int) -> list[torch.Tensor]:
    """Per image, a ``(K, 4)`` float tensor of ``(x1, y1, x2, y2)`` boxes."""
    if isinstance(boxes, torch.Tensor) and boxes.ndim in (2, 3):
        items = list(boxes) if boxes.ndim == 3 else [b[None] for b in boxes]
    elif isinstance(boxes, Sequence) and not isinstance(boxes, (str, bytes)):
        items = [torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4) for b in boxes]
    else:
        raise ValueError(
            "boxes must be a (B, 4) or (B, K, 4) tensor, or a list with one (K, 4) entry per "
            "image, of (x1, y1, x2, y2) pixel coordinates."
        )
    if len(items) != batch:
        raise ValueError(f"got boxes for {len(items)} images but {batch} heatmaps.")
    items = [torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4).cpu() for b in items]
    for i, b in enumerate(items):
        if b.numel() and ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
            raise ValueError(
                f"box of image {i} has x2 < x1 or y2 < y1: boxes are (x1, y1, x2, y2), "
                f"top-left then bottom-right corner."
            )
    return items


def _as_masks(masks: Any, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per image, a boolean ``(H, W)`` mask that must match its heatmap's shape."""
    items = list(masks) if isinstance(masks, (torch.Tensor, Sequence)) else None
    if items is None or len(items) != len(shapes):
        count = "?" if items is None else len(items)
        raise ValueError(
            f"masks must give one (H, W) mask per heatmap: got {count} for {len(shapes)}."
        )
    out = []
    for i, (mask, shape) in enumerate(zip(items, shapes, strict=True)):
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != shape:
            raise ValueError(
                f"mask {i} has shape {tuple(mask.shape)} but its heatmap is {shape}; masks must "
                f"be in the heatmap's coordinates (pass geometries= for masks on the photos)."
            )
        out.append(mask.bool())
    return out


def _require_finite(maps: torch.Tensor) -> None:
    """Refuse NaN/inf in ``maps`` ``(B, H, W)``: a NaN map has no maximum, and would count
    as a miss (an all-NaN map from a failed method is no evidence against the model)."""
    bad = ~torch.isfinite(maps) if maps.is_floating_point() else None
    if bad is None or not bad.any():
        return
    image = int(bad.flatten(1).any(dim=1).nonzero()[0])
    count, size = int(bad[image].sum()), bad[image].numel()
    kinds = " and ".join(
        kind
        for kind, found in (("NaN", torch.isnan(maps[image])), ("inf", torch.isinf(maps[image])))
        if found.any()
    )
    raise MetricInputError(
        f"the heatmap of image {image} holds {kinds} in {count} of its {size} pixels, so its "
        f"maximum is undefined; the pointing game expects finite heatmaps in model-input "
        f"coordinates (as explainers return them). Find what produced them, or replace them "
        f"yourself: torch.nan_to_num(heatmaps, nan=0.0)."
    )


def pointing_game(
    heatmaps: torch.Tensor,
    *,
    boxes: Any = None,
    masks: Any = None,
    tolerance: float = DEFAULT_TOLERANCE,
    geometries: Sequence[ImageGeometry] | None = None,
) -> PointingResult:
    """Hit rate of the heatmaps' maxima on the objects.

    Example::

        heatmaps = GradCAM(model)(images, target_class=labels)   # (B, H, W)
        result = pointing_game(heatmaps, boxes=boxes)            # boxes in input pixels
        print(f"{result:.3f}", result.hits)

    Args:
        heatmaps: ``(B, H, W)`` or ``(H, W)``, in model-input coordinates (as every
            explainer returns them), for the class of the object.
        boxes: per image, one or several ``(x1, y1, x2, y2)`` boxes in pixels (continuous
            coordinates: pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``); a hit in any box
            counts. A ``(B, 4)`` or ``(B, K, 4)`` tensor, or a list of ``(K, 4)``.
        masks: per image, a boolean ``(H, W)`` object mask (``(B, H, W)`` or a list).
        tolerance: pixels of slack around the object (15 in Zhang et al.).
        geometries: give the ``PreparedBatch.geometries`` when the boxes or masks are in
            the original photos' coordinates: each heatmap is then mapped onto its photo
            (the cropped-away border cannot win) and the tolerance is in photo pixels.

    Returns:
        `PointingResult`; images whose mask is empty or that have no box are left
        out of the rate.

    Raises:
        MetricInputError: a heatmap holds NaN or inf (the message names the first such
            image); a constant heatmap points nowhere and counts as a miss.
    """
    if (boxes is None) == (masks is None):
        raise ValueError("give exactly one of boxes= or masks= as the ground truth.")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}.")
    if heatmaps.ndim == 2:
        heatmaps = heatmaps[None]
    if heatmaps.ndim != 3:
        raise ValueError(f"heatmaps must be (B, H, W) or (H, W), got {tuple(heatmaps.shape)}.")
    maps = heatmaps.detach()
    _require_finite(maps)
    if geometries is not None:
        if len(geometries) != maps.shape[0]:
            raise ValueError(f"got {len(geometries)} geometries for {maps.shape[0]} heatmaps.")
        per_image = [heatmap_to_original(m, g) for m, g in zip(maps, geometries, strict=True)]
    else:
        per_image = list(maps)
    points = torch.cat([maximum_points(m[None]) for m in per_image]).cpu()
    pointed = points[:, 0] >= 0
    if boxes is not None:
        box_list = _as_boxes(boxes, len(per_image))
        hits = torch.tensor(_hits_in_boxes(points, box_list, tolerance), dtype=torch.bool)
        has_object = torch.tensor([b.shape[0] > 0 for b in box_list])
    else:
        mask_list = _as_masks(masks, [tuple(m.shape) for m in per_image])
        hits = torch.stack(
            [
                _hits_in_masks(p[None], m.to(p.device)[None], tolerance)[0]
                for p, m in zip(points, mask_list, strict=True)
            ]
        ).cpu()
        has_object = torch.tensor([bool(m.any()) for m in mask_list])
    scores = (hits & pointed).double()
    scores[~has_object] = math.nan
    return PointingResult(hits=scores, points=points, tolerance=float(tolerance))
