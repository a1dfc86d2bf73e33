"""What one forward pass shows about a model timm knows nothing of.

A torchvision classifier or a hand-written CNN has no ``feature_info``, no
``num_classes``; but one forward with a hook on every module tells the output shape of
each module in the order they finish. From that record:

* the class count is the last dimension of the ``(B, K)`` output;
* the CAM layer is the last module with a spatial output (4-D, more than one position)
  after which the spatial dimensions collapse (global pooling, flattening). Modules
  finish after their children, so a whole stage (``layer4``) wins over its last block.

The trace runs once per model on a zero image of the model's data-config size, inside
`explaining` (eval mode, model left as found), and is kept
until the model's set of modules changes (a replaced head gives a new trace).
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._model_state import explaining
from ..errors import LayerResolutionError, UnsupportedModelError


@dataclass(frozen=True)
class ModuleCall:
    """One module's finished forward: its dotted name and the shape of its output.

    ``shape`` is that of the output tensor, or of the first tensor of a tuple/list
    output; ``None`` when it returned no tensor.
    """

    name: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class ForwardTrace:
    """The modules of one forward in the order they finished, and the model's output shape."""

    calls: tuple[ModuleCall, ...]
    output_shape: tuple[int, ...] | None
    input_shape: tuple[int, ...]

    def last_spatial_layer(self) -> ModuleCall:
        """The last module with a spatial output before global pooling (see module doc).

        Raises:
            LayerResolutionError: no such module, spatial outputs up to the end (not a
                classifier), or token layers after it (a transformer: no CNN layer to tap).
        """
        counts = Counter(call.name for call in self.calls)
        spatial = [
            index
            for index, call in enumerate(self.calls)
            if call.shape is not None
            and len(call.shape) == 4
            and call.shape[2] * call.shape[3] > 1
            and counts[call.name] == 1  # a module run twice (a shared ReLU) has no one output
        ]
        size = "x".join(str(v) for v in self.input_shape[-2:])
        if not spatial:
            raise LayerResolutionError(
                f"No layer of this model outputs a spatial map (B, C, h, w) for a {size} "
                f"input, so there is no default CAM layer. Pass target_layer= with a layer "
                f"whose output is a feature map; timmlens.describe(model) lists the layers."
            )
        last = spatial[-1]
        tokens = [
            call.name
            for call in self.calls[last + 1 :]
            if call.shape is not None and len(call.shape) == 3 and min(call.shape[1:]) > 1
        ]
        if tokens:
            raise LayerResolutionError(
                f"The last spatial layer, '{self.calls[last].name}', is followed by token "
                f"layers ('{tokens[0]}' outputs (B, N, D)): a transformer, whose CAM layer "
                f"timmlens cannot guess without timm's facts. Pass target_layer= with a "
                f"block's output and check the map, or use a timm model."
            )
        return self.calls[last]


_traces: weakref.WeakKeyDictionary[nn.Module, tuple[Any, ForwardTrace]] = (
    weakref.WeakKeyDictionary()
)
_traces_guard = threading.Lock()


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((item for item in output if isinstance(item, torch.Tensor)), None)
    return None


def _shape(output: Any) -> tuple[int, ...] | None:
    tensor = _first_tensor(output)
    return tuple(tensor.shape) if tensor is not None else None


def forward_trace(model: nn.Module) -> ForwardTrace:
    """The [`ForwardTrace`][] of ``model`` (traced once, then reused; see module doc)."""
    from ..data import data_config, model_device, model_dtype

    channels, height, width = data_config(model)["input_size"]
    device = model_device(model)
    key = (tuple(map(id, model.modules())), (channels, height, width), device)
    with _traces_guard:
        cached = _traces.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    calls: list[ModuleCall] = []
    names = {}
    for name, module in model.named_modules():
        names.setdefault(module, name)

    def record(module: nn.Module, _args: Any, output: Any) -> None:
        calls.append(ModuleCall(names[module], _shape(output)))

    inputs = torch.zeros(1, channels, height, width, device=device, dtype=model_dtype(model))
    with explaining(model), torch.no_grad():
        handles = [module.register_forward_hook(record) for module in names if module is not model]
        try:
            output = model(inputs)
        except Exception as exc:
            raise UnsupportedModelError(
                f"{type(model).__name__} failed on a {height}x{width} test image, which "
                f"timmlens runs once to find its layers and class count: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            for handle in handles:
                handle.remove()
    trace = ForwardTrace(tuple(calls), _shape(output), tuple(inputs.shape))
    with _traces_guard:
        _traces[model] = (key, trace)
    return trace


def traced_num_classes(model: nn.Module) -> int | None:
    """The class count ``K`` of a model whose output is ``(B, K)`` logits, else ``None``."""
    shape = forward_trace(model).output_shape
    return shape[1] if shape is not None and len(shape) == 2 and shape[1] > 0 else None
