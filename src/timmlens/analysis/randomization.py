"""What a randomisation test re-initialises, and how: units of a model, top-down.

Units
-----
`cascade_units` finds the units without knowing any family's name. It records the
order in which parameter-owning modules run during one no-grad forward (forward
pre-hooks), then walks the module tree:

* a module that is one of timm's ``feature_info`` stages (the adapter's
  ``feature_stages``) is a unit;
* a module that *contains* a feature stage is opened: its own direct parameters (a ViT's
  ``cls_token`` and ``pos_embed``) form one unit, named ``"<module>.{a,b}"``
  (``"{cls_token,pos_embed}"`` for the root, ``"<module>.a"`` when there is only one),
  and each child is visited by the same rule;
* any other module with parameters is a unit (``conv_stem``, ``bn1``, ``head``, ...).

Without feature stages the top-level children of the timm model are the units. Units
that did not run in the forward are dropped, and the rest are ordered top-down, by the
last time any of their parameter-owning modules ran, latest first, so the classifier
comes first as in the paper. ``tf_efficientnet_lite0`` gives ``classifier, bn2,
conv_head, blocks.6, ..., blocks.0, bn1, conv_stem``; ``resnet18`` gives ``fc, layer4,
..., layer1, bn1, conv1``; a ViT gives ``head, norm, blocks.11, ..., blocks.0,
patch_embed, {cls_token,pos_embed}`` (the root's parameters are entered first, at the
root's own call). Inside an ``ImageClassifier`` the names start with ``backbone.`` and
its ``head`` comes first.

Re-initialisation
-----------------
`randomize_unit` re-draws one unit in place: every submodule that has a
``reset_parameters()`` method gets it (the module's own initialisation: Kaiming-uniform
convolutions and linears; BatchNorm back to weight 1, bias 0 and running statistics
0 / 1; timm's ``LayerScale`` back to its ``init_values``), and every parameter no
``reset_parameters`` covers (position embeddings, class tokens, a ConvNeXt block's
``gamma``, a container's own parameters) gets ``trunc_normal_(std=0.02)`` cut at +-2,
as timm initialises ViT embeddings. The values are drawn on the CPU in float32 from a
seed derived from ``seed`` and the unit's name (so a unit gets the same values in the
cascading and the independent test, on any device), inside ``torch.random.fork_rng``:
the global random state is left as it was. Buffers that no reset touches (index
tables, fixed position encodings) are kept.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from .._model_state import explaining
from ..adapters import get_adapter
from ..models.introspect import data_config, model_device, model_dtype, timm_model_of

#: Standard deviation of the truncated normal for parameters no ``reset_parameters`` covers.
FALLBACK_INIT_STD = 0.02


# --------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomizationUnit:
    """A group of parameters re-initialised together.

    Attributes:
        name: how tables and plots show it: the module's dotted name
            (``"backbone.blocks.6"``), or for a container's own parameters
            ``"backbone.{cls_token,pos_embed}"`` (one parameter: ``"backbone.pos_embed"``).
        module: dotted name of the module that owns the parameters (``""``: the root).
        parameters: ``None`` for the whole module (all its submodules); otherwise the
            names of the module's *direct* parameters that form the unit.
    """

    name: str
    module: str
    parameters: tuple[str, ...] | None = None

    def parameter_names(self, model: nn.Module) -> list[str]:
        """Full dotted names of the unit's parameters in ``model``."""
        prefix = f"{self.module}." if self.module else ""
        if self.parameters is not None:
            return [prefix + leaf for leaf in self.parameters]
        module = model.get_submodule(self.module)
        return [prefix + name for name, _ in module.named_parameters()]


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def _own_unit(module_name: str, leaves: Sequence[str]) -> RandomizationUnit:
    label = leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"
    return RandomizationUnit(_join(module_name, label), module_name, tuple(leaves))


def _has_parameters(module: nn.Module, recurse: bool = True) -> bool:
    return next(iter(module.parameters(recurse=recurse)), None) is not None


def _stage_names(model: nn.Module) -> list[str]:
    """The adapter's feature stages, or the timm model's children when it has none."""
    adapter = get_adapter(model)
    if adapter.feature_stages:
        return list(adapter.feature_stages)
    timm_model = timm_model_of(model)
    return [adapter.prefix + name for name, _ in timm_model.named_children()]


def _tree_units(model: nn.Module, stages: Sequence[str]) -> list[RandomizationUnit]:
    """Candidate units by the recursive rule of the module docstring (tree order)."""
    stage_set = set(stages)
    units: list[RandomizationUnit] = []

    def contains_stage(name: str) -> bool:
        return bool(stage_set) if not name else any(s.startswith(name + ".") for s in stage_set)

    def visit(module: nn.Module, name: str) -> None:
        if name in stage_set:
            if _has_parameters(module):
                units.append(RandomizationUnit(name, name))
        elif contains_stage(name):
            own = [leaf for leaf, _ in module.named_parameters(recurse=False)]
            if own:
                units.append(_own_unit(name, own))
            for child_name, child in module.named_children():
                visit(child, _join(name, child_name))
        elif _has_parameters(module):
            units.append(RandomizationUnit(name, name))

    visit(model, "")
    return units


def _example_input(model: nn.Module) -> torch.Tensor:
    """One zero image at the model's configured input size, on its device and dtype."""
    channels, height, width = (int(v) for v in data_config(model)["input_size"])
    return torch.zeros(
        1, channels, height, width, device=model_device(model), dtype=model_dtype(model)
    )


def execution_order(model: nn.Module, inputs: torch.Tensor | None = None) -> dict[str, int]:
    """When each parameter-owning module last started running in one forward.

    Forward pre-hooks on every module with direct parameters count calls during one
    no-grad forward of ``inputs`` ``(B, C, H, W)`` (default: one zero image at the
    model's input size), in eval mode; the model is left as it was.

    Returns:
        Module name -> index of its last call (0 = first); modules that did not run are
        absent.
    """
    if inputs is None:
        inputs = _example_input(model)
    order: dict[str, int] = {}
    counter = itertools.count()
    handles = []

    def recorder(name: str) -> Any:
        def record(_module: nn.Module, _args: Any) -> None:
            order[name] = next(counter)

        return record

    with explaining(model), torch.no_grad():  # the hooks must see this forward only
        try:
            for name, module in model.named_modules():
                if _has_parameters(module, recurse=False):
                    handles.append(module.register_forward_pre_hook(recorder(name)))
            model(inputs)
        finally:
            for handle in handles:
                handle.remove()
    return order


def _last_call(unit: RandomizationUnit, order: Mapping[str, int]) -> int | None:
    if unit.parameters is not None:
        return order.get(unit.module)
    inside = [
        index
        for name, index in order.items()
        if not unit.module or name == unit.module or name.startswith(unit.module + ".")
    ]
    return max(inside) if inside else None


def discover_units(model: nn.Module, inputs: torch.Tensor | None = None) -> list[RandomizationUnit]:
    """The model's randomisation units, top-down (see the module docstring).

    Args:
        model: an ``ImageClassifier`` or a bare timm model (not modified).
        inputs: ``(B, C, H, W)`` input for the forward that records the execution order
            (one image suffices); default one zero image at the model's input size.
    """
    order = execution_order(model, inputs)
    ranked = []
    for position, unit in enumerate(_tree_units(model, _stage_names(model))):
        last = _last_call(unit, order)
        if last is not None:
            ranked.append((last, -position, unit))
    ranked.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [unit for _, _, unit in ranked]


def _parse_own_name(name: str) -> tuple[str, tuple[str, ...]] | None:
    """``"backbone.{a,b}"`` -> ``("backbone", ("a", "b"))``; ``None`` for other names."""
    if not name.endswith("}") or "{" not in name:
        return None
    head, _, body = name[:-1].rpartition("{")
    if head and not head.endswith("."):
        return None
    leaves = tuple(part.strip() for part in body.split(",") if part.strip())
    return (head.rstrip("."), leaves) if leaves else None


def resolve_unit(model: nn.Module, layer: str | nn.Module) -> RandomizationUnit:
    """One user-given unit: a module (name or object), a parameter name, or a unit name.

    Names may omit the ``backbone.`` prefix of an ``ImageClassifier``; ``"{a,b}"`` names
    (as `discover_units` prints them) select a module's direct parameters.

    Raises:
        ValueError: no such module or parameter, or it has no parameters.
    """
    if isinstance(layer, nn.Module):
        name = next((n for n, m in model.named_modules() if m is layer), None)
        if name is None:
            raise ValueError(
                f"the module {type(layer).__name__} passed in layers= is not part of the model; "
                f"pass a module of the model itself or its dotted name."
            )
        candidates = [name]
    elif isinstance(layer, str):
        prefix = get_adapter(model).prefix
        candidates = [layer.strip()]
        if prefix and not candidates[0].startswith(prefix):
            candidates.append(prefix + candidates[0])
        if not prefix and candidates[0].startswith("backbone."):
            candidates.append(candidates[0].removeprefix("backbone."))
    else:
        raise TypeError(
            f"layers entries must be module names or modules, got {type(layer).__name__}."
        )
    found = [unit for unit in map(partial(_unit_named, model), candidates) if unit is not None]
    if not found:
        raise _unknown_unit(model, str(layer))
    # A name that resolves to a module without parameters (an nn.Identity head) is skipped.
    with_parameters = [unit for unit in found if unit.parameter_names(model)]
    if not with_parameters:
        raise ValueError(
            f"'{found[0].name}' has no parameters to randomise; pick a module with weights."
        )
    return with_parameters[0]


def _unit_named(model: nn.Module, name: str) -> RandomizationUnit | None:
    own = _parse_own_name(name)
    if own is not None:
        module_name, leaves = own
        try:
            owner = model.get_submodule(module_name)
        except AttributeError:
            return None
        direct = dict(owner.named_parameters(recurse=False))
        if not all(leaf in direct for leaf in leaves):
            return None
        return _own_unit(module_name, leaves)
    try:
        module = model.get_submodule(name)
    except AttributeError:
        pass
    else:
        # An alias such as ImageClassifier.head (a property) gets the module's own name,
        # so the unit's parameter names are the model's ("backbone.head.weight").
        canonical = next((n for n, m in model.named_modules() if m is module), name)
        return RandomizationUnit(canonical, canonical)
    try:
        model.get_parameter(name)
    except AttributeError:
        return None
    module_name, _, leaf = name.rpartition(".")
    return RandomizationUnit(name, module_name, (leaf,))


def _unknown_unit(model: nn.Module, layer: str) -> ValueError:
    try:
        valid = [unit.name for unit in discover_units(model)]
    except Exception:  # the listing is a courtesy; the error must still be raised
        valid = []
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(layer, [*valid, *names], n=3)
    return ValueError(
        f"no module or parameter named '{layer}' in the model."
        + (f" Closest names: {', '.join(close)}." if close else "")
        + (f" Its units, top-down: {', '.join(valid)}." if valid else "")
    )


def cascade_units(
    model: nn.Module,
    layers: Sequence[str | nn.Module] | None = None,
    inputs: torch.Tensor | None = None,
) -> list[RandomizationUnit]:
    """The units a randomisation test re-initialises, in order.

    Args:
        model: an ``ImageClassifier`` or a bare timm model (not modified).
        layers: ``None`` discovers the units (`discover_units`, top-down); or an
            explicit list of module names, modules, parameter names or ``"{a,b}"`` unit
            names, used in the order given (give them top-down for a cascade).
        inputs: ``(B, C, H, W)`` input for the discovery forward (default: a zero image).

    Raises:
        ValueError: an empty or duplicated list, or an unknown name (the message lists
            the model's units).
    """
    if layers is None:
        units = discover_units(model, inputs)
        if not units:
            raise ValueError("the model has no parameters that run in its forward pass.")
        return units
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    units = [resolve_unit(model, layer) for layer in layers]
    if not units:
        raise ValueError(
            "layers= is an empty list; give at least one module name, or None for all units."
        )
    seen: set[str] = set()
    for unit in units:
        if unit.name in seen:
            raise ValueError(f"layers= names '{unit.name}' twice; give each unit once.")
        seen.add(unit.name)
    return units


# --------------------------------------------------------------------------------------
# Re-initialisation
# --------------------------------------------------------------------------------------


def unit_seed(seed: int, unit: RandomizationUnit) -> int:
    """The seed of one unit: a function of ``seed`` and the unit's name only."""
    return (int(seed) * 1_000_003 + zlib.crc32(unit.name.encode())) % (2**63 - 1)


def _fresh_module_values(module: nn.Module, seed: int) -> nn.Module:
    """A float32 CPU copy of ``module`` with its parameters re-initialised (seeded)."""
    fresh = copy.deepcopy(module).to(device="cpu", dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        covered: set[int] = set()
        for sub in fresh.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in sub.parameters(recurse=False))
        with torch.no_grad():
            for param in fresh.parameters():
                if id(param) not in covered:
                    nn.init.trunc_normal_(param, std=FALLBACK_INIT_STD)
    return fresh


@torch.no_grad()
def randomize_unit(
    model: nn.Module, unit: RandomizationUnit | str | nn.Module, *, seed: int = 0
) -> RandomizationUnit:
    """Re-initialise one unit of ``model`` **in place** (use it on a copy).

    See the module docstring for the rule. Device, dtype, ``requires_grad`` and module
    modes are kept; the global random state is untouched; the same ``seed`` and unit give
    the same values.

    Returns:
        The resolved unit.
    """
    if not isinstance(unit, RandomizationUnit):
        unit = resolve_unit(model, unit)
    module = model.get_submodule(unit.module)
    derived = unit_seed(seed, unit)
    if unit.parameters is not None:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derived)
            for leaf in unit.parameters:
                param = module.get_parameter(leaf)
                fresh = torch.empty(param.shape, dtype=torch.float32)
                nn.init.trunc_normal_(fresh, std=FALLBACK_INIT_STD)
                param.copy_(fresh)
        return unit
    fresh = _fresh_module_values(module, derived)
    for target, value in zip(module.parameters(), fresh.parameters(), strict=True):
        target.copy_(value)
    for target, value in zip(module.buffers(), fresh.buffers(), strict=True):
        target.copy_(value)
    return unit
