"""Zennit's rules run as their layers' backward (`zennit_fused`): equal to Zennit's hooks,
one forward and one input gradient per layer, and in-place changes handled.

Equality with Zennit on the timm families is in ``test_zennit_lrp.py`` and
``test_zennit_lrp_families.py`` (they run ``lrp``, which runs fused); here: the pass
counts that make it fast, and the corner cases of saving a layer's input and output.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from timmlens.interpretation.input.zennit_fused import fused
from timmlens.interpretation.input.zennit_rules import batchnorm_pairs, canonizers, layer_map
from timmlens.interpretation.input.zennit_shortcuts import closed_form_zplus
from timmlens.testing import explainable_model
from zennit_reference import zennit_relevance


def _epsilon_plus_flat(pairs: list[tuple[tuple[str], str]], *rules):
    """Zennit's ``EpsilonPlusFlat`` with ``lrp``'s canonizers, layer map and ``rules``."""
    from zennit.composites import EpsilonPlusFlat

    return EpsilonPlusFlat(layer_map=[*layer_map(), *rules], canonizers=canonizers(pairs))


def _calls(fn, *ops: str) -> list[int]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = {event.key: event.count for event in prof.key_averages()}
    return [counts.get(op, 0) for op in ops]


def test_each_convolution_runs_two_forwards_and_one_input_gradient():
    """z+ after a ReLU: the layer's forward, one with ``W+``, one input gradient (Flat on
    the first: a forward of ones); Zennit's hooks add the discarded true gradient and
    the all-zero ``(x-, W-)`` pass."""
    model = explainable_model("test_resnet", seed=0, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2])
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    ops = ("aten::convolution", "aten::convolution_backward")

    pairs = batchnorm_pairs(model, x[:1])  # its probe forward is not counted
    from zennit.types import Convolution

    # ``lrp``'s composite; and Zennit's own ZPlus run fused (its zero pass skipped)
    for rules in ([(Convolution, closed_form_zplus())], []):
        composite = fused(_epsilon_plus_flat(pairs, *rules))
        calls = _calls(lambda c=composite: zennit_relevance(model, c, x, targets), *ops)
        assert calls == [2 * convs, convs]
    forward, backward = _calls(
        lambda: zennit_relevance(model, _epsilon_plus_flat(pairs), x, targets), *ops
    )
    assert forward >= 3 * convs - 1 and backward >= 3 * convs - 1  # Zennit's hooks


class _InPlace(nn.Module):
    """``stem`` (Flat), ``fc`` (epsilon: its output reused) whose output is then changed in
    place by ``+=``, ``head`` (epsilon)."""

    def __init__(self, change_input: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.fc, self.other, self.head = (nn.Linear(6, 6) for _ in range(4))
        self.act = nn.ReLU()
        self.change_input = change_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.stem(x))
        y = self.fc(h)
        if self.change_input:
            h *= 2  # fc's input, after fc read it
        y += self.other(h)
        return self.head(y)


def _epsilon(model: nn.Module, *, fast: bool):
    from zennit.composites import EpsilonPlusFlat

    composite = EpsilonPlusFlat(layer_map=layer_map(), canonizers=canonizers([]))
    return fused(composite) if fast else composite


def test_an_output_changed_in_place_is_recomputed_equal_to_zennit():
    model = _InPlace().eval()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3])
    ours = zennit_relevance(model, _epsilon(model, fast=True), x, targets)
    theirs = zennit_relevance(model, _epsilon(model, fast=False), x, targets)
    assert theirs.abs().amax() > 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_an_input_changed_in_place_is_refused_with_the_reason():
    model = _InPlace(change_input=True).eval()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    with pytest.raises(RuntimeError, match=r"input of Linear was changed in place.*'ig'"):
        zennit_relevance(model, _epsilon(model, fast=True), x, torch.tensor([0, 1, 2, 3]))
    assert not any("forward" in vars(m) for m in model.modules())  # taken off again


def test_in_place_activations_run_out_of_place_for_the_call():
    """``ReLU(inplace=True)`` after a residual add would overwrite the add's saved output."""
    model = explainable_model("test_resnet", seed=0, num_classes=10).eval()
    in_place = [m for m in model.modules() if getattr(m, "inplace", False)]
    assert in_place
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([3, 4])
    pairs = batchnorm_pairs(model, x[:1])
    ours = zennit_relevance(model, fused(_epsilon_plus_flat(pairs)), x, targets)
    theirs = zennit_relevance(model, _epsilon_plus_flat(pairs), x, targets)
    assert (ours - theirs).abs().amax() <= 1e-5
    assert all(m.inplace is True for m in in_place)  # restored
