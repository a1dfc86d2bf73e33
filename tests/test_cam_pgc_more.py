"""GradCAMElementWise, FEM, KPCA-CAM, ShapleyCAM, FinerCAM, SobelCAM against pytorch-grad-cam 1.5.7.

Each method's raw layer-resolution map is compared with pytorch-grad-cam's map before
its resize and scaling (after its ReLU), on the same layer, inputs and targets: on the
real EfficientNet-Lite0 with a scikit-image photo, and on timm's ``test_vit`` where
pytorch-grad-cam runs with a ``reshape_transform``. Tolerances, per method:

* element-wise GradCAM, FEM, ShapleyCAM, FinerCAM: ``1e-4`` of their largest value, the
  same float32 formula on both sides (observed ~1e-6);
* KPCA-CAM: ``1e-3`` and up to each image's sign: an eigendecomposition in float32 on
  both sides, and the sign is ours (see `kernel_principal_component`);
* SobelCAM: 3 grey levels of 255, OpenCV rounds to integers after each step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import timm
import torch
from torch import nn

from timmlens import DegenerateMapWarning
from timmlens.errors import TargetError, UnsupportedModelError
from timmlens.interpretation.cam import (
    FEM,
    KPCACAM,
    FinerCAM,
    GradCAM,
    GradCAMElementWise,
    ShapleyCAM,
    SobelCAM,
)
from timmlens.interpretation.cam.pgc_scores import finer_scores, unfused_attention
from timmlens.interpretation.cam.pgc_variants import (
    fem_weights,
    kernel_principal_component,
    sobel_edges,
)
from timmlens.interpretation.registry import METHODS
from timmlens.testing import make_explainable

VIT_LAYER = "blocks.5.norm1"
VIT_TARGETS = [2, 5]
CAT = 281  # tabby: the photo's predicted class is one of ImageNet's cats


def _vit_tokens_to_nchw(tokens: torch.Tensor) -> torch.Tensor:
    patches = tokens[:, 1:]  # drop the class token; 64 / 16 = a 4x4 grid
    return patches.reshape(patches.shape[0], 4, 4, patches.shape[2]).permute(0, 3, 1, 2)


@cache
def vit() -> nn.Module:
    torch.manual_seed(0)
    return make_explainable(timm.create_model("test_vit", num_classes=10, img_size=64))


def vit_input() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cat(real_model, photos) -> torch.Tensor:
    """The chelsea photo, preprocessed for Lite0: ``(1, 3, 224, 224)``."""
    return GradCAM(real_model).prepare(photos["chelsea"]).tensor


def _keeping_raw(peer_cls: type) -> type:
    class Peer(peer_cls):
        def get_cam_image(self, *args, **kwargs):
            self.raw = super().get_cam_image(*args, **kwargs)
            return self.raw

    return Peer


def peer_map(
    peer_cls: type,
    model: nn.Module,
    layer: str,
    inputs: torch.Tensor,
    targets: list[int] | None,
    reshape: Callable | None = None,
    **options,
) -> np.ndarray:
    """pytorch-grad-cam's ``(B, h, w)`` map after its ReLU, before resize and scaling."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = _keeping_raw(peer_cls)(model, [model.get_submodule(layer)], reshape, **options)
    try:
        cam(inputs, None if targets is None else [ClassifierOutputTarget(t) for t in targets])
    finally:
        cam.activations_and_grads.release()
        for parameter in model.parameters():
            parameter.grad = None  # pytorch-grad-cam leaves grads behind
    return np.maximum(cam.raw, 0)


def assert_close_maps(ours: torch.Tensor, theirs: np.ndarray, rtol: float = 1e-4) -> None:
    """Equal up to ``rtol`` of the peer's largest value."""
    theirs_t = torch.from_numpy(np.asarray(theirs, dtype=np.float32))
    assert ours.shape == theirs_t.shape
    assert ours.abs().max() > 0, "degenerate all-zero map: the test would prove nothing"
    scale = theirs_t.abs().max()
    diff = (ours - theirs_t).abs().max().item()
    assert diff <= rtol * scale, f"max abs diff {diff:.3g} at scale {scale:.3g}"


def _cases(real_model, cat) -> dict[str, tuple]:
    return {
        "lite0": (real_model, None, cat, [CAT], None),
        "vit": (vit(), VIT_LAYER, vit_input(), VIT_TARGETS, _vit_tokens_to_nchw),
    }


# ------------------------------------------------------------------------------ peers
@pytest.mark.parametrize(
    ("case", "method", "peer", "options"),
    [
        ("lite0", GradCAMElementWise, "GradCAMElementWise", {}),
        ("vit", GradCAMElementWise, "GradCAMElementWise", {}),
        ("lite0", FEM, "FEM", {}),
        ("vit", FEM, "FEM", {}),
        ("vit", FEM, "FEM", {"k": 1.0}),
    ],
)
def test_maps_equal_pytorch_grad_cam(real_model, cat, case, method, peer, options) -> None:
    import pytorch_grad_cam

    model, layer, inputs, targets, reshape = _cases(real_model, cat)[case]
    explainer = method(model, target_layer=layer, **options)
    ours = explainer.attribute_layer(inputs, targets)
    theirs = peer_map(
        getattr(pytorch_grad_cam, peer), model, explainer.layer_names[0], inputs, targets,
        reshape, **options,
    )  # fmt: skip
    assert_close_maps(ours, theirs)


@pytest.mark.parametrize(
    ("case", "options"),
    [
        ("lite0", {}),
        ("vit", {}),
        ("vit", {"kernel": "rbf", "gamma": 0.01}),
        ("vit", {"kernel": "poly"}),
    ],
)
def test_kpcacam_equals_pytorch_grad_cam_up_to_the_sign(real_model, cat, case, options) -> None:
    from pytorch_grad_cam import KPCA_CAM

    model, layer, inputs, targets, reshape = _cases(real_model, cat)[case]
    explainer = KPCACAM(model, target_layer=layer, **options)
    signed = explainer.attribute_layer(inputs, targets)
    peer_options = {k: v for k, v in options.items() if k in ("kernel", "gamma")}
    theirs = peer_map(KPCA_CAM, model, explainer.layer_names[0], inputs, targets, reshape,
                      **peer_options)  # fmt: skip
    # pytorch-grad-cam clips one sign with its ReLU: compare with both of ours per image
    raw = KPCACAM(model, target_layer=layer, relu=False, **options).attribute_layer(inputs)
    for ours_i, raw_i, theirs_i in zip(signed, raw, theirs, strict=True):
        flipped = (-raw_i).clamp_min(0)
        same = (ours_i - torch.from_numpy(theirs_i)).abs().max()
        other = (flipped - torch.from_numpy(theirs_i)).abs().max()
        best = ours_i if same <= other else flipped
        assert_close_maps(best[None], theirs_i[None], rtol=1e-3)


def test_kpca_projection_equals_scikit_learn_for_every_kernel() -> None:
    from sklearn.decomposition import KernelPCA

    features = torch.randn(2, 12, 5, 6, generator=torch.Generator().manual_seed(1)).double()
    for kernel, gamma in [("linear", None), ("poly", 0.2), ("rbf", None), ("sigmoid", 0.05),
                          ("cosine", None)]:  # fmt: skip
        ours = kernel_principal_component(features, kernel, gamma)
        for image, mine in zip(features, ours, strict=True):
            samples = image.flatten(1).T.numpy()
            samples = samples - samples.mean(axis=0)
            theirs = KernelPCA(1, kernel=kernel, gamma=gamma).fit_transform(samples)[:, 0]
            theirs = torch.from_numpy(theirs).reshape(5, 6)
            sign = torch.sign((mine * theirs).sum())
            torch.testing.assert_close(mine, sign * theirs, rtol=1e-6, atol=1e-8)
            # our sign: positive correlation with the centred channel mean
            mean = image.mean(dim=0)
            assert (mine * (mean - mean.mean())).sum() >= 0


@pytest.mark.parametrize("case", ["lite0", "vit"])
def test_shapleycam_equals_pytorch_grad_cam(real_model, cat, case) -> None:
    from pytorch_grad_cam import ShapleyCAM as PeerShapleyCAM

    model, layer, inputs, targets, reshape = _cases(real_model, cat)[case]
    explainer = ShapleyCAM(model, target_layer=layer)
    ours = explainer.attribute_layer(inputs, targets)

    class Peer(PeerShapleyCAM):
        # 1.5.7's get_cam_image multiplies its weights with the un-reshaped tokens and
        # fails on a ViT: their weights (their code), times the reshaped activations
        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, _):
            weights = self.get_cam_weights(input_tensor, target_layer, targets, activations, grads)
            spatial = activations if reshape is None else reshape(activations)
            self.raw = (weights[:, :, None, None] * spatial.detach().numpy()).sum(axis=1)
            return self.raw

    # fused attention has no double backward, in their class too (we switch it per call)
    with unfused_attention(model):
        cam = Peer(model, [model.get_submodule(explainer.layer_names[0])], reshape)
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam(inputs, [ClassifierOutputTarget(t) for t in targets])
    cam.activations_and_grads.gradients = []  # their clear() cannot detach views in place
    cam.activations_and_grads.release()
    for parameter in model.parameters():
        parameter.grad = None
    assert_close_maps(ours, np.maximum(cam.raw, 0))
    gradcam = GradCAM(model, target_layer=layer).attribute_layer(inputs, targets)
    if case == "lite0":  # conv_head -> BN -> ReLU6 -> pool -> linear: nothing curved, H A = 0
        torch.testing.assert_close(ours, gradcam, rtol=1e-5, atol=1e-6)
    else:  # LayerNorm, GELU, softmax after the layer: the second-order term is there
        assert (ours - gradcam).abs().max() > 1e-3 * gradcam.abs().max()


def test_shapleycam_switches_fused_attention_off_for_the_call_only() -> None:
    model, other = vit(), timm.create_model("test_vit", num_classes=10, img_size=64)
    blocks = [m for m in model.modules() if hasattr(m, "fused_attn")]
    assert blocks
    blocks[0].fused_attn = True  # as on a machine where timm fuses by default
    before = [m.__dict__.get("fused_attn", "class") for m in blocks]
    others = [m.fused_attn for m in other.modules() if hasattr(m, "fused_attn")]
    seen: list[bool] = []
    hook = blocks[0].register_forward_pre_hook(lambda m, _: seen.append(m.fused_attn))
    try:
        ShapleyCAM(model, target_layer=VIT_LAYER).attribute_layer(vit_input(), VIT_TARGETS)
    finally:
        hook.remove()
    assert seen == [False]  # the double backward runs through explicit softmax attention
    assert [m.__dict__.get("fused_attn", "class") for m in blocks] == before
    assert [m.fused_attn for m in other.modules() if hasattr(m, "fused_attn")] == others
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_shapleycam_several_layers_and_a_with_block_give_each_layers_own_map() -> None:
    model, inputs = vit(), vit_input()
    layers = ["blocks.3.norm1", VIT_LAYER]
    alone = [
        ShapleyCAM(model, target_layer=name).attribute_layer(inputs, VIT_TARGETS) for name in layers
    ]
    together = ShapleyCAM(model, target_layer=layers).attribute_layers(inputs, VIT_TARGETS)
    for one, both in zip(alone, together, strict=True):
        torch.testing.assert_close(both, one)
    with ShapleyCAM(model, target_layer=VIT_LAYER) as explainer:  # taps kept for the block
        torch.testing.assert_close(explainer.attribute_layer(inputs, VIT_TARGETS), alone[1])
    # a callable target that reads one logit is that class, as for every method
    explainer = ShapleyCAM(model, target_layer=VIT_LAYER)
    torch.testing.assert_close(explainer(inputs, lambda z: z[:, 5]), explainer(inputs, 5))


# --------------------------------------------------------------------------- FinerCAM
def _peer_finer(model, layer, inputs, reshape, **call) -> np.ndarray:
    from pytorch_grad_cam import FinerCAM as PeerFinerCAM
    from pytorch_grad_cam import GradCAM as PeerGradCAM

    module = model.get_submodule(layer)
    cam = PeerFinerCAM(model, [module], reshape_transform=reshape)
    cam.base_cam.activations_and_grads.release()
    cam.base_cam = _keeping_raw(PeerGradCAM)(model, [module], reshape_transform=reshape)
    try:
        cam.forward(inputs, **call)
    finally:
        cam.base_cam.activations_and_grads.release()
        for parameter in model.parameters():
            parameter.grad = None
    return np.maximum(cam.base_cam.raw, 0)


@pytest.mark.parametrize(
    ("case", "options", "call"),
    [
        pytest.param("lite0", {}, {}, marks=pytest.mark.slow),  # two full peer backwards
        ("vit", {}, {}),
        ("vit", {"alpha": 0.5}, {"alpha": 0.5}),
        ("vit", {"comparison_ranks": (1, 4)}, {"comparison_categories": [1, 4]}),
    ],
)
def test_finercam_equals_pytorch_grad_cam(real_model, cat, case, options, call) -> None:
    model, layer, inputs, _, reshape = _cases(real_model, cat)[case]
    explainer = FinerCAM(model, target_layer=layer, **options)
    ours = explainer.attribute_layer(inputs)  # the predicted classes, as their default
    assert_close_maps(ours, _peer_finer(model, explainer.layer_names[0], inputs, reshape, **call))
    # a given class: their target_idx
    ours = explainer.attribute_layer(inputs, 3)
    theirs = _peer_finer(model, explainer.layer_names[0], inputs, reshape, target_idx=3, **call)
    assert_close_maps(ours, theirs)


def test_finercam_fixed_classes_equal_their_weighted_target(real_model, cat) -> None:
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    explainer = FinerCAM(real_model, comparison_classes=[282, 285], alpha=0.8)
    ours = explainer.attribute_layer(cat, CAT)
    layer = explainer.layer_names[0]
    cam = _keeping_raw(PeerGradCAM)(real_model, [real_model.get_submodule(layer)])
    try:
        cam(cat, [FinerWeightedTarget(CAT, [282, 285], 0.8)])
    finally:
        cam.activations_and_grads.release()
        for parameter in real_model.parameters():
            parameter.grad = None
    assert_close_maps(ours, np.maximum(cam.raw, 0))
    # the score itself is their target's
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    target = FinerWeightedTarget(4, [1, 7], 0.3)
    expected = torch.stack([target(row) for row in logits])
    compared = torch.tensor([[1, 7]] * 3)
    torch.testing.assert_close(
        finer_scores(logits, torch.tensor([4, 4, 4]), compared, 0.3), expected
    )


def test_finercam_options_are_checked_with_clear_errors() -> None:
    model = vit()
    with pytest.raises(ValueError, match="base='scorecam' is not a gradient CAM"):
        FinerCAM(model, target_layer=VIT_LAYER, base="scorecam")
    with pytest.raises(ValueError, match="comparison_ranks must be ranks >= 1"):
        FinerCAM(model, target_layer=VIT_LAYER, comparison_ranks=(0, 1))
    explainer = FinerCAM(model, target_layer=VIT_LAYER, comparison_classes=[3, 12])
    with pytest.raises(TargetError, match=r"outside 0\.\.9"):
        explainer.attribute_layer(vit_input(), 1)
    with pytest.raises(TargetError, match="needs a class, not a callable target"):
        FinerCAM(model, target_layer=VIT_LAYER)(vit_input(), lambda z: z[:, 1])
    # another base: GradCAM++'s rule on the same score
    base = FinerCAM(model, target_layer=VIT_LAYER, base="gradcam++")
    assert base.base.name == "gradcampp" and "base='gradcampp'" in repr(base)
    assert base.attribute_layer(vit_input(), VIT_TARGETS).shape == (2, 4, 4)


# ------------------------------------------------------------------- FEM, KPCA, Sobel
def test_class_agnostic_methods_take_no_gradients() -> None:
    model, inputs = vit(), vit_input()
    for method in (FEM, KPCACAM):
        explainer = method(model, target_layer=VIT_LAYER)
        with torch.inference_mode():  # refused for gradient methods: proves no backward
            maps = explainer(inputs, target_class=[1, 2])
        assert explainer.class_agnostic
        torch.testing.assert_close(maps, explainer(inputs, target_class=[7, 7]))
    with pytest.raises(ValueError, match="kernel='gauss' is not supported"):
        KPCACAM(model, target_layer=VIT_LAYER, kernel="gauss")
    with pytest.raises(ValueError, match="FEM's k must be a number"):
        FEM(model, target_layer=VIT_LAYER, k="2")
    # a 4x4 map: sqrt(15) = 3.87 standard deviations at most, so k=4 can select nothing
    with pytest.warns(DegenerateMapWarning, match=r"cannot select any position of the 4x4"):
        assert FEM(model, target_layer=VIT_LAYER, k=4)(inputs).max() == 0
    # Samuelson's bound is tight: one peak on a 4x4 map is sqrt(15) deviations up
    peak = torch.zeros(1, 1, 4, 4)
    peak[..., 1, 2] = 1.0
    assert fem_weights(peak, k=3.87).item() == 1 / 16 and fem_weights(peak, k=3.88).item() == 0


def test_sobelcam_is_pytorch_grad_cams_edge_map(real_model, photos) -> None:
    from pytorch_grad_cam.sobel_cam import sobel_cam

    explainer = SobelCAM(real_model)
    result = explainer.explain_full(photos["chelsea"], target_class=CAT)
    pixels = explainer.pixels(explainer.prepare(photos["chelsea"]).tensor)[0]
    image = pixels.permute(1, 2, 0).round().clamp(0, 255).numpy().astype(np.uint8)
    theirs = torch.from_numpy(sobel_cam(image).astype(np.float32))
    assert result.attributions is not None
    diff = (result.attributions[0] - theirs).abs()
    assert diff.max() <= 3.0, f"{diff.max():.3g} grey levels"  # OpenCV's roundings
    assert int(result.targets[0]) == CAT and result.heatmap.shape == (1, 224, 224)
    assert result.heatmap.min() == 0 and result.heatmap.max() == 1
    # class-agnostic and model-free
    torch.testing.assert_close(explainer(photos["chelsea"], 5), result.heatmap[0])
    assert not METHODS["sobelcam"].uses_layer
    # saturation as convertScaleAbs: a step of 255 gives |S_x| = 4 * 255, clipped to 255
    step = torch.zeros(1, 3, 5, 6)
    step[..., 3:] = 255.0
    assert sobel_edges(step).max() == pytest.approx(127.5)


def test_registry_metadata() -> None:
    for name, cls in [
        ("gradcamelementwise", GradCAMElementWise),
        ("fem", FEM),
        ("kpcacam", KPCACAM),
        ("shapleycam", ShapleyCAM),
        ("finercam", FinerCAM),
        ("sobelcam", SobelCAM),
    ]:
        spec = METHODS[name]
        assert spec.cls is cls and cls.name == name and spec.kind == "cam"
        assert spec.title and spec.paper and spec.formula and spec.cost and spec.summary
        assert spec.uses_layer == (name != "sobelcam")
    assert {"kernel", "gamma"} <= set(METHODS["kpcacam"].options())
    assert {"alpha", "comparison_ranks", "comparison_classes", "base"} <= set(
        METHODS["finercam"].options()
    )
    assert "k" in METHODS["fem"].options()


# ------------------------------------------------------------- review: eigen_smooth, options
def _peer_raw_eigen(peer_cls: type, model, layer, inputs, targets, reshape) -> np.ndarray:
    """pytorch-grad-cam's raw map with ``eigen_smooth=True`` (before its ReLU)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = _keeping_raw(peer_cls)(model, [model.get_submodule(layer)], reshape)
    try:
        cam(inputs, [ClassifierOutputTarget(t) for t in targets], eigen_smooth=True)
    finally:
        cam.activations_and_grads.release()
        for parameter in model.parameters():
            parameter.grad = None
    return np.asarray(cam.raw, dtype=np.float32)


def _assert_equal_up_to_sign(ours: torch.Tensor, theirs: np.ndarray) -> None:
    for mine, peer in zip(ours, torch.from_numpy(theirs), strict=True):
        sign = 1.0 if (mine * peer).sum() >= 0 else -1.0
        assert (mine - sign * peer).abs().max() <= 1e-3 * peer.abs().max()


def test_gradcamelementwise_eigen_smooth_equals_pytorch_grad_cam() -> None:
    """pgc's GradCAMElementWise projects ``ReLU(g * A)`` with eigen_smooth; ours refused it."""
    from pytorch_grad_cam import GradCAMElementWise as Peer

    model, inputs = vit(), vit_input()
    theirs = _peer_raw_eigen(Peer, model, VIT_LAYER, inputs, VIT_TARGETS, _vit_tokens_to_nchw)
    explainer = GradCAMElementWise(model, target_layer=VIT_LAYER, relu=False, eigen_smooth=True)
    _assert_equal_up_to_sign(explainer.attribute_layer(inputs, VIT_TARGETS), theirs)


def test_finercam_passes_eigen_smooth_to_its_base() -> None:
    """pgc's FinerCAM hands eigen_smooth to its base CAM; ours refused it for every base."""
    model, inputs = vit(), vit_input()
    finer = FinerCAM(model, target_layer=VIT_LAYER, relu=False, alpha=0.0, eigen_smooth=True)
    plain = GradCAM(model, target_layer=VIT_LAYER, relu=False, eigen_smooth=True)
    _assert_equal_up_to_sign(
        finer.attribute_layer(inputs, VIT_TARGETS),
        plain.attribute_layer(inputs, VIT_TARGETS).numpy(),
    )
    at_call = FinerCAM(model, target_layer=VIT_LAYER, base="layercam")
    assert at_call(inputs, VIT_TARGETS, eigen_smooth=True).shape == (2, 64, 64)


def test_numeric_options_are_checked_not_truncated() -> None:
    model = vit()
    with pytest.raises(ValueError, match="degree must be a positive integer"):
        KPCACAM(model, target_layer=VIT_LAYER, kernel="poly", degree=2.5)
    with pytest.raises(ValueError, match="gamma must be positive"):
        KPCACAM(model, target_layer=VIT_LAYER, gamma=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        FinerCAM(model, target_layer=VIT_LAYER, alpha=float("nan"))


def test_shapleycam_refuses_an_operation_torch_cannot_differentiate_twice():
    """GhostNet gates with a hard sigmoid, whose backward has no derivative in torch: the
    Hessian-vector product is impossible, so the method refuses with the cause (it used to
    crash with torch's bare RuntimeError)."""
    ghostnet = timm.create_model("ghostnet_100", num_classes=4).eval()
    with pytest.raises(UnsupportedModelError, match=r"hardsigmoid_backward.*Use 'gradcam'"):
        ShapleyCAM(ghostnet)(torch.randn(1, 3, 64, 64), 1)
