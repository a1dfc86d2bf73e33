"""Layouts of layer outputs and their conversion to and from NCHW.

Captum's ``LayerGradCam`` wants ``(B, C, H, W)``. Layers of timm models produce
NCHW (CNNs), NHWC (Swin, MambaOut, ...) or tokens ``(B, N, C)`` whose first
``prefix`` tokens (class, distillation, register) sit before the patch grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import LayerResolutionError

LayoutKind = Literal["NCHW", "NHWC", "tokens"]
# Class + distillation + up to 16 register tokens; more means the grid guess was wrong.
MAX_PREFIX_TOKENS = 18


@dataclass(frozen=True)
class Layout:
    """How a layer's output maps onto a spatial grid.

    Attributes:
        kind: ``"NCHW"``, ``"NHWC"`` or ``"tokens"``.
        grid: ``(h, w)`` of the spatial map.
        num_prefix_tokens: tokens before the patch grid (tokens layout only).
    """

    kind: LayoutKind
    grid: tuple[int, int]
    num_prefix_tokens: int = 0

    def to_nchw(self, output: torch.Tensor) -> torch.Tensor:
        """Spatial view ``(B, C, h, w)`` of a layer output in this layout."""
        if self.kind == "NCHW":
            return output
        if self.kind == "NHWC":
            return output.permute(0, 3, 1, 2)
        patches = output[:, self.num_prefix_tokens :]
        batch, _, channels = patches.shape
        return patches.transpose(1, 2).reshape(batch, channels, *self.grid)

    def from_nchw(self, spatial: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_nchw`; prefix tokens are taken from ``original``."""
        if self.kind == "NCHW":
            return spatial
        if self.kind == "NHWC":
            return spatial.permute(0, 2, 3, 1)
        tokens = spatial.flatten(2).transpose(1, 2)
        if self.num_prefix_tokens == 0:
            return tokens
        return torch.cat([original[:, : self.num_prefix_tokens], tokens], dim=1)


def token_layout(
    num_tokens: int,
    grid_hints: Sequence[tuple[int, int]],
    prefix_hint: int,
    layer_name: str,
) -> Layout:
    """Split ``num_tokens`` into prefix tokens and a patch grid.

    The first grid from the model (patch embedding, input size / reduction) that leaves a
    small non-negative number of prefix tokens wins; otherwise the patches must form a
    square after ``prefix_hint`` (or the fewest possible) prefix tokens.
    """
    for grid in grid_hints:
        prefix = num_tokens - grid[0] * grid[1]
        if 0 <= prefix <= MAX_PREFIX_TOKENS:
            return Layout("tokens", grid, prefix)
    for prefix in (prefix_hint, *range(MAX_PREFIX_TOKENS + 1)):
        patches = num_tokens - prefix
        side = math.isqrt(max(patches, 0))
        if patches > 0 and side * side == patches:
            return Layout("tokens", (side, side), prefix)
    raise LayerResolutionError(
        f"Layer '{layer_name}' outputs {num_tokens} tokens, which do not form a patch grid "
        f"(expected one of the grids {list(grid_hints)} plus prefix tokens, or {prefix_hint} "
        f"prefix tokens and a square grid). Pick a layer whose output is spatial, e.g. one of "
        f"the model's blocks."
    )
