"""aug_smooth, eigen_smooth and layer_fusion on the CAM engine, side by side with pytorch-grad-cam.

pytorch-grad-cam 1.5.7 (``pgc``) runs its own pipeline (``cam(x, targets, aug_smooth=,
eigen_smooth=)``) on the same model object and layer; both results are min-max
normalised (pgc does not rescale the average of its augmentations) and compared.
Tolerances, and why:

* GradCAM, EigenCAM, ScoreCAM, one layer: ``1e-4`` (float32 rounding; measured
  ``<= 3e-6`` on Lite0);
* GradCAM++: pgc adds ``eps=1e-6`` to alpha's denominator, we follow the paper (no eps,
  see ``gradcam_plusplus_weights``); with their eps put into our weights the maps agree
  to ``1e-4``;
* several layers: ``1e-2``: pgc min-max scales each layer's map at the layer's
  resolution, then resizes (cv2); we upsample, then scale; bilinear upsampling does not
  reach the layer map's extremes, so the two scalings differ slightly (``4e-3`` measured);
* eigen_smooth: the first principal component has no sign; pgc keeps numpy's, we fix it
  (``first_principal_component``). pgc's projection is taken with our sign (each image's
  projection times +-1) before comparing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import timm
import torch

from timmlens.data import prepare_images
from timmlens.interpretation.cam import (
    CamContext,
    CAMExplainer,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    ScoreCAM,
)
from timmlens.interpretation.cam import gradcam as gradcam_module
from timmlens.interpretation.cam.smoothing import AUGMENTATIONS, first_principal_component
from timmlens.interpretation.registry import create_explainer, methods, resolve_method
from timmlens.testing import make_explainable

PEERS = {
    GradCAM: "GradCAM",
    GradCAMPlusPlus: "GradCAMPlusPlus",
    EigenCAM: "EigenCAM",
    ScoreCAM: "ScoreCAM",
}
SMOOTHING = [(True, False), (False, True), (True, True)]  # (aug_smooth, eigen_smooth)
LITE0_TARGETS = [281, 967]  # tabby, espresso


def _minmax(maps: torch.Tensor | np.ndarray) -> torch.Tensor:
    maps = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    low = maps.flatten(1).amin(dim=1).view(-1, 1, 1)
    high = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
    return (maps - low) / (high - low)


def _vit_tokens_to_nchw(tokens: torch.Tensor) -> torch.Tensor:
    patches = tokens[:, 1:]  # drop the class token; 64 / 16 = a 4x4 grid
    return patches.reshape(patches.shape[0], 4, 4, patches.shape[2]).permute(0, 3, 1, 2)


@cache
def vit64() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_explainable(timm.create_model("test_vit", num_classes=10, img_size=64))


@pytest.fixture
def signed_pgc_projection(monkeypatch) -> None:
    """pgc's get_2d_projection with each image's sign set by our convention."""
    import pytorch_grad_cam.base_cam as base_cam
    import pytorch_grad_cam.eigen_cam as eigen_cam

    original = base_cam.get_2d_projection

    def signed(batch: np.ndarray) -> np.ndarray:
        theirs = original(batch)
        ours = first_principal_component(torch.from_numpy(np.nan_to_num(batch))).numpy()
        signs = np.sign((theirs * ours).reshape(len(theirs), -1).sum(axis=1))
        assert np.all(signs != 0)
        return theirs * signs[:, None, None]

    monkeypatch.setattr(base_cam, "get_2d_projection", signed)
    monkeypatch.setattr(eigen_cam, "get_2d_projection", signed)


def peer_map(
    explainer: CAMExplainer,
    inputs: torch.Tensor,
    targets: list[int],
    reshape: Callable | None = None,
    **options: bool,
) -> np.ndarray:
    """pgc's full pipeline on the explainer's model and layers: ``(B, H, W)``."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer_cls = getattr(pytorch_grad_cam, PEERS[type(explainer)])
    layers = [layer.module for layer in explainer.layers]
    try:
        with peer_cls(explainer.model, layers, reshape_transform=reshape) as cam:
            return cam(inputs, [ClassifierOutputTarget(t) for t in targets], **options)
    finally:
        for parameter in explainer.model.parameters():
            parameter.grad = None  # pgc leaves gradients behind; the models are shared


def assert_agrees(ours: torch.Tensor, theirs: np.ndarray, atol: float) -> None:
    assert ours.shape == tuple(theirs.shape)
    assert ours.std() > 0.05, "a flat map would prove nothing"
    diff = (ours - _minmax(theirs)).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"


@pytest.fixture(scope="module")
def lite0_inputs(real_model, photos) -> torch.Tensor:
    return prepare_images([photos["chelsea"], photos["coffee"]], real_model).tensor


#: the fast set: both options at once on one photo; the slow set: each option, two photos
LITE0_CASES = [
    pytest.param(1, True, True, id="chelsea-aug-eigen"),
    *[
        pytest.param(2, aug, eigen, id=f"two-aug{aug:d}-eigen{eigen:d}", marks=pytest.mark.slow)
        for aug, eigen in SMOOTHING
    ],
]


# ------------------------------------------------------------------------- pgc, real Lite0
@pytest.mark.usefixtures("signed_pgc_projection")
@pytest.mark.parametrize("images, aug_smooth, eigen_smooth", LITE0_CASES)
@pytest.mark.parametrize("method", [GradCAM, EigenCAM])
def test_lite0_equals_pytorch_grad_cam(
    real_model, lite0_inputs, method: type, images: int, aug_smooth: bool, eigen_smooth: bool
) -> None:
    options = {"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth}
    inputs, targets = lite0_inputs[:images], LITE0_TARGETS[:images]
    explainer = method(real_model)
    ours = explainer(inputs, targets, **options)
    assert_agrees(ours, peer_map(explainer, inputs, targets, **options), 1e-4)


@pytest.mark.usefixtures("signed_pgc_projection")
@pytest.mark.parametrize("images, aug_smooth, eigen_smooth", LITE0_CASES)
def test_lite0_gradcampp_differs_from_pytorch_grad_cam_by_their_eps_only(
    real_model, lite0_inputs, monkeypatch, images: int, aug_smooth: bool, eigen_smooth: bool
) -> None:
    options = {"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth}
    inputs, targets = lite0_inputs[:images], LITE0_TARGETS[:images]
    explainer = GradCAMPlusPlus(real_model)
    theirs = peer_map(explainer, inputs, targets, **options)
    paper = explainer(inputs, targets, **options)
    assert (paper - _minmax(theirs)).abs().max() > 1e-3  # their eps shows on Lite0

    def with_their_eps(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        grads_2 = gradients.pow(2)
        sums = activations.sum(dim=(2, 3), keepdim=True)
        alpha = grads_2 / (2 * grads_2 + sums * grads_2 * gradients + 1e-6)
        alpha = torch.where(gradients != 0, alpha, 0)  # as pgc's np.where(grads != 0, ...)
        return (alpha * gradients.clamp_min(0)).sum(dim=(2, 3))

    monkeypatch.setattr(gradcam_module, "gradcam_plusplus_weights", with_their_eps)
    assert_agrees(explainer(inputs, targets, **options), theirs, 1e-4)


@pytest.mark.usefixtures("signed_pgc_projection")
def test_lite0_several_layers_equal_pytorch_grad_cam_mean(real_model, lite0_inputs) -> None:
    explainer = GradCAM(real_model, target_layer=["backbone.blocks.5", "backbone.bn2"])
    inputs, targets = lite0_inputs[:1], LITE0_TARGETS[:1]
    for options in ({}, {"aug_smooth": True, "eigen_smooth": True}):
        ours = explainer(inputs, targets, **options)
        theirs = peer_map(explainer, inputs, targets, **options)
        assert_agrees(ours, theirs, 1e-2)  # scale-then-resize vs resize-then-scale


@pytest.mark.slow
@pytest.mark.usefixtures("signed_pgc_projection")
def test_lite0_scorecam_equals_pytorch_grad_cam(real_model, lite0_inputs) -> None:
    # 192 channels x 6 augmentations of one 112 px image: 1152 masked forwards per side.
    small = torch.nn.functional.interpolate(lite0_inputs[:1], size=(112, 112), mode="bilinear")
    explainer = ScoreCAM(real_model, "backbone.blocks.5", align_corners=True)
    options = {"aug_smooth": True, "eigen_smooth": True}
    ours = explainer(small, LITE0_TARGETS[:1], **options)
    assert_agrees(ours, peer_map(explainer, small, LITE0_TARGETS[:1], **options), 1e-4)


# ---------------------------------------------------------------------------- pgc, ViT
@pytest.mark.usefixtures("signed_pgc_projection")
@pytest.mark.parametrize("aug_smooth, eigen_smooth", SMOOTHING)
@pytest.mark.parametrize("method", [GradCAM, EigenCAM, ScoreCAM])
def test_vit_equals_pytorch_grad_cam(method: type, aug_smooth: bool, eigen_smooth: bool) -> None:
    options = {"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth}
    extra = {"align_corners": True} if method is ScoreCAM else {}  # pgc's mask upsampling
    explainer = method(vit64(), "blocks.5.norm1", **extra)
    images = 1 if method is ScoreCAM else 2  # ScoreCAM: a masked forward per channel
    inputs = torch.randn(images, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = explainer(inputs, [2, 5][:images], **options)
    theirs = peer_map(explainer, inputs, [2, 5][:images], _vit_tokens_to_nchw, **options)
    assert_agrees(ours, theirs, 1e-4)


# ------------------------------------------------------------------ our own invariants
def test_aug_smooth_is_one_batched_pass_equal_to_the_augmentations_one_by_one(small) -> None:
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    explainer = GradCAMPlusPlus(small, "layer3")
    batches: list[int] = []
    hook = small.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        result = explainer.explain_full(inputs, [1, 4], aug_smooth=True)
    finally:
        hook.remove()
    assert batches == [len(AUGMENTATIONS) * 2]  # one forward (and backward) for all
    one_by_one = []
    for flip, factor in AUGMENTATIONS:
        augmented = (inputs.flip(3) if flip else inputs) * factor
        heatmap = explainer(augmented, [1, 4])
        one_by_one.append(heatmap.flip(-1) if flip else heatmap)
    expected = _minmax(torch.stack(one_by_one).mean(dim=0))
    torch.testing.assert_close(result.heatmap, expected, atol=1e-5, rtol=0)
    plain = explainer.explain_full(inputs, [1, 4])
    assert not torch.allclose(result.heatmap, plain.heatmap, atol=1e-3)
    # reported: the unaugmented images' classes and logits; layer maps at layer resolution
    assert result.targets.tolist() == [1, 4]
    torch.testing.assert_close(result.logits, plain.logits, atol=1e-5, rtol=1e-5)
    assert result.extras["layer_maps"][0].shape == plain.extras["layer_maps"][0].shape


def test_eigen_smooth_projects_the_weighted_activations(small) -> None:
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    seen: list[torch.Tensor] = []

    class Recorder(HiResCAM):
        def weighted_activations(self, ctx: CamContext) -> torch.Tensor:
            terms = super().weighted_activations(ctx)
            seen.append(terms)
            return terms

    raw = Recorder(small, "layer3", relu=False, eigen_smooth=True).attribute_layer(inputs, [0, 1])
    torch.testing.assert_close(raw, first_principal_component(seen[-1]))
    plain = HiResCAM(small, "layer3", relu=False).attribute_layer(inputs, [0, 1])
    torch.testing.assert_close(plain, seen[-1].sum(dim=1), atol=1e-5, rtol=1e-5)
    # the sign convention: the projection correlates with the method's own map
    centred = plain - plain.mean(dim=(1, 2), keepdim=True)
    assert torch.all((raw * centred).sum(dim=(1, 2)) > 0)
    # EigenCAM already is the principal component: eigen_smooth changes nothing
    eigen = EigenCAM(small, "layer3")
    torch.testing.assert_close(eigen(inputs), eigen(inputs, eigen_smooth=True))


@pytest.mark.parametrize("rule", ["mean", "max", "sum"])
def test_layer_fusion_rules_combine_the_normalised_layer_maps(small, rule: str) -> None:
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    fused = GradCAM(small, ["layer3", "layer4"], layer_fusion=rule, normalize=False)
    singles = torch.stack([GradCAM(small, name)(inputs, [2, 3]) for name in fused.layer_names])
    expected = {"mean": singles.mean(0), "max": singles.amax(0), "sum": singles.sum(0)}[rule]
    torch.testing.assert_close(fused(inputs, [2, 3]), expected, atol=1e-5, rtol=1e-5)
    assert f"layer_fusion={rule!r}" in repr(fused) or rule == "mean"


# -------------------------------------------------------------------- every CAM method
@pytest.mark.parametrize("name", methods(kind="cam"))
def test_every_registered_cam_method_takes_both_options(small, name: str) -> None:
    spec = resolve_method(name)
    assert {"aug_smooth", "eigen_smooth", "layer_fusion"} <= set(spec.options())
    inputs = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(4))  # one image
    layer = {"target_layer": "layer3"} if spec.uses_layer else {}  # FullGrad, SobelCAM: none
    options = {**spec.quick_options, **layer}
    explainer = create_explainer(name, small, aug_smooth=True, **options)
    assert explainer.aug_smooth and "aug_smooth=True" in repr(explainer)
    smoothed = explainer(inputs, 3)
    plain = create_explainer(name, small, **options)(inputs, 3)
    assert smoothed.shape == plain.shape == (64, 64) and torch.isfinite(smoothed).all()
    torch.testing.assert_close(
        create_explainer(name, small, **options)(inputs, 3, aug_smooth=True), smoothed
    )
    if not spec.cls.supports_eigen_smooth():
        with pytest.raises(ValueError, match="eigen_smooth"):
            create_explainer(name, small, eigen_smooth=True, **options)
        return
    both = create_explainer(name, small, aug_smooth=True, eigen_smooth=True, **options)
    combined = both(inputs, 3)
    assert torch.isfinite(combined).all()
    called = create_explainer(name, small, **options)(inputs, 3, aug_smooth=True, eigen_smooth=True)
    torch.testing.assert_close(called, combined)


# ----------------------------------------------------------------------- bad values
def test_bad_values_give_clear_errors(small) -> None:
    with pytest.raises(TypeError, match=r"aug_smooth must be True or False, got 'yes'"):
        GradCAM(small, aug_smooth="yes")
    with pytest.raises(TypeError, match=r"eigen_smooth must be True or False, got 1"):
        ScoreCAM(small, eigen_smooth=1)  # a method with its own __init__ checks them too
    with pytest.raises(ValueError, match=r"layer_fusion='median' is not a rule.*'mean'"):
        GradCAM(small, ["layer3", "layer4"], layer_fusion="median")
    inputs = torch.randn(1, 3, 64, 64)
    with pytest.raises(TypeError, match=r"aug_smooth must be True or False"):
        GradCAM(small)(inputs, 0, aug_smooth="on")
    with pytest.raises(TypeError, match=r"takes target_class, aug_smooth and eigen_smooth"):
        GradCAM(small)(inputs, 0, augsmooth=True)
    with pytest.raises(TypeError, match=r"unknown option.*aug_smoth"):
        create_explainer("gradcam", small, aug_smoth=True)

    class OwnMap(CAMExplainer):  # a map that is no channel sum: nothing to project
        def cam(self, ctx: CamContext) -> torch.Tensor:
            return ctx.activations.amax(dim=1)

    with pytest.raises(ValueError, match=r"OwnMap does not take eigen_smooth=True"):
        OwnMap(small, eigen_smooth=True)
    with pytest.raises(ValueError, match=r"OwnMap does not take eigen_smooth=True"):
        OwnMap(small)(inputs, 0, eigen_smooth=True)
    assert OwnMap(small)(inputs, 0, aug_smooth=True).shape == (1, 64, 64)


# ---------------------------------------------------------------------- model hygiene
def test_model_left_as_found_and_threads_keep_their_own_options(small) -> None:
    before = {k: v.clone() for k, v in small.state_dict().items()}
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    explainer = GradCAM(small, "layer3")
    expected = {flag: explainer(inputs, [1, 2], eigen_smooth=flag) for flag in (False, True)}
    results: dict[bool, list[torch.Tensor]] = {False: [], True: []}

    def run(flag: bool) -> None:
        for _ in range(3):
            results[flag].append(explainer(inputs, [1, 2], eigen_smooth=flag, aug_smooth=False))

    threads = [threading.Thread(target=run, args=(flag,)) for flag in (False, True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for flag, maps in results.items():
        assert len(maps) == 3
        for heatmap in maps:
            torch.testing.assert_close(heatmap, expected[flag])
    assert not torch.allclose(expected[False], expected[True], atol=1e-3)
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())
    assert all(p.grad is None for p in small.parameters())
    assert not small._forward_hooks and not small._forward_pre_hooks
