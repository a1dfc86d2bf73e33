"""FullGrad: equal to pytorch-grad-cam 1.5.7 side by side, complete, and refused on ViTs.

Tolerances: with ``channel_eps=1e-7`` (pytorch-grad-cam's ``scale_cam_image`` eps) the
maps equal theirs to 1e-5 (float32 rounding of sums over thousands of channels). Our
default, ``channel_eps=0``, rescales every channel to exactly ``[0, 1]`` as the paper's
``psi``; it differs from theirs only through that eps, by under 1e-2 here (channels whose
bias-gradient spread is near 1e-7 count fully instead of being shrunk). The same holds
with ``eigen_smooth=True`` (pgc's projection taken with our sign per image).
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from timmlens.adapters import bias_layers, fullgrad_unavailable_reason
from timmlens.errors import UnsupportedModelError
from timmlens.interpretation.cam import FullGrad
from timmlens.interpretation.registry import supports
from timmlens.testing import explainable_model, make_explainable

PGC_EPS = 1e-7


def _peer(model: nn.Module, x: torch.Tensor, targets: list[int], **options: bool) -> np.ndarray:
    from pytorch_grad_cam import FullGrad as PeerFullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    try:
        with PeerFullGrad(model, []) as cam:
            return cam(x, [ClassifierOutputTarget(t) for t in targets], **options)
    finally:
        for parameter in model.parameters():
            parameter.grad = None  # pytorch-grad-cam leaves .grad behind


def _max_diff(ours: torch.Tensor, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape and ours.max() > 0
    return float(np.abs(ours.numpy() - theirs).max())


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext"])
def test_equals_pytorch_grad_cam_with_its_own_layer_set(name: str) -> None:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model(name, num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    theirs = _peer(model, x, [3, 7])
    as_theirs = FullGrad(model, channel_eps=PGC_EPS).explain(x, target_class=[3, 7])
    assert _max_diff(as_theirs, theirs) < 1e-5
    assert _max_diff(FullGrad(model).explain(x, target_class=[3, 7]), theirs) < 1e-2


@pytest.mark.parametrize("aug_smooth", [False, True])
def test_eigen_smooth_equals_pytorch_grad_cam(monkeypatch, aug_smooth: bool) -> None:
    """pgc's FullGrad(eigen_smooth=True): the terms (colour channels, bias layers) at 1/8
    size, projected on their first principal component. The component has no sign; pgc
    keeps numpy's, we fix it (`first_principal_component`), so pgc's projection is taken
    with our sign per image before comparing."""
    import pytorch_grad_cam.fullgrad_cam as peer_module

    from timmlens.interpretation.cam.smoothing import first_principal_component

    original = peer_module.get_2d_projection

    def signed(batch: np.ndarray) -> np.ndarray:
        theirs = original(batch)
        ours = first_principal_component(torch.from_numpy(np.nan_to_num(batch))).numpy()
        signs = np.sign((theirs * ours).reshape(len(theirs), -1).sum(axis=1))
        assert np.all(signs != 0)
        return theirs * signs[:, None, None]

    monkeypatch.setattr(peer_module, "get_2d_projection", signed)
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("test_resnet", num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    options = {"aug_smooth": aug_smooth, "eigen_smooth": True}
    theirs = _peer(model, x, [3, 7], **options)
    low = theirs.reshape(2, -1).min(axis=1)[:, None, None]
    theirs = (theirs - low) / (theirs.reshape(2, -1).max(axis=1)[:, None, None] - low)
    ours = FullGrad(model, channel_eps=PGC_EPS, **options).explain(x, target_class=[3, 7])
    assert ours.std() > 0.05, "a flat map would prove nothing"
    assert _max_diff(ours, theirs) < 1e-5  # measured 7.7e-7, 9.8e-7 with aug_smooth
    default = FullGrad(model, **options).explain(x, target_class=[3, 7])
    assert _max_diff(default, theirs) < 1e-2  # channel_eps=0: 2.4e-3, 3.1e-3
    plain = FullGrad(model, channel_eps=PGC_EPS).explain(x, target_class=[3, 7])
    assert (ours - plain).abs().max() > 0.05  # the projection, not the sum
    at_call = FullGrad(model, channel_eps=PGC_EPS).explain(x, target_class=[3, 7], **options)
    torch.testing.assert_close(at_call, ours)
    assert "eigen_smooth=True" in repr(FullGrad(model, eigen_smooth=True))


@pytest.mark.slow  # pytorch-grad-cam resizes every channel with OpenCV: ~30 s
def test_real_lite0_equals_pytorch_grad_cam_given_the_same_bias_layers(
    real_model, photos, monkeypatch
) -> None:
    """pytorch-grad-cam matches ``type(layer)`` exactly, so on timm's EfficientNet-Lite0
    (``BatchNormAct2d``) it finds no bias layer at all; handed ours (the pre-activation
    point of each, with its effective bias) its formula gives our maps."""
    import pytorch_grad_cam.fullgrad_cam as peer_module

    from timmlens import prepare_images

    x = prepare_images([photos["chelsea"], photos["coffee"]], real_model).tensor
    targets = [281, 967]  # tabby, espresso
    layers = bias_layers(real_model)
    assert len(layers) == 49 and all(layer.probe is layer.module.drop for layer in layers)
    with peer_module.FullGrad(real_model, []) as own_rule:
        assert own_rule.target_layers == []  # their rule misses every BatchNormAct2d

    by_probe = {id(layer.probe): layer for layer in layers}
    monkeypatch.setattr(
        peer_module, "find_layer_predicate_recursive", lambda *_: [la.probe for la in layers]
    )
    monkeypatch.setattr(
        peer_module.FullGrad, "get_bias_data", lambda _self, probe: by_probe[id(probe)].bias()
    )
    theirs = _peer(real_model, x, targets)
    ours = FullGrad(real_model, channel_eps=PGC_EPS).explain(x, target_class=targets)
    assert _max_diff(ours, theirs) < 1e-5
    assert _max_diff(FullGrad(real_model).explain(x, target_class=targets), theirs) < 1e-2


def test_completeness_input_and_bias_terms_add_up_to_the_logit(small) -> None:
    """Eq. 3 of the paper on a ReLU network: x . g_x + sum_b b . g_b + fc bias = logit,
    which holds only if every bias gradient is read before the in-place ReLU."""
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 4, 8])
    result = FullGrad(small).explain_full(x, target_class=targets.tolist())
    total = result.extras["input_term"].flatten(1).sum(1) + result.extras["bias_term"]
    total = total + small.get_classifier().bias.detach()[targets]
    logits = result.logits[torch.arange(3), targets]
    torch.testing.assert_close(total, logits, rtol=1e-4, atol=1e-5)


def test_the_layer_set_follows_the_rule(small) -> None:
    names = [layer.name for layer in bias_layers(small)]
    batch_norms = [n for n, m in small.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert names == batch_norms  # timm ResNets: conv without bias, then a BatchNorm2d
    convnext = timm.create_model("test_convnext")
    found = {type(layer.module) for layer in bias_layers(convnext)}
    assert found == {nn.Conv2d}  # its LayerNorm and Linear biases are outside the set


def test_vits_are_refused_with_the_reason(vit) -> None:
    reason = fullgrad_unavailable_reason(vit)
    assert reason is not None and "patch embedding" in reason and "patch_embed.proj" in reason
    assert not supports(vit, "fullgrad")
    with pytest.raises(UnsupportedModelError, match="Linear and LayerNorm"):
        FullGrad(vit)


def test_a_cnn_without_biases_is_refused() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    with pytest.raises(UnsupportedModelError, match="no Conv2d or BatchNorm2d layer with a bias"):
        FullGrad(model)


def test_bad_options_are_refused(small) -> None:
    with pytest.raises(ValueError, match="channel_eps"):
        FullGrad(small, channel_eps=-1)
    with pytest.raises(ValueError, match="interpolate"):
        FullGrad(small, interpolate="cubic")  # type: ignore[arg-type]


def test_the_model_keeps_no_hook_and_no_grad(real_model, photos) -> None:
    hooks = sum(len(m._forward_hooks) for m in real_model.modules())
    FullGrad(real_model).explain(photos["rocket"])
    assert sum(len(m._forward_hooks) for m in real_model.modules()) == hooks
    assert all(p.grad is None for p in real_model.parameters())


def test_an_efficientnet_with_norm_act_layers_gives_a_map() -> None:
    model = explainable_model("test_efficientnet", seed=0, num_classes=10)
    heatmap = FullGrad(model).explain(torch.randn(3, 64, 64), target_class=2)
    assert heatmap.shape == (64, 64) and heatmap.max() == 1 and heatmap.min() == 0


def test_a_callable_target_gives_the_map_of_the_class_it_reads(small) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    by_class = FullGrad(small).explain(x, target_class=5)
    by_callable = FullGrad(small).explain(x, target_class=lambda logits: logits[:, 5])
    torch.testing.assert_close(by_callable, by_class, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["fullgrad", "sobelcam"])
def test_layerless_cams_take_the_engines_options(name: str) -> None:
    """aug_smooth / eigen_smooth / layer_fusion were unknown options (a TypeError)."""
    from timmlens.interpretation.cam.smoothing import AUGMENTATIONS, augment, deaugment
    from timmlens.interpretation.registry import create_explainer

    torch.manual_seed(0)
    model = make_explainable(timm.create_model("test_resnet", num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    smoothed = create_explainer(name, model, aug_smooth=True, layer_fusion="max")
    assert "aug_smooth=True" in repr(smoothed)
    maps = smoothed.explain_full(x, target_class=[3, 7])
    assert maps.targets.tolist() == [3, 7]
    assert maps.logits is None or maps.logits.shape == (2, 10)
    at_call = create_explainer(name, model).explain(x, target_class=[3, 7], aug_smooth=True)
    torch.testing.assert_close(at_call, maps.heatmap)
    each = create_explainer(name, model).explain(augment(x), target_class=[3, 7] * 6)
    by_hand = deaugment(each).mean(dim=0)
    low = by_hand.flatten(1).amin(1)[:, None, None]
    high = by_hand.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(maps.heatmap, (by_hand - low) / (high - low), atol=1e-5, rtol=0)
    assert len(AUGMENTATIONS) == 6
    if name == "fullgrad":  # its terms have a principal component (compared with pgc above)
        eigen = create_explainer(name, model, eigen_smooth=True).explain(x, target_class=1)
        assert eigen.shape == (2, 64, 64) and torch.isfinite(eigen).all()
        return
    with pytest.raises(ValueError, match="does not take eigen_smooth=True"):
        create_explainer(name, model, eigen_smooth=True)
    with pytest.raises(ValueError, match="does not take eigen_smooth=True"):
        create_explainer(name, model).explain(x, target_class=1, eigen_smooth=True)


def test_a_model_that_folds_heads_into_the_batch_is_refused_with_the_cause():
    """EfficientViT (MSRA) runs BatchNorms on ``(B * heads, ...)``: their bias-gradient maps
    belong to no one image, so FullGrad refuses (it crashed on a broadcast before)."""
    model = timm.create_model("efficientvit_m0", num_classes=4).eval()
    with pytest.raises(UnsupportedModelError, match=r"folds attention heads or windows"):
        FullGrad(model)(torch.randn(1, 3, 224, 224), 1)
