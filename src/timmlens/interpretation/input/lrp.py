"""Layer-wise relevance propagation: Zennit's composites (``lrp``), and Captum's epsilon LRP.

``lrp`` runs one of Zennit's composites (``composite="epsilon_plus_flat"`` by default,
``"epsilon_gamma_box"``, ``"epsilon_alpha2_beta1"``) with the canonizers timm's CNN
blocks need (`timmlens.interpretation.input.zennit_rules`): one forward and one backward.
``composite="captum_epsilon"`` keeps the earlier behaviour, Captum's ``LRP`` with
epsilon rules ([`CaptumEpsilonLRP`][]).

Each has rules for some module types only: a model with others is refused up front
([`UnsupportedModelError`][timmlens.errors.UnsupportedModelError] naming the method, the
family, the modules and an alternative), as is a float16 model (the stabilisers
underflow there). Rules, hooks, canonizers and attributes are taken off after each call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import UnsupportedModelError
from ...models.introspect import data_config
from .. import _captum
from .._targets import CallableTargets, TargetScore
from ..registry import register_method
from .deeplift import PASS_THROUGH
from .engine import CaptumInputExplainer, describe_modules, refusal
from .zennit_rules import (
    COMPOSITES,
    batchnorm_pairs,
    composite_applied,
    make_composite,
    uncovered_modules,
)

__all__ = ["LRP", "CaptumEpsilonLRP"]


class _BoundTargets(nn.Module):
    """``TargetScore`` with its targets fixed: ``(N, C, H, W)`` -> ``(N,)`` scores."""

    def __init__(self, model: nn.Module, targets: torch.Tensor | CallableTargets) -> None:
        super().__init__()
        self.score = TargetScore(model)
        self.targets = targets

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.score(inputs, self.targets)


class CaptumEpsilonLRP(CaptumInputExplainer):
    """Epsilon-LRP via ``captum.attr.LRP`` and its default rules (``lrp``'s
    ``composite="captum_epsilon"``).

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

    name = "lrp"
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


#: ``lrp``'s composites: Zennit's, and Captum's epsilon rules as before
LRP_COMPOSITES = (*COMPOSITES, "captum_epsilon")


def _float16_reason(model: nn.Module, stabiliser: str) -> str | None:
    if not any(p.dtype == torch.float16 for p in model.parameters()):
        return None
    return (
        f"the model runs in float16, where the LRP stabiliser ({stabiliser}) is below the "
        f"smallest normal number (6e-5), so divisions by small pre-activations overflow or "
        f"give NaN and the map would be garbage. Run it in float32 (model.float()) or "
        f"bfloat16 (model.to(torch.bfloat16)), which keeps float32's range."
    )


@register_method(
    "lrp",
    title="LRP (Zennit composites)",
    kind="input",
    compared_by_default=False,
    aliases=("layerwise_relevance_propagation",),
    summary="layer-wise relevance propagation with Zennit's composites and timm canonizers",
    paper="Bach et al., On Pixel-Wise Explanations by Layer-Wise Relevance Propagation, "
    "PLoS ONE 2015; Montavon et al., Layer-Wise Relevance Propagation: An Overview, 2019; "
    "Anders et al., Software for Dataset-wide XAI (Zennit), 2021",
    formula="R_i = sum_j a_i w_ij / (z_j + eps sign(z_j)) R_j on dense layers, z+ on "
    "convolutions, flat on the first; R = the target logit at the output",
    cost="1 forward + 1 backward (+ a 1-image probe forward per explainer)",
    applies_to="CNNs of convolutions, linear layers, BatchNorm, LayerNorm, pooling and "
    "elementwise activations: timm ResNet / ResNeXt / SE-ResNet / Res2Net, RegNet, DLA, "
    "ConvMixer, DenseNet, ConvNeXt, VGG, EfficientNet and MobileNetV3; refuses the others",
)
class LRP(CaptumInputExplainer):
    """LRP with one of Zennit's composites, made to read timm's CNNs.

    ``epsilon_plus_flat`` (default; Montavon et al. 2019's recommendation for CNNs):
    epsilon rule on linear layers, z+ on convolutions, the flat rule on the first layer.
    ``epsilon_gamma_box``: gamma (0.25) on convolutions, the z-box rule on the first
    layer with the box from the model's data config (pixel 0 and 1 normalised with its
    mean and std). ``epsilon_alpha2_beta1``: alpha=2, beta=1 on convolutions.
    ``captum_epsilon``: Captum's ``LRP`` with epsilon rules (what ``lrp`` was before).

    Zennit's composites need the model in a form its rules read; the canonizers of
    `zennit_rules` merge each BatchNorm into the convolution that feeds it, rule residual
    adds with Zennit's ``Norm`` rule and gates / layer scales as weights, and give
    LayerNorm AttnLRP's rule (``std`` held constant); activations pass relevance on.
    Relevance starts as the target's score (the logit), so the summed input relevance
    is comparable with it (conservation); ``explain_full(...).attributions`` holds it
    ``(B, 3, H, W)``.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        epsilon: the epsilon rule's stabiliser (> 0); ``None``: ``1e-6`` for Zennit's
            composites (Zennit's default), ``0.25`` for ``captum_epsilon``.
        composite: one of `LRP_COMPOSITES`.
        signed: heatmaps keep polarity instead of ``|.|`` summed over channels.
        memory_budget_bytes: budget for automatic chunking of a batch; ``None``: half the
            free CUDA memory, 2 GiB elsewhere (`memory_budget`).
    """

    def __init__(
        self,
        model: nn.Module,
        epsilon: float | None = None,
        *,
        composite: str = "epsilon_plus_flat",
        signed: bool = False,
        memory_budget_bytes: int | None = None,
    ) -> None:
        super().__init__(model, signed=signed, memory_budget_bytes=memory_budget_bytes)
        if composite not in LRP_COMPOSITES:
            raise ValueError(
                f"composite must be one of {', '.join(map(repr, LRP_COMPOSITES))}, got "
                f"{composite!r}. Try 'epsilon_plus_flat' (the default for CNNs)."
            )
        self.composite = composite
        self._captum: CaptumEpsilonLRP | None = None
        if composite == "captum_epsilon":
            self._captum = CaptumEpsilonLRP(model, 0.25 if epsilon is None else epsilon)
            self.epsilon = self._captum.epsilon
            reason = CaptumEpsilonLRP.unavailable_reason(self.model)
            if reason is not None:
                raise UnsupportedModelError(f"{self.name}: {reason}")
            return
        if epsilon is None:
            epsilon = 1e-6
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
            raise ValueError(f"epsilon must be a number > 0, got {epsilon!r}. Try 1e-6.")
        self.epsilon = float(epsilon)
        #: BatchNorm merge pairs of ``self.model``, found by the first call's probe
        self._pairs: list[tuple[tuple[str], str]] | None = None

    def describe(self, targets: Any) -> str:
        del targets
        return f"LRP ({self.composite})"

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        """Input relevance ``(B, C, H, W)`` of the target scores of ``inputs``."""
        if self._captum is not None:
            self._captum.signed = self.signed
            return self._captum.run(inputs, targets, **arguments)
        reason = self.unavailable_reason(self.model)
        if reason is not None:
            raise UnsupportedModelError(f"{self.name}: {reason}")
        composite = self._composite_for(inputs)
        score = TargetScore(self.model)
        # the rules run in the backward: under a caller's torch.no_grad() too
        with torch.enable_grad(), composite_applied(composite, self.model):
            scores = score(inputs, targets)
            # relevance at the output is the score itself (conservation is against it)
            (relevance,) = torch.autograd.grad(scores, inputs, grad_outputs=scores.detach())
        return relevance.detach()

    def _composite_for(self, inputs: torch.Tensor) -> Any:
        """Zennit's composite for ``inputs`` ``(B, C, H, W)`` (BatchNorm pairs probed once)."""
        if self._pairs is None:
            self._pairs = batchnorm_pairs(self.model, inputs[:1].detach())
        return make_composite(
            self.composite, self._pairs, epsilon=self.epsilon, bounds=self.input_bounds(inputs)
        )

    def input_bounds(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(low, high)`` ``(1, C, 1, 1)``: pixels 0 and 1 normalised (z-box rule only)."""
        if self.composite != "epsilon_gamma_box":
            return None
        config = data_config(self.model)
        options = {"dtype": inputs.dtype, "device": inputs.device}
        mean = torch.as_tensor(config["mean"], **options).view(1, -1, 1, 1)
        std = torch.as_tensor(config["std"], **options).view(1, -1, 1, 1)
        return (0 - mean) / std, (1 - mean) / std

    @classmethod
    def unavailable_reason(cls, model: nn.Module) -> str | None:
        """Why Zennit's composites cannot explain ``model`` (``None``: they can)."""
        half = _float16_reason(model, "1e-6")
        if half is not None:
            return half
        bad = uncovered_modules(model)
        if not bad:
            return None
        return refusal(
            model,
            f"Zennit's LRP composites have rules and timm canonizers for convolutions, "
            f"linear layers, BatchNorm, LayerNorm, pooling, elementwise activations, and "
            f"the blocks of ResNet/ResNeXt/Res2Net, RegNet, DLA, ConvMixer, DenseNet, "
            f"ConvNeXt, VGG and EfficientNet/MobileNet, not for {describe_modules(bad)} "
            f"(their forward does arithmetic no rule reads, e.g. attention, a position "
            f"embedding, or a layer these rules do not know).",
            _alternatives(model),
        )


def _alternatives(model: nn.Module) -> str:
    """What to try where Zennit's composites refuse ``model``: Captum's epsilon rule first
    where its rules cover every module (VGG, DLA, Res2Net, ConvMixer...)."""
    others = "'ig' (Integrated Gradients) or 'inputxgradient'"
    if CaptumEpsilonLRP.unavailable_reason(model) is None:
        return (
            "Captum's epsilon rule, which covers it: "
            f"timmlens.interpretation.LRP(model, composite='captum_epsilon'); or {others}"
        )
    return others
