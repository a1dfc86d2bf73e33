"""The features of perturbation methods: windows and cells from the token grid, or
superpixels.

A plain patch model (ViT, DeiT, hybrids) perturbs its tokens (`patch_pixels`); other
models a 14x14 grid of cells (`cell_feature_mask`), or SLIC superpixels of the
de-normalised image (`slic_feature_mask`, scikit-image).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from ...adapters import get_adapter
from ...data import normalization
from .checks import check_positive_int

__all__ = [
    "CNN_CELLS",
    "FEATURE_MASKS",
    "FeatureMask",
    "FeatureMaskKind",
    "cell_feature_mask",
    "optional_import",
    "pair",
    "patch_pixels",
    "slic_feature_mask",
]

FeatureMaskKind = Literal["cells", "slic"]
FEATURE_MASKS: tuple[str, ...] = get_args(FeatureMaskKind)
#: Cells per side of CNNs' default feature grid and occlusion window (1/14 of the side).
CNN_CELLS = 14
#: SLIC's compactness (scikit-image's default): colour vs space in the superpixel distance.
SLIC_COMPACTNESS = 10.0


def patch_pixels(model: nn.Module) -> tuple[int, int] | None:
    """Pixels per token side of a plain patch model (ViT, DeiT, hybrids), else ``None``.

    Read from ``patch_embed``'s ``img_size / grid_size`` (a hybrid's CNN stem counts).
    Models whose tokens merge later (Swin, PiT: the last reduction is not the patch)
    and CNNs get ``None``: a 4-pixel Swin patch is no useful perturbation unit.
    """
    timm_model = get_adapter(model).timm_model
    embed = getattr(timm_model, "patch_embed", None)
    img_size, grid = getattr(embed, "img_size", None), getattr(embed, "grid_size", None)
    if img_size is None or grid is None:
        return None
    patch = (int(img_size[0]) // int(grid[0]), int(img_size[1]) // int(grid[1]))
    info = getattr(timm_model, "feature_info", None) or []
    last = info[-1].get("reduction") if info and isinstance(info[-1], dict) else None
    if last is not None and int(last) != max(patch):
        return None
    return patch


def pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair)
    ):
        raise ValueError(
            f"{name} must be a positive integer or a (height, width) pair of them, got "
            f"{value!r}. Or pass None for the model's default."
        )
    return int(pair[0]), int(pair[1])


def cell_feature_mask(
    height: int, width: int, grid: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """Feature ids of a ``grid`` of near-equal cells: ``(1, 1, H, W)`` long, row-major.

    Pixel ``(y, x)`` is in cell ``(y * gh // H, x * gw // W)``: with ``H`` a multiple of
    ``gh`` the cells are exactly the ``H / gh`` pixel patches (a ViT's tokens).
    """
    rows = torch.arange(height, device=device) * grid[0] // height
    cols = torch.arange(width, device=device) * grid[1] // width
    return (rows[:, None] * grid[1] + cols[None, :]).view(1, 1, height, width)


def optional_import(module: str, package: str, what: str, instead: str) -> Any:
    """``import module``, or an ImportError saying how to install ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs {package}, which is not installed. Install it with: pip install "
            f"{package}  ({instead})."
        ) from exc


def _skimage_slic() -> Any:
    return optional_import(
        "skimage.segmentation",
        "scikit-image",
        "feature_mask='slic'",
        "or use feature_mask='cells', which needs nothing",
    ).slic


def slic_feature_mask(
    inputs: torch.Tensor, model: nn.Module, n_segments: int, compactness: float = SLIC_COMPACTNESS
) -> torch.Tensor:
    """SLIC superpixels of each image: ``(B, C, H, W)`` -> ``(B, 1, H, W)`` long ids.

    SLIC runs on the de-normalised pixels (``x * std + mean``, clipped to [0, 1]), where
    its colour distance means something; ids are renumbered ``0..n-1`` per image.
    """
    slic = _skimage_slic()
    mean, std = normalization(model, inputs)
    pixels = (inputs.detach() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().double()
    masks = []
    for image in pixels.numpy():
        labels = slic(image, n_segments=n_segments, compactness=compactness, start_label=0)
        ids = torch.as_tensor(labels, dtype=torch.long).flatten()
        masks.append(torch.unique(ids, return_inverse=True)[1].view(labels.shape))
    return torch.stack(masks)[:, None].to(inputs.device)


@dataclass(frozen=True)
class FeatureMask:
    """The features a feature method perturbs: patch cells or SLIC superpixels.

    Attributes:
        kind: ``"cells"`` or ``"slic"`` (scikit-image superpixels of the de-normalised
            image; ``pip install scikit-image``).
        grid: ``(rows, cols)`` cells of ``"cells"``; ``None``: the token grid of plain
            patch models, else 14x14.
        n_segments: SLIC's target number of superpixels.
    """

    kind: FeatureMaskKind = "cells"
    grid: tuple[int, int] | None = None
    n_segments: int = 50

    @classmethod
    def checked(
        cls, method: str, kind: Any, grid: int | tuple[int, int] | None, n_segments: int
    ) -> FeatureMask:
        """The mask of constructor arguments, refused with what to pass where wrong."""
        if kind not in FEATURE_MASKS:
            raise ValueError(
                f"unknown feature_mask {kind!r} for {method}; expected 'cells' "
                f"(a grid of patches) or 'slic' (superpixels, needs scikit-image)."
            )
        if kind == "slic":
            _skimage_slic()  # fail at construction, not in the middle of a run
        return cls(
            kind,
            None if grid is None else pair(grid, "grid"),
            check_positive_int(n_segments, "n_segments", "Try 50."),
        )

    def cells(self, model: nn.Module, height: int, width: int) -> tuple[int, int]:
        """The ``(rows, cols)`` grid used for ``height x width`` inputs."""
        if self.grid is not None:
            return self.grid
        patch = patch_pixels(model)
        if patch is None:
            return (min(CNN_CELLS, height), min(CNN_CELLS, width))
        return (math.ceil(height / patch[0]), math.ceil(width / patch[1]))

    def features(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Feature ids: ``(1, 1, H, W)`` for cells, ``(b, 1, H, W)`` for superpixels."""
        height, width = inputs.shape[-2:]
        if self.kind == "slic":
            return slic_feature_mask(inputs, model, self.n_segments)
        return cell_feature_mask(height, width, self.cells(model, height, width), inputs.device)
