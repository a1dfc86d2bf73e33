"""Zennit's rules in closed form where their input allows it: fewer passes, same maps.

Each factory returns a subclass of Zennit's rule (same parameters, modifiers, mapper and
reducer, so Zennit's path still runs wherever the shortcut does not apply) with a
``fused_backward(module, x, out, relevance)`` that `zennit_fused` calls first; it
returns the input relevance ``x.shape``, or ``None`` to fall back to Zennit's passes.

* **On a non-negative input** (after a ReLU: ResNets, VGG, Lite0's ReLU6) every pass of
  z+, gamma and alpha-beta that reads ``x-`` has a zero input and no bias, so it gives
  zero and hands zero on. What is left is a sum of terms
  ``c_k * x * W_k^T (m_k * R / stab(W_k x + b_k))`` (`Term`): one forward with the
  modified weights and one input gradient each, for PyTorch's own convolutions and linear
  layers (`non_negative_zplus`: one term; `non_negative_gamma`,
  `non_negative_alpha_beta`: two, where Zennit runs four passes plus, for gamma, the
  layer again).
* **The first layer's Flat** (`counted_flat`): with ones as input and weights the pass
  only counts the inputs under each window.

Equal to Zennit's rules in the tests (``test_zennit_shortcuts.py``: bit for bit where
the sums run in Zennit's order; max abs diff <= 1e-5 of the maps for `counted_flat`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from .._stabilizer import stabilize
from .zennit_fused import CONV_DIRECT, conv_input_gradient, direct_linear, modified_params

__all__ = [
    "Term",
    "counted_flat",
    "non_negative_alpha_beta",
    "non_negative_gamma",
    "non_negative_zplus",
]


class Term(NamedTuple):
    """``coefficient * x * W^T (mask * R / stab(W x + b))``, ``W, b`` from the rule's
    parameter modifier ``modifier``; ``mask``: ``+1`` where the layer's output is
    positive, ``-1`` where negative, ``0`` everywhere; ``non_negative``: ``W x + b >= 0``
    (z+), so the stabiliser is ``+ eps``."""

    modifier: int
    coefficient: float = 1.0
    mask: int = 0
    non_negative: bool = False


def non_negative_zplus(stabilizer: float = 1e-6) -> Any:
    """Zennit's ``ZPlus``: ``R_x = x * W+^T (R / (W+ x + b+ + eps))`` on ``x >= 0``."""
    from zennit.rules import ZPlus

    return _shortcut(ZPlus, (Term(0, non_negative=True),), stabilizer=stabilizer)


def non_negative_gamma(gamma: float = 0.25, stabilizer: float = 1e-6) -> Any:
    """Zennit's generalised ``Gamma`` on ``x >= 0``: ``W + gamma W+`` where the layer's
    output is positive, ``W + gamma W-`` where it is negative (Montavon et al. 2019;
    Zennit's passes 0 and 2; the reference pass gives the masks)."""
    from zennit.rules import Gamma

    terms = (Term(0, mask=1), Term(2, mask=-1))
    return _shortcut(Gamma, terms, gamma=gamma, stabilizer=stabilizer)


def non_negative_alpha_beta(alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> Any:
    """Zennit's ``AlphaBeta`` on ``x >= 0``: ``alpha`` times the ``W+`` share minus
    ``beta`` times the ``W-`` share (Bach et al. 2015)."""
    from zennit.rules import AlphaBeta

    terms = (Term(0, alpha, non_negative=True), Term(2, -beta))
    return _shortcut(AlphaBeta, terms, alpha=alpha, beta=beta, stabilizer=stabilizer)


def _shortcut(base: type, terms: tuple[Term, ...], **options: Any) -> Any:
    """An instance of a subclass of Zennit's rule ``base(**options)`` whose
    ``fused_backward`` is `_non_negative_relevance` of ``terms``."""
    stabilizer = options["stabilizer"]

    class NonNegative(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(**options)

        def copy(self) -> Any:
            return type(self)()

        def fused_backward(
            self, module: nn.Module, x: torch.Tensor, out: Any, relevance: torch.Tensor
        ) -> torch.Tensor | None:
            return _non_negative_relevance(self, module, x, out, relevance, terms, stabilizer)

    NonNegative.__name__ = NonNegative.__qualname__ = f"NonNegative{base.__name__}"
    return NonNegative()


def _non_negative_relevance(
    rule: Any,
    module: nn.Module,
    x: torch.Tensor,
    out: torch.Tensor | None,
    relevance: torch.Tensor,
    terms: tuple[Term, ...],
    stabilizer: float,
) -> torch.Tensor | None:
    """The sum of ``terms`` ``x.shape``; ``None`` where ``x`` has a negative entry or the
    module is not PyTorch's own convolution or linear layer (Zennit's passes run)."""
    direct = direct_linear(module)
    if direct is None or x.numel() == 0 or not bool(x.min() >= 0):
        return None
    forward, input_gradient = direct
    if out is None and any(term.mask for term in terms):
        out = forward(module, x, {})  # changed in place since, or not kept
    result = None
    for term in terms:
        params = modified_params(rule.param_modifiers[term.modifier], module)
        z = forward(module, x, params)
        # Zennit's z + eps sign(z), sign(0) = 1, is z + eps where z >= 0 (-0.0 included)
        share = z.add_(stabilizer) if term.non_negative else stabilize(z, stabilizer)
        share = torch.div(relevance, share, out=share)
        if term.mask:
            share.mul_(out > 0 if term.mask > 0 else out < 0)
        weight = params.get("weight", module.weight)
        part = input_gradient(module, x, weight, share).mul_(x)
        if term.coefficient != 1:
            part.mul_(term.coefficient)
        result = part if result is None else result.add_(part)
    return result


def counted_flat(stabilizer: float = 1e-6) -> Any:
    """Zennit's ``Flat`` (input and weights ones, no bias), from the count it divides by.

    With ones everywhere the pass's output at an output position is the number of inputs
    its kernel window covers, the same for every image and channel: ``n = conv(1, 1)``
    computed once for one image and one channel, an exact integer. The rule is then
    ``R_x = conv_transpose(sum_c R_c / (n + eps), 1)`` with one channel where Zennit's
    transposed convolution has ``C``. For PyTorch's own convolutions without groups (a
    network's stem); otherwise Zennit's pass runs. Equal to Zennit's ``Flat`` up to the
    order of a float sum.
    """
    from zennit.rules import Flat

    class CountedFlat(Flat):
        def __init__(self) -> None:
            super().__init__(stabilizer=stabilizer)

        def copy(self) -> CountedFlat:
            return type(self)()

        def fused_backward(
            self, module: nn.Module, x: torch.Tensor, out: Any, relevance: torch.Tensor
        ) -> torch.Tensor | None:
            if direct_linear(module) is not CONV_DIRECT or module.groups != 1:
                return None
            ones = x.new_ones((1, *x.shape[1:]))
            kernel = x.new_ones((1, *module.weight.shape[1:]))
            count = module._conv_forward(ones, kernel, None)  # (1, 1, *out)
            # Zennit's stabiliser z + eps sign(z), sign(0) = 1, is z + eps: a count is >= 0
            share = relevance.sum(dim=1, keepdim=True).div_(count.add_(stabilizer))
            return conv_input_gradient(module, x, kernel, share)

    return CountedFlat()
