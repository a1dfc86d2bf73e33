"""The spatial tap: present any layer to Captum as an NCHW layer.

A forward hook on the layer converts its output to ``(B, C, h, w)``, passes it
through an ``nn.Identity`` (the module Captum hooks) and converts it back, so the
model computes exactly what it computed before while Captum sees a spatial map.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import LayerResolutionError
from .layout import Layout


class SpatialView(nn.Identity):
    """The module Captum attaches to; ``layout`` is set by the first forward."""

    def __init__(self, layer_name: str) -> None:
        super().__init__()
        self.layer_name = layer_name
        self.layout: Layout | None = None


def _first_spatial_index(output: Any) -> int | None:
    """-1 for a tensor, the index of the first 3-D/4-D tensor in a tuple/list, else None."""
    if isinstance(output, torch.Tensor):
        return -1
    if isinstance(output, (tuple, list)):
        for index, item in enumerate(output):
            if isinstance(item, torch.Tensor) and item.ndim in (3, 4):
                return index
    return None


@contextmanager
def spatial_tap(
    root: nn.Module,
    layer: nn.Module,
    layer_name: str,
    layout_for: Any,
) -> Iterator[SpatialView]:
    """Attach a `SpatialView` to ``layer`` for the duration of the block.

    Args:
        root: the model that is run (its input size is recorded for token grids).
        layer: the layer to tap.
        layer_name: its name, for messages.
        layout_for: ``callable(output, input_hw, layer) -> Layout``, the adapter's rule.

    Yields:
        The view module to hand to Captum as the layer.
    """
    view = SpatialView(layer_name)
    input_hw: list[tuple[int, int]] = []

    def record_input(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            input_hw[:] = [tuple(args[0].shape[-2:])]

    def reshape_output(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
        # Some stages return (features, extras) tuples or lists of branches: tap the first
        # tensor with a spatial layout and hand the rest through untouched.
        index = _first_spatial_index(output)
        if index is None:
            raise LayerResolutionError(
                f"Layer '{layer_name}' returns {type(output).__name__} without a feature-map "
                f"tensor; pick a layer (or its sub-module) that returns one feature map."
            )
        tensor = output if index < 0 else output[index]
        layout = layout_for(tensor, input_hw[0] if input_hw else None, layer)
        view.layout = layout
        tapped = layout.from_nchw(view(layout.to_nchw(tensor)), tensor)
        if index < 0:
            return tapped
        items = list(output)
        items[index] = tapped
        return type(output)(items) if isinstance(output, list) else tuple(items)

    handles = [
        root.register_forward_pre_hook(record_input),
        layer.register_forward_hook(reshape_output),
    ]
    try:
        yield view
    finally:
        for handle in handles:
            handle.remove()
