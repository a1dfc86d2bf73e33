"""``lrp`` on the CNN families its generic canonizers cover beyond ResNet / EfficientNet:
ResNeXt, Res2Net, RegNetY (SE), DLA, ConvMixer, DenseNet, ConvNeXt (LayerNorm, layer
scale) and VGG, on small random-init members (timm's own classes, few channels).

Per family: equal to Zennit called directly (its ``Gradient`` attributor and composite)
with the same canonizers and layer map; conservative once biases are gone; the model
left bit-identical. The rules the canonizers add are checked against their formulas:
AttnLRP's LayerNorm rule, Zennit's ``Norm`` rule on sums, and gates as weights.
"""

from __future__ import annotations

import threading

import pytest
import timm
import torch
from torch import nn

from timmlens.errors import UnsupportedModelError
from timmlens.interpretation.input.zennit_rules import (
    ArithmeticCanonizer,
    batchnorm_pairs,
    canonizers,
    layer_map,
)
from timmlens.interpretation.registry import create_explainer
from timmlens.testing import make_explainable
from zennit_reference import zennit_relevance

FAMILIES = ("resnext", "res2net", "regnety", "dla", "convmixer", "densenet", "convnext", "vgg")


def _build(family: str) -> nn.Module:
    """A small member of ``family`` (timm's classes; random init, seeded)."""
    from timm.models import convmixer, densenet, res2net, resnet, vgg

    torch.manual_seed(0)
    if family == "resnext":  # grouped convolutions
        return resnet.ResNet(
            resnet.Bottleneck, [1, 1, 1, 1], num_classes=10, cardinality=8, base_width=4
        )
    if family == "res2net":  # split, hierarchical adds, concatenation, average pool
        return resnet.ResNet(
            res2net.Bottle2neck, [1, 1, 1, 1], num_classes=10, base_width=8, block_args={"scale": 4}
        )
    if family == "regnety":  # SE gates, ConvNormAct
        return timm.create_model("regnety_002", num_classes=10)
    if family == "dla":  # roots concatenate and add
        return timm.create_model("dla46_c", num_classes=10)
    if family == "convmixer":  # BatchNorm after GELU (not mergeable), Residual(fn) adds
        return convmixer.ConvMixer(dim=32, depth=2, kernel_size=3, patch_size=4, num_classes=10)
    if family == "densenet":  # concatenations, pre-activation BatchNorm
        return densenet.DenseNet(growth_rate=8, block_config=(2, 2), num_classes=10)
    if family == "convnext":  # LayerNorm / LayerNorm2d, layer scale, GELU
        return timm.create_model("test_convnext", num_classes=10)
    if family == "vgg":  # a chain, a convolutional MLP head
        return vgg.VGG([8, "M", 16, "M", 16, "M"], num_classes=10, norm_layer=nn.BatchNorm2d)
    raise KeyError(family)


def tiny(family: str) -> nn.Module:
    return make_explainable(_build(family)).eval()


def _inputs(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _zennit_direct(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Zennit's ``EpsilonPlusFlat`` and ``Gradient`` attributor with our canonizers and map."""
    from zennit.composites import EpsilonPlusFlat

    pairs = batchnorm_pairs(model, x[:1])
    composite = EpsilonPlusFlat(layer_map=layer_map(), canonizers=canonizers(pairs))
    return zennit_relevance(model, composite, x, targets)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_equals_zennit_direct(family):
    model = tiny(family)
    x = _inputs()
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    ours = create_explainer("lrp", model).attributions(x, targets)
    theirs = _zennit_direct(model, x, targets)
    assert theirs.abs().amax() > 0
    assert (ours - theirs).abs().amax() <= 1e-5  # the bound


def _without_biases(model: nn.Module) -> nn.Module:
    """Every bias, norm shift and running mean zero: nothing absorbs relevance."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()
    return model


#: families whose convolutions read non-negative inputs (ReLU): z+ itself conserves there
RELU_FAMILIES = ("resnext", "res2net", "regnety", "dla", "densenet", "vgg")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_conserves_relevance_without_biases(family):
    """With no bias to absorb relevance, the canonizers (BatchNorm merge, Norm on sums,
    gates and layer scales as weights, concatenations), the LayerNorm rule, Pass, Flat and
    the epsilon rule hand the whole target logit to the pixels: the canonizers lose and
    double nothing (a residual add left to autograd doubles it). In the ReLU families
    ``lrp`` itself (z+ on convolutions) conserves too; where convolutions read signed
    inputs (ConvNeXt, ConvMixer) z+ loses a neuron's relevance when its positive part is
    0, a property of z+ (docs/methods/lrp.md), so there the convolutions get epsilon (in
    the ReLU families epsilon's cancelling signed relevances cost float32 ~1e-2 instead)."""
    from zennit.composites import EpsilonPlusFlat
    from zennit.rules import Epsilon
    from zennit.types import Convolution

    model = _without_biases(tiny(family))
    x = _inputs(1)
    with torch.no_grad():
        logits = model(x)
    targets = logits.argmax(dim=1)
    expected = logits[torch.arange(len(x)), targets]
    if family in RELU_FAMILIES:
        relevance = create_explainer("lrp", model, epsilon=1e-9).attributions(x, targets)
        torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), expected, rtol=2e-3, atol=1e-5)
        return
    rules = [*layer_map(1e-9), ((Convolution,), Epsilon(1e-9))]
    composite = EpsilonPlusFlat(layer_map=rules, canonizers=canonizers(batchnorm_pairs(model, x)))
    relevance = zennit_relevance(model, composite, x, targets)
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), expected, rtol=2e-3, atol=1e-5)


def _apply_rules(module: nn.Module, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Input relevance of ``module`` for output relevance ``relevance``, via Zennit."""
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.core import Composite

    composite = LayerMapComposite(layer_map=layer_map(1e-6))
    composite = Composite(module_map=composite.module_map, canonizers=[ArithmeticCanonizer()])
    with Gradient(module, composite) as attributor:
        return attributor(x, relevance)[1]


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_layer_norm_rule_is_attnlrp(layout):
    """``R_x = x * J^T (R / y)`` with ``J`` the Jacobian of ``(x - mean) / std * w + b`` at
    constant ``std`` (AttnLRP Sec. 3.3.2), written out; it conserves up to the bias."""
    from timm.layers import LayerNorm2d

    gen = torch.Generator().manual_seed(0)
    norm = nn.LayerNorm(6) if layout == "channels_last" else LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(6, generator=gen) + 0.5)
        norm.bias.copy_(torch.randn(6, generator=gen) * 0.1)
    x = torch.randn(2, 4, 5, 6, generator=gen)
    if layout == "channels_first":
        x = x.permute(0, 3, 1, 2).contiguous()
    relevance = torch.randn(x.shape, generator=gen)
    ours = _apply_rules(norm, x, relevance)

    dim = -1 if layout == "channels_last" else 1
    shape = [1] * 4
    shape[dim] = 6
    w, b = norm.weight.detach().view(shape), norm.bias.detach().view(shape)
    std = (x.var(dim=dim, unbiased=False, keepdim=True) + norm.eps).sqrt()
    y = (x - x.mean(dim=dim, keepdim=True)) / std * w + b
    ratio = w * relevance / (y + 1e-6 * torch.where(y >= 0, 1.0, -1.0)) / std
    expected = x * (ratio - ratio.mean(dim=dim, keepdim=True))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    kept = (relevance * (y - b) / y).sum(dim=dim)  # the bias's share is gone, no more
    torch.testing.assert_close(ours.sum(dim=dim), kept, rtol=1e-3, atol=1e-4)


class _Arithmetic(nn.Module):
    """``a + b``, ``x * gate`` and ``a * b`` between modules, as timm's blocks write them."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.scale = nn.Parameter(torch.tensor([0.5, 2.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, :3], x[:, 3:]
        if self.kind == "add":
            out = a.clone()
            out += b  # in place, as timm's ResNet writes it
            return out
        if self.kind == "gate":
            return a * torch.sigmoid(b.mean(dim=(2, 3), keepdim=True))
        if self.kind == "scale":
            return a.mul(self.scale.reshape(1, -1, 1, 1))
        return a * b


@pytest.mark.parametrize("kind", ["add", "gate", "scale", "product"])
def test_arithmetic_rules(kind):
    """Sums: Zennit's Norm rule ``R_a = a R / (a + b)``; a per-channel gate or layer scale
    is a weight (the gated tensor keeps all relevance); two full-size factors share it
    equally (AttnLRP's uniform rule). The forward value is unchanged."""
    gen = torch.Generator().manual_seed(0)
    module = _Arithmetic(kind)
    x = torch.rand(2, 6, 4, 4, generator=gen) + 0.1
    relevance = torch.randn(2, 3, 4, 4, generator=gen)
    with torch.no_grad():
        plain = module(x)
    ours = _apply_rules(module, x, relevance)
    a, b = x[:, :3], x[:, 3:]
    if kind == "add":
        share = relevance / (plain + 1e-6)
        expected = torch.cat([a * share, b * share], dim=1)
    elif kind in ("gate", "scale"):
        expected = torch.cat([relevance, torch.zeros_like(relevance)], dim=1)
    else:
        expected = torch.cat([relevance / 2, relevance / 2], dim=1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert "forward" not in vars(module)  # the canonizer is gone


@pytest.mark.parametrize("family", ["convnext", "densenet", "regnety"])
def test_model_left_bit_identical(family):
    model = tiny(family)
    params = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    attributes = {m: dict(vars(m)) for m in model.modules()}
    for composite in ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"):
        create_explainer("lrp", model, composite=composite).attributions(_inputs(batch=1), 1)
    assert dict(model.named_parameters()).keys() == params.keys()
    for name, p in model.named_parameters():
        assert p is params[name][0] and torch.equal(p, params[name][1]) and p.grad is None
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name])
    assert {m: dict(vars(m)) for m in model.modules()} == attributes
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_two_threads_on_two_convnexts():
    """The arithmetic rules are a thread-local mode and per-instance forwards: two
    ConvNeXts of one class explained at once give what each gives alone."""
    models = [make_explainable(_build("convnext"), seed=s).eval() for s in (0, 1)]
    x = _inputs(3)
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
        ("test_byobnet", r"ByoBlock|BottleneckBlock|BasicBlock|DarkBlock|EdgeBlock"),
    ],
)
def test_other_families_still_refused_with_the_modules(name, modules):
    model = timm.create_model(name, num_classes=10)
    with pytest.raises(UnsupportedModelError, match=rf"^lrp: .*not for .*({modules})"):
        create_explainer("lrp", model)
