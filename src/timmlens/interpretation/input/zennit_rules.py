"""LRP for timm CNNs through Zennit: its composites, and the canonizers timm's blocks need.

Zennit (Anders et al., "Software for dataset-wide XAI", 2021) attaches LRP rules to
modules by type (a *composite*) after *canonizers* have put the model in a form the rules
can read. This module supplies what Zennit lacks for timm:

* **BatchNorm pairs from the data flow** (`batchnorm_pairs`): a BatchNorm is merged
  into the convolution whose output it reads (Zennit's ``NamedMergeBatchNorm``), the
  pairs found by one probe forward rather than by module order (Zennit's
  ``SequentialMergeBatchNorm``), which pairs a pre-activation BatchNorm with the
  previous block's last convolution;
* **residual adds as a ``Sum`` module** (`ResidualSumCanonizer`,
  `ResNetBlockCanonizer`): a plain ``a + b`` hands the whole relevance to both
  branches (relevance doubled); through Zennit's ``Sum`` the ``Norm`` rule splits it in
  proportion to each branch's contribution, as Zennit's torchvision ``ResNetCanonizer``
  does;
* **gates are weights** (`GateCanonizer`): a squeeze-excite output ``x * g(x)`` passes
  its relevance to ``x`` whole, none to the gate branch (the gate read as a per-channel
  weight, as LRP treats multiplicative gates);
* **elementwise modules pass relevance on unchanged** (Zennit's ``Pass`` rule): every
  activation (ReLU6, SiLU, GELU, Hardswish, timm's own) and LayerNorm (the identity
  rule on the normalisation; Ali et al. 2022, Achtibat et al. 2024); timm's
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

__all__ = [
    "COMPOSITES",
    "GateCanonizer",
    "ResNetBlockCanonizer",
    "ResidualSumCanonizer",
    "batchnorm_pairs",
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
    return (Activation, nn.LayerNorm, *timm_acts)  # type: ignore[return-value]


def _norm_types() -> tuple[type[nn.Module], ...]:
    """Average pools Zennit's ``AvgPool`` type misses: they get the ``Norm`` rule."""
    from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool

    return (FastAdaptiveAvgPool,)


# ------------------------------------------------------------------ BatchNorm pairs
def batchnorm_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[tuple[str], str]]:
    """``[((conv name,), batchnorm name), ...]``: each BatchNorm that reads a conv's output.

    One no-grad forward of ``probe`` ``(1, C, H, W)`` records which module produced each
    BatchNorm's input; names are relative to ``model`` (``NamedMergeBatchNorm``'s format).
    A BatchNorm run on anything else (the sum of a residual add, a pre-activation) is
    left alone: Zennit's composites give it the ``Pass`` rule.
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


# ---------------------------------------------------------------------- canonizers
class _InstanceCanonizer:
    """A Zennit canonizer that changes one module instance and undoes exactly that.

    Subclasses name the modules they apply to (`applies`) and do their change in
    `change`, returning the function that undoes it.
    """

    def __init__(self) -> None:
        self.undo: Callable[[], None] | None = None

    def applies(self, module: nn.Module) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def change(self, module: nn.Module) -> Callable[[], None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, root_module: nn.Module) -> list[Any]:
        instances = []
        for module in list(root_module.modules()):
            if self.applies(module):
                instance = self.copy()
                instance.register(module)
                instances.append(instance)
        return instances

    def register(self, module: nn.Module) -> None:
        self.undo = self.change(module)

    def remove(self) -> None:
        if self.undo is not None:
            undo, self.undo = self.undo, None
            undo()

    def copy(self) -> _InstanceCanonizer:
        return type(self)()


def _add_sum(module: nn.Module) -> nn.Module:
    """A Zennit ``Sum`` over the last axis, registered on ``module`` so composites hook it."""
    from zennit.layer import Sum

    summer = Sum(dim=-1)
    module.add_module("canonizer_sum", summer)
    return summer


def _drop_sum(module: nn.Module) -> None:
    del module._modules["canonizer_sum"]


class ResidualSumCanonizer(_InstanceCanonizer):
    """EfficientNet / MobileNet blocks (``drop_path(f(x)) + x`` when ``has_skip``).

    ``has_skip`` is switched off on the instance, so the block returns ``f(x)``, and a
    forward hook adds the shortcut back through a ``Sum`` module: the block computes what
    it did, and the ``Norm`` rule splits the relevance between ``f(x)`` and ``x``.
    """

    def applies(self, module: nn.Module) -> bool:
        return (
            getattr(module, "has_skip", None) is True
            and isinstance(getattr(module, "drop_path", None), nn.Module)
            and "has_skip" in vars(module)
        )

    def change(self, module: nn.Module) -> Callable[[], None]:
        summer = _add_sum(module)

        def add_shortcut(block: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            return summer(torch.stack([block.drop_path(output), args[0]], dim=-1))

        module.has_skip = False
        handle = module.register_forward_hook(add_shortcut)

        def undo() -> None:
            handle.remove()
            module.has_skip = True
            _drop_sum(module)

        return undo


#: timm ResNet blocks: the main path (attributes run in order, ``None`` skipped) and the
#: activation after the residual add (timm ``resnet.py``, ``BasicBlock`` / ``Bottleneck``)
_RESNET_PATHS = {
    "BasicBlock": (
        ("conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2", "se", "drop_path"),
        "act2",
    ),
    "Bottleneck": (
        (
            "conv1",
            "bn1",
            "act1",
            "conv2",
            "bn2",
            "drop_block",
            "act2",
            "aa",
            "conv3",
            "bn3",
            "se",
            "drop_path",
        ),
        "act3",
    ),
}


def _resnet_forward(block: nn.Module, path: tuple[str, ...], last: str) -> Callable[..., Any]:
    """timm's ``BasicBlock`` / ``Bottleneck`` forward with the add through ``canonizer_sum``."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        main = x
        for name in path:
            step = getattr(block, name)
            if step is not None:
                main = step(main)
        shortcut = x if block.downsample is None else block.downsample(x)
        return getattr(block, last)(block.canonizer_sum(torch.stack([shortcut, main], dim=-1)))

    return forward


class ResNetBlockCanonizer(_InstanceCanonizer):
    """timm ResNet / ResNeXt / SE-ResNet blocks: the residual add through a ``Sum`` module.

    The instance's ``forward`` is replaced for the call (Zennit's torchvision
    ``ResNetCanonizer`` does the same for torchvision's blocks); deleting the instance
    attribute restores the class's method.
    """

    def applies(self, module: nn.Module) -> bool:
        from timm.models import resnet

        name = type(module).__name__
        return name in _RESNET_PATHS and type(module) is getattr(resnet, name)

    def change(self, module: nn.Module) -> Callable[[], None]:
        _add_sum(module)
        path, last = _RESNET_PATHS[type(module).__name__]
        module.forward = _resnet_forward(module, path, last)  # type: ignore[method-assign]

        def undo() -> None:
            del module.forward
            _drop_sum(module)

        return undo


class _GatePass(torch.autograd.Function):
    """``gated`` forward; backward: the whole relevance of ``gated`` goes to ``x``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gated: torch.Tensor) -> torch.Tensor:
        return gated.clone()

    @staticmethod
    def backward(ctx: Any, relevance: torch.Tensor) -> tuple[torch.Tensor, None]:
        return relevance, None


def gate_types() -> tuple[type[nn.Module], ...]:
    """Squeeze-excite modules whose output is ``x * gate(x)``."""
    from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
    from timm.models._efficientnet_blocks import SqueezeExcite

    return (SqueezeExcite, SEModule, EffectiveSEModule)


class GateCanonizer(_InstanceCanonizer):
    """Squeeze-excite ``x * g(x)``: relevance to ``x`` whole, none to the gate branch.

    The module runs on a detached ``x`` (so no rule inside the gate branch waits for a
    relevance that never comes), and its output is tied back to ``x`` by `_GatePass`.
    """

    def applies(self, module: nn.Module) -> bool:
        return isinstance(module, gate_types())

    def change(self, module: nn.Module) -> Callable[[], None]:
        pending: list[torch.Tensor] = []

        def detach(_: nn.Module, args: tuple[Any, ...]) -> Any:
            pending.append(args[0])
            return (args[0].detach(), *args[1:])

        def through(_: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            return _GatePass.apply(pending.pop(), output)

        handles = [module.register_forward_pre_hook(detach), module.register_forward_hook(through)]

        def undo() -> None:
            for handle in handles:
                handle.remove()

        return undo


def _zennit_canonizers(pairs: list[tuple[tuple[str], str]]) -> list[Any]:
    from zennit.canonizers import NamedMergeBatchNorm

    # Zennit's Composite only calls apply() and then remove() on what apply returned
    return [
        NamedMergeBatchNorm(pairs),
        ResidualSumCanonizer(),
        ResNetBlockCanonizer(),
        GateCanonizer(),
    ]


# ---------------------------------------------------------------------- composites
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
    from zennit.rules import Norm, Pass

    layer_map = [(pass_types(), Pass()), (_norm_types(), Norm())]
    canonizers = _zennit_canonizers(pairs)
    if name == "epsilon_plus_flat":
        return composites.EpsilonPlusFlat(
            epsilon=epsilon, layer_map=layer_map, canonizers=canonizers
        )
    if name == "epsilon_alpha2_beta1":
        return composites.EpsilonAlpha2Beta1(
            epsilon=epsilon, layer_map=layer_map, canonizers=canonizers
        )
    if name == "epsilon_gamma_box":
        if bounds is None:
            raise ValueError("epsilon_gamma_box needs the input bounds (low, high).")
        low, high = bounds
        return composites.EpsilonGammaBox(
            low=low, high=high, epsilon=epsilon, layer_map=layer_map, canonizers=canonizers
        )
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
def _chain_types() -> tuple[type[nn.Module], ...]:
    """Containers whose forward only runs their children one after another (in eval)."""
    from timm.layers import (
        BatchNormAct2d,
        ClassifierHead,
        ConvNormAct,
        SelectAdaptivePool2d,
    )

    return (
        nn.Sequential,
        nn.ModuleList,
        nn.ModuleDict,
        BatchNormAct2d,
        ClassifierHead,
        ConvNormAct,
        SelectAdaptivePool2d,
    )


def _block_types() -> tuple[type[nn.Module], ...]:
    """Models and blocks whose arithmetic the canonizers above make readable."""
    from timm.models import _efficientnet_blocks as eb
    from timm.models import efficientnet, mobilenetv3, resnet

    return (
        resnet.ResNet,
        resnet.BasicBlock,
        resnet.Bottleneck,
        efficientnet.EfficientNet,
        mobilenetv3.MobileNetV3,
        eb.ConvBnAct,
        eb.DepthwiseSeparableConv,
        eb.InvertedResidual,
        eb.EdgeResidual,
    )


def _leaf_types() -> tuple[type[nn.Module], ...]:
    """Leaves with a rule (conv, linear, pools, sum) or that compute nothing in eval."""
    from timm.layers import DropPath
    from zennit.layer import Sum
    from zennit.types import AvgPool, BatchNorm, Convolution, Linear, MaxPool

    return (
        Convolution,
        Linear,
        BatchNorm,
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
    from zennit.types import BatchNorm, Convolution, Linear

    known = pass_types() + _norm_types() + gate_types() + _leaf_types()
    containers = _chain_types() + _block_types()
    owns_params = (Convolution, Linear, BatchNorm, nn.LayerNorm)
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
        if isinstance(module, known) and (leaf or isinstance(module, (*gate_types(), BatchNorm))):
            continue
        own_params = next(module.parameters(False), None) is not None
        if (
            not leaf
            and isinstance(module, containers)
            and (not own_params or isinstance(module, owns_params))
        ):
            continue
        bad.append(module)
    return bad
