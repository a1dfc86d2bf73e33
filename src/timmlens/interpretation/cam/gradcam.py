"""GradCAM (through Captum's ``LayerGradCam``) and GradCAM++ on the CAM engine.

Each method is a channel-weight rule ``(A, g) -> w`` ``(B, C)`` on
[`CAMExplainer`][timmlens.interpretation.cam.engine.CAMExplainer]; the map is
``ReLU(sum_k w_k A_k)``. See `timmlens.interpretation.cam.engine` for how a call runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...adapters import SpatialView
from .._targets import TargetScore
from ..registry import register_method
from .engine import CamContext, CAMExplainer, eigen_smoothing, upsample_maps, weighted_sum

__all__ = [
    "GradCAM",
    "GradCAMPlusPlus",
    "gradcam_plusplus_weights",
    "gradcam_weights",
    "upsample_maps",
    "weighted_sum",
]


def gradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """GradCAM channel weights, the spatial mean of the gradients: -> ``(B, C)``.

    Args:
        activations: ``(B, C, h, w)`` layer output (unused; kept for a uniform signature).
        gradients: ``(B, C, h, w)`` gradient of each image's target score.
    """
    del activations
    return gradients.mean(dim=(2, 3))


def gradcam_plusplus_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """GradCAM++ channel weights, closed form of Chattopadhay et al. 2018, eq. 19: -> ``(B, C)``.

    ``alpha_kij = g^2 / (2 g^2 + sum_ab A_kab * g^3)`` and ``w_k = sum_ij alpha_kij ReLU(g_kij)``,
    with ``alpha = 0`` where the denominator is 0 (in particular where ``g = 0``).

    ``g`` is the gradient of the class *score* (the logit), as in pytorch-grad-cam. The
    paper derives the powers ``g^2, g^3`` for ``Y = exp(S)``, whose higher derivatives are
    powers of the first; using them with the logit's gradient is the usual convention.
    Unlike pytorch-grad-cam no ``eps`` is added to the denominator: with gradients of
    ``1e-3`` (typical for a 512-channel head) ``g^2`` is ``1e-6`` and an ``eps`` of ``1e-6``
    would change alpha by a third. Where ``sum_ab A_kab < 0`` (layers not after a ReLU)
    the denominator can approach zero and alpha grow large; that is the formula's own.

    Args:
        activations: ``(B, C, h, w)`` layer output ``A``.
        gradients: ``(B, C, h, w)`` gradient ``g`` of each image's target score.
    """
    grads_2 = gradients.pow(2)
    grads_3 = grads_2 * gradients
    sum_activations = activations.sum(dim=(2, 3), keepdim=True)
    denominator = 2 * grads_2 + sum_activations * grads_3
    nonzero = denominator != 0
    alpha = torch.where(nonzero, grads_2 / torch.where(nonzero, denominator, 1), 0)
    return (alpha * gradients.clamp_min(0)).sum(dim=(2, 3))


@register_method(
    "gradcam",
    title="GradCAM",
    kind="cam",
    summary="gradient-weighted class activation map of one layer (fast, coarse)",
    paper="Selvaraju et al., Grad-CAM, ICCV 2017",
    formula="ReLU(sum_k w_k A_k), w_k = mean_ij dy/dA_kij",
    cost="1 forward + 1 backward (down to the layer)",
)
class GradCAM(CAMExplainer):
    """GradCAM (Selvaraju et al. 2017) through Captum's ``LayerGradCam``.

    ``map = ReLU(sum_k mean_ij(g_kij) A_k)`` at the layer's resolution, where ``A`` is the
    layer output seen as ``(B, C, h, w)`` and ``g`` the gradient of each image's target
    logit; then upsampled to the input and min-max normalised per image.

    Example::

        explainer = GradCAM(model, target_layer="backbone.layer4")
        heatmap = explainer(image, target_class=0)       # (H, W) in [0, 1]
        heatmaps = explainer(batch, target_class=None)   # (B, H, W), predicted classes
        raw = explainer.attribute_layer(batch, [3, 7])   # (B, h, w), Captum's raw maps

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        target_layer: dotted name, module or list of them; ``None`` = the family's default
            (``timmlens.describe(model)`` shows it). Resolved at construction.
        relu: ``ReLU`` on the map (positive evidence only).
        normalize: per-image min-max to ``[0, 1]``; ``False`` gives raw upsampled maps.
        interpolate: upsampling mode to the input size (``"bilinear"`` by default).

    With one layer Captum's ``LayerGradCam`` does the maths; with several, the shared
    engine computes the same formula for all layers from one forward and backward, and
    the heatmap is the average of the per-layer min-max-normalised maps.
    """

    def channel_weights(self, ctx: CamContext) -> torch.Tensor:
        assert ctx.gradients is not None
        return gradcam_weights(ctx.activations, ctx.gradients)

    def maps_from_views(
        self,
        score: TargetScore,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        views: Sequence[SpatialView],
    ) -> list[torch.Tensor]:
        if len(views) != 1 or eigen_smoothing():  # Captum's LayerGradCam sums channels
            return super().maps_from_views(score, inputs, targets, views)
        from captum.attr import LayerGradCam

        # TargetScore returns (B,) already, so Captum's target is None.
        cam = LayerGradCam(score, views[0]).attribute(
            inputs,
            additional_forward_args=None if targets is None else (targets,),
            relu_attributions=self.relu,
        )
        return [cam[:, 0]]


@register_method(
    "gradcampp",
    title="GradCAM++",
    kind="cam",
    aliases=("gradcam++", "gradcam_plusplus", "gradcamplusplus"),
    summary="GradCAM with higher-order weights (better for several objects)",
    paper="Chattopadhay et al., Grad-CAM++, WACV 2018 (eq. 19)",
    formula="ReLU(sum_k w_k A_k), w_k = sum_ij alpha_kij ReLU(g_kij), "
    "alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)",
    cost="1 forward + 1 backward (down to the layer)",
)
class GradCAMPlusPlus(CAMExplainer):
    """GradCAM++ (Chattopadhay et al. 2018), closed form of eq. 19.

    ``alpha = g^2 / (2 g^2 + sum_ab(A_ab) g^3)`` (0 where the denominator is 0),
    ``w_k = sum_ij alpha_kij ReLU(g_kij)``, ``map = ReLU(sum_k w_k A_k)``; see
    `gradcam_plusplus_weights` for the conventions. Activations and gradients come
    from Captum's ``compute_layer_gradients_and_eval`` on the spatial tap, one forward
    and one backward per batch.

    Args: as [`GradCAM`][].
    """

    def channel_weights(self, ctx: CamContext) -> torch.Tensor:
        assert ctx.gradients is not None
        return gradcam_plusplus_weights(ctx.activations, ctx.gradients)
