"""AttnLRP and CP-LRP rules as gradient modifications, put on one model for one call.

Both methods are computed as LXT computes them ("efficient" LXT, Achtibat et al. 2024,
Sec. 3.4): every rule is written as a change of the *gradient* of one operation, so
that after one forward and one backward pass the relevance of the input is
``input * grad``. Each change keeps the module's forward value exactly and replaces
only the backward (`_Rule`: a copy of the output forward, the rule's gradient backward,
with the work done in the backward pass only):

- **LayerNorm / RMSNorm** (identity rule on the normalisation, AttnLRP Sec. 3.3.2):
  ``(x - mean(x)) / stop_grad(std(x)) * w + b``; RMSNorm ``x * stop_grad(rsqrt(.)) * w``.
- **element-wise activations** (GELU, SiLU, ...; identity rule, eq. 9):
  ``x * stop_grad(f(x) / x)``.
- **softmax** (eq. 13, ``R_x = x * (R_s - s * sum(R_s))``): this *is* gradient x input of
  the plain softmax, so nothing changes (``tests/test_attnlrp.py`` checks the equation).
- **attention matmuls** (uniform rule, eq. 7: a bilinear product gives each factor half
  the relevance): ``q, k`` get 1/4 of their gradient, ``v`` 1/2, as LXT's
  ``divide_gradient(query, 4)``, ``(key, 4)``, ``(value, 2)``; where and how, see
  `_attention_hooks`. **CP-LRP** (Ali et al. 2022): the probabilities are constants.
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
from .._stabilizer import stabilize

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


# ------------------------------------------------------------------ module rules
# Each rule does its work in the backward pass only: the forward returns the module's
# own output (a copy, so later in-place ops of the model cannot change what the
# backward reads), and the backward maps the output gradient to the input gradient.
class _Rule(torch.autograd.Function):
    """``value`` forward; backward ``grad_source = rule(grad, *saved)`` (no other input)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, source: torch.Tensor, value: torch.Tensor, rule: Callable[..., Any], *saved: Any
    ) -> torch.Tensor:
        ctx.rule, ctx.saved = rule, saved
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        return (ctx.rule(grad, *ctx.saved), None, None, *([None] * len(ctx.saved)))


def _identity_gradient(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return grad * torch.where(x == 0, torch.zeros_like(out), out / x)


def _layer_norm_gradient(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, eps: float, dims: tuple
) -> torch.Tensor:
    """Gradient of ``(x - mean(x)) / c * w`` with ``c = std(x)`` held constant."""
    std = (x.var(dim=dims, unbiased=False, keepdim=True) + eps).sqrt()
    scaled = grad * weight if weight is not None else grad
    return ((scaled - scaled.mean(dim=dims, keepdim=True)) / std).to(grad.dtype)


def _rms_norm_gradient(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, eps: float, dims: tuple
) -> torch.Tensor:
    """Gradient of ``x * c * w`` with ``c = rsqrt(mean(x^2) + eps)`` held constant."""
    scaled = grad * weight if weight is not None else grad
    return (scaled * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps)).to(grad.dtype)


def _epsilon_gradient(grad: torch.Tensor, z: torch.Tensor, epsilon: float) -> torch.Tensor:
    return grad * z / stabilize(z, epsilon)


def _halve_gradient(grad: torch.Tensor) -> torch.Tensor:
    return 0.5 * grad


def _live(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad


def _layer_norm_rule(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Any:
    x = args[0]
    if not _live(x):
        return None
    dims = tuple(range(-len(module.normalized_shape), 0))
    weight = None if module.weight is None else module.weight.detach()
    return _Rule.apply(x, out, _layer_norm_gradient, x.detach(), weight, module.eps, dims)


def _rms_norm_rule(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Any:
    x = args[0]
    if not _live(x):
        return None
    dims = tuple(range(-len(module.normalized_shape), 0))
    weight = None if module.weight is None else module.weight.detach()
    eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
    return _Rule.apply(x, out, _rms_norm_gradient, x.detach(), weight, eps, dims)


def _identity_rule(_module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Any:
    x = args[0]
    if not _live(x):
        return None
    return _Rule.apply(x, out, _identity_gradient, x.detach(), out.detach())


def _halve_output(_module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Any:
    if not _live(out):
        return None
    return _Rule.apply(out, out, _halve_gradient)


def _detach_output(_module: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    return out.detach()


def _halve_input(_module: nn.Module, args: tuple[Any, ...]) -> Any:
    if not _live(args[0]):
        return None
    return (_Rule.apply(args[0], args[0], _halve_gradient), *args[1:])


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
        if self.rule == "epsilon":  # the output gradient times z / (z + eps sign z)
            return _Rule.apply(out, out, _epsilon_gradient, out.detach(), self.epsilon)
        weight, bias = call[1], call[2]
        call[1] = weight + self.gamma * weight.clamp(min=0)
        if bias is not None:
            call[2] = bias + self.gamma * bias.clamp(min=0)
        z_gamma = func(*call, **kwargs)
        return with_gradient(out, z_gamma * (out / stabilize(z_gamma, self.epsilon)).detach())


# ------------------------------------------------------------------ attention
def _attention_hooks(module: nn.Module, variant: Variant) -> list[Any]:
    """The uniform rule (AttnLRP) or constant probabilities (CP-LRP) on one attention.

    Where ``q`` and ``k`` pass through modules of their own (``q_norm`` / ``k_norm``,
    identities unless the model normalises them: timm's ViT and EVA attention), the
    rules act on them as LXT's attention wrapper does, so timm's fused
    ``scaled_dot_product_attention`` keeps running (its gradient through the softmax is
    the softmax rule): AttnLRP halves the module input (``v``: 1/2) and again ``q`` and
    ``k`` (1/4); CP-LRP detaches ``q`` and ``k``. Elsewhere (BEiT, CaiT, Swin) the
    explicit path runs (``fused_attn`` off for the call) and the rules act on the
    probabilities after ``attn_drop``: halved, with the input halved too, or detached.
    """
    q_norm, k_norm = getattr(module, "q_norm", None), getattr(module, "k_norm", None)
    handles = []
    if variant == "attnlrp":
        handles.append(module.register_forward_pre_hook(_halve_input))
    on_output = _halve_output if variant == "attnlrp" else _detach_output
    if isinstance(q_norm, nn.Module) and isinstance(k_norm, nn.Module):
        handles += [q_norm.register_forward_hook(on_output)]
        handles += [k_norm.register_forward_hook(on_output)]
        return handles
    if hasattr(module, "fused_attn"):  # the explicit path, where attn_drop sees A
        module.fused_attn = False
    handles.append(module.attn_drop.register_forward_hook(on_output))
    return handles


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
        # norms and activations first: a q_norm / k_norm LayerNorm's rule must see the
        # module's own output, and the attention hooks below then act on the rule's
        for _, module in layout.layer_norms:
            handles.append(module.register_forward_hook(_layer_norm_rule))
        for _, module in layout.rms_norms:
            handles.append(module.register_forward_hook(_rms_norm_rule))
        for _, module in layout.activations:
            if variant == "attnlrp" or id(module) not in gates:
                handles.append(module.register_forward_hook(_identity_rule))
        for _, module in layout.attention:
            handles.extend(_attention_hooks(module, variant))
        for _, module in layout.gated:
            if variant == "attnlrp":
                handles.append(module.fc2.register_forward_pre_hook(_halve_input))
            else:
                handles.append(module.act.register_forward_hook(_detach_output))
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
