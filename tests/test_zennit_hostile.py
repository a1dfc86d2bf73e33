"""``lrp`` under hostile use: models and calls the family tests do not cover.

Against Zennit called directly (its composites and ``Gradient`` attributor, with our
canonizers and layer map): a bias-free convolution before BatchNorm, dilation, a
depthwise convolution, a stride-2 1x1 shortcut, one ReLU output read by two convolutions,
a linear first layer, Conv1d / Conv3d, padding modes and string padding Zennit's passes
run for, a transposed convolution. A module run twice is checked against two copies of
it (Zennit's hooks keep one input per module, so Zennit itself cannot be the reference
there). Then the residual sum's rule on in-place sums the model changes again later,
``torch.no_grad()`` around the call, and the model left as found after an error raised
inside the backward.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from timmlens.interpretation import LRP
from timmlens.interpretation.input.zennit_rules import batchnorm_pairs, canonizers, layer_map
from timmlens.testing import explainable_model
from zennit_reference import zennit_composite, zennit_relevance

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")


def _zennit_direct(model: nn.Module, composite: str, x: torch.Tensor, targets, bounds):
    pairs = batchnorm_pairs(model, x[:1])
    options = {"layer_map": layer_map(), "canonizers": canonizers(pairs)}
    return zennit_relevance(model, zennit_composite(composite, bounds, **options), x, targets)


def _assert_zennits(model: nn.Module, composite: str, x: torch.Tensor) -> None:
    """Bit for bit, but for the first layer's counted Flat (up to a float sum's order)."""
    targets = torch.tensor([1, 3])
    explainer = LRP(model, composite=composite)
    ours = explainer.attributions(x, targets)
    theirs = _zennit_direct(model, composite, x, targets, explainer.input_bounds(x))
    assert theirs.abs().amax() > 0
    if composite == "epsilon_plus_flat":
        assert (ours - theirs).abs().amax() <= 1e-6 * theirs.abs().amax()
    else:
        assert torch.equal(ours, theirs)


def _random_batchnorms(model: nn.Module) -> nn.Module:
    """Statistics and affine parameters away from the identity, so the merge matters."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor, (low, high) in (
                    (module.running_mean, (-0.5, 0.5)),
                    (module.running_var, (0.5, 2.0)),
                    (module.weight, (0.5, 1.5)),
                    (module.bias, (-0.2, 0.2)),
                ):
                    tensor.copy_(torch.rand(tensor.shape, generator=gen) * (high - low) + low)
    return model.eval()


class _Unusual(nn.Module):
    """Convolutions of every kind the closed forms take."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # then BatchNorm
        self.bn = nn.BatchNorm2d(8)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.shortcut = nn.Conv2d(8, 8, 1, stride=2)
        self.left, self.right = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        x = self.act(self.bn2(self.dilated(x)))
        x = self.act(self.depthwise(x))
        y = self.act(self.down(x) + self.shortcut(x))
        return self.head(self.left(y) + self.right(y))  # y read by two convolutions


class _LinearFirst(nn.Module):
    """An MLP on the pooled, flattened image: the first layer's Flat is on a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(8), nn.Flatten()
        self.fc1, self.act, self.fc2 = nn.Linear(3 * 64, 16), nn.ReLU(), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.flatten(self.pool(x)))))


class _OtherDims(nn.Module):
    """Conv1d on the flattened image or Conv3d on it as one frame."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.dims = dims
        if dims == 1:
            self.conv1, self.conv2 = nn.Conv1d(3, 6, 3, padding=1), nn.Conv1d(6, 6, 3, stride=2)
        else:
            self.conv1 = nn.Conv3d(3, 6, (1, 3, 3), padding=(0, 1, 1))
            self.conv2 = nn.Conv3d(6, 6, (1, 3, 3), stride=(1, 2, 2))
        self.act, self.fc = nn.ReLU(), nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2) if self.dims == 1 else x.unsqueeze(2)
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(x.flatten(2).mean(2))


class _Padded(nn.Module):
    """Convolutions the closed forms and the counted Flat leave to Zennit's passes."""

    def __init__(self, first: nn.Conv2d) -> None:
        super().__init__()
        self.first = first
        self.up = nn.ConvTranspose2d(6, 6, 2, stride=2)
        self.circular = nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular")
        self.same = nn.Conv2d(6, 6, 3, padding="same")
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.first, self.up, self.circular, self.same):
            x = self.act(conv(x))
        return self.head(x)


def _image(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


MODELS = {
    "unusual": _Unusual,
    "linear_first": _LinearFirst,
    "conv1d": lambda: _OtherDims(1),
    "conv3d": lambda: _OtherDims(3),
    "reflect_first": lambda: _Padded(nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect")),
    "same_first": lambda: _Padded(nn.Conv2d(3, 6, 4, padding="same", dilation=2)),
}


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_equals_zennit_on_unusual_layers(name, composite):
    if name == "conv1d" and composite == "epsilon_gamma_box":
        pytest.skip("Zennit's ZBox expands its (1, C, 1, 1) bounds to 4-d inputs only")
    torch.manual_seed(0)
    model = _random_batchnorms(MODELS[name]())
    _assert_zennits(model, composite, _image(size=16 if "first" in name else 32))


class _RunTwice(nn.Module):
    """A convolution run twice, or (``copies``) it and a copy of it run once each."""

    def __init__(self, copies: bool) -> None:
        super().__init__()
        self.stem, self.shared = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.second = copy.deepcopy(self.shared) if copies else self.shared
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.shared(self.act(self.stem(x))))
        return self.head(self.act(self.second(x)))


@pytest.mark.parametrize("composite", COMPOSITES)
def test_module_run_twice_equals_two_copies(composite):
    """Each run of a module is ruled with its own input: the map is the one of the net
    with a copy for the second run, which is Zennit's (Zennit's hooks keep one input per
    module, so Zennit on the shared module is not the reference)."""
    x, targets = _image(size=16), torch.tensor([1, 3])
    models = []
    for copies in (False, True):
        torch.manual_seed(0)
        models.append(_RunTwice(copies).eval())
    twice, copies = (LRP(m, composite=composite).attributions(x, targets) for m in models)
    assert torch.equal(twice, copies)
    _assert_zennits(models[1], composite, x)


def _sum_again(y, x, other):
    y += x
    y += other(x)
    return y


def _relu_after(y, x, other):
    y += x
    return y.relu_()


def _scaled_after(y, x, other):
    y += x
    y *= 2.0
    return y


def _on_a_new_leaf(y, x, other):
    z = torch.zeros_like(y)  # a leaf that does not require grad
    z += y
    return z


def _with_alpha(y, x, other):
    return y.add_(x, alpha=0.5)


def _broadcast(y, x, other):
    y += other(x).mean(dim=(2, 3), keepdim=True)
    return y


def _on_a_view(y, x, other):
    y[:, :2] += x[:, :2]
    return y


def _doubled(y, x, other):
    y += y  # ``b`` is ``a``: the backward must read it as it was
    return y


def _base_of_a_view(y, x, other):
    first = y[:, :2]  # read after the sum: autograd rewrites its history
    y += x
    return torch.cat([y, first], dim=1)


def _and_first(total):
    return torch.cat([total, total[:, :2]], dim=1)


#: in-place sums and the same arithmetic out of place
IN_PLACE = {
    "sum_again": (_sum_again, lambda y, x, other: y + x + other(x)),
    "relu_after": (_relu_after, lambda y, x, other: (y + x).relu()),
    "scaled_after": (_scaled_after, lambda y, x, other: (y + x) * 2.0),
    "new_leaf": (_on_a_new_leaf, lambda y, x, other: torch.zeros_like(y) + y),
    "alpha": (_with_alpha, lambda y, x, other: torch.add(y, x, alpha=0.5)),
    "broadcast": (_broadcast, lambda y, x, other: y + other(x).mean(dim=(2, 3), keepdim=True)),
    "view": (
        _on_a_view,
        lambda y, x, other: torch.cat([y[:, :2] + x[:, :2], y[:, 2:]], dim=1),
    ),
    "doubled": (_doubled, lambda y, x, other: y + y),
    "base_of_a_view": (_base_of_a_view, lambda y, x, other: _and_first(y + x)),
}


class _Summing(nn.Module):
    def __init__(self, arithmetic) -> None:
        super().__init__()
        self.arithmetic = arithmetic
        self.stem, self.conv = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.other = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        return self.head(self.act(self.arithmetic(self.conv(x), x, self.other)))


@pytest.mark.parametrize("name", sorted(IN_PLACE))
def test_in_place_sums_equal_out_of_place(name):
    """The Norm rule on ``a += b`` is the one on ``a + b``: on a sum the model changes in
    place again after the rule read it (``y += x; y += z``, MobileOne's and FastViT's
    branch sums; ``y += x; y.relu_()``), which plain autograd allows; on a new leaf, with
    ``alpha``, a broadcast ``b``, ``b`` in ``a``'s memory, on a view and on the base of a
    view read later."""
    x, targets = _image(size=16), torch.tensor([1, 3])
    maps = []
    for arithmetic in IN_PLACE[name]:
        torch.manual_seed(0)
        model = _Summing(arithmetic)
        model(x)  # the lazy head's size
        maps.append(LRP(model.eval()).attributions(x, targets))
    assert maps[0].abs().amax() > 0
    assert torch.equal(maps[0], maps[1])


def test_no_grad_around_the_call_is_fine():
    """docs/index.md: ``torch.no_grad()`` around a gradient method is fine."""
    model = explainable_model("test_resnet", seed=0, num_classes=10).eval()
    x = _image(batch=1)
    plain = LRP(model).attributions(x, 2)
    with torch.no_grad():
        quiet = LRP(model).attributions(x, 2)
    assert plain.abs().amax() > 0
    assert torch.equal(quiet, plain)


def test_model_left_as_found_after_an_error_in_the_backward(monkeypatch):
    """A rule that raises inside the backward: the error reaches the caller, and the model
    has its own forwards, its in-place flags, its parameters and no ``.grad``; the next
    call gives the map of an undisturbed one."""
    from timmlens.interpretation.input import zennit_shortcuts

    model = explainable_model("test_resnet", seed=0, num_classes=10).eval()
    x = _image(batch=2)
    expected = LRP(model).attributions(x, [1, 2])
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    attributes = {m: dict(vars(m)) for m in model.modules()}
    assert any(getattr(m, "inplace", False) for m in model.modules())  # timm's ReLUs

    def broken(*args, **kwargs):
        raise ArithmeticError("broken rule")

    monkeypatch.setattr(zennit_shortcuts, "_relevance_of_terms", broken)
    with pytest.raises(ArithmeticError, match="broken rule"):
        LRP(model).attributions(x, [1, 2])
    monkeypatch.undo()
    assert {m: dict(vars(m)) for m in model.modules()} == attributes
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]) and p.grad is None
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert torch.equal(LRP(model).attributions(x, [1, 2]), expected)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_float64_model_keeps_float64_relevance_equal_to_zennit(composite):
    """The target's score stays float64 for a float64 model (it was cast to float32, so
    relevance started from a rounded logit); half-precision logits still score in float32."""
    from timmlens.interpretation.scoring import target_scores

    logits = torch.randn(2, 5, dtype=torch.float64)
    assert target_scores(logits, torch.tensor([1, 2]), "logit").dtype == torch.float64
    assert target_scores(logits.half(), torch.tensor([1, 2]), "logit").dtype == torch.float32

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    model = _random_batchnorms(model).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert LRP(model, composite=composite).attributions(x, [1, 3]).dtype == torch.float64
    _assert_zennits(model, composite, x)
