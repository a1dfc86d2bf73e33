"""Layer-wise relevance propagation through Captum's ``LRP`` and its epsilon rules.

LRP has rules for some module types only: a model with others is refused up front
([`UnsupportedModelError`][timmlens.errors.UnsupportedModelError] naming the method, the
family, the modules and an alternative), as is a float16 model (Captum's stabiliser
underflows there). The rules Captum attaches and the attributes it leaves on modules
are taken off after each call (the Captum adapter, `timmlens.interpretation._captum`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import _captum
from .._targets import CallableTargets, TargetScore
from ..registry import register_method
from .deeplift import PASS_THROUGH
from .engine import CaptumInputExplainer, describe_modules, refusal

__all__ = ["LRP"]


class _BoundTargets(nn.Module):
    """``TargetScore`` with its targets fixed: ``(N, C, H, W)`` -> ``(N,)`` scores."""

    def __init__(self, model: nn.Module, targets: torch.Tensor | CallableTargets) -> None:
        super().__init__()
        self.score = TargetScore(model)
        self.targets = targets

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.score(inputs, self.targets)


@register_method(
    "lrp",
    title="LRP (epsilon)",
    kind="input",
    compared_by_default=False,
    aliases=("layerwise_relevance_propagation",),
    summary="layer-wise relevance propagation with Captum's epsilon rules",
    paper="Bach et al., On Pixel-Wise Explanations by Layer-Wise Relevance Propagation, "
    "PLoS ONE 2015",
    formula="R_i = sum_j a_i w_ij / (z_j + eps sign(z_j)) R_j, from R = y at the output "
    "(eps = 0.25)",
    cost="2 forwards + 1 backward",
    applies_to="models of Conv2d, Linear, BatchNorm2d, pooling, ReLU, Dropout, Tanh modules "
    "(ResNet, VGG); refuses the others",
)
class LRP(CaptumInputExplainer):
    """Epsilon-LRP via ``captum.attr.LRP`` and its default rules.

    Captum's rules cover ``Conv2d``, ``Linear``, ``BatchNorm2d``, max/average pooling,
    ``ReLU``, ``Dropout`` and ``Tanh`` (a module may also carry its own ``rule``).
    Every covered module without a ``rule`` of its own gets ``EpsilonRule(epsilon)``
    for the call: ``epsilon=0.25`` by default (LRP-epsilon as recommended for middle
    layers by Montavon et al. 2019); Captum's own default, ``1e-9``, is LRP-0, which
    explodes where a BatchNorm output is near zero (relevances of 1e5 on a random-init
    ResNet, and a batch no longer equal to its images one by one). ``epsilon=1e-9``
    reproduces Captum's default rules exactly.
    ``nn.Identity`` and ``nn.Flatten`` compute nothing, so they get no rule and
    relevance passes through them unchanged (Captum itself rejects them). Other modules
    are refused up front, as are modules with parameters of their own besides children
    (e.g. timm's ``BatchNormAct2d``, a ViT's position embedding), whose arithmetic no
    rule covers.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        epsilon: the stabiliser of the epsilon rule (> 0).
        signed: heatmaps keep polarity instead of ``|.|`` summed over channels.
    """

    captum_class = "LRP"
    hooks_modules = single_use_modules = True

    def __init__(self, model: nn.Module, epsilon: float = 0.25, *, signed: bool = False) -> None:
        super().__init__(model, signed=signed)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
            raise ValueError(
                f"epsilon must be a number > 0, got {epsilon!r}. Try 0.25 (LRP-epsilon), or "
                f"1e-9 for Captum's default rules."
            )
        self.epsilon = float(epsilon)

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        from captum.attr import LRP as CaptumLRP

        rule_types, _ = _captum.lrp_rule_types()
        # Targets bound to the forward module, not passed as Captum's forward arguments:
        # Captum's LRP adds 0 to every forward argument, which a callable target is not.
        forward = _BoundTargets(self.model, targets)
        with _captum.hooks_left_clean(self.model):  # takes the rules off again
            for module in _captum.leaves(self.model):
                if hasattr(module, "rule"):
                    continue
                if isinstance(module, PASS_THROUGH):
                    module.rule = _captum.pass_through_rule()
                elif type(module) in rule_types:
                    module.rule = _captum.epsilon_rule(self.epsilon)
            with self.captum_call(forward):
                return CaptumLRP(forward).attribute(inputs, **arguments).detach()

    @classmethod
    def unavailable_reason(cls, model: nn.Module) -> str | None:
        half = sorted({str(p.dtype) for p in model.parameters() if p.dtype == torch.float16})
        if half:
            return (
                "the model runs in float16, where Captum's LRP stabiliser (1e-9) rounds to 0, "
                "so its divisions give NaN and the map would be all zeros. Run it in float32 "
                "(model.float()) or bfloat16 (model.to(torch.bfloat16)), which keeps "
                "float32's range."
            )
        rule_types, nonlinear = _captum.lrp_rule_types()
        bad = [
            m
            for m in _captum.leaves(model)
            if type(m) not in rule_types
            and type(m) not in nonlinear
            and not isinstance(m, PASS_THROUGH)
            and not hasattr(m, "rule")
        ]
        bad += [
            m
            for m in model.modules()
            if next(m.children(), None) is not None and next(m.parameters(False), None) is not None
        ]
        if not bad:
            return None
        return refusal(
            model,
            f"Captum's LRP has rules for Conv2d, Linear, BatchNorm2d, pooling, ReLU, Dropout "
            f"and Tanh modules only, not for {describe_modules(bad)}.",
            "'ig' (Integrated Gradients) or 'inputxgradient'",
        )
