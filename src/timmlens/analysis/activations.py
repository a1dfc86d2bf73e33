"""One layer's activations as a spatial map, from one no-grad forward.

The feature analyses (deep feature factorization, concepts over a dataset, neuron
views) all start from the same thing: what a layer outputs for a batch, as
``(B, C, h, w)`` whatever the family's layout. The adapter's spatial tap gives exactly
that (NCHW for CNNs, NHWC for Swin, patch tokens without the class and register tokens
for ViTs), so these analyses never see a family's name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..adapters import LayerSpec, get_adapter, spatial_tap
from ..data import ImagesInput, prepare_images
from ..errors import LayerResolutionError, UnsupportedModelError
from ..interpretation.base import explanation_call, num_outputs


@dataclass(frozen=True, eq=False)
class LayerActivations:
    """A layer's output for a batch, with the logits of the same forward.

    Attributes:
        activations: ``(B, C, h, w)`` float, detached, on the model's device: the layer's
            output seen through the adapter's spatial tap (NCHW; NHWC permuted; tokens
            without their prefix tokens, reshaped to the patch grid).
        logits: ``(B, num_classes)`` from the same forward, detached; ``None`` for a
            headless model (``num_classes=0``), whose output is no class score.
        layer: the resolved layer's full dotted name.
        input_hw: ``(H, W)`` of the model input.
    """

    activations: torch.Tensor
    logits: torch.Tensor | None
    layer: str
    input_hw: tuple[int, int]


def default_activation_layer(model: nn.Module) -> str:
    """The layer the feature analyses read when none is given.

    The adapter's CAM layer (``ModelAdapter.default_layer``), or the norm + activation
    right after it where that layer is a bare convolution (``ModelAdapter.activation_layer``,
    the layer gradient-free CAMs read): the analyses use
    activations as evidence, and they must be the values the network passes on
    (EfficientNet's ``bn2``, not the pre-norm ``conv_head``, which is mostly negative).
    """
    return get_adapter(model).activation_layer


def _has_head(model: nn.Module) -> bool:
    try:
        num_outputs(model)
    except UnsupportedModelError:
        return False
    return True


def layer_activations(
    model: nn.Module, images: ImagesInput, layer: LayerSpec = None
) -> LayerActivations:
    """The output of one layer of ``model`` for ``images``, as ``(B, C, h, w)``.

    One no-grad forward in eval mode; the model is left as found (mode flags,
    ``requires_grad``, hooks), as in every explanation.

    Args:
        model: an ``ImageClassifier``, a timm model (also headless) or any image classifier.
        images: a preprocessed ``(B, C, H, W)`` / ``(C, H, W)`` tensor, or anything
            [`prepare_images`][timmlens.data.prepare_images] accepts (PIL, paths, arrays).
        layer: one dotted name or module; ``None`` takes [`default_activation_layer`][].

    Returns:
        [`LayerActivations`][] with activations ``(B, C, h, w)`` on the model's device.

    Raises:
        LayerResolutionError: an unknown name, several layers, a layer after global
            pooling or one whose output has no spatial grid, or a layer the forward
            never ran.
    """
    adapter = get_adapter(model)
    resolved = adapter.resolve_layers(default_activation_layer(model) if layer is None else layer)
    if len(resolved) != 1:
        names = ", ".join(item.name for item in resolved)
        raise LayerResolutionError(
            f"layer_activations reads one layer, got {len(resolved)} ({names}); pass one "
            f"dotted name or module."
        )
    target = resolved[0]
    inputs = prepare_images(images, model).tensor
    captured: list[torch.Tensor] = []
    with (
        explanation_call(model, inputs, "layer_activations", needs_gradients=False),
        spatial_tap(model, target.module, target.name, adapter.layout_for) as view,
        torch.no_grad(),
    ):
        # The view is the pass-through module that sees the NCHW form of the output.
        handle = view.register_forward_hook(lambda _m, _a, out: captured.append(out.detach()))
        try:
            output = model(inputs)
        finally:
            handle.remove()
    if not captured:
        raise LayerResolutionError(
            f"Layer '{target.name}' did not run in the model's forward, so it has no "
            f"activations; pick a layer on the forward path, e.g. "
            f"{', '.join(adapter.recommended_layers[:3])}."
        )
    activations = captured[-1]
    logits = output.detach() if _has_head(model) and isinstance(output, torch.Tensor) else None
    return LayerActivations(
        activations=activations.float(),
        logits=logits,
        layer=target.name,
        input_hw=(int(inputs.shape[-2]), int(inputs.shape[-1])),
    )
