"""``lrp`` through Zennit: equal to Zennit called directly, conservative, leaves the model
as found, and refuses what it cannot read.

References are Zennit's own code on a model it knows: torchvision's ResNet-18 carrying a
timm ResNet-18's weights (same state-dict names) under Zennit's ``ResNetCanonizer``, and
the real EfficientNet-Lite0 under Zennit's ``NamedMergeBatchNorm`` (names read off timm's
blocks) plus a residual canonizer written here the way Zennit's torchvision canonizers are
(Zennit ships none for timm). Relevance starts as the target logit in both.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from timmlens.errors import UnsupportedModelError
from timmlens.interpretation import LRP
from timmlens.interpretation.input.zennit_rules import ArithmeticCanonizer
from timmlens.interpretation.registry import create_explainer
from timmlens.testing import explainable_model
from zennit_reference import zennit_composite, zennit_relevance

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _box(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return -m / s, (1 - m) / s


def _zennit_reference(model, composite_name, canonizers, x, targets, box):
    """Zennit's own composite and ``Gradient`` attributor, relevance = target logit."""
    composite = zennit_composite(composite_name, box, canonizers=canonizers)
    return zennit_relevance(model, composite, x, targets)


def _assert_equal_relevance(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = theirs.abs().amax()
    assert scale > 0
    assert (ours - theirs).abs().amax() <= 1e-5  # the bound
    assert (ours - theirs).abs().amax() <= 1e-4 * scale  # and relative to the map's size


@pytest.fixture(scope="module")
def resnet18_pair():
    """timm's resnet18 (explainable random weights) and torchvision's with the same weights."""
    from torchvision.models import resnet18

    ours = explainable_model("resnet18", seed=0, num_classes=10).eval()
    theirs = resnet18(num_classes=10).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("composite", COMPOSITES)
def test_resnet_equals_zennit_resnet_canonizer_on_torchvision(resnet18_pair, composite):
    from zennit.torchvision import ResNetCanonizer

    ours_model, torchvision_model = resnet18_pair
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([3, 7])
    with torch.no_grad():
        torch.testing.assert_close(ours_model(x), torchvision_model(x))  # same network
    ours = create_explainer("lrp", ours_model, composite=composite).attributions(x, targets)
    theirs = _zennit_reference(
        torchvision_model,
        composite,
        [ResNetCanonizer()],
        x,
        targets,
        _box(IMAGENET_MEAN, (IMAGENET_STD)),
    )
    _assert_equal_relevance(ours, theirs)


class _LiteResidual:
    """Test-side Zennit canonizer for timm's EfficientNet blocks, in the style of Zennit's
    torchvision ``ResNetBottleneckCanonizer`` (a forward with a ``Sum`` module)."""

    @staticmethod
    def make():
        from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
        from zennit.canonizers import AttributeCanonizer
        from zennit.layer import Sum

        def forward(self, x):
            shortcut = x
            if isinstance(self, InvertedResidual):
                x = self.bn1(self.conv_pw(x))
                x = self.bn2(self.conv_dw(x))
                x = self.bn3(self.conv_pwl(self.se(self.aa(x))))
            else:
                x = self.bn1(self.conv_dw(x))
                x = self.bn2(self.conv_pw(self.se(self.aa(x))))
            if self.has_skip:
                x = self.canonizer_sum(torch.stack([self.drop_path(x), shortcut], dim=-1))
            return x

        def attribute_map(name, module):
            if isinstance(module, (DepthwiseSeparableConv, InvertedResidual)):
                return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
            return None

        return AttributeCanonizer(attribute_map)


def _lite0_batchnorm_names(backbone: nn.Module) -> list[tuple[tuple[str], str]]:
    """Conv -> BatchNorm names of timm's EfficientNet blocks, from timm's source (Zennit's
    ``SequentialMergeBatchNorm`` finds none: timm's ``BatchNormAct2d`` is not a leaf)."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    pairs = [(("conv_stem",), "bn1"), (("conv_head",), "bn2")]
    for name, module in backbone.named_modules():
        if isinstance(module, InvertedResidual):
            convs = ("conv_pw", "conv_dw", "conv_pwl")
        elif isinstance(module, DepthwiseSeparableConv):
            convs = ("conv_dw", "conv_pw")
        else:
            continue
        pairs += [((f"{name}.{conv}",), f"{name}.bn{i}") for i, conv in enumerate(convs, 1)]
    return pairs


@pytest.fixture(scope="module")
def lite0_photos(real_model, photos):
    from timmlens.data.preprocess import prepare_images

    batch = prepare_images([photos["chelsea"]], real_model)
    return batch.tensor


@pytest.mark.parametrize(
    "composite",
    [
        "epsilon_plus_flat",
        pytest.param("epsilon_gamma_box", marks=pytest.mark.slow),
        pytest.param("epsilon_alpha2_beta1", marks=pytest.mark.slow),
    ],
)
def test_lite0_equals_zennit_direct(real_model, lite0_photos, composite):
    from zennit.canonizers import NamedMergeBatchNorm

    x = lite0_photos
    with torch.no_grad():
        targets = real_model(x).argmax(dim=1)
    ours = create_explainer("lrp", real_model, composite=composite).attributions(x, targets)
    names = _lite0_batchnorm_names(real_model.backbone)
    canonizers = [NamedMergeBatchNorm(names), _LiteResidual.make()]
    theirs = _zennit_reference(
        real_model.backbone, composite, canonizers, x, targets, _box((0.5,) * 3, (0.5,) * 3)
    )
    _assert_equal_relevance(ours, theirs)


def _without_biases(model: nn.Module) -> nn.Module:
    """Every bias, BatchNorm shift and running mean zero: LRP's losses to biases vanish."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.bias.zero_()
                module.running_mean.zero_()
            elif getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model


def _silu_to_relu(model: nn.Module) -> nn.Module:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.SiLU):
                setattr(module, name, nn.ReLU())
    return model


@pytest.mark.parametrize(
    ("name", "composite"),
    [
        ("resnet18", "epsilon_plus_flat"),  # BasicBlock adds, max pool
        ("test_resnet", "epsilon_alpha2_beta1"),  # Bottleneck, deep stem, avg-pool shortcut
        ("test_efficientnet", "epsilon_plus_flat"),  # EdgeResidual / InvertedResidual, SE gates
    ],
)
def test_relevance_is_conserved_without_biases(name, composite):
    """z+, flat, Norm (sums, average pools), Pass and the SE gate conserve relevance exactly
    (up to the stabilisers); with no bias to absorb any and ReLU activations, the input
    relevance sums to the target logit. A residual add without the canonizer's Sum
    doubles relevance. (With SiLU, z+ loses relevance where a neuron's positive part is
    ~0: docs/methods/lrp.md reports it per family.)"""
    model = explainable_model(name, seed=0, num_classes=10).eval()
    model = _silu_to_relu(_without_biases(model))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    targets = logits.argmax(dim=1)
    explainer = create_explainer("lrp", model, composite=composite, epsilon=1e-9)
    relevance = explainer.attributions(x, targets)
    expected = logits[torch.arange(2), targets]
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), expected, rtol=1e-3, atol=1e-5)


def test_canonizers_keep_the_forward_and_are_undone():
    """The arithmetic rules change nothing the model computes, and leave nothing."""
    import timm
    from zennit.core import Composite

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", num_classes=10).eval()  # skips and SE
    resnet = explainable_model("test_resnet", seed=0, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for net in (model, resnet):
        before = {m: dict(vars(m)) for m in net.modules()}
        with torch.no_grad():
            plain = net(x)
        composite = Composite(canonizers=[ArithmeticCanonizer()])
        with composite.context(net), torch.enable_grad():
            assert "forward" in vars(net)
            torch.testing.assert_close(net(x.requires_grad_()), plain, rtol=0, atol=0)
        assert {m: dict(vars(m)) for m in net.modules()} == before


def test_model_left_bit_identical_without_grads_or_hooks(resnet18_pair):
    model = resnet18_pair[0]
    params = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    attributes = {m: dict(vars(m)) for m in model.modules()}
    x = torch.randn(1, 3, 64, 64)
    for composite in COMPOSITES:
        create_explainer("lrp", model, composite=composite).attributions(x, 1)
    assert dict(model.named_parameters()).keys() == params.keys()
    for name, p in model.named_parameters():
        assert p is params[name][0] and torch.equal(p, params[name][1]) and p.grad is None
        assert p.requires_grad
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name])
    assert {m: dict(vars(m)) for m in model.modules()} == attributes
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_two_threads_on_two_models_of_one_class():
    """Canonizers and hooks are per instance: two ResNets explained at once in two threads
    give what each gives alone."""
    models = [explainable_model("test_resnet", seed=s, num_classes=10).eval() for s in (0, 1)]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    alone = [create_explainer("lrp", m).attributions(x, [1, 2]) for m in models]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def work(index: int) -> None:
        explainer = create_explainer("lrp", models[index])
        barrier.wait()
        for _ in range(3):
            results[index].append(explainer.attributions(x, [1, 2]))

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in (0, 1):
        assert len(results[index]) == 3
        for result in results[index]:
            torch.testing.assert_close(result, alone[index], rtol=0, atol=0)
    assert not torch.allclose(alone[0], alone[1])


@pytest.mark.parametrize(
    ("name", "modules"),
    [
        ("test_vit", r"Attention \(x\d+\), Block \(x\d+\)"),
        ("test_byobnet", r"BottleneckBlock \(x\d+\)"),
    ],
)
def test_refuses_families_it_cannot_read(name, modules):
    import timm

    model = timm.create_model(name, num_classes=10)
    with pytest.raises(UnsupportedModelError, match=rf"^lrp: .*not for .*{modules}.*Try 'ig'"):
        create_explainer("lrp", model)


def test_refuses_float16_and_bad_options():
    model = explainable_model("test_resnet", num_classes=10)
    with pytest.raises(UnsupportedModelError, match=r"^lrp: .*float16.*model\.float\(\)"):
        create_explainer("lrp", explainable_model("test_resnet", num_classes=10).half())
    with pytest.raises(ValueError, match=r"composite must be one of .*'epsilon_plus_flat'"):
        create_explainer("lrp", model, composite="epsilon")
    with pytest.raises(ValueError, match=r"epsilon must be a number > 0"):
        create_explainer("lrp", model, epsilon=0)


class _TwoBranches(nn.Module):
    """A user's block: two convolution branches added, which no canonizer here rules."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.left(x) + self.right(x)


def test_a_refused_model_is_pointed_to_captums_rule_where_that_covers_it():
    """A block outside the canonizers' table whose leaves Captum's epsilon rule covers: the
    refusal names that composite; a ViT is within neither, so its refusal does not."""
    import timm

    model = nn.Sequential(
        _TwoBranches(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    with pytest.raises(
        UnsupportedModelError, match=r"_TwoBranches.*LRP\(model, composite='captum_"
    ):
        create_explainer("lrp", model)
    inputs = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    named = LRP(model, composite="captum_epsilon")(inputs, 1)  # the named way out works
    assert named.shape == (1, 32, 32) and torch.isfinite(named).all()
    vit = timm.create_model("test_vit", num_classes=4)
    with pytest.raises(UnsupportedModelError) as refused:
        create_explainer("lrp", vit)
    assert "captum_epsilon" not in str(refused.value)
