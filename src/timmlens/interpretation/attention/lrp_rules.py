"""AttnLRP and CP-LRP rules as gradient modifications, put on one model for one call.

Both methods are computed as LXT computes them ("efficient" LXT, Achtibat et al. 2024,
Sec. 3.4): every rule is written as a change of the *gradient* of one operation, so
that after one forward and one backward pass the relevance of the input is
``input * grad``. Each change keeps the forward value exactly
(``value.detach() + surrogate - surrogate.detach()``) and only replaces the gradient by
the surrogate's:

- **LayerNorm / RMSNorm** (identity rule on the normalisation, AttnLRP Sec. 3.3.2):
  ``(x - mean(x)) / stop_grad(std(x)) * w + b``; RMSNorm ``x * stop_grad(rsqrt(.)) * w``.
- **element-wise activations** (GELU, SiLU, ...; identity rule, eq. 9):
  ``x * stop_grad(f(x) / x)``.
- **softmax** (eq. 13, ``R_x = x * (R_s - s * sum(R_s))``): this *is* gradient x input of
  the plain softmax, so nothing changes (``tests/test_attnlrp.py`` checks the equation).
- **attention matmuls** (uniform rule, eq. 7: a bilinear product gives each factor half
  the relevance): the gradient of the probabilities after ``attn_drop`` is halved (``A @
  V``) and so is the gradient of the attention module's input, which reaches ``q``,
  ``k`` and ``v`` only through linear maps: ``q, k`` get 1/4, ``v`` 1/2, as LXT's
  ``divide_gradient(query, 4)``, ``(key, 4)``, ``(value, 2)``.
  **CP-LRP** (Ali et al. 2022): the probabilities are detached instead (no halving).
- **gated MLPs** (SwiGLU, GLU): the product is halved (uniform rule; AttnLRP) or the
  gate is detached (CP-LRP), as LXT's ``gated_mlp_forward`` / ``cp_gated_mlp_forward``.
- **linear layers** (``nn.Linear``, ``nn.Conv2d``, matched by their weight in every
  ``F.linear`` / ``F.conv2d`` call so BEiT's and EVA's ``F.linear(x, qkv.weight, bias)``
  is covered): ``"zero"`` plain gradient (LRP-0, LXT without a Zennit composite);
  ``"epsilon"`` ``z / (z + eps * sign(z))`` on the output gradient; ``"gamma"`` the
  gradient of ``x (W + gamma W^+)^T`` scaled by ``z / z_gamma`` (Zennit's ``Gamma``).

Everything is per instance and per call: forward hooks removed and ``fused_attn``
flags restored in ``finally``; the linear rules are a ``TorchFunctionMode``, which is
thread-local, and only rules calls whose weight is one of this model's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ...adapters.relevance_rules import RelevanceLayout

Variant = Literal["attnlrp", "cplrp"]
LinearRule = Literal["epsilon", "gamma", "zero"]
LINEAR_RULES: tuple[str, ...] = ("epsilon", "gamma", "zero")
_MISSING = object()


def with_gradient(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, the gradient of ``surrogate`` in the backward.

    ``surrogate`` must have (up to rounding) the same value; the result's value is
    ``value`` bit for bit because ``surrogate - surrogate.detach()`` is exactly zero.
    """
    return value.detach() + (surrogate - surrogate.detach())


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = 1``, so the result is never zero."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


# ------------------------------------------------------------------ module rules
def _layer_norm_rule(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    x = args[0]
    dims = tuple(range(-len(module.normalized_shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    y = (x - mean) / (var + module.eps).sqrt().detach()
    if module.weight is not None:
        y = y * module.weight
    if module.bias is not None:
        y = y + module.bias
    return with_gradient(out, y.to(out.dtype))


def _rms_norm_rule(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    x = args[0]
    dims = tuple(range(-len(module.normalized_shape), 0))
    y = x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + module.eps).detach()
    if module.weight is not None:
        y = y * module.weight
    return with_gradient(out, y.to(out.dtype))


def _identity_rule(_module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    x = args[0]
    ratio = torch.where(x == 0, torch.zeros_like(out), out / x).detach()
    return with_gradient(out, x * ratio)


def _halve_output(_module: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    return with_gradient(out, 0.5 * out)


def _detach_output(_module: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    return out.detach()


def _halve_input(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (with_gradient(args[0], 0.5 * args[0]), *args[1:])


# ------------------------------------------------------------------ linear rules
class LinearRules(TorchFunctionMode):
    """The epsilon or gamma rule on every ``F.linear`` / ``F.conv2d`` with a known weight.

    Args:
        weights: the ``nn.Linear`` / ``nn.Conv2d`` weights to rule (by identity).
        rule: ``"epsilon"`` or ``"gamma"``.
        epsilon: the stabiliser (> 0).
        gamma: the gamma rule's weight on the positive parameters (>= 0).
    """

    def __init__(self, weights: list[torch.Tensor], rule: str, epsilon: float, gamma: float):
        super().__init__()
        self.weights = {id(w) for w in weights}
        self.rule, self.epsilon, self.gamma = rule, epsilon, gamma

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func not in (F.linear, F.conv2d):
            return out
        call = list(args) + [None] * (3 - len(args))
        for position, key in ((1, "weight"), (2, "bias")):
            if key in kwargs:
                call[position] = kwargs.pop(key)
        if id(call[1]) not in self.weights or not out.requires_grad:
            return out
        if self.rule == "epsilon":
            return with_gradient(out, out * (out / stabilize(out, self.epsilon)).detach())
        weight, bias = call[1], call[2]
        call[1] = weight + self.gamma * weight.clamp(min=0)
        if bias is not None:
            call[2] = bias + self.gamma * bias.clamp(min=0)
        z_gamma = func(*call, **kwargs)
        return with_gradient(out, z_gamma * (out / stabilize(z_gamma, self.epsilon)).detach())


# ------------------------------------------------------------------ the context
@contextmanager
def relevance_rules(
    layout: RelevanceLayout,
    variant: Variant,
    linear_rule: LinearRule = "epsilon",
    epsilon: float = 1e-6,
    gamma: float = 0.05,
) -> Iterator[None]:
    """Put the ``variant``'s rules on the modules of ``layout`` while the block runs.

    A forward pass inside the block computes what the model computes; its backward
    pass gives gradients whose product with the input is the LRP relevance. On exit
    (also after an exception) every hook is removed, every ``fused_attn`` restored
    exactly and the linear-rule mode left.
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []
    flags = [(m, m.__dict__.get("fused_attn", _MISSING)) for _, m in layout.attention]
    gates = {id(m.act) for _, m in layout.gated}
    mode = None
    try:
        for _, module in layout.attention:
            if hasattr(module, "fused_attn"):  # the explicit path, where attn_drop sees A
                module.fused_attn = False
            if variant == "attnlrp":
                handles.append(module.attn_drop.register_forward_hook(_halve_output))
                handles.append(module.register_forward_pre_hook(_halve_input))
            else:
                handles.append(module.attn_drop.register_forward_hook(_detach_output))
        for _, module in layout.gated:
            if variant == "attnlrp":
                handles.append(module.fc2.register_forward_pre_hook(_halve_input))
            else:
                handles.append(module.act.register_forward_hook(_detach_output))
        for _, module in layout.layer_norms:
            handles.append(module.register_forward_hook(_layer_norm_rule))
        for _, module in layout.rms_norms:
            handles.append(module.register_forward_hook(_rms_norm_rule))
        for _, module in layout.activations:
            if variant == "attnlrp" or id(module) not in gates:
                handles.append(module.register_forward_hook(_identity_rule))
        if linear_rule != "zero":
            mode = LinearRules([m.weight for _, m in layout.linears], linear_rule, epsilon, gamma)
            mode.__enter__()
        yield
    finally:
        if mode is not None:
            mode.__exit__(None, None, None)
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            if flag is _MISSING:
                module.__dict__.pop("fused_attn", None)
            else:
                module.fused_attn = flag
