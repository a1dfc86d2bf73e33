"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): input-gradient plus every bias-gradient.

For a ReLU network with biases ``f(x) = grad_x f . x + sum_b grad_b f . b`` (their eq. 3,
exact for piecewise-linear networks). The saliency map (their eq. 5) is

    S(x) = psi(|grad_x f * x|) + sum_layers sum_channels psi(|b_c * grad_{z_c} f|)

where ``z`` is the map the bias ``b`` is added to (its gradient ``(B, C, h, w)``), and
``psi`` min-max rescales one channel to ``[0, 1]`` and upsamples it to the input. The
layer set (every ``Conv2d`` / ``BatchNorm2d`` with a bias) is found by the adapters
(`timmlens.adapters.bias_layers`).

One forward and one backward per batch give all gradients: a zero tensor ``e`` is added
to each bias layer's output (``z + e``, the same values), and
``torch.autograd.grad(score, [x, e_1, ..., e_L])`` reads ``d score / d z`` at each layer
where the bias was added, before any in-place activation; no parameter gets a ``.grad``.
Channels are rescaled at their layer's resolution and summed before the (linear)
upsampling, one upsampling per resolution, so the cost does not grow with the channel
count at input resolution.

``eigen_smooth=True`` is pytorch-grad-cam's: the terms of the sum (each colour channel of
``psi(|g_x * x|)``, and each bias layer's ``sum_c psi(|b_c * g_c|)`` upsampled to the
input) are taken as channels, each min-max rescaled and resized to 1/8 of the input, and
the map is their first principal component (`first_principal_component`, with its sign
convention), min-max rescaled and resized back to the input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...adapters import BiasLayer, bias_layers, fullgrad_unavailable_reason
from ...errors import UnsupportedModelError
from .._targets import ResolvedTargets, TargetScore, target_rows
from ..base import Explainer, Explanation, normalize_maps
from ..registry import register_method
from .engine import InterpolationMode, check_interpolation, upsample_maps
from .layerless import LayerlessEngineOptions
from .smoothing import first_principal_component

__all__ = ["FullGrad", "channel_minmax"]


def channel_minmax(maps: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Rescale every channel to ``[0, 1]``: ``(B, C, h, w)`` -> ``(B, C, h, w)``.

    ``(v - min) / (max - min + eps)`` per image and channel; a constant channel gives
    zeros. ``eps=0`` is the paper's rescaling; ``eps=1e-7`` is pytorch-grad-cam's
    ``scale_cam_image``, which shrinks channels whose spread is near ``1e-7``.
    """
    flat = maps.flatten(2)
    low = flat.amin(dim=2)[..., None, None]
    span = flat.amax(dim=2)[..., None, None] - low
    return (maps - low) / torch.where(span > 0, span + eps, 1)


@register_method(
    "fullgrad",
    title="FullGrad",
    kind="cam",
    uses_layer=False,
    compared_by_default=False,
    aliases=("full_grad",),
    summary="input-gradient x input plus the bias-gradients of every conv and batch norm",
    paper="Srinivas & Fleuret, Full-Gradient Representation for Neural Network "
    "Visualization, NeurIPS 2019 (eq. 5)",
    formula="psi(|x * dy/dx|) + sum_l sum_c psi(|b_c * dy/dz_c|), psi: per-channel min-max, "
    "upsampled",
    cost="1 forward + 1 backward (down to the input)",
    applies_to="CNNs with convolution / batch-norm biases (ResNet, EfficientNet, ConvNeXt, "
    "...); not ViTs",
)
class FullGrad(LayerlessEngineOptions, Explainer):
    """FullGrad (Srinivas & Fleuret 2019, eq. 5), as pytorch-grad-cam's ``FullGrad``.

    The map is ``psi(|x * g_x|)`` summed over the input's colour channels, plus, for every
    bias layer ``l`` and channel ``c``, ``psi(|b_lc * g_lc|)``, where ``g_lc`` is the
    gradient of the target logit with respect to the map that ``b_lc`` is added to and
    ``psi`` rescales one channel of one image to ``[0, 1]`` and upsamples it bilinearly to
    the input; then min-max normalised per image. The layer set is every ``Conv2d`` and
    ``BatchNorm2d`` (timm's subclasses included) with a bias, found by
    `timmlens.adapters.bias_layers`; there is no ``target_layer``.

    ``aug_smooth``, ``eigen_smooth``, ``layer_fusion``: the CAM engine's options
    (`timmlens.interpretation.cam.layerless`): ``aug_smooth`` averages the six augmentations;
    ``eigen_smooth=True`` takes the first principal component of the terms (colour channels,
    bias layers) at 1/8 of the input size, as pytorch-grad-cam; one map, so any fusion.

    Args:
        model: an ``ImageClassifier`` or a bare timm CNN.
        normalize: min-max normalise each heatmap to ``[0, 1]``.
        interpolate: upsampling mode of the layer maps (``"bilinear"``, as both the paper
            and pytorch-grad-cam).
        channel_eps: added to each channel's spread before rescaling: ``0`` (default)
            rescales every channel to exactly ``[0, 1]``, as the paper's ``psi``;
            ``1e-7`` reproduces pytorch-grad-cam's ``scale_cam_image``.

    Raises:
        UnsupportedModelError: a model with no convolution / batch-norm bias outside its
            patch embedding (ViTs), with the reason.

    ``extras`` of `explain_full`: ``"input_term"`` ``(B, C_in, H, W)`` the raw
    ``x * g_x`` and ``"bias_term"`` ``(B,)`` the raw ``sum_l sum_c b_lc * sum_ij g_lcij``;
    with the classifier's own bias they add up to the target logit in a piecewise-linear
    network (the paper's completeness, eq. 3).
    """

    #: one forward and one backward of the whole model per image
    forwards_per_image: int | None = 1
    constant_map_causes = (
        "every bias-gradient and the input gradient are zero: a target whose score does not "
        "depend on the image (untrained weights, or ReLUs off everywhere)"
    )

    def __init__(
        self,
        model: nn.Module,
        normalize: bool = True,
        interpolate: InterpolationMode = "bilinear",
        channel_eps: float = 0.0,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        layer_fusion: str = "mean",
    ) -> None:
        super().__init__(model)
        self.set_engine_options(aug_smooth, eigen_smooth, layer_fusion)
        check_interpolation(interpolate)
        if not channel_eps >= 0:
            raise ValueError(f"channel_eps must be >= 0 (0: exact [0, 1]), got {channel_eps}.")
        reason = fullgrad_unavailable_reason(self.model)
        if reason is not None:
            raise UnsupportedModelError(reason)
        #: the bias layers whose gradients enter the map, in module order
        self.bias_layers: list[BiasLayer] = bias_layers(self.model)
        self.normalize = normalize
        self.interpolate: InterpolationMode = interpolate
        self.channel_eps = float(channel_eps)

    @classmethod
    def supports_eigen_smooth(cls) -> bool:
        """Yes: the map is a sum of terms (colour channels, bias layers) to project."""
        return True

    @classmethod
    def unavailable_reason(cls, model: nn.Module) -> str | None:
        """Why FullGrad cannot explain ``model`` (``None``: it can)."""
        return fullgrad_unavailable_reason(model)

    def __repr__(self) -> str:
        return (
            f"FullGrad(bias_layers={len(self.bias_layers)}, normalize={self.normalize}"
            f"{self.engine_options_repr()})"
        )

    def attribute_once(
        self,
        inputs: torch.Tensor,
        targets: ResolvedTargets,
        *,
        eigen_smooth: bool = False,
        **kwargs: Any,
    ) -> Explanation:
        """The FullGrad maps of ``inputs`` ``(B, C, H, W)``: heatmap ``(B, H, W)``.

        With ``eigen_smooth`` the map is the first principal component of the terms
        (pytorch-grad-cam's ``eigen_smooth``), not their sum.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments for FullGrad: {sorted(kwargs)}")
        x, input_grad, probes, score = self._gradients(inputs, targets)
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        input_term = (x * input_grad).detach()
        input_maps = channel_minmax(input_term.abs(), self.channel_eps)  # (B, C_in, H, W)
        by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
        bias_term = torch.zeros(inputs.shape[0], device=inputs.device, dtype=torch.float32)
        for bias, grad in probes:
            if grad.shape[0] != inputs.shape[0]:
                raise UnsupportedModelError(
                    f"FullGrad: a bias layer of this model runs on {grad.shape[0]} rows for a "
                    f"batch of {inputs.shape[0]} image(s) (the model folds attention heads or "
                    "windows into the batch), so its bias-gradient map belongs to no one image. "
                    "Use 'gradcam' or 'hirescam' for this model."
                )
            contribution = bias.to(grad.dtype)[None, :, None, None] * grad
            bias_term += contribution.flatten(1).sum(dim=1).float()
            summed = channel_minmax(contribution.abs(), self.channel_eps).sum(dim=1)
            key = (int(summed.shape[-2]), int(summed.shape[-1]))
            by_size.setdefault(key, []).append(summed.to(input_maps.dtype))
        if eigen_smooth:
            total = self._principal_map(input_maps, by_size, size)
        else:
            total = input_maps.sum(dim=1)
            for layer_maps in by_size.values():  # upsampling is linear: once per resolution
                total = total + upsample_maps(sum(layer_maps), size, self.interpolate)
        total = total.float()
        assert score.seen is not None
        chosen, logits = score.seen
        return Explanation(
            heatmap=normalize_maps(total) if self.normalize else total,
            targets=chosen,
            logits=logits,
            attributions=total,
            extras={"input_term": input_term, "bias_term": bias_term},
        )

    def _principal_map(
        self,
        input_maps: torch.Tensor,
        by_size: dict[tuple[int, int], list[torch.Tensor]],
        size: tuple[int, int],
    ) -> torch.Tensor:
        """pytorch-grad-cam's ``eigen_smooth`` for FullGrad: ``(B, H, W)``.

        The terms (each colour channel of ``input_maps``, each bias layer's channel sum
        upsampled to ``size``) are min-max rescaled, resized to ``size // 8`` and
        projected on their first principal component, which is min-max rescaled and
        resized back to ``size``.
        """
        small = (max(1, size[0] // 8), max(1, size[1] // 8))

        def resized(maps: torch.Tensor, to: tuple[int, int]) -> torch.Tensor:
            batch, channels = maps.shape[:2]
            flat = upsample_maps(maps.flatten(0, 1), to, self.interpolate)
            return flat.unflatten(0, (batch, channels))

        terms = [resized(channel_minmax(input_maps, self.channel_eps), small)]
        for layer_maps in by_size.values():  # one resize per resolution
            full = resized(torch.stack(layer_maps, dim=1), size)
            terms.append(resized(channel_minmax(full, self.channel_eps), small))
        projection = first_principal_component(torch.cat(terms, dim=1))[:, None]
        return resized(channel_minmax(projection, self.channel_eps), size)[:, 0]

    def _gradients(
        self, inputs: torch.Tensor, targets: ResolvedTargets
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], TargetScore]:
        """One forward and backward: the input ``x``, ``d score / d x`` ``(B, C, H, W)`` and
        ``(bias (C,), d score / d z (B, C, h, w))`` per call of each bias layer."""
        x = inputs.detach().clone().requires_grad_(True)
        probes: list[tuple[torch.Tensor, torch.Tensor]] = []  # (bias, zero probe) per call

        def probe_of(layer: BiasLayer) -> Any:
            bias = layer.bias()

            def add_probe(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
                zero = torch.zeros_like(output, requires_grad=True)
                probes.append((bias, zero))
                return output + zero  # same values; d score / d zero = d score / d output

            return add_probe

        score = TargetScore(self.model)
        rows = target_rows(targets, inputs.device)
        handles = [layer.probe.register_forward_hook(probe_of(layer)) for layer in self.bias_layers]
        try:
            with torch.enable_grad():
                scores = score(x) if rows is None else score(x, rows)
                grads = torch.autograd.grad(
                    scores.sum(), [x, *(zero for _, zero in probes)], allow_unused=True
                )
        finally:
            for handle in handles:
                handle.remove()
        pairs = [
            (bias, torch.zeros_like(zero) if grad is None else grad)
            for (bias, zero), grad in zip(probes, grads[1:], strict=True)
        ]
        input_grad = grads[0] if grads[0] is not None else torch.zeros_like(x)
        return x.detach(), input_grad, pairs, score
