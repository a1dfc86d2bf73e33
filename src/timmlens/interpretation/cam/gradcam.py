"""Class activation maps from gradients: GradCAM (Captum's ``LayerGradCam``) and GradCAM++.

Both methods share one engine, :class:`_LayerCAM`:

1. the target layer(s) are resolved by the model's adapter when the explainer is built
   (a bad name fails there, with the closest names);
2. during a call each layer is seen through a *spatial tap*, a pass-through module that
   presents its output as ``(B, C, h, w)`` whatever the family's layout (NCHW for CNNs,
   NHWC for Swin, tokens with class/distillation tokens for ViT and DeiT);
3. one forward of :class:`~timmlens.interpretation._targets.TargetScore` (the target
   logit per image; the predicted class is picked inside the same forward) and one
   backward give the activations ``A`` and gradients ``g = d score / d A`` of every
   layer, through Captum;
4. a method is one small function ``(A, g) -> channel weights w`` ``(B, C)``; the map is
   ``ReLU(sum_k w_k A_k)`` ``(B, h, w)``;
5. maps are upsampled to the input's ``H x W`` and min-max normalised per image.

Cost: parameters are frozen during the call and the input is detached, so Captum's
``requires_grad`` on the tapped activation is the only entry into the autograd graph:
the forward records nothing before the layer and the backward stops there. A batch of
``B`` images with one target each is one forward and one (short) backward, with no
Python loop over images.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any, Literal

import torch
import torch.nn.functional as F
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum.attr import LayerGradCam
from torch import nn

from ...adapters import LayerSpec, ResolvedLayer, SpatialView, get_adapter, spatial_tap
from ...data import ImagesInput
from ...errors import LayerResolutionError
from .._targets import TargetInput, TargetScore, validate_targets
from ..base import CAPTUM_SILENT_LAYER, Explainer, explanation_call, normalize_maps, num_outputs

InterpolationMode = Literal["bilinear", "bicubic", "nearest", "area"]
_INTERPOLATION_MODES = ("bilinear", "bicubic", "nearest", "area")


def upsample_maps(
    maps: torch.Tensor, size: tuple[int, int], mode: InterpolationMode = "bilinear"
) -> torch.Tensor:
    """Resize layer-resolution maps to the input size: ``(B, h, w)`` -> ``(B, H, W)``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    align = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps[:, None], size=size, mode=mode, **align)[:, 0]


def weighted_sum(weights: torch.Tensor, activations: torch.Tensor, relu: bool) -> torch.Tensor:
    """The CAM of channel weights: ``(B, C)``, ``(B, C, h, w)`` -> ``(B, h, w)``.

    ``ReLU(sum_k w_k A_k)`` (without the ReLU when ``relu=False``).
    """
    cam = torch.einsum("bc,bchw->bhw", weights, activations)
    return cam.clamp_min(0) if relu else cam


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


class _LayerCAM(Explainer):
    """Shared machinery of CAM methods on one or several layers.

    Subclasses give :meth:`channel_weights`; they may replace :meth:`_layer_maps_from_views`
    to compute the maps with another engine (GradCAM uses Captum's ``LayerGradCam``).

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        target_layer: dotted name (``"backbone.layer4"``; ``"layer4"`` works too), module,
            or a list of them; ``None`` takes the adapter's default layer for the family.
            Resolved here, so a bad name fails at construction.
        relu: keep only the positive evidence, ``ReLU(sum_k w_k A_k)``.
        normalize: min-max normalise each heatmap to ``[0, 1]``; ``False`` gives raw maps
            (upsampled, with the model's gradient scale).
        interpolate: upsampling mode to the input size: ``"bilinear"`` (default),
            ``"bicubic"``, ``"nearest"`` or ``"area"``.

    With several layers each layer's upsampled map is min-max normalised (layers differ in
    scale) and the maps are averaged; ``normalize`` then applies to the average. All
    layers are taken from the same forward and backward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        relu: bool = True,
        normalize: bool = True,
        interpolate: InterpolationMode = "bilinear",
    ) -> None:
        super().__init__(model)
        if interpolate not in _INTERPOLATION_MODES:
            raise ValueError(
                f"interpolate={interpolate!r} is not supported; use one of "
                f"{', '.join(_INTERPOLATION_MODES)}."
            )
        self.adapter = get_adapter(model)
        self.layers: list[ResolvedLayer] = self.adapter.resolve_layers(target_layer)
        self.relu = relu
        self.normalize = normalize
        self.interpolate: InterpolationMode = interpolate
        #: ``(B, num_classes)`` logits of the last call's forward pass, detached
        self.last_logits: torch.Tensor | None = None

    def __repr__(self) -> str:
        layers = ", ".join(layer.name for layer in self.layers)
        return (
            f"{type(self).__name__}(layers=[{layers}], relu={self.relu}, "
            f"normalize={self.normalize}, interpolate={self.interpolate!r})"
        )

    @property
    def layer_names(self) -> list[str]:
        """Full dotted names of the explained layers."""
        return [layer.name for layer in self.layers]

    # ------------------------------------------------------------- method
    @abstractmethod
    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Channel weights ``(B, C)`` from activations and gradients ``(B, C, h, w)``."""

    # -------------------------------------------------------------- engine
    def attribute(
        self, inputs: torch.Tensor, targets: list[int] | None, **kwargs: Any
    ) -> torch.Tensor:
        """Heatmaps ``(B, H, W)`` for ``inputs`` ``(B, C, H, W)`` (see the class docstring)."""
        if kwargs:
            raise TypeError(f"unexpected arguments for {type(self).__name__}: {sorted(kwargs)}")
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        maps = [upsample_maps(m, size, self.interpolate) for m in self._layer_maps(inputs, targets)]
        if len(maps) == 1:
            heatmap = maps[0]
        else:
            heatmap = torch.stack([normalize_maps(m) for m in maps]).mean(dim=0)
        return normalize_maps(heatmap) if self.normalize else heatmap

    def attribute_layers(
        self, images: ImagesInput, target_class: TargetInput = None
    ) -> list[torch.Tensor]:
        """Raw maps at each layer's own resolution: one ``(B, h_l, w_l)`` per layer.

        No upsampling, no normalisation (``relu`` still applies); always batched, also for
        one image. Same inputs and targets as :meth:`explain`; sets ``last_targets``.
        """
        inputs = self.prepare(images).tensor
        targets = validate_targets(
            target_class, inputs.shape[0], num_outputs(self.model), self.model
        )
        with explanation_call(self.model, inputs, type(self).__name__):
            return self._layer_maps(inputs, targets)

    def attribute_layer(
        self, images: ImagesInput, target_class: TargetInput = None
    ) -> torch.Tensor:
        """Raw map ``(B, h, w)`` at the layer's resolution (single-layer explainers).

        See :meth:`attribute_layers`; this is its only entry for one layer.
        """
        if len(self.layers) != 1:
            raise ValueError(
                f"{type(self).__name__} explains {len(self.layers)} layers "
                f"({', '.join(self.layer_names)}); use attribute_layers() for one map per layer."
            )
        return self.attribute_layers(images, target_class)[0]

    def _layer_maps(self, inputs: torch.Tensor, targets: list[int] | None) -> list[torch.Tensor]:
        """Taps every layer, runs the method once, removes the taps: one ``(B, h, w)`` each.

        Must run inside :func:`~timmlens._model_state.explaining` (frozen parameters).
        """
        # A detached, non-inference input keeps the autograd graph to what follows the layer.
        inputs = inputs.detach()
        if inputs.is_inference():
            inputs = inputs.clone()
        score = TargetScore(self.model, targets)
        with ExitStack() as taps, torch.no_grad():  # Captum re-enables grad for its pass
            views = [
                taps.enter_context(
                    spatial_tap(self.model, layer.module, layer.name, self.adapter.layout_for)
                )
                for layer in self.layers
            ]
            try:
                maps = self._layer_maps_from_views(score, inputs, views)
            except AssertionError as exc:
                silent = [view.layer_name for view in views if view.layout is None]
                if not silent or CAPTUM_SILENT_LAYER not in str(exc):
                    raise  # the model's own input checks: explanation_call reports them
                raise LayerResolutionError(
                    f"Layer(s) {', '.join(silent)} did not run in the model's forward pass, so "
                    f"they cannot be explained. Pick layers on the forward path, e.g. "
                    f"{', '.join(self.adapter.recommended_layers[:3])}."
                ) from exc
            except RuntimeError as exc:
                if "does not require grad" not in str(exc):
                    raise
                raise LayerResolutionError(
                    f"The class score does not depend on the output of "
                    f"{', '.join(self.layer_names)} (the classifier reads other tokens or "
                    f"features, e.g. a class token pooled after this layer), so it has no "
                    f"gradient to weight. Pick an earlier layer, e.g. the input of the last "
                    f"block (its norm1) or {', '.join(self.adapter.recommended_layers[1:3])}."
                ) from exc
        self.last_targets = score.last_targets
        self.last_logits = score.last_logits
        return [m.detach() for m in maps]

    def _layer_maps_from_views(
        self, score: TargetScore, inputs: torch.Tensor, views: Sequence[SpatialView]
    ) -> list[torch.Tensor]:
        """One forward and backward through Captum's layer-gradient utility for all views."""
        gradients, activations = compute_layer_gradients_and_eval(score, list(views), inputs)
        maps = []
        for (grads,), (acts,) in zip(gradients, activations, strict=True):
            acts = acts.detach()
            maps.append(weighted_sum(self.channel_weights(acts, grads), acts, self.relu))
        return maps


class GradCAM(_LayerCAM):
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

    name = "gradcam"

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradcam_weights(activations, gradients)

    def _layer_maps_from_views(
        self, score: TargetScore, inputs: torch.Tensor, views: Sequence[SpatialView]
    ) -> list[torch.Tensor]:
        if len(views) != 1:
            return super()._layer_maps_from_views(score, inputs, views)
        # TargetScore returns (B,) already, so Captum's target is None.
        cam = LayerGradCam(score, views[0]).attribute(inputs, relu_attributions=self.relu)
        return [cam[:, 0]]


class GradCAMPlusPlus(_LayerCAM):
    """GradCAM++ (Chattopadhay et al. 2018), closed form of eq. 19.

    ``alpha = g^2 / (2 g^2 + sum_ab(A_ab) g^3)`` (0 where the denominator is 0),
    ``w_k = sum_ij alpha_kij ReLU(g_kij)``, ``map = ReLU(sum_k w_k A_k)``; see
    :func:`gradcam_plusplus_weights` for the conventions. Activations and gradients come
    from Captum's ``compute_layer_gradients_and_eval`` on the spatial tap, one forward
    and one backward per batch.

    Args: as :class:`GradCAM`.
    """

    name = "gradcam++"

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradcam_plusplus_weights(activations, gradients)
