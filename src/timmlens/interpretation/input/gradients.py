"""Captum's gradient methods on the input pixels: one backward each.

* ``saliency`` (``dy/dx``), ``inputxgradient`` (``x * dy/dx``);
* ``guidedbackprop`` and ``deconvolution`` (the backward of ``nn.ReLU`` replaced);
* ``guidedgradcam``: guided backprop times the upsampled GradCAM of the adapter's
  layer, on its spatial tap.

Each is a subclass of
[`CaptumInputExplainer`][timmlens.interpretation.input.engine.CaptumInputExplainer]
naming its Captum class; ``explainer.attributions(images, target_class)`` gives Captum's
raw ``(B, C, H, W)`` attributions, equal to Captum called directly on
``TargetScore(model)``. Where no ``nn.ReLU`` module runs (ReLU6 in EfficientNet-Lite and
MobileNetV2, SiLU, GELU), the three ReLU-rule methods say so at construction
(`warn_if_no_relu_runs`): the rule changes nothing there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..._warnings import warn_caller
from ...adapters import LayerSpec, get_adapter, spatial_tap
from ...errors import LayerResolutionError
from .._targets import TargetScore
from ..cam.engine import InterpolationMode
from ..registry import register_method
from .engine import CaptumInputExplainer

__all__ = [
    "Deconvolution",
    "GuidedBackprop",
    "GuidedGradCam",
    "InputXGradient",
    "Saliency",
    "warn_if_no_relu_runs",
]

#: Activations that replace ``nn.ReLU`` in timm families, named in the warning.
_OTHER_ACTIVATIONS = (nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish)


def warn_if_no_relu_runs(
    explainer: CaptumInputExplainer, rule: str, equals: str, instead: str = "'saliency' / 'ig'"
) -> None:
    """Warn where Captum's ``rule`` (which replaces the backward of ``nn.ReLU`` modules)
    has no ``nn.ReLU`` to act on, so ``explainer``'s result equals ``equals`` (``instead``:
    the methods to use on such a model).

    Said once, at construction, rather than handing back another method's map under
    this method's name.
    """
    if any(isinstance(module, nn.ReLU) for module in explainer.model.modules()):
        return
    others = sorted(
        {type(m).__name__ for m in explainer.model.modules() if isinstance(m, _OTHER_ACTIVATIONS)}
    )
    found = f" (its activations: {', '.join(others)})" if others else ""
    warn_caller(
        f"{explainer.name}: this model has no nn.ReLU module{found}, and Captum's {rule} "
        f"rule replaces the backward of nn.ReLU only, so the result equals {equals}. Use a "
        f"ReLU network for this method, or {instead} for this one."
    )


@register_method(
    "saliency",
    title="Saliency",
    kind="input",
    compared_by_default=False,
    aliases=("gradient", "vanilla_gradient"),
    summary="input gradient of the class score (pixel-level, any model, 1 backward)",
    paper="Simonyan et al., Deep Inside Convolutional Networks, ICLR workshop 2014",
    formula="dy/dx (signed; the heatmap takes |.| summed over channels)",
    cost="1 forward + 1 backward",
)
class Saliency(CaptumInputExplainer):
    """The input gradient ``dy/dx`` via ``captum.attr.Saliency(abs=False)``.

    Raw attributions keep the sign (Captum's ``abs=False``); the default heatmap takes
    the absolute value, as the paper does.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        signed: heatmaps keep polarity instead of ``|.|`` summed over channels.
    """

    captum_class = "Saliency"

    def __init__(self, model: nn.Module, *, signed: bool = False) -> None:
        super().__init__(model, signed=signed, abs=False)


@register_method(
    "inputxgradient",
    title="Input x Gradient",
    kind="input",
    compared_by_default=False,
    aliases=("input_x_gradient", "gradientxinput"),
    summary="input times its gradient (pixel-level, any model, 1 backward)",
    paper="Shrikumar et al., Not Just a Black Box, 2016",
    formula="x * dy/dx",
    cost="1 forward + 1 backward",
)
class InputXGradient(CaptumInputExplainer):
    """``x * dy/dx`` via ``captum.attr.InputXGradient`` (``x`` in normalised input space).

    Args: as `Saliency`.
    """

    captum_class = "InputXGradient"

    def __init__(self, model: nn.Module, *, signed: bool = False) -> None:
        super().__init__(model, signed=signed)


@register_method(
    "guidedbackprop",
    title="Guided Backprop",
    kind="input",
    compared_by_default=False,
    aliases=("guided_backprop", "guided_backpropagation"),
    summary="gradient with only positive signals through each ReLU (sharp edges)",
    paper="Springenberg et al., Striving for Simplicity, ICLR workshop 2015",
    formula="dy/dx with ReLU backward g -> ReLU(g) * [x > 0]",
    cost="1 forward + 1 backward",
    applies_to=(
        "every model; where no nn.ReLU module runs (GELU in ViTs, ReLU6 in "
        "EfficientNet-Lite) it equals saliency, and a warning says so"
    ),
)
class GuidedBackprop(CaptumInputExplainer):
    """Guided backpropagation via ``captum.attr.GuidedBackprop``.

    Captum overrides the backward of ``nn.ReLU`` modules only; functional ReLUs and other
    activations keep their plain gradient.

    Args: as `Saliency`.
    """

    captum_class = "GuidedBackprop"
    hooks_modules = True

    def __init__(self, model: nn.Module, *, signed: bool = False) -> None:
        super().__init__(model, signed=signed)
        warn_if_no_relu_runs(self, "GuidedBackprop", "'saliency'")


@register_method(
    "deconvolution",
    title="Deconvolution",
    kind="input",
    compared_by_default=False,
    aliases=("deconvnet",),
    summary="backward pass with ReLU applied to the gradient, not gated by the input",
    paper="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014",
    formula="dy/dx with ReLU backward g -> ReLU(g)",
    cost="1 forward + 1 backward",
    applies_to=(
        "every model; where no nn.ReLU module runs (GELU in ViTs, ReLU6 in "
        "EfficientNet-Lite) it equals saliency, and a warning says so"
    ),
)
class Deconvolution(CaptumInputExplainer):
    """Deconvnet attribution via ``captum.attr.Deconvolution`` (``nn.ReLU`` modules).

    Args: as `Saliency`.
    """

    captum_class = "Deconvolution"
    hooks_modules = True

    def __init__(self, model: nn.Module, *, signed: bool = False) -> None:
        super().__init__(model, signed=signed)
        warn_if_no_relu_runs(self, "Deconvolution", "'saliency'")


@register_method(
    "guidedgradcam",
    title="Guided GradCAM",
    kind="input",
    compared_by_default=False,
    aliases=("guided_gradcam",),
    summary="guided backprop times the upsampled GradCAM of the adapter's layer",
    paper="Selvaraju et al., Grad-CAM, ICCV 2017",
    formula="GuidedBackprop(x) * upsample(ReLU(sum_k mean_ij(g_kij) A_k))",
    cost="2 forwards + 2 backwards (GradCAM, guided backprop)",
    uses_layer=True,
    applies_to=(
        "every model with a CAM layer; where no nn.ReLU module runs (GELU in ViTs, ReLU6 in "
        "EfficientNet-Lite) it equals the gradient times GradCAM, and a warning says so"
    ),
)
class GuidedGradCam(CaptumInputExplainer):
    """Guided GradCAM via ``captum.attr.GuidedGradCam`` on the adapter's spatial tap.

    The GradCAM layer is seen as ``(B, C, h, w)`` whatever the family's layout (the
    same tap as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM]), so Captum's own
    ``GuidedGradCam`` runs on CNNs, ViTs and Swin alike: the element-wise product of
    guided backprop and the ReLU'd GradCAM upsampled to the input.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        target_layer: one layer (dotted name or module); ``None``: the family's default
            CAM layer.
        interpolate: GradCAM upsampling mode; ``"bilinear"`` as in the paper (Captum's
            default is ``"nearest"``).
        signed: heatmaps keep polarity instead of ``|.|`` summed over channels.
    """

    captum_class = "GuidedGradCam"
    rows_per_image = 2
    hooks_modules = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        interpolate: InterpolationMode = "bilinear",
        *,
        signed: bool = False,
    ) -> None:
        super().__init__(model, signed=signed)
        warn_if_no_relu_runs(
            self, "GuidedBackprop", "the plain gradient times GradCAM", "'gradcam' / 'saliency'"
        )
        self.adapter = get_adapter(model)
        with self.adapter.layer_errors_of(self.name):
            layers = self.adapter.resolve_layers(target_layer)
        if len(layers) != 1:
            raise LayerResolutionError(
                f"guidedgradcam takes one layer, got {len(layers)} "
                f"({', '.join(layer.name for layer in layers)}); pass one name, e.g. "
                f"{self.adapter.recommended_layers[0]!r}."
            )
        self.layer = layers[0]
        self.interpolate: InterpolationMode = interpolate

    @property
    def layer_names(self) -> list[str]:
        """The GradCAM layer's dotted name."""
        return [self.layer.name]

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        from captum.attr import GuidedGradCam as CaptumGuidedGradCam

        layer = self.layer
        forward = TargetScore(self.model)
        with (
            self.adapter.layer_errors_of(self.name),
            spatial_tap(self.model, layer.module, layer.name, self.adapter.layout_for) as view,
            self.captum_call(forward),
        ):
            method = CaptumGuidedGradCam(forward, view)
            return method.attribute(
                inputs,
                additional_forward_args=(targets,),
                interpolate_mode=self.interpolate,
                **arguments,
            ).detach()
