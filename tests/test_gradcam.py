"""GradCAM and GradCAM++: formulas, peers, batching, every family, model hygiene, errors."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import timm
import torch
from torch import nn

from timmlens import ImageClassifier
from timmlens.adapters import get_adapter, spatial_tap
from timmlens.errors import LayerResolutionError
from timmlens.interpretation import GradCAM, GradCAMPlusPlus
from timmlens.testing import make_explainable

Reshape = Callable[[torch.Tensor], torch.Tensor]


def _tokens_to_nchw(prefix: int, grid: tuple[int, int]) -> Reshape:
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:]
        return patches.reshape(patches.shape[0], *grid, patches.shape[2]).permute(0, 3, 1, 2)

    return reshape


def _nchw(t: torch.Tensor) -> torch.Tensor:
    return t


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


# name -> (timm name, timm kwargs, input side, CAM layer, reshape of the layer output to NCHW)
FAMILIES: dict[str, tuple[str, dict, int, str, Reshape]] = {
    "resnet": ("test_resnet", {}, 96, "layer4", _nchw),
    "convnext": ("test_convnext", {}, 96, "stages.3", _nchw),
    "efficientnet": ("test_efficientnet", {}, 96, "conv_head", _nchw),
    "vit": ("test_vit", {"img_size": 64}, 64, "blocks.5.norm1", _tokens_to_nchw(1, (4, 4))),
    "deit_distilled": (
        "deit_tiny_distilled_patch16_224",
        {"img_size": 48, "depth": 2},
        48,
        "blocks.1.norm1",
        _tokens_to_nchw(2, (3, 3)),
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {
            "img_size": 64,
            "window_size": 2,
            "embed_dim": 24,
            "depths": (1, 1, 1, 1),
            "num_heads": (1, 1, 1, 1),
        },
        64,
        "layers.3",
        _nhwc,
    ),
}


@cache
def family_model(family: str) -> nn.Module:
    name, kwargs, *_ = FAMILIES[family]
    torch.manual_seed(0)
    return make_explainable(timm.create_model(name, num_classes=10, **kwargs))


def family_input(family: str, batch: int = 3, seed: int = 0) -> torch.Tensor:
    side = FAMILIES[family][2]
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def reference_cam(
    model: nn.Module,
    layer: nn.Module,
    reshape: Reshape,
    inputs: torch.Tensor,
    targets: list[int],
    plusplus: bool,
    eps: float = 0.0,
) -> torch.Tensor:
    """GradCAM / GradCAM++ written out by hand: a hook, autograd, the formula. (B, h, w).

    ``eps`` > 0 adds pytorch-grad-cam's constant to GradCAM++'s alpha denominator.
    """
    saved: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: saved.append(out))
    try:
        logits = model(inputs)
    finally:
        handle.remove()
    score = logits[torch.arange(len(targets)), torch.tensor(targets)].sum()
    (grads,) = torch.autograd.grad(score, saved[0])
    acts, grads = reshape(saved[0].detach()), reshape(grads)
    if plusplus:
        g2, g3 = grads**2, grads**3
        denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3 + eps
        keep = (denom != 0) & (grads != 0)
        alpha = torch.where(keep, g2 / torch.where(keep, denom, 1.0), 0.0)
        weights = (alpha * grads.clamp_min(0)).sum(dim=(2, 3))
    else:
        weights = grads.mean(dim=(2, 3))
    return (weights[:, :, None, None] * acts).sum(dim=1).clamp_min(0)


def assert_close_maps(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = theirs.abs().max().clamp_min(1e-12)
    assert ours.shape == theirs.shape
    assert torch.all((ours - theirs).abs() <= rtol * scale + 1e-9), (
        f"max abs diff {(ours - theirs).abs().max():.3g} at scale {scale:.3g}"
    )


# ------------------------------------------------------------------ formulas, families
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", [GradCAM, GradCAMPlusPlus])
def test_equals_direct_formula_on_every_family(family: str, method: type) -> None:
    model = family_model(family)
    _, _, side, layer_name, reshape = FAMILIES[family]
    inputs, targets = family_input(family), [1, 4, 7]
    explainer = method(model, target_layer=layer_name)
    ours = explainer.attribute_layer(inputs, targets)
    expected = reference_cam(
        model,
        model.get_submodule(layer_name),
        reshape,
        inputs,
        targets,
        plusplus=method is GradCAMPlusPlus,
    )
    assert ours.abs().max() > 0, "degenerate all-zero map: the test would prove nothing"
    assert_close_maps(ours, expected)
    result = explainer.explain_full(inputs, target_class=targets)
    heatmaps = result.heatmap
    assert heatmaps.shape == (3, side, side)
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert result.targets.tolist() == targets


@pytest.mark.parametrize("family", list(FAMILIES))
def test_default_layer_and_tap_leave_logits_unchanged(family: str) -> None:
    model = family_model(family)
    inputs = family_input(family, batch=2)
    adapter = get_adapter(model)
    layer = adapter.resolve_layers(None)[0]
    with torch.no_grad():
        plain = model(inputs)
        with spatial_tap(model, layer.module, layer.name, adapter.layout_for):
            tapped = model(inputs)
    assert torch.equal(plain, tapped)
    heatmaps = GradCAM(model)(inputs)  # default layer, predicted classes
    assert heatmaps.shape == (2, *inputs.shape[-2:])
    assert torch.isfinite(heatmaps).all()


def test_image_classifier_with_recipe_layer_names() -> None:
    bare = make_explainable(timm.create_model("test_resnet", num_classes=10))
    model = ImageClassifier(bare)  # wraps bare as it is: its classifier stays in place
    inputs = family_input("resnet", batch=2)
    explainer = GradCAM(model, target_layer="backbone.layer4")
    assert explainer.layer_names == ["backbone.layer4"]
    heatmap = explainer(inputs[0], target_class=0)
    assert heatmap.shape == (96, 96)
    assert torch.allclose(heatmap, explainer.explain(inputs[0], target_class=0))
    on_bare = GradCAM(bare, target_layer="backbone.layer4")  # recipe name on a bare model
    assert on_bare.layer_names == ["layer4"]
    assert torch.allclose(on_bare(inputs[0], target_class=0), heatmap, atol=1e-6)
    assert torch.allclose(GradCAM(model, target_layer="layer4")(inputs[0], 0), heatmap)


# ------------------------------------------------------------------------------ peers
@pytest.mark.parametrize("family", ["resnet", "convnext", "vit"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_agrees_with_pytorch_grad_cam(family: str, method: str) -> None:
    from pytorch_grad_cam import GradCAM as PGCGradCAM
    from pytorch_grad_cam import GradCAMPlusPlus as PGCGradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = family_model(family)
    _, _, _, layer_name, reshape = FAMILIES[family]
    inputs, targets = family_input(family), [2, 5, 9]
    ours_cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    ours = ours_cls(model, target_layer=layer_name).attribute_layer(inputs, targets)

    peer_cls = PGCGradCAM if method == "gradcam" else PGCGradCAMPlusPlus
    layer = model.get_submodule(layer_name)
    with peer_cls(model, [layer], reshape_transform=None if reshape is _nchw else reshape) as cam:
        cam(inputs, [ClassifierOutputTarget(t) for t in targets])  # their full pipeline
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        # Their map before resize and min-max scaling (which differ: cv2 resize).
        theirs = np.maximum(cam.get_cam_image(inputs, layer, None, acts, grads), 0)
    for parameter in model.parameters():
        parameter.grad = None  # pytorch-grad-cam leaves grads behind; the cache is shared
    theirs_t = torch.from_numpy(theirs).float()
    if method == "gradcam":
        assert_close_maps(ours, theirs_t)
    else:
        # They add eps=1e-6 to alpha's denominator, comparable to g^2 for small gradients:
        # with that eps the direct formula gives their maps, and ours stay close.
        with_eps = reference_cam(model, layer, reshape, inputs, targets, plusplus=True, eps=1e-6)
        assert_close_maps(with_eps, theirs_t)
        corr = np.corrcoef(ours.flatten().numpy(), theirs.flatten())[0, 1]
        assert corr > 0.9, corr


# ---------------------------------------------------------------------------- batching
@pytest.mark.parametrize("method", [GradCAM, GradCAMPlusPlus])
def test_batch_equals_one_by_one_and_targets_per_image(method: type) -> None:
    model = family_model("resnet")
    inputs, targets = family_input("resnet", batch=4), [0, 3, 3, 8]
    explainer = method(model, target_layer="layer4")
    batched = explainer(inputs, target_class=targets)
    singles = torch.stack(
        [explainer(x, target_class=t) for x, t in zip(inputs, targets, strict=True)]
    )
    assert batched.shape == (4, 96, 96) and singles.shape == (4, 96, 96)
    assert torch.allclose(batched, singles, atol=1e-5)
    # None = each image's predicted class, from the same forward.
    predicted = model(inputs).argmax(dim=1)
    result = explainer.explain_full(inputs)
    assert torch.equal(result.targets, predicted)
    assert torch.allclose(
        result.heatmap, explainer(inputs, target_class=predicted.tolist()), atol=1e-6
    )
    # One int for all images.
    assert explainer.explain_full(inputs, target_class=5).targets.tolist() == [5] * 4
    # Different targets give different maps for the same image.
    pair = explainer(inputs[:1].repeat(2, 1, 1, 1), target_class=[1, 6])
    assert not torch.allclose(pair[0], pair[1])


def test_one_forward_and_backward_stops_at_the_layer() -> None:
    model = family_model("resnet")
    inputs = family_input("resnet").requires_grad_(True)
    seen: dict[str, list] = {"forward": [], "layer3_grad": []}
    hooks = [
        model.register_forward_pre_hook(lambda *_: seen["forward"].append(1)),
        model.layer3.register_forward_hook(
            lambda _m, _i, out: seen["layer3_grad"].append(out.requires_grad)
        ),
    ]
    try:
        GradCAMPlusPlus(model, target_layer="layer4")(inputs, target_class=[1, 2, 3])
        GradCAM(model, target_layer="layer4")(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen["forward"]) == 2  # one forward per batch and call
    assert seen["layer3_grad"] == [False, False]  # nothing before the layer is recorded
    assert inputs.grad is None


def test_raw_maps_upsampling_and_options() -> None:
    model = family_model("resnet")
    inputs = family_input("resnet", batch=2)
    raw = GradCAM(model, "layer4", normalize=False)
    layer_map = raw.attribute_layer(inputs, [1, 2])
    assert layer_map.shape == (2, 3, 3)
    up = torch.nn.functional.interpolate(
        layer_map[:, None], size=(96, 96), mode="bilinear", align_corners=False
    )[:, 0]
    assert torch.allclose(raw(inputs, [1, 2]), up, atol=1e-6)
    normed = GradCAM(model, "layer4")(inputs, [1, 2])
    assert torch.allclose(normed.amax(dim=(1, 2)), torch.ones(2))
    assert torch.allclose(normed.amin(dim=(1, 2)), torch.zeros(2))
    signed = GradCAM(model, "layer4", relu=False, normalize=False).attribute_layer(inputs, [1, 2])
    assert torch.allclose(signed.clamp_min(0), layer_map, atol=1e-6)
    nearest = GradCAM(model, "layer4", normalize=False, interpolate="nearest")(inputs, [1, 2])
    assert torch.equal(nearest[:, ::32, ::32], layer_map)


def test_several_layers_average_normalised_maps_in_one_pass() -> None:
    model = family_model("resnet")
    inputs, targets = family_input("resnet", batch=2), [3, 4]
    for method in (GradCAM, GradCAMPlusPlus):
        both = method(model, target_layer=["layer3", "layer4"])
        per_layer = both.attribute_layers(inputs, targets)
        singles = [
            method(model, name).attribute_layer(inputs, targets) for name in both.layer_names
        ]
        for combined, single in zip(per_layer, singles, strict=True):
            assert_close_maps(combined, single)  # shared engine == LayerGradCam
        expected = torch.stack([method(model, n)(inputs, targets) for n in both.layer_names])
        expected = expected.mean(dim=0)
        lo, hi = expected.amin(dim=(1, 2), keepdim=True), expected.amax(dim=(1, 2), keepdim=True)
        assert torch.allclose(both(inputs, targets), (expected - lo) / (hi - lo), atol=1e-5)
        with pytest.raises(ValueError, match="attribute_layers"):
            both.attribute_layer(inputs, targets)


def test_bundled_real_model_finds_the_cat() -> None:
    from skimage import data

    from timmlens.models import load_model

    model = load_model("bundled:efficientnet_lite0")
    explainer = GradCAMPlusPlus(model)
    result = explainer.explain_full(data.chelsea())
    heatmap = result.heatmap[0]
    assert heatmap.shape == (224, 224)
    assert 281 <= int(result.targets[0]) <= 285  # one of ImageNet's cats
    assert heatmap.max() == 1 and heatmap.min() == 0


# ------------------------------------------------------------------- model hygiene
def _hook_count(model: nn.Module) -> int:
    total = 0
    for module in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            total += len(getattr(module, attr))
    return total


def _state(model: nn.Module) -> tuple:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
    )


def test_model_left_as_found_with_inplace_relu() -> None:
    model = make_explainable(timm.create_model("test_resnet", num_classes=10)).train()
    model.layer4[0].act2.inplace = True  # the activation right at the tapped output
    next(model.parameters()).requires_grad_(False)
    sentinel = torch.ones_like(model.fc.weight)
    model.fc.weight.grad = sentinel
    before = _state(model)
    inputs = family_input("resnet", batch=2)
    for target_layer in ("layer4", "layer4.0.act2"):
        for method in (GradCAM, GradCAMPlusPlus):
            heatmaps = method(model, target_layer=target_layer)(inputs)
            assert torch.isfinite(heatmaps).all()
    after = _state(model)
    assert before[:2] == after[:2]
    assert all(a is b for a, b in zip(before[2], after[2], strict=True))
    assert model.fc.weight.grad is sentinel
    assert _hook_count(model) == 0
    # The in-place ReLU layer itself and its block output give the same map.
    model.eval()
    a = GradCAM(model, "layer4").attribute_layer(inputs, [1, 2])
    b = GradCAM(model, "layer4.0.act2").attribute_layer(inputs, [1, 2])
    assert torch.allclose(a, b)


def test_hooks_removed_and_state_restored_after_an_exception() -> None:
    model = family_model("vit").train()
    try:
        before = _state(model)
        inputs = family_input("vit", batch=1)

        def broken_block(_x: torch.Tensor) -> torch.Tensor:  # before the tapped layer
            raise RuntimeError("block exploded")

        model.blocks[0].forward = broken_block
        with pytest.raises(RuntimeError, match="block exploded"):
            GradCAM(model)(inputs)
        del model.blocks[0].forward
        assert _hook_count(model) == 0
        assert _state(model)[:2] == before[:2]

        def broken_head(_x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("head exploded")

        model.head.forward = broken_head
        with pytest.raises(RuntimeError, match="head exploded"):
            GradCAMPlusPlus(model)(inputs)
        assert _hook_count(model) == 0
        assert _state(model)[:2] == before[:2]
    finally:
        model.head.__dict__.pop("forward", None)
        model.blocks[0].__dict__.pop("forward", None)
        model.eval()


def test_two_explainers_on_one_model() -> None:
    model = family_model("convnext")
    inputs, targets = family_input("convnext", batch=2), [1, 2]
    first = GradCAM(model, target_layer="stages.2")
    second = GradCAMPlusPlus(model, target_layer="stages.3")
    a1, b1 = first(inputs, targets), second(inputs, targets)
    a2, b2 = first(inputs, targets), second(inputs, targets)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert torch.allclose(a1, GradCAM(model, "stages.2")(inputs, targets))
    # Nested: one explainer called while the other's tap would be attached.
    with spatial_tap(model, model.stages[3], "stages.3", get_adapter(model).layout_for):
        assert torch.allclose(first(inputs, targets), a1)
    assert _hook_count(model) == 0


# ------------------------------------------------------------------------- errors
def test_bad_targets_and_inputs_raise_clear_errors() -> None:
    model = family_model("resnet")
    explainer = GradCAM(model, target_layer="layer4")
    inputs = family_input("resnet", batch=2)
    with pytest.raises(ValueError, match=r"valid classes are 0\.\.9"):
        explainer(inputs, target_class=10)
    with pytest.raises(ValueError, match=r"valid classes are 0\.\.9"):
        explainer(inputs, target_class=-1)
    with pytest.raises(ValueError, match="2 images"):
        explainer(inputs, target_class=[1, 2, 3])
    with pytest.raises(ValueError, match=r"valid classes are 0\.\.9"):
        explainer.attribute_layer(inputs, [0, 99])
    bad = inputs.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        explainer(bad)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="inf"):
        GradCAMPlusPlus(model, "layer4").explain_batch(bad)
    assert _hook_count(model) == 0


def test_bad_layers_fail_at_construction() -> None:
    model = family_model("resnet")
    with pytest.raises(LayerResolutionError, match="layer4"):
        GradCAM(model, target_layer="layr4")
    with pytest.raises(LayerResolutionError, match="pooling"):
        GradCAMPlusPlus(model, target_layer="fc")
    with pytest.raises(ValueError, match="interpolate"):
        GradCAM(model, interpolate="cubic")  # type: ignore[arg-type]
    assert "layer4" in repr(GradCAM(model))


def test_a_layer_off_the_forward_path_gets_a_clear_error() -> None:
    from timmlens import LayerResolutionError

    model = timm.create_model("test_resnet").eval()
    model.unused = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(LayerResolutionError, match="did not run in the model's forward pass"):
        GradCAM(model, target_layer="unused")(torch.randn(1, 3, 64, 64))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
