"""Where the model-input crop sits in the original photo, and mapping heatmaps back.

A heatmap lives in model-input coordinates (the preprocessed tensor's H x W). Only
visualisation needs it on the original photo; [`heatmap_to_original`][] undoes the
resize and crop recorded in an `ImageGeometry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageGeometry:
    """How one original image became a model input.

    Attributes:
        original_size: ``(H0, W0)`` of the original image.
        resized_size: ``(Hr, Wr)`` after resizing.
        crop_box: ``(top, left, height, width)`` of the model input inside the resized
            image; may extend past its border where the transform pads.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]

    @classmethod
    def identity(cls, height: int, width: int) -> ImageGeometry:
        return cls((height, width), (height, width), (0, 0, height, width))

    def resized(self, height: int, width: int) -> ImageGeometry:
        """The geometry after resizing the current (cropped) view to ``height x width``."""
        top, left, crop_h, crop_w = self.crop_box
        if (top, left, crop_h, crop_w) == (0, 0, *self.resized_size):
            return ImageGeometry(self.original_size, (height, width), (0, 0, height, width))
        # Resizing after a crop: rescale both the crop and the frame it sits in.
        sy, sx = height / crop_h, width / crop_w
        frame = (round(self.resized_size[0] * sy), round(self.resized_size[1] * sx))
        return ImageGeometry(
            self.original_size, frame, (round(top * sy), round(left * sx), height, width)
        )

    def center_cropped(self, height: int, width: int) -> ImageGeometry:
        """The geometry after a centre crop (or pad) of the current view to ``height x width``."""
        top, left, crop_h, crop_w = self.crop_box
        # torchvision's CenterCrop rounds the offsets this way.
        new_top = top + round((crop_h - height) / 2.0)
        new_left = left + round((crop_w - width) / 2.0)
        return ImageGeometry(
            self.original_size, self.resized_size, (new_top, new_left, height, width)
        )


def shorter_side_size(
    height: int, width: int, size: int, max_size: int | None = None
) -> tuple[int, int]:
    """torchvision's ``Resize(int)`` output size: the shorter side becomes ``size``."""
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if height <= width else (new_long, new_short)


def keep_ratio_size(
    height: int, width: int, target: tuple[int, int], longest: float
) -> tuple[int, int]:
    """timm's ``ResizeKeepRatio`` output size (no random scaling, eval mode)."""
    ratio_h, ratio_w = height / target[0], width / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return (round(height / ratio), round(width / ratio))


def heatmap_to_original(heatmap: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
    """Map a model-input heatmap ``(H, W)`` onto the original image ``(H0, W0)``.

    Parts of the original photo that the crop cut away get NaN (no evidence either way),
    which matplotlib and plotly draw as transparent.
    """
    if heatmap.ndim != 2:
        raise ValueError(
            f"heatmap_to_original expects one (H, W) heatmap, got {tuple(heatmap.shape)}."
        )
    top, left, crop_h, crop_w = geometry.crop_box
    res_h, res_w = geometry.resized_size
    crop = F.interpolate(
        heatmap[None, None].float(), size=(crop_h, crop_w), mode="bilinear", align_corners=False
    )[0, 0]
    canvas = torch.full((res_h, res_w), math.nan, dtype=crop.dtype, device=crop.device)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + crop_h, res_h), min(left + crop_w, res_w)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = crop[y0 - top : y1 - top, x0 - left : x1 - left]
    if (res_h, res_w) == geometry.original_size:
        return canvas
    valid = (~canvas.isnan()).float()
    filled = torch.nan_to_num(canvas)
    size = geometry.original_size
    up = F.interpolate(filled[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    weight = F.interpolate(valid[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    # Renormalise by the valid fraction so the crop border is not darkened by the NaN fill.
    return torch.where(weight > 0.5, up / weight.clamp_min(1e-6), torch.full_like(up, math.nan))
