"""One layer's activations as a spatial map, from one no-grad forward.

The feature analyses (deep feature factorization, concepts over a dataset, neuron
views) all start from the same thing: what a layer outputs for a batch, as
``(B, C, h, w)`` whatever the family's layout. The adapter's spatial tap gives exactly
that (NCHW for CNNs, NHWC for Swin, patch tokens without the class and register tokens
for ViTs), so these analyses never see a family's name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..adapters import LayerSpec, SpatialView, get_adapter, spatial_tap
from ..data import ImagesInput, prepare_images
from ..errors import LayerResolutionError, UnsupportedModelError
from ..interpretation.base import explanation_call
from ..models.introspect import num_outputs


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


@contextmanager
def tap_one_layer(
    model: nn.Module, layer: LayerSpec, what: str
) -> Iterator[tuple[SpatialView, str]]:
    """Exactly one layer of ``model`` behind the adapter's spatial tap, for the block.

    Args:
        model: the model that will be run inside the block.
        layer: one dotted name or module; ``None`` is the adapter's CAM layer.
        what: the caller's name, for the error message.

    Yields:
        The view (its forward outputs are ``(B, C, h, w)``) and the layer's full name.

    Raises:
        LayerResolutionError: the name resolves to no layer or to several.
    """
    adapter = get_adapter(model)
    layers = adapter.resolve_layers(layer)
    if len(layers) != 1:
        raise LayerResolutionError(
            f"{what} takes one layer, got {len(layers)} "
            f"({', '.join(item.name for item in layers)}); pass one name, e.g. "
            f"{adapter.recommended_layers[0]!r}."
        )
    resolved = layers[0]
    with spatial_tap(model, resolved.module, resolved.name, adapter.layout_for) as view:
        yield view, resolved.name


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
    inputs = prepare_images(images, model).tensor
    adapter = get_adapter(model)
    captured: list[torch.Tensor] = []
    chosen = default_activation_layer(model) if layer is None else layer
    with (
        explanation_call(model, inputs, "layer_activations", needs_gradients=False),
        tap_one_layer(model, chosen, "layer_activations") as (view, name),
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
            f"Layer '{name}' did not run in the model's forward, so it has no "
            f"activations; pick a layer on the forward path, e.g. "
            f"{', '.join(adapter.recommended_layers[:3])}."
        )
    activations = captured[-1]
    logits = output.detach() if _has_head(model) and isinstance(output, torch.Tensor) else None
    return LayerActivations(
        activations=activations.float(),
        logits=logits,
        layer=name,
        input_hw=(int(inputs.shape[-2]), int(inputs.shape[-1])),
    )
