"""ScoreCAM and AblationCAM: equal to pytorch-grad-cam and to hand-written loops."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from timmlens.data import prepare_images
from timmlens.interpretation.cam.perturbation import AblationCAM, ScoreCAM
from timmlens.testing import make_explainable

# name -> (timm name, CAM layer); inputs are 64 x 64
FAMILIES = {
    "resnet": ("test_resnet", "layer4"),
    "convnext": ("test_convnext", "stages.3"),
}
SIDE, TARGETS = 64, [2, 5]


@cache
def family_model(family: str) -> nn.Module:
    torch.manual_seed(0)
    return make_explainable(timm.create_model(FAMILIES[family][0], num_classes=10))


def family_input(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def assert_close_maps(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5) -> None:
    scale = theirs.abs().max().clamp_min(1e-12)
    assert ours.shape == theirs.shape
    assert theirs.abs().max() > 0 and ours.std() > 0
    assert torch.all((ours - theirs).abs() <= rtol * scale), (
        f"max abs diff {(ours - theirs).abs().max():.3g} at scale {scale:.3g}"
    )


def peer_raw_map(peer_cls: type, model: nn.Module, layer_name: str) -> torch.Tensor:
    """pytorch-grad-cam's own map before its cv2 resize and min-max: ``(B, h, w)``."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    inputs, layer = family_input(), model.get_submodule(layer_name)
    with peer_cls(model, [layer]) as cam:
        with torch.no_grad():
            cam.activations_and_grads(inputs)
        acts = cam.activations_and_grads.activations[0].numpy()
        targets = [ClassifierOutputTarget(t) for t in TARGETS]
        raw = cam.get_cam_image(inputs, layer, targets, acts, None)
    return torch.from_numpy(np.maximum(raw, 0)).float()


def layer_output(model: nn.Module, layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    saved: list[torch.Tensor] = []
    # a copy: a residual block's ``x += shortcut`` changes the output in place
    handle = layer.register_forward_hook(lambda _m, _i, out: saved.append(out.clone()))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
    return saved[0]


def target_logits(model: nn.Module, inputs: torch.Tensor, hook: Callable | None = None):
    layer, fn = hook if hook else (None, None)
    handle = layer.register_forward_hook(fn) if layer is not None else None
    try:
        with torch.no_grad():
            logits = model(inputs)
    finally:
        if handle is not None:
            handle.remove()
    return logits[torch.arange(len(TARGETS)), torch.tensor(TARGETS)]


def reference_scorecam(model: nn.Module, layer_name: str, align_corners: bool) -> torch.Tensor:
    """The paper's Algorithm 1, one masked batch per channel."""
    inputs = family_input()
    acts = layer_output(model, model.get_submodule(layer_name), inputs)
    scores = []
    for k in range(acts.shape[1]):
        mask = F.interpolate(
            acts[:, k : k + 1], (SIDE, SIDE), mode="bilinear", align_corners=align_corners
        )
        low = mask.amin(dim=(2, 3), keepdim=True)
        span = mask.amax(dim=(2, 3), keepdim=True) - low
        mask = (mask - low) / torch.where(span > 0, span, 1)
        scores.append(target_logits(model, inputs * mask))
    weights = torch.stack(scores, dim=1).softmax(dim=1)
    return torch.einsum("bc,bchw->bhw", weights, acts).clamp_min(0)


def reference_ablationcam(model: nn.Module, layer_name: str) -> torch.Tensor:
    """The paper's rule by brute force: the whole network per channel, channel k zeroed."""
    inputs, layer = family_input(), model.get_submodule(layer_name)
    acts = layer_output(model, layer, inputs)
    original = target_logits(model, inputs)
    ablated = []
    for k in range(acts.shape[1]):

        def zero(_m: nn.Module, _i: object, out: torch.Tensor, k: int = k) -> torch.Tensor:
            out = out.clone()
            out[:, k] = 0
            return out

        ablated.append(target_logits(model, inputs, (layer, zero)))
    weights = (original[:, None] - torch.stack(ablated, dim=1)) / original[:, None]
    return torch.einsum("bc,bchw->bhw", weights, acts).clamp_min(0)


# ------------------------------------------------------------------------------ ScoreCAM
@pytest.mark.parametrize("family", list(FAMILIES))
def test_scorecam_equals_pytorch_grad_cam_with_their_upsampling(family: str) -> None:
    from pytorch_grad_cam import ScoreCAM as PeerScoreCAM

    model, layer_name = family_model(family), FAMILIES[family][1]
    ours = ScoreCAM(model, layer_name, align_corners=True).attribute_layer(family_input(), TARGETS)
    assert_close_maps(ours, peer_raw_map(PeerScoreCAM, model, layer_name))


def test_scorecam_default_upsampling_follows_the_authors_and_differs_slightly() -> None:
    # pytorch-grad-cam upsamples masks with align_corners=True (UpsamplingBilinear2d); the
    # authors' code and torchcam use align_corners=False, our default.
    from pytorch_grad_cam import ScoreCAM as PeerScoreCAM

    model = family_model("resnet")
    ours = ScoreCAM(model, "layer4").attribute_layer(family_input(), TARGETS)
    assert_close_maps(ours, reference_scorecam(model, "layer4", align_corners=False))
    theirs = peer_raw_map(PeerScoreCAM, model, "layer4")
    assert not torch.allclose(ours, theirs, atol=1e-5 * float(theirs.abs().max()))
    assert np.corrcoef(ours.flatten(), theirs.flatten())[0, 1] > 0.95


def test_scorecam_chunking_does_not_change_the_maps() -> None:
    model, image = family_model("resnet"), family_input(1)
    one = ScoreCAM(model, "layer4", max_batch=1).attribute_layer(image, TARGETS[:1])
    big = ScoreCAM(model, "layer4", max_batch=10_000).attribute_layer(image, TARGETS[:1])
    assert_close_maps(one, big)


# --------------------------------------------------------------------------- AblationCAM
def test_ablationcam_equals_pytorch_grad_cam_on_a_relu_layer() -> None:
    from pytorch_grad_cam import AblationCAM as PeerAblationCAM

    model = family_model("resnet")
    explainer = AblationCAM(model, "layer4")
    ours = explainer.attribute_layer(family_input(), TARGETS)
    assert explainer.last_paths == ["suffix"]  # the head only, after one forward
    assert_close_maps(ours, peer_raw_map(PeerAblationCAM, model, "layer4"))
    assert_close_maps(ours, reference_ablationcam(model, "layer4"))


def test_ablationcam_follows_the_paper_where_pytorch_grad_cam_does_not() -> None:
    # ConvNeXt's stage output has no zero, so pytorch-grad-cam ablates with min - 1e7
    # ("deviating from the paper"); we zero the channel, as the paper does.
    from pytorch_grad_cam import AblationCAM as PeerAblationCAM

    model = family_model("convnext")
    explainer = AblationCAM(model, "stages.3")
    ours = explainer.attribute_layer(family_input(), TARGETS)
    assert explainer.last_paths == ["suffix"]  # norm_pre and the head replayed
    assert_close_maps(ours, reference_ablationcam(model, "stages.3"))
    theirs = peer_raw_map(PeerAblationCAM, model, "stages.3")
    assert not torch.allclose(ours, theirs, atol=1e-3 * float(theirs.abs().max()))


def test_ablationcam_runs_the_prefix_once_and_chunks_do_not_matter() -> None:
    model = family_model("resnet")
    calls: list[int] = []
    handle = model.layer3.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        one = AblationCAM(model, "layer4", max_batch=1).attribute_layer(family_input(), TARGETS)
    finally:
        handle.remove()
    big = AblationCAM(model, "layer4", max_batch=10_000).attribute_layer(family_input(), TARGETS)
    assert len(calls) == 1  # the network up to the layer ran once for all B x C copies
    assert_close_maps(one, big)  # equal up to batch-size rounding


def test_ablationcam_inside_a_residual_block_reruns_the_network() -> None:
    # After bn2 comes the shortcut's addition, which no replay of modules reproduces.
    model = family_model("resnet")
    layer = "layer4.0.bn2"
    explainer = AblationCAM(model, layer, max_batch=7)
    ours = explainer.attribute_layer(family_input(), TARGETS)
    assert explainer.last_paths == ["full"]
    assert_close_maps(ours, reference_ablationcam(model, layer))


def _state(model: nn.Module) -> tuple:
    hooks = [
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    ]
    return (
        hooks,
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad is None for p in model.parameters()],
    )


@pytest.mark.parametrize("layer", ["layer4", "layer4.0.bn2"])
@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM])
def test_the_model_is_left_as_found(method: type, layer: str) -> None:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("test_resnet", num_classes=10)).train()
    before = _state(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = family_input(2)
    original = inputs.clone()
    method(model, layer, max_batch=16)(inputs, target_class=[1, 2])
    assert _state(model) == before
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(inputs, original)


# ------------------------------------------------------------------------------ real model
def test_real_efficientnet_lite0_gives_finite_structured_maps(real_model, photos) -> None:
    # AblationCAM on the default layer (the head after conv_head); ScoreCAM, a full forward
    # per channel, on a 192-channel block at 112 px to stay fast.
    ablation = AblationCAM(real_model)
    heatmap = ablation(photos["chelsea"], target_class=None)
    assert ablation.last_paths == ["suffix"]
    image = prepare_images(photos["chelsea"], real_model).tensor
    small = F.interpolate(image, size=(112, 112), mode="bilinear", align_corners=False)
    score = ScoreCAM(real_model, "backbone.blocks.5")(small, target_class=None)
    for maps in (heatmap, score):
        assert torch.isfinite(maps).all() and maps.std() > 0.05
        assert maps.min() == 0 and maps.max() == 1
