"""The Captum adapter: one test per Captum behaviour timmlens relies on.

Each test fails if a Captum release changes what ``timmlens.interpretation._captum``
works around or reads (run against every version of ``pyproject.toml``'s pin).
"""

from __future__ import annotations

import warnings

import captum
import captum.attr as ca
import pytest
import torch
from torch import nn

from timmlens.interpretation import _captum
from timmlens.interpretation._targets import TargetScore

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
TARGETS = torch.tensor([0, 2])


class Small(nn.Module):
    def __init__(self, reuse: bool = False, identity: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.act, self.act2 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)
        self.skip, self.flat = (nn.Identity(), nn.Flatten()) if identity else (None, None)
        self.reuse = reuse
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        x = self.act(x) if self.reuse else self.act2(x)
        if self.skip is not None and self.flat is not None:
            return self.fc(self.flat(self.skip(self.pool(x))))
        return self.fc(self.pool(x).flatten(1))


def test_the_pinned_range_is_the_verified_one() -> None:
    major, minor = (int(part) for part in captum.__version__.split(".")[:2])
    assert (0, 8) <= (major, minor) < (0, 10)


def test_rule_tables_hold_the_documented_module_types() -> None:
    nonlinear = _captum.deeplift_nonlinear_types()
    assert {nn.ReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.MaxPool2d, nn.Softmax} <= nonlinear
    assert nn.GELU not in nonlinear and nn.SiLU not in nonlinear
    rules, passing = _captum.lrp_rule_types()
    assert {nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d} <= rules
    assert nn.ReLU in passing and nn.GELU not in rules | passing
    rule = _captum.epsilon_rule(0.25)
    assert type(rule).__name__ == "EpsilonRule" and rule.STABILITY_FACTOR == 0.25


def test_lrp_adds_zero_to_forward_arguments_so_targets_are_bound() -> None:
    """Captum's LRP wraps its forward in ``input + 0`` for every argument: a non-tensor
    (a callable target) cannot travel as a forward argument (the LRP method binds it)."""

    class ByName(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Small()

        def forward(self, x: torch.Tensor, column: str) -> torch.Tensor:
            return self.model(x)[:, {"first": 0}[column]]

    forward = ByName()
    with _captum.hooks_left_clean(forward), pytest.raises(TypeError, match="str"):
        ca.LRP(forward).attribute(X, additional_forward_args=("first",))


def test_pass_through_rule_leaves_relevance_unchanged() -> None:
    plain, wrapped = Small(), Small(identity=True)
    wrapped.load_state_dict(plain.state_dict())
    expected = ca.LRP(plain).attribute(X, target=TARGETS)
    with _captum.hooks_left_clean(wrapped):
        wrapped.skip.rule = _captum.pass_through_rule()
        wrapped.flat.rule = _captum.pass_through_rule()
        ours = ca.LRP(wrapped).attribute(X, target=TARGETS)
    assert torch.equal(ours, expected)
    assert not hasattr(wrapped.skip, "rule") and not hasattr(wrapped.flat, "rule")


def test_lrp_leaves_attributes_and_takes_user_rules_which_hygiene_restores() -> None:
    model = Small()
    model.conv.rule = rule = _captum.epsilon_rule(0.1)
    ca.LRP(model).attribute(X, target=TARGETS)
    assert hasattr(model.conv, "activations") and not hasattr(model.conv, "rule")  # Captum's
    model = Small()
    model.conv.rule = rule
    with _captum.hooks_left_clean(model):
        ca.LRP(model).attribute(X, target=TARGETS)
    assert model.conv.rule is rule and not hasattr(model.conv, "activations")


def test_captum_announces_its_hooks_and_hygiene_silences_it() -> None:
    for method in (ca.GuidedBackprop, ca.DeepLift):
        with pytest.warns(UserWarning, match=_captum.CAPTUM_HOOK_WARNINGS):
            method(Small()).attribute(X.clone().requires_grad_(), target=TARGETS)
        model = Small()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with _captum.hooks_left_clean(model):
                method(model).attribute(X.clone().requires_grad_(), target=TARGETS)


def test_single_use_modules_names_a_module_deeplift_runs_twice() -> None:
    model = Small(reuse=True)
    forward = TargetScore(model)
    with _captum.hooks_left_clean(model), _captum.single_use_modules(model, forward) as reused:
        with pytest.raises(RuntimeError):  # the type only: its text is not relied on
            ca.DeepLift(forward).attribute(X, additional_forward_args=(TARGETS,))
        assert reused() == [model.act]
    healthy = Small()
    forward = TargetScore(healthy)
    with _captum.single_use_modules(healthy, forward) as reused:
        ca.DeepLift(forward).attribute(X, additional_forward_args=(TARGETS,))
        assert reused() == []


def test_noise_tunnel_draws_through_the_overridden_noise_step() -> None:
    """SmoothGrad's per-image scale and private generator: ``NoiseTunnel`` still adds
    its noise through ``_add_noise_to_inputs(partition, inputs, stdevs)``."""
    model, n = Small(), 3
    stdevs = torch.tensor([0.1, 0.5])
    tunnel = _captum.range_noise_tunnel(ca.Saliency(model), torch.Generator().manual_seed(0))
    ours = tunnel.attribute(
        X, nt_type="smoothgrad", nt_samples=n, stdevs=(stdevs,), target=TARGETS, abs=False
    )
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([torch.randn(3, 8, 8, generator=generator) for _ in range(n)])
    noisy = X.repeat_interleave(n, 0) + (stdevs.view(2, 1, 1, 1, 1) * draws).reshape(-1, 3, 8, 8)
    grads = ca.Saliency(model).attribute(noisy, target=TARGETS.repeat_interleave(n), abs=False)
    torch.testing.assert_close(ours, grads.view(2, n, 3, 8, 8).mean(dim=1))


def test_layer_gradients_and_eval_gives_each_layers_activation_and_gradient() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    x = torch.randn(2, 3, 8, 8)

    def score(inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs).sum((1, 2, 3))

    grads, acts = _captum.layer_gradients_and_eval(score, [model[0], model[2]], x)
    first = model[0](x).detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(model[2](model[1](first)).sum(), [first])
    assert torch.allclose(acts[0][0], first)
    assert torch.allclose(grads[0][0], expected)
    assert torch.allclose(grads[1][0], torch.ones_like(acts[1][0]))  # d(sum)/d(output) = 1


def test_approximation_parameters_are_gauss_legendre_on_the_unit_interval() -> None:
    step_sizes, alphas = _captum.approximation_parameters("gausslegendre")
    points, weights = alphas(8), step_sizes(8)
    assert len(points) == len(weights) == 8
    assert sum(weights) == pytest.approx(1.0)
    assert all(0 < p < 1 for p in points)
    assert sum(w * p**3 for w, p in zip(weights, points, strict=True)) == pytest.approx(0.25)
