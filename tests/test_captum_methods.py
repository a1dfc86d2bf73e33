"""Captum's gradient and reference methods: raw attributions equal Captum's own call.

Each method's ``explainer.attributions(images, target_class)`` is compared with the
Captum class called directly on ``TargetScore(model)`` with the same settings, on
timm's ``test_resnet`` (inplace ReLUs, as timm builds it) and, where the method
applies, ``test_vit``. Refusals (DeepLift and LRP on modules without rules), model
hygiene and the seeding of GradientShap are checked too.
"""

from __future__ import annotations

import captum.attr as ca
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from timmlens.data import normalization
from timmlens.errors import UnsupportedModelError
from timmlens.interpretation._targets import TargetScore
from timmlens.interpretation.cam.engine import upsample_maps
from timmlens.interpretation.cam.gradcam import GradCAM
from timmlens.interpretation.input.engine import attribution_heatmap
from timmlens.interpretation.registry import create_explainer, supports
from timmlens.testing import explainable_model

SIDE = 64
TARGETS = [1, 7]


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return explainable_model("test_resnet", num_classes=10)


@pytest.fixture(scope="module")
def vit64() -> nn.Module:
    return explainable_model("test_vit", num_classes=10, img_size=SIDE)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))


class TinyCNN(nn.Module):
    """Only modules Captum's LRP and DeepLift have default rules for."""

    def __init__(self, reuse_relu: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.num_classes = 10
        self.conv1, self.bn1, self.act1 = (
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.act2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)
        self.reuse_relu = reuse_relu
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act1(self.bn1(self.conv1(x))))
        x = (self.act1 if self.reuse_relu else self.act2)(self.conv2(x))
        return self.fc(self.gap(x).flatten(1))


def captum_direct(
    model: nn.Module, method: object, x: torch.Tensor, targets: list[int] = TARGETS, **kwargs
) -> torch.Tensor:
    """Captum's ``attribute`` on ``TargetScore(model)`` for ``targets``, parameters frozen."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        chosen = torch.tensor(targets)
        return method.attribute(  # type: ignore[attr-defined]
            x.clone().requires_grad_(True), additional_forward_args=(chosen,), **kwargs
        ).detach()
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def black(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mean, std = normalization(model, x)
    return ((0 - mean) / std).expand(x.shape).contiguous()


def references(model: nn.Module, x: torch.Tensor, count: int, noise: float = 0.1) -> torch.Tensor:
    """Black pixels and ``count - 1`` copies with seeded pixel noise (seed 0)."""
    _, std = normalization(model, x)
    draws = torch.randn(count - 1, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    base = black(model, x[:1])
    return torch.cat([base, base + noise * draws / std])


def expected(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    score = TargetScore(model)
    plain = {
        "inputxgradient": ca.InputXGradient,
        "guidedbackprop": ca.GuidedBackprop,
        "deconvolution": ca.Deconvolution,
    }
    if name in plain:
        return captum_direct(model, plain[name](score), x)
    if name == "saliency":
        return captum_direct(model, ca.Saliency(score), x, abs=False)
    if name == "deeplift":
        return captum_direct(model, ca.DeepLift(score), x, baselines=black(model, x))
    if name == "deepliftshap":
        refs = references(model, x, 3)
        return captum_direct(model, ca.DeepLiftShap(score), x, baselines=refs)
    assert name == "gradientshap"
    refs, parts = references(model, x, 3), []
    for i in range(x.shape[0]):  # one seeded call per image, as the explainer does
        torch.manual_seed(0)
        np.random.seed(0)
        method = ca.GradientShap(score)
        kwargs = {"baselines": refs, "n_samples": 4, "stdevs": 0.1}
        parts.append(captum_direct(model, method, x[i : i + 1], [TARGETS[i]], **kwargs))
    return torch.cat(parts)


OPTIONS = {
    "deepliftshap": {"n_baselines": 3},
    "gradientshap": {"n_samples": 4, "stdevs": 0.1, "n_baselines": 3},
}
GRADIENT_METHODS = ["saliency", "inputxgradient", "guidedbackprop", "deconvolution"]


@pytest.mark.parametrize("name", [*GRADIENT_METHODS, "deeplift", "deepliftshap", "gradientshap"])
def test_resnet_attributions_equal_captum(resnet, images, name):
    ours = create_explainer(name, resnet, **OPTIONS.get(name, {})).attributions(images, TARGETS)
    assert ours.shape == images.shape and ours.abs().amax() > 0
    torch.testing.assert_close(ours, expected(resnet, name, images), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", [*GRADIENT_METHODS, "gradientshap"])
def test_vit_attributions_equal_captum(vit64, images, name):
    ours = create_explainer(name, vit64, **OPTIONS.get(name, {})).attributions(images, TARGETS)
    torch.testing.assert_close(ours, expected(vit64, name, images), atol=1e-6, rtol=1e-5)


def test_guided_backprop_differs_from_the_gradient_on_relu_models(resnet, images):
    """The ReLU hooks took effect (inplace ReLUs switched off for the call)."""
    guided = create_explainer("guidedbackprop", resnet).attributions(images, TARGETS)
    plain = create_explainer("saliency", resnet).attributions(images, TARGETS)
    assert (guided - plain).abs().amax() > 1e-3 * plain.abs().amax()


def test_guidedgradcam_equals_captum_hooking_the_layer_directly(resnet, images):
    ours = create_explainer("guidedgradcam", resnet, target_layer="layer4")
    method = ca.GuidedGradCam(TargetScore(resnet), resnet.layer4)
    theirs = captum_direct(resnet, method, images, interpolate_mode="bilinear")
    torch.testing.assert_close(ours.attributions(images, TARGETS), theirs, atol=1e-7, rtol=1e-5)


def test_guidedgradcam_on_a_vit_is_guided_backprop_times_our_gradcam(vit64, images):
    """On token layers (no direct Captum hook) the tap gives the same product."""
    explainer = create_explainer("guidedgradcam", vit64)
    cam = GradCAM(vit64, target_layer=explainer.layer.name).attribute_layer(images, TARGETS)
    guided = create_explainer("guidedbackprop", vit64).attributions(images, TARGETS)
    product = guided * upsample_maps(cam, (SIDE, SIDE))[:, None]
    ours = explainer.attributions(images, TARGETS)
    assert ours.abs().amax() > 0
    torch.testing.assert_close(ours, product, atol=1e-9, rtol=1e-5)


def test_lrp_equals_captum_with_its_default_rules_and_with_epsilon():
    from captum.attr._utils.lrp_rules import EpsilonRule

    model, x = TinyCNN(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    captum_default = captum_direct(model, ca.LRP(TargetScore(model)), x)
    captum = {"composite": "captum_epsilon"}  # lrp's default is Zennit's epsilon_plus_flat
    ours = create_explainer("lrp", model, epsilon=1e-9, **captum).attributions(x, TARGETS)
    torch.testing.assert_close(ours, captum_default, atol=1e-6, rtol=1e-5)
    for module in (model.conv1, model.bn1, model.pool, model.conv2, model.gap, model.fc):
        module.rule = EpsilonRule(epsilon=0.25)  # Captum removes them after the call
    captum_eps = captum_direct(model, ca.LRP(TargetScore(model)), x)
    ours = create_explainer("lrp", model, **captum).attributions(x, TARGETS)
    torch.testing.assert_close(ours, captum_eps, atol=1e-7, rtol=1e-5)


def test_lrp_runs_on_a_resnet_through_identity_and_flatten(resnet, images):
    attributions = create_explainer("lrp", resnet).attributions(images, TARGETS)
    assert attributions.shape == images.shape and torch.isfinite(attributions).all()


@pytest.mark.parametrize("name", ["deeplift", "deepliftshap", "lrp"])
def test_rule_methods_refuse_a_vit_naming_method_family_modules_and_alternative(vit64, name):
    assert not supports(vit64, name)
    with pytest.raises(UnsupportedModelError) as caught:
        create_explainer(name, vit64)
    message = str(caught.value)
    # Zennit's composites (lrp) read GELU and LayerNorm, not attention blocks
    modules = ("Attention (x", "Block (x") if name == "lrp" else ("GELU (x", "LayerNorm (x")
    for part in (name, "vision_transformer", *modules, "Try 'ig'"):
        assert part in message


def test_a_module_used_twice_is_refused_clearly():
    model = TinyCNN(reuse_relu=True)
    explainer = create_explainer("deeplift", model)
    with pytest.raises(UnsupportedModelError, match=r"deeplift.* runs more than once"):
        explainer.attributions(torch.randn(1, 3, 32, 32), 1)
    assert not any(hasattr(m, "input") or hasattr(m, "output") for m in model.modules())


@pytest.mark.parametrize("name", ["guidedbackprop", "deeplift", "guidedgradcam", "lrp"])
def test_inplace_flags_and_module_attributes_are_restored(resnet, images, name):
    relus = [m for m in resnet.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(m.inplace for m in relus)
    attributes = {m: dict(vars(m)) for m in resnet.modules()}
    create_explainer(name, resnet).attributions(images, TARGETS)
    assert all(m.inplace for m in relus)
    assert {m: dict(vars(m)) for m in resnet.modules()} == attributes


def test_lrp_keeps_a_users_own_rule():
    from captum.attr._utils.lrp_rules import GammaRule

    model = TinyCNN()
    model.conv1.rule = rule = GammaRule()
    explainer = create_explainer("lrp", model, composite="captum_epsilon")
    explainer.attributions(torch.randn(1, 3, 32, 32), 1)
    assert model.conv1.rule is rule and not hasattr(model.conv2, "rule")


def test_gradientshap_is_seeded_and_leaves_the_global_rng_alone(resnet, images):
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    explainer = create_explainer("gradientshap", resnet, n_samples=4)
    first = explainer.attributions(images, TARGETS)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert torch.equal(explainer.attributions(images, TARGETS), first)
    other = create_explainer("gradientshap", resnet, n_samples=4, seed=1)
    assert not torch.allclose(other.attributions(images, TARGETS), first)


def test_heatmap_is_the_documented_reduction(resnet, images):
    for signed in (False, True):
        explainer = create_explainer("inputxgradient", resnet, signed=signed)
        result = explainer.explain_full(images, TARGETS)
        assert result.attributions is not None
        expected_map = attribution_heatmap(result.attributions, signed=signed)
        torch.testing.assert_close(result.heatmap, expected_map)
        assert (result.heatmap.amin() < 0) == signed


def test_blur_is_refused_for_baseline_distributions(resnet):
    with pytest.raises(ValueError, match="'blur' is one per image"):
        create_explainer("deepliftshap", resnet, baseline="blur")


@pytest.mark.parametrize("method", ["guidedbackprop", "deconvolution", "guidedgradcam"])
def test_relu_rules_say_when_no_relu_runs(method, resnet, vit64, images) -> None:
    """Without nn.ReLU modules (GELU here; ReLU6 in EfficientNet-Lite) Captum's rule changes
    nothing: the map is saliency's, and the explainer says so instead of hiding it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_explainer(method, resnet)  # ReLU network: no warning
    with pytest.warns(UserWarning, match=rf"^{method}: this model has no nn.ReLU module "):
        relu_rule = create_explainer(method, vit64)
    if method == "guidedgradcam":  # the gradient times GradCAM: see the test above
        return
    saliency = create_explainer("saliency", vit64)
    assert torch.equal(
        relu_rule.attributions(images, TARGETS), saliency.attributions(images, TARGETS)
    )


def test_memory_probe_runs_once_per_input_shape(resnet, images) -> None:
    """The one-image forward that sizes chunks runs the first time a shape is seen only:
    repeated calls cost Captum's own forward, as calling Captum directly does."""
    explainer = create_explainer("saliency", resnet)
    batches: list[int] = []
    handle = resnet.register_forward_hook(lambda _m, args, _o: batches.append(args[0].shape[0]))
    try:
        first = explainer.attributions(images, TARGETS)
        after_first = list(batches)
        second = explainer.attributions(images, TARGETS)
    finally:
        handle.remove()
    assert after_first == [1, 2]  # the probe, then Captum's forward
    assert batches[len(after_first) :] == [2]  # Captum's forward alone
    assert torch.equal(first, second)


class _ReluOnABuffer(nn.Module):
    """A ReLU fed a constant, as Swin V2's and relpos ViTs' position MLPs are."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.bias_mlp = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
        self.register_buffer("coords", torch.linspace(-1, 1, 8).reshape(4, 2))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias_mlp(self.coords).mean(dim=0)  # (4,) from a buffer: no gradient
        return self.head(self.act(self.conv(x)).mean(dim=(2, 3)) + bias)


class _WithoutTheBranch(nn.Module):
    """The same model with the constant branch folded into a bias (Captum's reference)."""

    def __init__(self, model: _ReluOnABuffer) -> None:
        super().__init__()
        self.conv, self.act, self.head = model.conv, model.act, model.head
        with torch.no_grad():
            self.register_buffer("bias", model.bias_mlp(model.coords).mean(dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).mean(dim=(2, 3)) + self.bias)


@pytest.mark.parametrize("name", ["guidedbackprop", "deconvolution"])
def test_relu_rules_run_where_a_relu_is_fed_a_constant(name) -> None:
    """Captum hooks every ReLU's input gradient, which a constant cannot take: a detached
    leaf copy stands in, so the map equals Captum's on the model without that branch."""
    torch.manual_seed(0)
    model = _ReluOnABuffer().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = create_explainer(name, model, signed=True).attributions(x, [0, 2])
    peer_cls = ca.GuidedBackprop if name == "guidedbackprop" else ca.Deconvolution
    theirs = peer_cls(_WithoutTheBranch(model)).attribute(x, target=torch.tensor([0, 2]))
    torch.testing.assert_close(ours, theirs)
    assert all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "captum_epsilon"])
def test_lrp_refuses_float16_and_runs_in_bfloat16(images, composite):
    """Captum's LRP stabilises its divisions with 1e-9, which is 0 in float16: the map was
    NaN, shown as all zeros without a word (Zennit's 1e-6 is below float16's normal range
    too). bfloat16 keeps float32's exponent range."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference = create_explainer("lrp", TinyCNN(), composite=composite).attributions(x, 1)
    with pytest.raises(UnsupportedModelError, match=r"lrp: .*float16.*model\.float\(\)"):
        create_explainer("lrp", TinyCNN().half(), composite=composite)
    model = TinyCNN()
    explainer = create_explainer("lrp", model, composite=composite)
    model.half()  # after construction: refused when it runs
    with pytest.raises(UnsupportedModelError, match="bfloat16"):
        explainer.attributions(x, 1)
    bf16 = (
        create_explainer("lrp", TinyCNN().to(torch.bfloat16), composite=composite)
        .attributions(x, 1)
        .float()
    )
    assert torch.isfinite(bf16).all() and bf16.abs().amax() > 0
    assert F.cosine_similarity(bf16.flatten(), reference.flatten(), dim=0) > 0.95


def test_attributions_skip_the_heatmap_and_leave_explain_full_whole(resnet, images):
    """``attributions()`` returns the raw tensor only (no heatmap pass, as Captum by hand);
    a later ``explain_full`` still gets its heatmap."""
    explainer = create_explainer("inputxgradient", resnet)
    raw = explainer.attributions(images, TARGETS)
    full = explainer.explain_full(images, TARGETS)
    assert torch.equal(raw, full.attributions)
    assert full.heatmap.shape == (2, SIDE, SIDE)
    torch.testing.assert_close(full.heatmap, attribution_heatmap(raw))
