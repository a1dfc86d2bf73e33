"""``timmlens.describe(model)``: what the adapter knows, at a glance."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._model_state import explaining
from ..errors import LayerResolutionError
from ..models.introspect import data_config, model_device, model_dtype
from .adapter import get_adapter
from .layout import Layout
from .tap import spatial_tap


@dataclass(frozen=True)
class ModelDescription:
    """The adapter's facts about one model (its ``str`` is a readable table)."""

    architecture: str
    family: str
    default_layer: str | None
    default_layer_reason: str
    layout: str
    grid: tuple[int, int] | None
    num_prefix_tokens: int
    input_size: tuple[int, int, int]
    feature_stages: list[str] = field(default_factory=list)
    attention_blocks: list[str] = field(default_factory=list)
    attention_note: str | None = None

    def __str__(self) -> str:
        attention = (
            f"{len(self.attention_blocks)} "
            f"({self.attention_blocks[0]} .. {self.attention_blocks[-1]})"
            if self.attention_blocks
            else f"none - {self.attention_note}"
        )
        rows = [
            ("architecture", self.architecture),
            ("family", self.family),
            ("input size", "x".join(map(str, self.input_size))),
            ("default CAM layer", f"{self.default_layer}  ({self.default_layer_reason})"),
            ("layer layout", self.layout),
            ("grid", "x".join(map(str, self.grid)) if self.grid else "-"),
            ("prefix tokens", str(self.num_prefix_tokens)),
            ("feature stages", ", ".join(self.feature_stages) or "-"),
            ("attention blocks", attention),
        ]
        width = max(len(key) for key, _ in rows)
        return "\n".join(f"{key.ljust(width)} : {value}" for key, value in rows)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython and notebooks show the table, not the dataclass fields."""
        printer.text(str(self))


def _in_ipython() -> bool:
    """Whether an IPython shell or notebook runs us (it shows a returned value itself)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    return callable(get) and get() is not None


def probe_layout(model: nn.Module, layer_name: str, input_size: tuple[int, int, int]) -> Layout:
    """Run one no-grad forward on a zero image to read ``layer_name``'s output layout."""
    adapter = get_adapter(model)
    layer = adapter.resolve_layers(layer_name)[0]
    probe = torch.zeros(1, *input_size, device=model_device(model), dtype=model_dtype(model))
    # explaining() restores every module's own mode, not just the root's.
    with (
        explaining(model),
        torch.no_grad(),
        spatial_tap(model, layer.module, layer.name, adapter.layout_for) as view,
    ):
        model(probe)
    if view.layout is None:
        raise LayerResolutionError(
            f"Layer '{layer.name}' did not run in the model's forward pass, so it cannot be "
            f"tapped. Pick a layer on the forward path; describe(model) lists the stages."
        )
    return view.layout


def describe(model: nn.Module, print_it: bool | None = None) -> ModelDescription:
    """Describe how timmlens sees ``model``: the returned description's ``str`` is a table.

    ``print_it=None`` prints it except under IPython or in a notebook, which show the
    returned value themselves (printing too would show it twice); ``True``/``False``
    always/never print.

    Runs one forward pass on a zero image to read the default layer's output layout.
    """
    adapter = get_adapter(model)
    input_size = tuple(int(v) for v in data_config(model)["input_size"])
    try:
        default, reason = adapter.default_layer, adapter.default_layer_reason
        layout = probe_layout(model, default, input_size)  # type: ignore[arg-type]
        layout_text = layout.kind + (
            f" (prefix {layout.num_prefix_tokens} + {layout.grid[0]}x{layout.grid[1]} patches)"
            if layout.kind == "tokens"
            else ""
        )
        grid: tuple[int, int] | None = layout.grid
        prefix = layout.num_prefix_tokens if layout.kind == "tokens" else adapter.num_prefix_tokens
    except LayerResolutionError as exc:
        default, reason, layout_text, grid, prefix = (
            None,
            str(exc),
            "unknown",
            None,
            adapter.num_prefix_tokens,
        )
    description = ModelDescription(
        architecture=adapter.architecture,
        family=adapter.family,
        default_layer=default,
        default_layer_reason=reason,
        layout=layout_text,
        grid=grid,
        num_prefix_tokens=prefix,
        input_size=input_size,  # type: ignore[arg-type]
        feature_stages=adapter.feature_stages,
        attention_blocks=[block.name for block in adapter.attention_blocks],
        attention_note=adapter.attention_unavailable_reason,
    )
    if print_it or (print_it is None and not _in_ipython()):
        print(description)
    return description
