"""Zennit's rules in closed form: fewer passes over the tensors, the same maps.

Each factory returns a subclass of Zennit's rule (same parameters, modifiers, mapper and
reducer, so Zennit's own path still runs wherever the closed form does not apply) with a
``fused_backward(module, x, out, relevance)`` that `zennit_fused` calls first; it
returns the input relevance ``x.shape``, or ``None`` to fall back to Zennit's passes.

* **z+, gamma, alpha-beta** (`closed_form_zplus`, `closed_form_gamma`,
  `closed_form_alpha_beta`) on PyTorch's own convolutions and linear layers: each rule
  is a sum of terms ``c * sum_p x_p * W_p^T (m * R / stab(sum_p W_p x_p + b_p))`` over
  its passes (`Term`), the passes of a term summed into one denominator in place and
  Zennit's six-pass stabiliser replaced by its three-pass equal (`stabilize`). After a
  ReLU (ResNets, VGG, Lite0's ReLU6) ``x- = 0``: the passes that read it give zero and
  are left out (one forward and one input gradient for z+).
* **The first layer's Flat** (`counted_flat`): with ones as input and weights the pass
  only counts the inputs under each window.

Equal to Zennit's rules in the tests (``test_zennit_shortcuts.py``): bit for bit for the
three rules, the sums being taken in Zennit's order; up to the order of a float sum for
`counted_flat`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from .._stabilizer import stabilize
from .zennit_fused import CONV_DIRECT, conv_input_gradient, direct_linear, modified_params

__all__ = [
    "NEGATIVE",
    "POSITIVE",
    "Term",
    "closed_form_alpha_beta",
    "closed_form_gamma",
    "closed_form_zplus",
    "counted_flat",
]


#: which part of the input a pass reads
POSITIVE, NEGATIVE = 1, -1


class Term(NamedTuple):
    """``coefficient * sum_p x_p * W_p^T (mask * R / stab(sum_p (W_p x_p + b_p)))``.

    ``passes``: ``(part, modifier)`` per pass, ``part`` `POSITIVE` (``x+``) or `NEGATIVE`
    (``x-``), ``W_p, b_p`` from the rule's parameter modifier ``modifier`` (Zennit's
    order of passes); ``mask``: ``+1`` keeps where the layer's output is positive, ``-1``
    where negative, ``0`` no mask; ``non_negative``: the denominator is ``>= 0`` by
    construction (``W+ x+ + W- x- + b+``), so its stabiliser is ``+ eps``.
    """

    passes: tuple[tuple[int, int], ...]
    coefficient: float = 1.0
    mask: int = 0
    non_negative: bool = False


def closed_form_zplus(stabilizer: float = 1e-6) -> Any:
    """Zennit's ``ZPlus``: ``R_x = (x+ W+^T + x- W-^T)(R / (W+ x+ + W- x- + b+ + eps))``."""
    from zennit.rules import ZPlus

    terms = (Term(((POSITIVE, 0), (NEGATIVE, 1)), non_negative=True),)
    return _closed_form(ZPlus, terms, stabilizer=stabilizer)


def closed_form_gamma(gamma: float = 0.25, stabilizer: float = 1e-6) -> Any:
    """Zennit's generalised ``Gamma`` (Montavon et al. 2019; Andeol et al. 2021): where
    the layer's output is positive ``x+`` through ``W + gamma W+`` and ``x-`` through
    ``W + gamma W-``, where it is negative the other way round."""
    from zennit.rules import Gamma

    terms = (
        Term(((POSITIVE, 0), (NEGATIVE, 1)), mask=1),
        Term(((POSITIVE, 2), (NEGATIVE, 3)), mask=-1),
    )
    return _closed_form(Gamma, terms, gamma=gamma, stabilizer=stabilizer)


def closed_form_alpha_beta(alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> Any:
    """Zennit's ``AlphaBeta`` (Bach et al. 2015): ``alpha`` times the positive
    contributions' share minus ``beta`` times the negative ones'."""
    from zennit.rules import AlphaBeta

    terms = (
        Term(((POSITIVE, 0), (NEGATIVE, 1)), alpha, non_negative=True),
        Term(((POSITIVE, 2), (NEGATIVE, 3)), -beta),
    )
    return _closed_form(AlphaBeta, terms, alpha=alpha, beta=beta, stabilizer=stabilizer)


def _closed_form(base: type, terms: tuple[Term, ...], **options: Any) -> Any:
    """An instance of a subclass of Zennit's rule ``base(**options)`` whose
    ``fused_backward`` is `_relevance_of_terms`."""
    stabilizer = options["stabilizer"]

    class ClosedForm(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(**options)

        def copy(self) -> Any:
            return type(self)()

        def fused_backward(
            self, module: nn.Module, x: torch.Tensor, out: Any, relevance: torch.Tensor
        ) -> torch.Tensor | None:
            return _relevance_of_terms(self, module, x, out, relevance, terms, stabilizer)

    ClosedForm.__name__ = ClosedForm.__qualname__ = f"ClosedForm{base.__name__}"
    return ClosedForm()


def _relevance_of_terms(
    rule: Any,
    module: nn.Module,
    x: torch.Tensor,
    out: torch.Tensor | None,
    relevance: torch.Tensor,
    terms: tuple[Term, ...],
    stabilizer: float,
) -> torch.Tensor | None:
    """The sum of ``terms``, summed in Zennit's order: the input relevance ``x.shape``
    (``x`` ``(B, C_in, ...)``, ``out`` and ``relevance`` ``(B, C_out, ...)``, ``out``
    ``None`` where not kept); ``None`` (Zennit's passes run) where the module is not
    PyTorch's own convolution or linear layer.

    On ``x >= 0`` (after a ReLU) the ``x-`` passes have a zero input and no bias: they
    give zero and hand zero on, so they are left out.
    """
    direct = direct_linear(module)
    if direct is None or x.numel() == 0:
        return None
    forward, input_gradient = direct
    if bool(x.min() >= 0):
        parts = {POSITIVE: x}
    else:
        parts = {POSITIVE: x.clamp(min=0), NEGATIVE: x.clamp(max=0)}
    if out is None and any(term.mask for term in terms):
        out = forward(module, x, {})  # changed in place since, or not kept
    result = None
    for term in terms:
        passes = [  # (x+ or x-, its modified parameters)
            (parts[part], modified_params(rule.param_modifiers[modifier], module))
            for part, modifier in term.passes
            if part in parts
        ]
        z = forward(module, *passes[0])
        for x_part, params in passes[1:]:
            z.add_(forward(module, x_part, params))
        # Zennit's z + eps sign(z), sign(0) = 1, is z + eps where z >= 0 (-0.0 included)
        share = z.add_(stabilizer) if term.non_negative else stabilize(z, stabilizer)
        share = torch.div(relevance, share, out=share)
        if term.mask:
            share.mul_(out > 0 if term.mask > 0 else out < 0)
        # Zennit's reducers: gamma and z+ sum every pass's x_p * gradient_p left to right
        # (a term of coefficient 1 goes on the running sum); alpha-beta sums each term
        # alone, then ``alpha * first - beta * second``
        sum_of_term = None if term.coefficient != 1 else result
        for x_part, params in passes:
            weight = params.get("weight", module.weight)
            gradient = input_gradient(module, x_part, weight, share).mul_(x_part)
            sum_of_term = gradient if sum_of_term is None else sum_of_term.add_(gradient)
        if term.coefficient != 1:
            sum_of_term.mul_(term.coefficient)
            result = sum_of_term if result is None else result.add_(sum_of_term)
        else:
            result = sum_of_term
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
