"""pytorch-grad-cam's remaining map rules: element-wise GradCAM, FEM, KPCA-CAM, SobelCAM.

The first three are hooks on [`CAMExplainer`][timmlens.interpretation.cam.engine.CAMExplainer]
(a map rule ``(A, g) -> (B, h, w)`` or channel weights ``(B, C)``); SobelCAM reads no
layer and no gradient: it is the edge map of the input image, pytorch-grad-cam's
``sobel_cam`` baseline. Each is compared with pytorch-grad-cam 1.5.7 in
``tests/test_cam_pgc_more.py``; where the two differ the function's docstring says
how and which side follows the paper.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...adapters import LayerSpec
from ...models.introspect import data_config
from .._targets import ResolvedTargets, TargetScore, target_rows
from ..base import Explainer, Explanation, normalize_maps
from ..registry import register_method
from .engine import CamContext, CAMExplainer, InterpolationMode
from .layerless import LayerlessEngineOptions

__all__ = [
    "FEM",
    "KPCACAM",
    "GradCAMElementWise",
    "SobelCAM",
    "fem_weights",
    "kernel_principal_component",
    "sobel_edges",
]

Kernel = Literal["linear", "poly", "rbf", "sigmoid", "cosine"]
_KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")
_GRADIENT_COST = "1 forward + 1 backward (down to the layer)"


# ----------------------------------------------------------------- element-wise GradCAM
@register_method(
    "gradcamelementwise",
    title="GradCAM element-wise",
    kind="cam",
    aliases=("gradcam_elementwise", "gradcamew"),
    compared_by_default=False,
    summary="ReLU of each gradient x activation product, summed over channels",
    paper="pytorch-grad-cam's GradCAMElementWise (Gildenblat et al.), after HiResCAM "
    "(Draelos & Carin, arXiv 2011.08891, 2020)",
    formula="ReLU(sum_k ReLU(g_k * A_k))",
    cost=_GRADIENT_COST,
)
class GradCAMElementWise(CAMExplainer):
    """Element-wise GradCAM: ``sum_k ReLU(g_k * A_k)``, pytorch-grad-cam's ``GradCAMElementWise``.

    HiResCAM with the ReLU moved inside the channel sum: each channel keeps only the
    positions where it adds evidence, so negative channels cannot cancel positive ones.
    The map is non-negative before the engine's ReLU (``relu=False`` changes nothing).
    With ``eigen_smooth`` the map is the first principal component of the terms
    ``ReLU(g_k * A_k)``, as pytorch-grad-cam's.

    Args: as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM].
    """

    def weighted_activations(self, ctx: CamContext) -> torch.Tensor:
        """The terms ``ReLU(g * A)`` ``(B, C, h, w)`` whose channel sum is the map."""
        assert ctx.gradients is not None
        return (ctx.gradients * ctx.activations).clamp_min(0)

    def cam(self, ctx: CamContext) -> torch.Tensor:
        return self.weighted_activations(ctx).sum(dim=1)


# -------------------------------------------------------------------------------- FEM
def fem_weights(activations: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    """FEM channel weights (Fuad et al. 2020): ``(B, C, h, w)`` -> ``(B, C)``.

    ``w_c`` is the share of positions where channel ``c`` exceeds ``mean_c + k * std_c``
    (its own spatial mean and population standard deviation, the ``k``-sigma rule), as
    pytorch-grad-cam's ``FEM``: channels with rare, strong peaks weigh most.

    Args:
        activations: ``(B, C, h, w)`` layer output ``A``.
        k: how many standard deviations above the mean a value must be.
    """
    mean = activations.mean(dim=(2, 3), keepdim=True)
    std = activations.std(dim=(2, 3), keepdim=True, correction=0)
    return (activations > mean + k * std).to(activations.dtype).mean(dim=(2, 3))


@register_method(
    "fem",
    title="FEM",
    kind="cam",
    compared_by_default=False,
    summary="channels weighted by how often they exceed mean + k std (no gradients, "
    "class-agnostic)",
    paper="Fuad et al., Features understanding in 3D CNNs for actions recognition in "
    "video, IPTA 2020",
    formula="ReLU(sum_c w_c A_c), w_c = mean_ij [A_cij > mean(A_c) + k std(A_c)]",
    cost="1 forward (no backward)",
)
class FEM(CAMExplainer):
    """Feature Explanation Method: ``sum_c w_c A_c`` with the ``k``-sigma weights of `fem_weights`.

    No gradients and no class: the map is the same for every target. The default layer
    is the family's post-activation layer (as for EigenCAM).

    Args:
        k: the ``k``-sigma threshold (pytorch-grad-cam's default ``2``); other arguments
            as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM].
    """

    needs_gradients = False
    class_agnostic = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        relu: bool = True,
        normalize: bool = True,
        interpolate: InterpolationMode = "bilinear",
        k: float = 2.0,
    ) -> None:
        super().__init__(model, target_layer, relu, normalize, interpolate)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or k != k:
            raise ValueError(
                f"FEM's k must be a number of standard deviations, got {k!r}; e.g. k=2."
            )
        self.k = float(k)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, k={self.k})"

    def constant_map_causes_of(self, result: Explanation) -> str:
        """On a small map the ``k``-sigma rule can select nothing: every weight is 0."""
        for name, cam in zip(self.layer_names, result.extras.get("layer_maps", ()), strict=False):
            cells = cam.shape[-2:].numel()
            # Samuelson: no value of n exceeds its mean by more than sqrt(n - 1) (population)
            # standard deviations, so on a map that small every weight is 0.
            if 1 < cells <= self.k**2 + 1:
                height, width = cam.shape[-2:]
                return (
                    f"FEM's k-sigma rule cannot select any position of the {height}x{width} "
                    f"map of {name}: of {cells} values none exceeds the mean by more than "
                    f"sqrt({cells - 1}) = {(cells - 1) ** 0.5:.2f} standard deviations, and "
                    f"k={self.k:g}, so every channel weight is 0. Give larger images (the "
                    f"model's own size), an earlier layer (target_layer=) or a smaller k"
                )
        return super().constant_map_causes_of(result)

    def channel_weights(self, ctx: CamContext) -> torch.Tensor:
        return fem_weights(ctx.activations, self.k)


# --------------------------------------------------------------------------- KPCA-CAM
def _kernel_matrix(
    samples: torch.Tensor, kernel: Kernel, gamma: float | None, degree: int, coef0: float
) -> torch.Tensor:
    """scikit-learn's ``pairwise_kernels`` per image: ``(B, n, C)`` -> ``(B, n, n)``."""
    gamma = 1.0 / samples.shape[-1] if gamma is None else gamma
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(samples, samples).pow(2))
    if kernel == "cosine":
        samples = F.normalize(samples, dim=-1)
    gram = samples @ samples.transpose(1, 2)
    if kernel == "poly":
        return (gamma * gram + coef0).pow(degree)
    if kernel == "sigmoid":
        return torch.tanh(gamma * gram + coef0)
    return gram  # linear, cosine


def kernel_principal_component(
    features: torch.Tensor,
    kernel: Kernel = "sigmoid",
    gamma: float | None = None,
    degree: int = 3,
    coef0: float = 1.0,
) -> torch.Tensor:
    """Each image's features projected on their first kernel principal component: -> ``(B, h, w)``.

    As pytorch-grad-cam's ``get_2d_projection_kernel``: the ``h * w`` positions are the
    samples of ``C`` variables, centred over the positions, and the map is scikit-learn's
    ``KernelPCA(n_components=1, kernel=...).fit_transform`` (the centred kernel matrix's top
    eigenvector times the square root of its eigenvalue), computed batched in torch on the
    features' device. Kernel parameters mean what they mean in scikit-learn
    (``gamma=None``: ``1 / C``).

    Sign: scikit-learn makes the eigenvector's largest entry positive, which says nothing
    about evidence; here, as in EigenCAM's `first_principal_component`, the map is signed
    to correlate non-negatively with the centred channel mean of the features (where the
    features are high on balance). So the result is ``+-`` pytorch-grad-cam's, per image.

    Args:
        features: ``(B, C, h, w)``; half precision is computed in float32.
        kernel: ``"linear"``, ``"poly"``, ``"rbf"``, ``"sigmoid"`` or ``"cosine"``.

    Returns:
        ``(B, h, w)``.
    """
    batch, _, height, width = features.shape
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    samples = features.flatten(2).transpose(1, 2)  # (B, n, C)
    samples = samples - samples.mean(dim=1, keepdim=True)
    gram = _kernel_matrix(samples, kernel, gamma, degree, coef0)
    # centre in feature space (scikit-learn's KernelCenterer)
    gram = (
        gram
        - gram.mean(dim=1, keepdim=True)
        - gram.mean(dim=2, keepdim=True)
        + gram.mean(dim=(1, 2), keepdim=True)
    )
    values, vectors = torch.linalg.eigh(gram)  # ascending
    projection = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()  # (B, n)
    sign = torch.where((projection * samples.mean(dim=2)).sum(dim=1, keepdim=True) < 0, -1, 1)
    return (projection * sign).reshape(batch, height, width)


@register_method(
    "kpcacam",
    title="KPCA-CAM",
    kind="cam",
    aliases=("kpca_cam",),
    compared_by_default=False,
    summary="first kernel principal component of the layer's activations (EigenCAM with a "
    "kernel; no gradients, class-agnostic)",
    paper="Karmani et al., KPCA-CAM: Visual Explainability of Deep Computer Vision Models "
    "using Kernel PCA, IEEE MMSP 2024",
    formula="ReLU(first kernel principal component of the centred (h*w, C) activations), "
    "sigmoid kernel by default",
    cost="1 forward (no backward) + one (h*w, h*w) eigendecomposition per image",
)
class KPCACAM(CAMExplainer):
    """KPCA-CAM: EigenCAM's principal component taken in a kernel's feature space.

    See `kernel_principal_component` for the maths and the sign convention. No gradients
    and no class: the map is the same for every target.

    Other arguments: as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM].

    Args:
        kernel: scikit-learn's kernel name (pytorch-grad-cam's default ``"sigmoid"``).
        gamma: the kernel's ``gamma`` (``None``: ``1 / channels``).
        degree: the ``"poly"`` kernel's degree.
        coef0: the ``"poly"`` and ``"sigmoid"`` kernels' offset.

    pytorch-grad-cam keeps one component (``n_components=1``), and so does this class: a
    map is one value per position, and a second component has no place in it.
    """

    needs_gradients = False
    class_agnostic = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        relu: bool = True,
        normalize: bool = True,
        interpolate: InterpolationMode = "bilinear",
        kernel: Kernel = "sigmoid",
        gamma: float | None = None,
        degree: int = 3,
        coef0: float = 1.0,
    ) -> None:
        super().__init__(model, target_layer, relu, normalize, interpolate)
        if kernel not in _KERNELS:
            raise ValueError(
                f"KPCA-CAM's kernel={kernel!r} is not supported; use one of "
                f"{', '.join(_KERNELS)} (scikit-learn's names)."
            )
        number = isinstance(gamma, (int, float)) and not isinstance(gamma, bool)
        if gamma is not None and not (number and 0 < gamma < float("inf")):
            raise ValueError(f"KPCA-CAM's gamma must be positive or None, got {gamma!r}.")
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(
                f"KPCA-CAM's degree must be a positive integer (the 'poly' kernel's power), "
                f"got {degree!r}; e.g. 3."
            )
        self.kernel: Kernel = kernel
        self.gamma = gamma
        self.degree = int(degree)
        self.coef0 = float(coef0)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, kernel={self.kernel!r}, gamma={self.gamma})"

    def cam(self, ctx: CamContext) -> torch.Tensor:
        return kernel_principal_component(
            ctx.activations, self.kernel, self.gamma, self.degree, self.coef0
        )


# --------------------------------------------------------------------------- SobelCAM
def sobel_edges(images: torch.Tensor, saturate: float | None = 255.0) -> torch.Tensor:
    """pytorch-grad-cam's ``sobel_cam`` of RGB pixels (0..255): ``(B, 3, H, W)`` -> ``(B, H, W)``.

    OpenCV's steps in float: grey ``0.299 R + 0.587 G + 0.114 B``, 3x3 Sobel in ``x``
    and ``y`` with reflected borders (``BORDER_REFLECT_101``), absolute values saturated at
    ``saturate`` (``convertScaleAbs`` to uint8 saturates at 255), and their mean. OpenCV
    rounds to integers after each step; this does not, so it is within a few grey levels
    of theirs.
    """
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    grey = torch.einsum("bchw,c->bhw", images, weights)[:, None]
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=images.dtype, device=images.device)
    slope = torch.tensor([-1.0, 0.0, 1.0], dtype=images.dtype, device=images.device)
    kernels = torch.stack([torch.outer(smooth, slope), torch.outer(slope, smooth)])[:, None]
    padded = F.pad(grey, (1, 1, 1, 1), mode="reflect")  # torch's reflect is REFLECT_101
    edges = F.conv2d(padded, kernels).abs()  # (B, 2, H, W): d/dx, d/dy
    if saturate is not None:
        edges = edges.clamp_max(saturate)
    return edges.mean(dim=1)


@register_method(
    "sobelcam",
    title="SobelCAM",
    kind="cam",
    uses_layer=False,
    compared_by_default=False,
    summary="edge magnitude of the input image: a model-free baseline (pytorch-grad-cam's "
    "sobel_cam)",
    paper="pytorch-grad-cam's sobel_cam baseline (Gildenblat et al.); Sobel & Feldman 1968",
    formula="(min(|S_x * grey|, 255) + min(|S_y * grey|, 255)) / 2 on the image in [0, 255]",
    cost="two 3x3 convolutions (+ 1 forward for the predicted class; the map uses none)",
)
class SobelCAM(LayerlessEngineOptions, Explainer):
    """A model-free baseline: the Sobel edge magnitude of the input image.

    The input is mapped back to ``[0, 255]`` pixels with the model's own ``mean`` and
    ``std`` (its data config), then `sobel_edges` gives pytorch-grad-cam's ``sobel_cam``
    map. The model runs (once, without gradients) only when the target is the predicted
    class or a callable, to report the class; the map is the same for every target and
    every model, which is the point of a baseline (a method that does no better than
    edges explains little).

    ``aug_smooth``, ``eigen_smooth``, ``layer_fusion``: the CAM engine's options
    (`timmlens.interpretation.cam.layerless`).

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        normalize: min-max normalise each heatmap to ``[0, 1]``; ``False`` gives the
            edge map in grey levels.
    """

    needs_gradients = False
    class_agnostic = True
    forwards_per_image: int | None = 1
    constant_map_causes = "the image is flat (one colour): it has no edges"

    def __init__(
        self,
        model: nn.Module,
        normalize: bool = True,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        layer_fusion: str = "mean",
    ) -> None:
        super().__init__(model)
        self.normalize = normalize
        self.set_engine_options(aug_smooth, eigen_smooth, layer_fusion)

    def __repr__(self) -> str:
        return f"SobelCAM(normalize={self.normalize}{self.engine_options_repr()})"

    def pixels(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` preprocessed inputs back to pixels in ``[0, 255]`` (float)."""
        config = data_config(self.model)
        if inputs.shape[1] != 3:
            raise ValueError(
                f"SobelCAM takes RGB inputs (3 channels), got {inputs.shape[1]}; the grey "
                f"conversion is OpenCV's RGB one."
            )
        mean = torch.as_tensor(config["mean"], dtype=inputs.dtype, device=inputs.device)
        std = torch.as_tensor(config["std"], dtype=inputs.dtype, device=inputs.device)
        return (inputs * std[:, None, None] + mean[:, None, None]) * 255.0

    def attribute_once(
        self, inputs: torch.Tensor, targets: ResolvedTargets, **kwargs: Any
    ) -> Explanation:
        """The edge maps of ``inputs`` ``(B, 3, H, W)``: heatmap ``(B, H, W)``."""
        if kwargs:
            raise TypeError(f"unexpected arguments for SobelCAM: {sorted(kwargs)}")
        chosen = target_rows(targets, inputs.device)
        logits = None
        if not isinstance(chosen, torch.Tensor):  # the predicted class (or a callable's)
            score = TargetScore(self.model)
            with torch.no_grad():
                score(inputs, chosen)
            assert score.seen is not None
            chosen, logits = score.seen
        edges = sobel_edges(self.pixels(inputs.detach().float()))
        return Explanation(
            heatmap=normalize_maps(edges) if self.normalize else edges,
            targets=chosen,
            logits=logits,
            attributions=edges,
        )
