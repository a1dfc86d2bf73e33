"""FullGrad's layer set: every layer that adds a per-channel bias to a spatial map.

FullGrad (Srinivas & Fleuret 2019) decomposes a ReLU network's output into the input
gradient times the input plus, for every bias, the bias times the gradient of the map it
is added to. pytorch-grad-cam 1.5.7 takes as "bias layers" the ``Conv2d`` and
``BatchNorm2d`` modules whose ``bias`` is set, and so does this module, with two
differences that matter on timm models:

* subclasses count: timm's ``Conv2dSame`` (TF padding, EfficientNet-Lite) and
  ``BatchNormAct2d`` (EfficientNet, MobileNet, RegNet) add their bias exactly as their
  parents do, but pytorch-grad-cam matches ``type(layer)`` exactly and finds none of
  them (on timm's EfficientNet-Lite0 its FullGrad is the input term alone);
* a ``BatchNormAct2d`` applies its activation inside the module, so its output is
  post-activation; the bias is added before it. The gradient is read where the bias
  is added: at the output of the module's ``drop`` step, which runs before ``act``.

A batch norm's bias, in eval mode, is its effective shift
``beta - running_mean * gamma / sqrt(running_var + eps)`` (the authors' code and
pytorch-grad-cam).

Not in the set, as in pytorch-grad-cam: ``Linear`` and ``LayerNorm`` biases. In a
ConvNeXt that leaves the convolutions' biases (stem, depthwise, downsampling); in a ViT
only the patch embedding's, so FullGrad refuses ViTs (`fullgrad_unavailable_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.introspect import unwrap_model

__all__ = ["BiasLayer", "bias_layers", "fullgrad_unavailable_reason"]

#: the module types whose bias is added to a spatial map (subclasses included)
BIAS_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.BatchNorm2d)


@dataclass(frozen=True)
class BiasLayer:
    """One layer of FullGrad's set.

    Attributes:
        name: the module's dotted name in the model.
        module: the ``Conv2d`` / ``BatchNorm2d`` (or subclass) that holds the bias.
        probe: the module whose *output* is the map the bias was added to (``module``
            itself, or a ``BatchNormAct2d``'s ``drop``, before its activation).
    """

    name: str
    module: nn.Module = field(repr=False, compare=False)
    probe: nn.Module = field(repr=False, compare=False)

    def bias(self) -> torch.Tensor:
        """``(C,)`` the bias added per channel (a batch norm's effective eval-mode shift)."""
        module = self.module
        assert module.bias is not None
        if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
            assert module.running_var is not None and module.weight is not None
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            return (module.bias - module.running_mean * scale).detach()
        return module.bias.detach()


def _probe_of(module: nn.Module) -> nn.Module:
    # timm's norm + activation modules (BatchNormAct2d): norm, then drop, then act
    drop, act = getattr(module, "drop", None), getattr(module, "act", None)
    if isinstance(module, nn.BatchNorm2d) and isinstance(drop, nn.Module) and act is not None:
        return drop
    return module


def bias_layers(model: nn.Module) -> list[BiasLayer]:
    """FullGrad's bias layers of ``model`` in module order (see the module docstring)."""
    model = unwrap_model(model, warn=False)
    found = []
    for name, module in model.named_modules():
        if isinstance(module, BIAS_LAYER_TYPES) and getattr(module, "bias", None) is not None:
            found.append(BiasLayer(name, module, _probe_of(module)))
    return found


def fullgrad_unavailable_reason(model: nn.Module) -> str | None:
    """Why FullGrad does not apply to ``model``, or ``None`` when it does.

    It refuses a model without a convolution or batch norm that has a bias (nothing but
    the input term would remain), and one whose only such layers are its patch
    embedding (ViT, DeiT, Swin: their biases are in ``Linear`` and ``LayerNorm`` layers
    on tokens, outside FullGrad's set, so the map would be the input term plus one layer).
    """
    layers = bias_layers(model)
    kind = type(unwrap_model(model, warn=False)).__name__
    if not layers:
        where = "no Conv2d or BatchNorm2d layer with a bias (convolutions without bias "
        where += "followed by GroupNorm/LayerNorm, or no convolutions at all)"
    elif all("patch_embed" in layer.name.split(".") for layer in layers):
        names = ", ".join(layer.name for layer in layers)
        where = (
            f"its only Conv2d/BatchNorm2d biases in its patch embedding ({names}); the "
            f"transformer's biases are in Linear and LayerNorm layers on tokens, outside "
            f"FullGrad's bias-gradient set"
        )
    else:
        return None
    return (
        f"FullGrad does not apply to this {kind}: it has {where}. FullGrad needs the "
        f"biases of the convolutions and batch norms of a CNN (ResNet, EfficientNet, "
        f"ConvNeXt, ...). Use 'gradcam' or 'ig' here, or 'inputxgradient' for FullGrad's "
        f"input term alone."
    )
