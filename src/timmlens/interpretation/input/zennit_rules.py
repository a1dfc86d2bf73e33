"""LRP for timm CNNs through Zennit: its composites, and the canonizers timm's blocks need.

Zennit (Anders et al., "Software for dataset-wide XAI", 2021) attaches LRP rules to
modules by type (a *composite*) after *canonizers* have put the model in a form the rules
can read. Its canonizers are written per torchvision model; timm's dozens of block
classes get three generic pieces here instead, none of which knows a family:

* **BatchNorm after a convolution, from the data flow** (`batchnorm_pairs`): a BatchNorm
  is merged into the convolution whose output it reads (Zennit's ``NamedMergeBatchNorm``),
  the pairs found by one probe forward rather than by module order (Zennit's
  ``SequentialMergeBatchNorm``, which would pair a pre-activation BatchNorm with the
  previous block's last convolution). A BatchNorm that reads anything else (a
  concatenation, an activation: DenseNet, ConvMixer) keeps Zennit's ``Pass`` rule;
* **the arithmetic between modules** (`ArithmeticCanonizer`): what a block's ``forward``
  computes outside its children is plain autograd, which hands a residual add's whole
  relevance to both branches and scales a gated tensor's relevance by the gate. For the
  duration of the model's forward a thread-local ``TorchFunctionMode`` rules every sum
  of two tensors with Zennit's ``Norm`` rule (relevance split in proportion to each
  summand, as Zennit's ``Sum`` module does in its torchvision ``ResNetCanonizer``) and
  every product with a per-channel factor (squeeze-excite gates, ConvNeXt's layer scale)
  as signal-takes-all (the factor is a weight: the full-size tensor keeps the relevance);
  two full-size factors share it equally (AttnLRP's uniform rule). Concatenations,
  splits and reshapes route relevance by position already;
* **LayerNorm** (`LayerNormRule`): AttnLRP's rule (Achtibat et al., ICML 2024, Sec.
  3.3.2; Ali et al., ICML 2022): the normaliser ``std(x)`` is held constant, so the norm is
  the linear map ``(x - mean(x)) / std * w + b``, ruled with epsilon: the bias ``b`` keeps
  its share, the centring conserves.

Which modules' forwards do only that arithmetic is a fact about timm's blocks, kept with
the adapters (`timmlens.adapters.lrp_blocks`); other modules refuse the model up front.
Elementwise activations pass relevance on unchanged (``Pass``); timm's
``FastAdaptiveAvgPool`` gets the ``Norm`` rule Zennit gives average pooling.

Everything is undone when the call ends (Zennit removes its hooks and canonizers;
`composite_applied` does so in ``finally``): parameters are restored to the very
tensors they were, and only the instance explained is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ...adapters.lrp_blocks import is_lrp_container, normalised_dims
from .._stabilizer import stabilize
from .zennit_fused import fused
from .zennit_shortcuts import (
    closed_form_alpha_beta,
    closed_form_gamma,
    closed_form_zplus,
    counted_flat,
)

__all__ = [
    "COMPOSITES",
    "ArithmeticCanonizer",
    "LayerNormRule",
    "batchnorm_pairs",
    "canonizers",
    "composite_applied",
    "make_composite",
    "pass_types",
    "uncovered_modules",
]

#: the composites ``lrp`` offers, by name: Zennit's classes of the same names
COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")


def pass_types() -> tuple[type[nn.Module], ...]:
    """Elementwise module types whose relevance passes through unchanged (``Pass``)."""
    from timm.layers import activations
    from zennit.types import Activation

    timm_acts = tuple(
        getattr(activations, name)
        for name in (
            "Swish",
            "Mish",
            "Sigmoid",
            "Tanh",
            "HardSwish",
            "HardSigmoid",
            "HardMish",
            "PReLU",
            "GELU",
            "GELUTanh",
            "QuickGELU",
        )
        if hasattr(activations, name)
    )
    return (Activation, *timm_acts)  # type: ignore[return-value]


def _norm_types() -> tuple[type[nn.Module], ...]:
    """Average pools Zennit's ``AvgPool`` type misses: they get the ``Norm`` rule."""
    from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool

    return (FastAdaptiveAvgPool,)


# ------------------------------------------------------------------ BatchNorm pairs
def batchnorm_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[tuple[str], str]]:
    """``[((conv name,), batchnorm name), ...]``: each BatchNorm that reads a conv's output.

    One no-grad forward of ``probe`` ``(1, C, H, W)`` records which module produced each
    BatchNorm's input; names are relative to ``model`` (``NamedMergeBatchNorm``'s format).
    A BatchNorm run on anything else (the sum of a residual add, a concatenation, an
    activation) is left alone: Zennit's composites give it the ``Pass`` rule.
    """
    from zennit.types import BatchNorm, Convolution
    from zennit.types import Linear as LinearType

    names = {module: name for name, module in model.named_modules()}
    produced: dict[int, tuple[torch.Tensor, nn.Module]] = {}
    pairs: list[tuple[tuple[str], str]] = []
    runs: dict[nn.Module, int] = {}

    def after_linear(module: nn.Module, _args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):  # the tensor is kept so its id stays unique
            produced[id(output)] = (output, module)

    def before_norm(module: nn.Module, args: tuple[Any, ...]) -> None:
        runs[module] = runs.get(module, 0) + 1
        source = produced.get(id(args[0])) if args else None
        if source is not None and source[0] is args[0] and not isinstance(source[1], BatchNorm):
            pairs.append(((names[source[1]],), names[module]))

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, BatchNorm):
                handles.append(module.register_forward_pre_hook(before_norm))
            elif isinstance(module, (Convolution, LinearType)) and not isinstance(
                module, nn.ConvTranspose2d
            ):
                handles.append(module.register_forward_hook(after_linear))
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    # a BatchNorm run twice would be merged for one of its inputs only: leave it alone
    return [pair for pair in pairs if runs[_lookup(model, pair[1])] == 1]


def _lookup(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


# ---------------------------------------------------------------- arithmetic rules
class _NormSum(torch.autograd.Function):
    """``a + b`` (``a += b`` with ``in_place``); backward: Zennit's ``Norm`` rule,
    ``R_a = a R / (a + b)`` (stabilised), ``a`` as it was before the sum."""

    @staticmethod
    def forward(
        ctx: Any, a: torch.Tensor, b: torch.Tensor, epsilon: float, in_place: bool
    ) -> torch.Tensor:
        if in_place:
            # the rule reads ``a`` as it was; autograd is told ``a`` now holds the sum
            before = a.clone()
            out = a.add_(b)
            ctx.mark_dirty(a)
        else:
            before = a
            out = a + b
        ctx.save_for_backward(before, b)
        # the sum is kept as a detached alias with its version, not saved: the model may
        # change it in place later (``x += y; x += z``, ``x.relu_()``), as plain autograd
        # allows; it is then recomputed from the summands
        ctx.out, ctx.version = out.detach(), out._version
        ctx.epsilon = epsilon
        return out

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple[Any, ...]:
        a, b = ctx.saved_tensors
        out = ctx.out
        if out._version != ctx.version:
            out = torch.add(a, b).to(out.dtype)
        stabilized = stabilize(out, ctx.epsilon)
        share = torch.div(relevance, stabilized, out=stabilized)
        need_a, need_b = ctx.needs_input_grad[:2]
        grad_a = (a * share).sum_to_size(a.shape) if need_a else None
        grad_b = share.mul_(b).sum_to_size(b.shape) if need_b else None
        return grad_a, grad_b, None, None


class _Product(torch.autograd.Function):
    """``a * b``; backward: the relevance to the full-size factors, shared equally.

    A factor broadcast over the output (a gate ``(B, C, 1, 1)``, a layer scale ``(C,)``)
    is a weight, not a signal: it is passed in detached and gets none.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, sharers: int) -> torch.Tensor:
        ctx.shapes, ctx.sharers = (a.shape, b.shape), sharers
        return a * b

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple[Any, ...]:
        part = relevance / ctx.sharers
        grads = [
            part.sum_to_size(shape) if needed else None
            for shape, needed in zip(ctx.shapes, ctx.needs_input_grad[:2], strict=True)
        ]
        return grads[0], grads[1], None


_ADDS = frozenset({torch.add, torch.Tensor.add, torch.Tensor.__radd__})
_MULS = frozenset({torch.mul, torch.multiply, torch.Tensor.mul, torch.Tensor.__rmul__})
#: in place: ``x += y`` reaches the mode as ``add_``
_IN_PLACE = {torch.Tensor.add_: torch.add, torch.Tensor.mul_: torch.mul}


def _ruled_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    size = torch.broadcast_shapes(a.shape, b.shape).numel()
    full = [x.numel() == size for x in (a, b)]
    if not any(full):  # two broadcast factors: both carry signal
        full = [True, True]
    a = a if full[0] else a.detach()
    b = b if full[1] else b.detach()
    return _Product.apply(a, b, sum(full))


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class _ArithmeticRules(TorchFunctionMode):
    """Sums and products of two tensors get LRP rules (thread-local, for one forward)."""

    def __init__(self, epsilon: float) -> None:
        super().__init__()
        self.epsilon = epsilon

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        base = _IN_PLACE.get(func, func)
        if (base in _ADDS or base in _MULS) and self._ruled(args, kwargs):
            a, b = args[0], args[1]
            in_place = func in _IN_PLACE
            # in place, the rule reads ``a`` as it was and ``a`` then takes the value
            if base in _ADDS:
                alpha = kwargs.get("alpha", 1)
                b = b if alpha == 1 else b * alpha
                # autograd rewrites a view's base; ``b`` in ``a``'s memory (``x += x``)
                # would be read as the sum in the backward
                if in_place and (a._base is not None or _shares_memory(a, b)):
                    return a.copy_(_NormSum.apply(a.clone(), b.clone(), self.epsilon, False))
                result = _NormSum.apply(a, b, self.epsilon, in_place)
                if in_place:  # autograd bumps a dirty tensor's version after the forward
                    result.grad_fn.version = result._version
                return result
            if in_place:
                return a.copy_(_ruled_product(a.clone(), b))
            return _ruled_product(a, b)
        return func(*args, **kwargs)

    @staticmethod
    def _ruled(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if len(args) < 2 or "out" in kwargs or not torch.is_grad_enabled():
            return False
        a, b = args[0], args[1]
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.is_floating_point()
            and b.is_floating_point()
            and (a.requires_grad or b.requires_grad)
        )


class ArithmeticCanonizer:
    """A Zennit canonizer: the model's forward runs under `_ArithmeticRules`.

    Registered on the root module only: its instance ``forward`` is wrapped for the call
    (the class is untouched; the mode is thread-local) and restored on ``remove``.

    Args:
        epsilon: the ``Norm`` rule's stabiliser (Zennit's default ``1e-6``).
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon
        self.undo: Callable[[], None] | None = None

    def apply(self, root_module: nn.Module) -> list[ArithmeticCanonizer]:
        instance = type(self)(self.epsilon)
        instance.register(root_module)
        return [instance]

    def register(self, module: nn.Module) -> None:
        own = vars(module).get("forward")
        original = module.forward
        epsilon = self.epsilon

        def forward(*args: Any, **kwargs: Any) -> Any:
            with _ArithmeticRules(epsilon):
                return original(*args, **kwargs)

        module.forward = forward  # type: ignore[method-assign]

        def undo() -> None:
            if own is None:
                del module.forward
            else:
                module.forward = own  # type: ignore[method-assign]

        self.undo = undo

    def remove(self) -> None:
        if self.undo is not None:
            undo, self.undo = self.undo, None
            undo()

    def copy(self) -> ArithmeticCanonizer:
        return type(self)(self.epsilon)


# --------------------------------------------------------------------- LayerNorm
def _held_std_layer_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s output with ``std(x)`` a constant: ``(x - mean) / std * w + b``."""
    dims = normalised_dims(module, x.dim())
    std = (x.detach().var(dim=dims, unbiased=False, keepdim=True) + module.eps).sqrt()
    y = (x - x.mean(dim=dims, keepdim=True)) / std
    shape = [1] * x.dim()
    for dim in dims:
        shape[dim] = x.shape[dim]
    if module.weight is not None:
        y = y * module.weight.view(shape)
    if module.bias is not None:
        y = y + module.bias.view(shape)
    return y


def _zennit_hook() -> type:
    from zennit.core import Hook

    return Hook


class LayerNormRule:
    """AttnLRP's LayerNorm rule as a Zennit hook: ``std`` constant, epsilon on the rest.

    ``R_x = x * J^T (R / stab(y))`` with ``J`` the Jacobian of ``(x - mean(x)) / std * w +
    b`` at fixed ``std`` (Achtibat et al. 2024, Sec. 3.3.2, the identity rule on the
    division; Ali et al. 2022 detach ``std`` the same way). Built lazily on Zennit's
    ``Hook`` (`make`), so importing this module does not import Zennit.
    """

    @staticmethod
    def make(epsilon: float = 1e-6) -> Any:
        hook_base = _zennit_hook()

        class _Rule(hook_base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                super().__init__()
                self.epsilon = epsilon

            def forward(self, module: nn.Module, input: Any, output: Any) -> None:
                self.stored_tensors["input"] = input

            def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
                x = self.stored_tensors["input"][0].detach().requires_grad_()
                relevance = grad_output[0]
                with torch.enable_grad():
                    y = _held_std_layer_norm(module, x)
                    (gradient,) = torch.autograd.grad(
                        y, x, grad_outputs=relevance / stabilize(y.detach(), self.epsilon)
                    )
                return (x.detach() * gradient,)

            def copy(self) -> Any:
                return type(self)()

        return _Rule()


# ---------------------------------------------------------------------- composites
def canonizers(pairs: list[tuple[tuple[str], str]]) -> list[Any]:
    """The canonizers of a model with BatchNorm pairs ``pairs`` (`batchnorm_pairs`)."""
    from zennit.canonizers import NamedMergeBatchNorm

    return [NamedMergeBatchNorm(pairs), ArithmeticCanonizer()]


def layer_map(epsilon: float = 1e-6) -> list[tuple[tuple[type[nn.Module], ...], Any]]:
    """The rules timm needs before Zennit's own layer map (the first match wins)."""
    from zennit.rules import Norm, Pass

    return [
        ((nn.LayerNorm,), LayerNormRule.make(epsilon)),
        (pass_types(), Pass()),
        (_norm_types(), Norm()),
    ]


def make_composite(
    name: str,
    pairs: list[tuple[tuple[str], str]],
    *,
    epsilon: float = 1e-6,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Any:
    """Zennit's composite ``name`` with timm's canonizers and layer map.

    Args:
        name: one of `COMPOSITES`.
        pairs: ``batchnorm_pairs`` of the model the composite will be applied to.
        epsilon: the stabiliser of the epsilon rule (Zennit's default ``1e-6``).
        bounds: ``(low, high)``, each ``(1, C, 1, 1)``: the lowest and highest input
            values, for ``epsilon_gamma_box``'s ZBox rule on the first layer.
    """
    from zennit import composites
    from zennit.types import Convolution, Linear

    options = {
        "epsilon": epsilon,
        "layer_map": layer_map(epsilon),
        "canonizers": canonizers(pairs),
    }
    # each rule runs as its layer's backward (`zennit_fused`): Zennit's equations, one
    # forward and one backward; the convolution rules and the first layer's Flat with
    # their closed forms (`zennit_shortcuts`), at the composites' own parameters
    if name == "epsilon_plus_flat":
        options["layer_map"] += [(Convolution, closed_form_zplus())]
        first_map = [(Linear, counted_flat())]
        return fused(composites.EpsilonPlusFlat(first_map=first_map, **options))
    if name == "epsilon_alpha2_beta1":
        options["layer_map"] += [(Convolution, closed_form_alpha_beta(alpha=2.0, beta=1.0))]
        return fused(composites.EpsilonAlpha2Beta1(**options))
    if name == "epsilon_gamma_box":
        if bounds is None:
            raise ValueError("epsilon_gamma_box needs the input bounds (low, high).")
        low, high = bounds
        options["layer_map"] += [(Convolution, closed_form_gamma(gamma=0.25))]
        return fused(composites.EpsilonGammaBox(low=low, high=high, **options))
    raise ValueError(f"unknown composite {name!r}: expected one of {', '.join(COMPOSITES)}.")


@contextmanager
def composite_applied(composite: Any, model: nn.Module) -> Iterator[None]:
    """Zennit's hooks and canonizers on ``model`` for the block, removed in ``finally``."""
    try:
        composite.register(model)
        yield
    finally:
        composite.remove()


# ------------------------------------------------------------------------ coverage
def _leaf_types() -> tuple[type[nn.Module], ...]:
    """Leaves with a rule (conv, linear, norms, pools, sum) or that compute nothing in eval."""
    from timm.layers import DropPath
    from zennit.layer import Sum
    from zennit.types import AvgPool, BatchNorm, Convolution, Linear, MaxPool

    return (
        Convolution,
        Linear,
        BatchNorm,
        nn.LayerNorm,
        AvgPool,
        MaxPool,
        Sum,
        DropPath,
        nn.Identity,
        nn.Dropout,
        nn.Flatten,
    )


def uncovered_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` no rule or canonizer covers (empty: LRP can run)."""
    from zennit.types import BatchNorm

    known = pass_types() + _norm_types() + _leaf_types()
    # The top-level forward (and, through a wrapper such as ImageClassifier, the one
    # inside) is trusted to run its modules in turn, as Captum's LRP trusts it: flatten
    # or reshape there is fine; a parameter of its own (a position embedding) is not.
    trusted = [model]
    children = list(model.children())
    if len(children) == 1 and next(model.parameters(False), None) is None:
        trusted.append(children[0])
    bad = []
    for module in model.modules():
        if any(module is t for t in trusted) and next(module.parameters(False), None) is None:
            continue
        leaf = next(module.children(), None) is None
        # timm's BatchNormAct2d is a BatchNorm holding its activation
        if isinstance(module, known) and (leaf or isinstance(module, BatchNorm)):
            continue
        if not leaf and is_lrp_container(module):
            continue
        bad.append(module)
    return bad
