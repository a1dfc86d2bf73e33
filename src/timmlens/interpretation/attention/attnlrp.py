"""AttnLRP and CP-LRP: layer-wise relevance propagation through timm transformers.

**attnlrp** (Achtibat et al., ICML 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance
Propagation for Transformers") and **cplrp** (Ali et al., ICML 2022, "XAI for
Transformers: Better Explanations through Conservative Propagation") in one forward and
one backward pass, with the rules of `lrp_rules` put on the model for the call: the
relevance of the input is ``x * grad`` where the gradient is the rules' and the
starting relevance is the target logit. They differ inside attention only: AttnLRP
propagates through the softmax and splits the matmuls uniformly, CP-LRP treats the
attention probabilities as constants.

The result: ``attributions`` is the raw input relevance ``(B, 3, H, W)`` (its sum is
close to the target logit; biases and the epsilon stabiliser absorb the rest), the
heatmap the positive part of its sum over channels divided by its maximum (the
evidence for the class, zero where there is none; or the signed sum scaled to [-1, 1]
with ``signed=True``), and ``extras["patch_relevance"]`` ``(B, h, w)`` the relevance summed
over each patch; ``extras["target_scores"]`` ``(B,)`` the logits it started from.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...adapters import get_adapter
from ...adapters.relevance_rules import relevance_layout
from ...errors import UnsupportedModelError
from .._targets import ResolvedTargets, target_rows
from ..base import Explainer, Explanation
from ..input.engine import attribution_heatmap, positive_heatmap
from ..registry import register_method
from ..scoring import target_scores
from .lrp_rules import LINEAR_RULES, LinearRule, Variant, relevance_rules

__all__ = ["CPLRP", "AttnLRP"]

_APPLIES_TO = (
    "softmax-attention transformers: ViT, DeiT (incl. distilled), DeiT-III, register ViTs, "
    "EVA / EVA02, BEiT, CaiT, Swin (windows); refuses the others with the reason"
)


def _number(name: str, value: object, low: float, strict: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value > low if strict else value >= low):  # type: ignore[operator]
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} must be a number {bound}, got {value!r}.")
    return float(value)  # type: ignore[arg-type]


class _RelevancePropagation(Explainer):
    """The engine of `AttnLRP` and `CPLRP` (see the module docstring).

    Args:
        model: an ``ImageClassifier`` or a bare timm transformer with a head.
        linear_rule: ``"epsilon"`` (default; AttnLRP's rule for linear layers),
            ``"gamma"`` (Zennit's ``Gamma``, less noisy on ViTs) or ``"zero"`` (LRP-0:
            plain gradient, as LXT without a Zennit composite).
        epsilon: the stabiliser of the epsilon and gamma rules (> 0).
        gamma: the gamma rule's weight on positive parameters (>= 0).
        signed: heatmaps keep polarity (scaled to [-1, 1]) instead of the positive
            relevance scaled to [0, 1].

    Raises:
        UnsupportedModelError: no softmax attention, or layers no rule covers.
    """

    variant: Variant = "attnlrp"
    constant_map_causes = (
        "the target's score does not depend on the input (untrained weights), or every "
        "relevance was absorbed by biases"
    )

    def __init__(
        self,
        model: nn.Module,
        linear_rule: LinearRule = "epsilon",
        epsilon: float = 1e-6,
        gamma: float = 0.05,
        *,
        signed: bool = False,
    ) -> None:
        super().__init__(model)
        if linear_rule not in LINEAR_RULES:
            raise ValueError(
                f"linear_rule must be one of {', '.join(LINEAR_RULES)}, got {linear_rule!r}."
            )
        self.linear_rule: LinearRule = linear_rule
        self.epsilon = _number("epsilon", epsilon, 0.0, strict=True)
        self.gamma = _number("gamma", gamma, 0.0, strict=False)
        self.signed = bool(signed)
        self.layout = relevance_layout(self.model, self.name)
        self.adapter = get_adapter(self.model)

    @classmethod
    def unavailable_reason(cls, model: nn.Module) -> str | None:
        """Why the rules do not cover ``model`` (see `relevance_layout`), or ``None``."""
        name = getattr(cls, "name", "attnlrp")
        try:
            relevance_layout(model, name)
        except UnsupportedModelError as error:
            # the registry puts the method's name in front of a reason: not twice
            return str(error).removeprefix(f"{name}: ")
        return None

    def describe(self, targets: ResolvedTargets) -> str:
        del targets
        return self.name

    def attribute(
        self, inputs: torch.Tensor, targets: ResolvedTargets, **kwargs: Any
    ) -> Explanation:
        """Relevance of ``inputs`` ``(B, C, H, W)`` for ``targets`` (``None``: predicted)."""
        if kwargs:
            raise TypeError(
                f"unexpected argument(s) {', '.join(kwargs)}; {self.name} takes its options "
                f"(linear_rule, epsilon, gamma, signed) when it is created."
            )
        self._check_precision()
        rows = target_rows(targets, inputs.device)
        with (
            torch.enable_grad(),
            relevance_rules(self.layout, self.variant, self.linear_rule, self.epsilon, self.gamma),
        ):
            x = inputs.detach().requires_grad_(True)
            logits = self.model(x)
            chosen = logits.detach().argmax(dim=1) if rows is None else rows
            scores = target_scores(logits, chosen, "logit")
            (grad,) = torch.autograd.grad(scores.sum(), x)
        relevance = (x * grad).detach()
        if self.signed:
            heatmap = attribution_heatmap(relevance, signed=True)
        else:
            heatmap = positive_heatmap(relevance)
        return Explanation(
            heatmap=heatmap,
            targets=chosen,  # a callable target stays one: the base reports its label
            logits=logits.detach(),
            attributions=relevance,
            extras={
                "patch_relevance": self._patch_relevance(relevance),
                "target_scores": scores.detach(),
            },
        )

    def _patch_relevance(self, relevance: torch.Tensor) -> torch.Tensor | None:
        """``(B, h, w)``: the relevance summed over channels and each patch's pixels."""
        embed = getattr(self.adapter.timm_model, "patch_embed", None)
        size = getattr(embed, "patch_size", None)
        if size is None:
            return None
        ph, pw = (size, size) if isinstance(size, int) else tuple(size)
        batch, _, height, width = relevance.shape
        if height % ph or width % pw:
            return None
        maps = relevance.sum(dim=1).view(batch, height // ph, ph, width // pw, pw)
        return maps.sum(dim=(2, 4))

    def _check_precision(self) -> None:
        if any(p.dtype == torch.float16 for p in self.model.parameters()):
            raise UnsupportedModelError(
                f"{self.name}: the model runs in float16, where the epsilon stabiliser and the "
                f"relevance ratios underflow, so the map would be wrong or zero. Explain a "
                f"float32 copy (model.float()) or use bfloat16 (model.to(torch.bfloat16))."
            )


@register_method(
    "attnlrp",
    title="AttnLRP",
    kind="attention",
    compared_by_default=False,
    aliases=("attn_lrp",),
    summary="attention-aware layer-wise relevance propagation (transformers)",
    paper="Achtibat et al., AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for "
    "Transformers, ICML 2024",
    formula="R = x * grad with LRP rules as gradients: identity on norms and activations, "
    "softmax rule, uniform matmul split, epsilon on linear layers",
    cost="1 forward + 1 backward",
    applies_to=_APPLIES_TO,
)
class AttnLRP(_RelevancePropagation):
    """AttnLRP on a timm transformer (see the module docstring and `lrp_rules`)."""

    variant: Variant = "attnlrp"


@register_method(
    "cplrp",
    title="CP-LRP",
    kind="attention",
    compared_by_default=False,
    aliases=("cp_lrp", "conservative_propagation"),
    summary="LRP with the attention probabilities held constant (transformers)",
    paper="Ali et al., XAI for Transformers: Better Explanations through Conservative "
    "Propagation, ICML 2022",
    formula="R = x * grad with LRP rules as gradients; attention probabilities detached",
    cost="1 forward + 1 backward",
    applies_to=_APPLIES_TO,
)
class CPLRP(_RelevancePropagation):
    """CP-LRP on a timm transformer (see the module docstring and `lrp_rules`)."""

    variant: Variant = "cplrp"
