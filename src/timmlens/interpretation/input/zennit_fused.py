"""Zennit's rules, each applied as the backward of its layer: one forward, one backward.

Zennit attaches a rule to a module with hooks around it: autograd first computes the
layer's true input gradient, which the hook then throws away, and the hook re-runs the
layer's forward (modified or not) inside the backward to differentiate it with
``autograd.grad``. `fused` keeps Zennit's composites, canonizers and rule objects (their
input, parameter and output modifiers, gradient mapper and reducer: the equations are
Zennit's) but runs each rule as the backward of one ``torch.autograd.Function`` that
replaces its module's forward for the call (`_Ruled`):

* the module's own forward runs once; its true input gradient is never computed;
* a pass of the rule that uses the module unchanged (the epsilon rule, the ``Norm`` rule,
  gamma's reference pass) reads the forward's saved output instead of re-running it;
* a pass whose input is all zeros and whose bias is zero or absent has output zero and
  hands zero relevance on (``ZPlus`` / alpha-beta / gamma's ``x-`` passes after a ReLU),
  and one whose incoming gradient is all zeros (gamma's reference pass) has gradient zero:
  both are skipped;
* convolutions and linear layers of PyTorch's own classes get the input gradient of a pass
  straight from ``aten.convolution_backward`` (a transposed convolution) or a matmul,
  with the pass's modified weights and no autograd graph; other modules (timm's
  ``Conv2dSame``, pools, Zennit's ``Sum``) are differentiated with ``autograd.grad`` as
  Zennit does;
* a rule with a ``fused_backward`` (`zennit_shortcuts`: z+, gamma and alpha-beta, the
  first layer's ``Flat``) computes it in closed form.

The rule objects other than Zennit's ``BasicHook`` (``Pass``, `LayerNormRule`) run their
own ``backward`` on the saved input and the incoming relevance.

Per instance and per call: a module's ``forward`` is replaced on the instance only (never
its class) and restored on ``remove``; each call of a module saves its own input, so a
module run twice is ruled for each run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "CONV_DIRECT",
    "FusedRule",
    "conv_input_gradient",
    "direct_linear",
    "fused",
    "modified_params",
]

#: modules whose output at a zero input is their bias (or zero)
_AFFINE = (nn.Linear, nn.modules.conv._ConvNd)

#: PyTorch's own convolutions: forward ``_conv_forward(x, w, b)``, input gradient
#: ``aten.convolution_backward`` (what ``torch.nn.grad.conv2d_input`` runs)
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fused(composite: Any) -> Any:
    """``composite`` (a Zennit ``Composite``) with each rule it maps wrapped in `FusedRule`.

    Returns the same composite object: its ``module_map`` is replaced, nothing else.
    """
    module_map = composite.module_map

    def fused_map(ctx: dict[str, Any], name: str, module: nn.Module) -> FusedRule | None:
        template = module_map(ctx, name, module)
        return None if template is None else FusedRule(template)

    composite.module_map = fused_map
    return composite


class FusedRule:
    """A Zennit rule (a ``Hook``) run as its module's backward (`_Ruled`).

    Zennit's ``Composite`` calls ``copy`` on the template and ``register`` on each module,
    and ``remove`` on the handle ``register`` returns.
    """

    def __init__(self, hook: Any) -> None:
        from zennit.rules import AlphaBeta, Flat, Pass, ZPlus

        self.hook = hook
        #: Zennit's ``Pass``: the relevance goes on unchanged, nothing is kept
        self.passes_on = type(hook) is Pass
        #: the rule's passes all modify the weights (z+, alpha-beta, flat): none reuses the
        #: forward's output, which is then not kept (less memory held for the backward)
        self.reads_output = not isinstance(hook, (ZPlus, AlphaBeta, Flat))
        #: set while the rule runs, so a forward it calls is the module's own
        self.inside = False

    def copy(self) -> FusedRule:
        return FusedRule(self.hook.copy())

    def remove(self) -> None:
        self.hook.remove()

    def register(self, module: nn.Module) -> _Restore:
        own = vars(module).get("forward")
        original = module.forward
        rule = self
        # an in-place module (``ReLU(inplace=True)``) would overwrite a tensor that an
        # earlier rule saved: it runs out of place for the call (Zennit's hooks copy its
        # input instead: one more pass over the tensor)
        inplace = vars(module).get("inplace") is True
        if inplace:
            module.inplace = False

        def forward(*args: Any, **kwargs: Any) -> Any:
            if (
                rule.inside
                or kwargs
                or len(args) != 1
                or not isinstance(args[0], torch.Tensor)
                or not (torch.is_grad_enabled() and args[0].requires_grad)
            ):
                return original(*args, **kwargs)
            return _Ruled.apply(args[0], (rule, module, original))

        module.forward = forward  # type: ignore[method-assign]
        return _Restore(module, own, inplace, self)


class _Restore:
    """The handle of a `FusedRule` registration: ``remove`` restores the module."""

    def __init__(self, module: nn.Module, own: Any, inplace: bool, rule: FusedRule) -> None:
        self.module: nn.Module | None = module
        self.own, self.inplace, self.rule = own, inplace, rule

    def remove(self) -> None:
        if self.module is None:
            return
        module, self.module = self.module, None
        if self.own is None:
            vars(module).pop("forward", None)
        else:
            module.forward = self.own  # type: ignore[method-assign]
        if self.inplace:
            module.inplace = True
        self.rule.remove()


class _Ruled(torch.autograd.Function):
    """``module(x)``; backward: the relevance of ``x`` under the module's rule.

    ``setup`` is ``(rule, module, original forward)``. The input and output are
    kept as detached aliases (no reference cycle through the graph) with their versions,
    so a later in-place change is noticed rather than read (a changed output is
    recomputed; a changed input, which Zennit's hooks would have copied, is refused).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, setup: tuple[Any, ...]) -> torch.Tensor:
        rule, module, original = setup
        out = original(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"lrp: {type(module).__name__} returned {type(out).__name__}, but a module "
                f"with an LRP rule must return one tensor."
            )
        ctx.setup = setup
        if not rule.passes_on:  # Zennit's Pass reads neither
            ctx.x, ctx.out = x.detach(), out.detach() if rule.reads_output else None
            ctx.versions = (x._version, out._version)
        return out

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple[torch.Tensor, None]:
        rule, module, original = ctx.setup
        if rule.passes_on:
            return relevance, None
        x, out = ctx.x, ctx.out
        if x._version != ctx.versions[0]:
            raise RuntimeError(
                f"lrp: the input of {type(module).__name__} was changed in place after the "
                f"module read it (by an in-place operation of the model's forward), so its "
                f"rule cannot be computed. Build the model without in-place operations, or "
                f"try another method, e.g. 'ig'."
            )
        if out is not None and out._version != ctx.versions[1]:
            out = None  # changed in place later on: passes recompute it
        rule.inside = True
        try:
            with torch.no_grad():
                result = _relevance(rule.hook, module, original, x, out, relevance)
        finally:
            rule.inside = False
        if result.shape != x.shape:
            raise RuntimeError(
                f"lrp: the rule {type(rule.hook).__name__} on {type(module).__name__} gave "
                f"relevance of shape {tuple(result.shape)} for an input of shape "
                f"{tuple(x.shape)}."
            )
        return result, None


def _relevance(
    hook: Any,
    module: nn.Module,
    original: Callable[..., torch.Tensor],
    x: torch.Tensor,
    out: torch.Tensor | None,
    relevance: torch.Tensor,
) -> torch.Tensor:
    """Relevance ``x.shape`` of ``x`` under ``hook`` for the output's ``relevance``."""
    from zennit.core import BasicHook

    if isinstance(hook, BasicHook):
        shortcut = getattr(hook, "fused_backward", None)
        result = None if shortcut is None else shortcut(module, x, out, relevance)
        if result is not None:
            return result
        return _basic_relevance(hook, module, original, x, out, relevance)
    # Zennit's other hooks (Pass) and ours (LayerNormRule) read the stored input only
    hook.stored_tensors["input"] = (x,)
    hook.stored_tensors["grad_output"] = (relevance,)
    with torch.enable_grad():
        (result,) = hook.backward(module, (x,), (relevance,))
    return result


def modified_params(
    param_mod: Any, module: nn.Module, keys: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """What Zennit's ``ParamMod`` would set ``module``'s parameters to (``keys``: a subset)."""
    from zennit.core import zero_wrap

    param_keys = param_mod.param_keys
    if param_keys is None:
        param_keys = [name for name, _ in module.named_parameters(recurse=False)]
    missing = [key for key in param_keys if not hasattr(module, key)]
    if param_mod.require_params and missing:
        raise RuntimeError(f"Module {module} requires missing parameters: {missing}")
    modifier = zero_wrap(param_mod.zero_params or [])(param_mod.modifier)
    modified = {}
    for key in param_keys:
        if key in missing or (keys is not None and key not in keys):
            continue
        param = getattr(module, key)
        if param is not None:
            modified[key] = modifier(param.data, key)
    return modified


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are the same memory seen the same way (hence equal)."""
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )


class _Pass:
    """One pass of a ``BasicHook``: modified input, output, and how to get its input
    gradient (``None``: by ``autograd.grad``, ``out`` having a graph to ``x``)."""

    def __init__(
        self, x: torch.Tensor, out: torch.Tensor, gradient: Callable[..., Any] | None
    ) -> None:
        self.x, self.out, self.gradient = x, out, gradient


def _basic_relevance(
    hook: Any,
    module: nn.Module,
    original: Callable[..., torch.Tensor],
    x: torch.Tensor,
    out: torch.Tensor | None,
    relevance: torch.Tensor,
) -> torch.Tensor:
    """Zennit's ``BasicHook.backward`` (same modifiers, mapper, reducer), without the
    passes it can skip or read off the forward (module docstring)."""

    direct = direct_linear(module)
    passes = [
        _one_pass(module, original, direct, (x, out, relevance.shape), in_mod(x), mod, out_mod)
        for in_mod, mod, out_mod in zip(
            hook.input_modifiers, hook.param_modifiers, hook.output_modifiers, strict=True
        )
    ]
    grad_outputs = hook.gradient_mapper(relevance, [p.out for p in passes])
    if isinstance(grad_outputs, torch.Tensor):  # one pass: autograd.grad reads it as (it,)
        grad_outputs = (grad_outputs,)
    gradients = _gradients(passes, grad_outputs)
    return hook.reducer([p.x for p in passes], gradients)


def _one_pass(
    module: nn.Module,
    original: Callable[..., torch.Tensor],
    direct: tuple[Callable[..., Any], Callable[..., Any]] | None,
    saved: tuple[torch.Tensor, torch.Tensor | None, torch.Size],
    xi: torch.Tensor,
    param_mod: Any,
    out_mod: Callable[[torch.Tensor], torch.Tensor],
) -> _Pass:
    """One pass of a rule: input ``xi`` (``in_mod(x)``), parameters by ``param_mod``;
    ``saved``: the layer's input ``x``, output (``None``: changed since) and its shape."""
    from zennit.core import ParamMod

    x, out, out_shape = saved
    param_mod = ParamMod.ensure(param_mod)
    plain_output = _is_identity(out_mod, x)
    if direct is not None and plain_output and out is not None and xi is x:
        params = modified_params(param_mod, module)
        if all(_same_tensor(value, getattr(module, key)) for key, value in params.items()):
            return _Pass(xi, out, _direct_gradient(direct[1], module, params))
    # a convolution or linear layer of a zero input gives its bias
    if plain_output and isinstance(module, _AFFINE) and not xi.any():
        bias = modified_params(param_mod, module, ["bias"]).get("bias")
        if bias is None or not bias.any():
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            return _Pass(xi, zero.expand(out_shape), _zero_gradient)
    if direct is None or not plain_output:
        return _autograd_pass(module, original, xi, param_mod, out_mod)
    params = modified_params(param_mod, module)
    output = direct[0](module, xi, params)
    return _Pass(xi, output, _direct_gradient(direct[1], module, params))


def _is_identity(out_mod: Callable[[torch.Tensor], torch.Tensor], probe: torch.Tensor) -> bool:
    """Zennit's output modifiers are ``lambda output: output``: the tensor comes back."""
    return out_mod(probe) is probe


def _zero_gradient(pass_: _Pass, grad_output: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(pass_.x)


def _direct_gradient(
    input_gradient: Callable[..., torch.Tensor], module: nn.Module, params: dict[str, torch.Tensor]
) -> Callable[[_Pass, torch.Tensor], torch.Tensor]:
    weight = params.get("weight", module.weight)

    def gradient(pass_: _Pass, grad_output: torch.Tensor) -> torch.Tensor:
        if not grad_output.any():  # W^T 0 = 0 (gamma's reference pass)
            return torch.zeros_like(pass_.x)
        return input_gradient(module, pass_.x, weight, grad_output)

    return gradient


def _autograd_pass(
    module: nn.Module,
    original: Callable[..., torch.Tensor],
    xi: torch.Tensor,
    param_mod: Any,
    out_mod: Callable[[torch.Tensor], torch.Tensor],
) -> _Pass:
    """Zennit's own pass: the module re-run with modified parameters, under autograd."""
    xi = xi.detach().requires_grad_()
    with param_mod(module), torch.enable_grad():
        output = out_mod(original(xi))
    return _Pass(xi, output, None)


def _gradients(passes: list[_Pass], grad_outputs: Any) -> list[torch.Tensor]:
    """Each pass's input gradient of its ``grad_outputs`` entry (one ``autograd.grad`` for
    the passes that need autograd)."""
    gradients: list[torch.Tensor | None] = [None] * len(passes)
    graphed = [i for i, p in enumerate(passes) if p.gradient is None]
    if graphed:
        with torch.enable_grad():
            found = torch.autograd.grad(
                [passes[i].out for i in graphed],
                [passes[i].x for i in graphed],
                grad_outputs=[grad_outputs[i] for i in graphed],
            )
        for i, gradient in zip(graphed, found, strict=True):
            gradients[i] = gradient
    for i, pass_ in enumerate(passes):
        if pass_.gradient is not None:
            gradients[i] = pass_.gradient(pass_, grad_outputs[i])
    return gradients  # type: ignore[return-value]


# ----------------------------------------------------- convolutions and linear layers
def direct_linear(module: nn.Module) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``(forward(module, x, params), input_gradient(module, x, weight, grad))`` for
    PyTorch's own convolutions (zero padding given as numbers) and linear layers."""
    kind = type(module)
    if kind is nn.Linear:
        return _linear_forward, _linear_input_gradient
    if (
        kind in _CONVOLUTIONS
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    ):
        return CONV_DIRECT
    return None


def _linear_forward(module: nn.Module, x: torch.Tensor, params: dict[str, torch.Tensor]) -> Any:
    return nn.functional.linear(
        x, params.get("weight", module.weight), params.get("bias", module.bias)
    )


def _linear_input_gradient(
    module: nn.Module, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    return grad.matmul(weight)


def _conv_forward(module: nn.Module, x: torch.Tensor, params: dict[str, torch.Tensor]) -> Any:
    bias = params.get("bias", module.bias)
    return module._conv_forward(x, params.get("weight", module.weight), bias)


def conv_input_gradient(
    module: nn.Module, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    # the kernel ``torch.nn.grad.conv2d_input`` calls, given the real input: it hands it a
    # stand-in expanded from one element, which the CPU kernels copy to a full-size tensor
    return torch.ops.aten.convolution_backward(
        grad,
        x,
        weight,
        None,
        module.stride,
        module.padding,
        module.dilation,
        False,
        [0] * len(module.stride),
        module.groups,
        (True, False, False),
    )[0]


CONV_DIRECT = (_conv_forward, conv_input_gradient)
