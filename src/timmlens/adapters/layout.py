"""Layouts of layer outputs and their conversion to and from NCHW.

Captum's ``LayerGradCam`` wants ``(B, C, H, W)``. Layers of timm models produce
NCHW (CNNs), NHWC (Swin, MambaOut, ...) or tokens ``(B, N, C)`` whose first
``prefix`` tokens (class, distillation, register) sit before the patch grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import LayerResolutionError

LayoutKind = Literal["NCHW", "NHWC", "tokens"]


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
        """Inverse of :meth:`to_nchw`; prefix tokens are taken from ``original``."""
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
    grid_hint: tuple[int, int] | None,
    prefix_hint: int,
    layer_name: str,
) -> Layout:
    """Split ``num_tokens`` into prefix tokens and a patch grid.

    The grid comes from the model (patch embedding or input size / reduction) when it
    fits; otherwise the patch count after ``prefix_hint`` tokens must be a square.
    """
    if grid_hint is not None:
        prefix = num_tokens - grid_hint[0] * grid_hint[1]
        if prefix >= 0:
            return Layout("tokens", grid_hint, prefix)
    patches = num_tokens - prefix_hint
    side = math.isqrt(max(patches, 0))
    if patches > 0 and side * side == patches:
        return Layout("tokens", (side, side), prefix_hint)
    raise LayerResolutionError(
        f"Layer '{layer_name}' outputs {num_tokens} tokens, which do not form a patch grid "
        f"(expected grid {grid_hint} plus prefix tokens, or {prefix_hint} prefix tokens and a "
        f"square grid). Pick a layer whose output is spatial, e.g. one of the model's blocks."
    )
