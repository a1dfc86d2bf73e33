"""Zennit's rules in closed form (`zennit_shortcuts`) against Zennit's own hooks.

z+, gamma and alpha-beta: bit for bit, on signed inputs and on ReLU outputs (where the
``x-`` passes are left out), and the closed form really runs; Zennit's passes on a
convolution that is not PyTorch's own. The first layer's counted Flat: up to the order
of a float sum. The stabiliser: Zennit's, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from timmlens.interpretation.input.zennit_fused import fused
from timmlens.interpretation.input.zennit_rules import canonizers, layer_map
from timmlens.interpretation.input.zennit_shortcuts import (
    closed_form_alpha_beta,
    closed_form_gamma,
    closed_form_zplus,
    counted_flat,
)
from zennit_reference import zennit_relevance


def _net(negative_input: bool = False) -> nn.Sequential:
    """A small ReLU CNN; with ``negative_input`` its third convolution reads the second's
    output before the ReLU (negative entries: the ``x-`` passes run there too)."""
    torch.manual_seed(0)
    layers = [
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.Identity() if negative_input else nn.ReLU(),
        nn.Conv2d(8, 16, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 5),
    ]
    return nn.Sequential(*layers).eval()


def _zplus():
    from zennit.rules import ZPlus

    return ZPlus()


def _gamma():
    from zennit.rules import Gamma

    return Gamma(gamma=0.25)


def _alpha_beta():
    from zennit.rules import AlphaBeta

    return AlphaBeta(alpha=2.0, beta=1.0)


RULES = {
    "zplus": (closed_form_zplus, _zplus),
    "gamma": (lambda: closed_form_gamma(gamma=0.25), _gamma),
    "alpha_beta": (lambda: closed_form_alpha_beta(alpha=2.0, beta=1.0), _alpha_beta),
}


def _composite(rule):
    from zennit.composites import LayerMapComposite

    return LayerMapComposite(
        layer_map=[*layer_map(), (nn.Conv2d, rule), (nn.Linear, _epsilon())],
        canonizers=canonizers([]),
    )


def _epsilon():
    from zennit.rules import Epsilon

    return Epsilon()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([0, 3, 4])


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("negative_input", [False, True])
def test_shortcut_equals_zennits_rule(name: str, negative_input: bool):
    ours_rule, zennit_rule = RULES[name]
    model = _net(negative_input)
    x, targets = _inputs()
    ours = zennit_relevance(model, fused(_composite(ours_rule())), x, targets)
    theirs = zennit_relevance(model, _composite(zennit_rule()), x, targets)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name", sorted(RULES))
def test_closed_form_runs_on_pytorch_convolutions_only(name, monkeypatch):
    """Every ``nn.Conv2d`` of the net takes the closed form (the first on the signed
    image); timm's ``Conv2dSame`` (padding computed in its forward) runs Zennit's passes,
    and the map is still Zennit's."""
    from timm.layers import Conv2dSame

    from timmlens.interpretation.input import zennit_shortcuts

    found = []
    closed_form = zennit_shortcuts._relevance_of_terms

    def spy(*args, **kwargs):
        result = closed_form(*args, **kwargs)
        found.append(result is not None)
        return result

    monkeypatch.setattr(zennit_shortcuts, "_relevance_of_terms", spy)
    model = _net()
    x, targets = _inputs()
    zennit_relevance(model, fused(_composite(RULES[name][0]())), x, targets)
    assert found == [True, True, True]

    found.clear()
    torch.manual_seed(0)
    model[2] = Conv2dSame(8, 8, 3, stride=2)
    ours = zennit_relevance(model, fused(_composite(RULES[name][0]())), x, targets)
    theirs = zennit_relevance(model, _composite(RULES[name][1]()), x, targets)
    assert found == [True, False, True]  # the backward runs the last layer first
    assert (ours - theirs).abs().amax() <= 1e-6 * theirs.abs().amax()


def _zennit_flat(conv: nn.Conv2d, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Zennit's ``Flat`` as its hook computes it: ones in, ones as weights, no bias."""
    from zennit.core import stabilize

    ones = torch.ones_like(x).requires_grad_()
    z = nn.functional.conv2d(
        ones, torch.ones_like(conv.weight), None, conv.stride, conv.padding, conv.dilation
    )
    (gradient,) = torch.autograd.grad(z, ones, relevance / stabilize(z.detach(), 1e-6))
    return gradient


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [(7, 2, 3, 1), (3, 1, 1, 1), (3, 2, 0, 2), (4, 3, 2, 1), (3, 1, 3, 1)],
)
def test_counted_flat_equals_zennits_flat(kernel, stride, padding, dilation):
    """The stem's rule from the window count: (3, 1, 3, 1) has corner windows wholly in
    the padding (count 0, Zennit's stabiliser alone)."""
    conv = nn.Conv2d(3, 16, kernel, stride, padding, dilation)
    x = torch.randn(2, 3, 19, 23, generator=torch.Generator().manual_seed(0))
    relevance = torch.randn_like(conv(x))
    ours = counted_flat().fused_backward(conv, x, None, relevance)
    theirs = _zennit_flat(conv, x, relevance)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * theirs.abs().amax())


def test_counted_flat_leaves_grouped_convolutions_to_zennit():
    from zennit.composites import EpsilonPlusFlat

    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    x = torch.randn(1, 4, 8, 8)
    assert counted_flat().fused_backward(conv, x, None, torch.randn_like(conv(x))) is None
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 3))
    targets = torch.tensor([2])
    ours = zennit_relevance(
        model, fused(EpsilonPlusFlat(first_map=[(nn.Conv2d, counted_flat())])), x, targets
    )
    theirs = zennit_relevance(model, EpsilonPlusFlat(), x, targets)
    assert (ours - theirs).abs().amax() <= 1e-6 * theirs.abs().amax()


def test_stabiliser_equals_zennits_bit_for_bit():
    """``z + eps sign(z)``, ``sign(0) = 1`` for both zeros, in float32 and float64."""
    from zennit.core import stabilize as zennit_stabilize

    from timmlens.interpretation._stabilizer import stabilize

    z = torch.tensor([-2.0, -1e-7, -0.0, 0.0, 1e-7, 3.0, float("inf"), -float("inf")])
    assert torch.equal(stabilize(z, 1e-6), zennit_stabilize(z, 1e-6))
    assert stabilize(torch.tensor([float("nan")]), 1e-6).isnan().all()
    z64 = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(stabilize(z64, 1e-3), zennit_stabilize(z64, 1e-3))
