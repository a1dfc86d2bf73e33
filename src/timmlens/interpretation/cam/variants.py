"""CAM variants beside GradCAM: HiResCAM, XGradCAM, LayerCAM, EigenCAM, EigenGradCAM, RandomCAM.

Each is a small class on [`CAMExplainer`][timmlens.interpretation.cam.engine.CAMExplainer]: a
channel-weight rule ``(A, g) -> w`` ``(B, C)`` (XGradCAM, RandomCAM) or a map rule
``(A, g) -> (B, h, w)`` (the others). ``A`` is the layer output seen as ``(B, C, h, w)``
and ``g`` the gradient of each image's target logit; the engine applies the ReLU,
upsamples and normalises (see `timmlens.interpretation.cam.engine`).

Each formula is checked against pytorch-grad-cam's class of the same name in
``tests/test_cam_variants.py``; where the two differ on purpose (XGradCAM's ``eps``, the
sign of the principal component) the function's docstring says which side follows the
paper.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...adapters import LayerSpec
from .._targets import CallableTargets
from ..registry import register_method
from .engine import CamContext, CAMExplainer, InterpolationMode
from .smoothing import first_principal_component

#: RandomCAM's key for a callable target, beyond any class index (2**32)
CALLABLE_TARGET_KEY = 2**32

__all__ = [
    "EigenCAM",
    "EigenGradCAM",
    "HiResCAM",
    "LayerCAM",
    "RandomCAM",
    "XGradCAM",
    "first_principal_component",
    "randomcam_weights",
    "xgradcam_weights",
]

_GRADIENT_COST = "1 forward + 1 backward (down to the layer)"


def xgradcam_weights(
    activations: torch.Tensor, gradients: torch.Tensor, eps: float = 0.0
) -> torch.Tensor:
    """XGradCAM channel weights (Fu et al. 2020, eq. 11): -> ``(B, C)``.

    ``w_k = sum_ij (A_kij / sum_ab A_kab) * g_kij``, with ``w_k = 0`` where
    ``sum_ab A_kab + eps`` is 0 (a channel that is zero everywhere after a ReLU).

    The default ``eps=0`` follows the paper. pytorch-grad-cam adds ``eps=1e-7`` to the
    denominator; pass it to reproduce their weights exactly. The two differ only where a
    channel's activations sum to about ``1e-7`` or less, which happens on signed layers
    (a ViT block's ``norm1``) whose values cancel; there the paper's weight is large, as
    its formula says.

    Args:
        activations: ``(B, C, h, w)`` layer output ``A``.
        gradients: ``(B, C, h, w)`` gradient ``g`` of each image's target score.
        eps: added to the per-channel activation sum.
    """
    denominator = activations.sum(dim=(2, 3), keepdim=True) + eps
    nonzero = denominator != 0
    share = torch.where(nonzero, activations / torch.where(nonzero, denominator, 1), 0)
    return (share * gradients).sum(dim=(2, 3))


def randomcam_weights(
    targets: torch.Tensor,
    channels: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """RandomCAM's channel weights, uniform in ``[-1, 1]``: ``(B,)`` targets -> ``(B, C)``.

    The weights of an image depend only on ``(seed, its target class)``: each class draws
    from its own ``torch.Generator`` seeded from the pair (numpy's ``SeedSequence`` mixes
    them), so the global RNG is untouched, a batch equals its images one by one, and
    different classes get different random maps (a baseline that still answers "which
    class"). A callable target that reads one class's logit (``lambda z: z[:, 7]``; see
    `CallableTargets.selected_classes`, which needs the ``(B, K)`` ``logits``) draws that
    class's weights, so it gives what ``7`` gives, as for every other method. A callable
    of several classes (a group's sum, a probability) has no class: its images share the
    draw of ``(seed, CALLABLE_TARGET_KEY)``. pytorch-grad-cam draws
    ``np.random.uniform(-1, 1, (B, C))`` from the global numpy RNG instead: the same
    distribution, not the same numbers.

    Returns:
        ``(B, C)`` weights on ``targets``' device.
    """
    if isinstance(targets, CallableTargets):
        count = targets.numel()
        read = torch.full((count,), -1) if logits is None else targets.selected_classes(logits)
        # rows with no single class: one draw, keyed past any class
        key = torch.where(read.cpu() >= 0, read.cpu(), torch.tensor(CALLABLE_TARGET_KEY))
        targets = key.to(targets.device)
    rows = {}
    for target in targets.unique().tolist():
        state = np.random.SeedSequence([seed, target]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        rows[target] = torch.rand(channels, generator=generator, dtype=torch.float64) * 2 - 1
    weights = torch.stack([rows[target] for target in targets.tolist()])
    return weights.to(device=targets.device, dtype=dtype)


@register_method(
    "hirescam",
    title="HiResCAM",
    kind="cam",
    compared_by_default=False,
    summary="element-wise gradient x activation summed over channels (faithful to the score)",
    paper="Draelos & Carin, Use HiResCAM instead of Grad-CAM for faithful explanations of "
    "convolutional neural networks, arXiv 2011.08891, 2020",
    formula="ReLU(sum_k g_k * A_k) (element-wise, no spatial averaging)",
    cost=_GRADIENT_COST,
)
class HiResCAM(CAMExplainer):
    """HiResCAM (Draelos & Carin 2020): ``ReLU(sum_k g_k * A_k)``, element-wise.

    GradCAM without the spatial mean of the gradients: for a head that is a global
    average pool and a linear layer the map sums (times ``h*w``) to the target logit less
    its bias. Same as pytorch-grad-cam's ``HiResCAM``.

    Args: as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM].
    """

    def weighted_activations(self, ctx: CamContext) -> torch.Tensor:
        assert ctx.gradients is not None
        return ctx.gradients * ctx.activations

    def cam(self, ctx: CamContext) -> torch.Tensor:
        return self.weighted_activations(ctx).sum(dim=1)


@register_method(
    "xgradcam",
    title="XGradCAM",
    kind="cam",
    compared_by_default=False,
    summary="GradCAM with activation-weighted gradient averages (axiom-based)",
    paper="Fu et al., Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation "
    "of CNNs, BMVC 2020",
    formula="ReLU(sum_k w_k A_k), w_k = sum_ij (A_kij / sum_ab A_kab) g_kij",
    cost=_GRADIENT_COST,
)
class XGradCAM(CAMExplainer):
    """XGradCAM (Fu et al. 2020): weights ``w_k = sum_ij (A_kij / sum_ab A_kab) g_kij``.

    See `xgradcam_weights` for the zero-sum channels and pytorch-grad-cam's ``eps``
    (not added here, as in the paper).

    Args: as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM].
    """

    def channel_weights(self, ctx: CamContext) -> torch.Tensor:
        assert ctx.gradients is not None
        return xgradcam_weights(ctx.activations, ctx.gradients)


@register_method(
    "layercam",
    title="LayerCAM",
    kind="cam",
    compared_by_default=False,
    summary="positive gradients weight each activation in place (finer maps on early layers)",
    paper="Jiang et al., LayerCAM: Exploring Hierarchical Class Activation Maps for "
    "Localization, IEEE TIP 2021",
    formula="ReLU(sum_k ReLU(g_k) * A_k)",
    cost=_GRADIENT_COST,
)
class LayerCAM(CAMExplainer):
    """LayerCAM (Jiang et al. 2021): ``ReLU(sum_k ReLU(g_k) * A_k)``, element-wise.

    Same as pytorch-grad-cam's ``LayerCAM``. The paper fuses several layers after scaling
    shallow ones with ``tanh``; here several layers are fused as for every CAM method
    (each upsampled map min-max normalised, then averaged).

    Args: as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM].
    """

    def weighted_activations(self, ctx: CamContext) -> torch.Tensor:
        assert ctx.gradients is not None
        return ctx.gradients.clamp_min(0) * ctx.activations

    def cam(self, ctx: CamContext) -> torch.Tensor:
        return self.weighted_activations(ctx).sum(dim=1)


@register_method(
    "eigencam",
    title="EigenCAM",
    kind="cam",
    compared_by_default=False,
    summary="first principal component of the layer's activations (class-agnostic, no gradients)",
    paper="Muhammad & Yeasin, Eigen-CAM: Class Activation Map using Principal Components, "
    "IJCNN 2020",
    formula="ReLU(A_c v_1), v_1 = first right-singular vector of the centred (h*w, C) "
    "activations A_c, signed so that sum(v_1) >= 0",
    cost="1 forward (no backward) + one SVD of (h*w, C) per image",
)
class EigenCAM(CAMExplainer):
    """EigenCAM (Muhammad & Yeasin 2020): the activations' first principal component.

    No gradients and no class: the map is the same for every target (the contract's
    class check is replaced by that, see `class_agnostic`). See
    `first_principal_component` for the centring and the sign convention, which
    fixes the sign pytorch-grad-cam leaves to the SVD routine.

    Args: as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM].
    """

    needs_gradients = False
    class_agnostic = True

    def weighted_activations(self, ctx: CamContext) -> torch.Tensor:
        return ctx.activations  # what it projects: eigen_smooth gives the same map

    def cam(self, ctx: CamContext) -> torch.Tensor:
        return first_principal_component(self.weighted_activations(ctx))


@register_method(
    "eigengradcam",
    title="EigenGradCAM",
    kind="cam",
    compared_by_default=False,
    summary="first principal component of gradient x activation (class-specific EigenCAM)",
    paper="pytorch-grad-cam's variant of Eigen-CAM (Muhammad & Yeasin, IJCNN 2020) on g * A",
    formula="ReLU(P_c v_1), P = g * A, v_1 = first right-singular vector of the centred "
    "(h*w, C) P_c, signed so that sum(v_1) >= 0",
    cost=_GRADIENT_COST + " + one SVD of (h*w, C) per image",
)
class EigenGradCAM(CAMExplainer):
    """EigenGradCAM: the first principal component of ``g * A`` (element-wise).

    pytorch-grad-cam's class-specific EigenCAM. With the sign convention of
    `first_principal_component` the map correlates non-negatively with HiResCAM's
    ``sum_k g_k A_k``.

    Args: as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM].
    """

    def weighted_activations(self, ctx: CamContext) -> torch.Tensor:
        assert ctx.gradients is not None
        return ctx.gradients * ctx.activations  # eigen_smooth gives the same map

    def cam(self, ctx: CamContext) -> torch.Tensor:
        return first_principal_component(self.weighted_activations(ctx))


@register_method(
    "randomcam",
    title="RandomCAM",
    kind="cam",
    compared_by_default=False,
    summary=(
        "random channel weights: a seeded baseline for metrics to read against (signed, "
        "no ReLU by default, unlike pytorch-grad-cam's)"
    ),
    paper="pytorch-grad-cam's RandomCAM baseline (Gildenblat et al.)",
    formula="sum_k w_k A_k, w_k ~ U(-1, 1) seeded from (seed, target class); relu=True clips",
    cost="1 forward (no backward)",
)
class RandomCAM(CAMExplainer):
    """A seeded random baseline: ``sum_k w_k A_k`` with ``w_k ~ U(-1, 1)``.

    Signed by default (``relu=False``), where pytorch-grad-cam's ``RandomCAM`` clips
    with ``ReLU`` as its other CAMs do. Random signed weights on activations that share
    one sign pattern across positions (post-norm tokens, post-ReLU maps with a large
    common mode) give a sum that is negative everywhere about half the time: ReLU then
    zeroes the whole map, and a constant map ranks no pixel above another, which is
    useless as the chance row of a leaderboard (41 of 98 timm families, random weights,
    in the zoo sweep). The signed sum is the same random linear read-out, always
    ranked; ``relu=True`` gives pytorch-grad-cam's map.

    Weights depend on ``(seed, target class)`` only (see `randomcam_weights`; a callable
    target that reads one class's logit counts as that class): repeatable, independent of
    the batch, different per class, and the global RNG is left alone. Its constant maps
    (``relu=True`` clips about half of them to zero) do not warn. No gradients are taken
    (pytorch-grad-cam's ``RandomCAM`` runs a backward it does not use).

    Args:
        relu: ``ReLU`` on the map, pytorch-grad-cam's choice (off by default, see above).
        seed: the seed of the weights; other arguments as
            [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM].
    """

    needs_gradients = False
    #: a clipped random sum is all zero about half the time (relu=True): no warning
    warns_on_constant_maps = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        relu: bool = False,
        normalize: bool = True,
        interpolate: InterpolationMode = "bilinear",
        seed: int = 0,
    ) -> None:
        super().__init__(model, target_layer, relu, normalize, interpolate)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(
                f"RandomCAM's seed must be a non-negative int, got {seed!r}; e.g. seed=0."
            )
        self.seed = seed

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, seed={self.seed})"

    def channel_weights(self, ctx: CamContext) -> torch.Tensor:
        channels = ctx.activations.shape[1]
        return randomcam_weights(
            ctx.targets, channels, self.seed, ctx.activations.dtype, logits=ctx.logits
        )
