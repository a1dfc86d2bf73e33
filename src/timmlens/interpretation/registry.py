"""Explanation methods by name: one registry, filled by ``@register_method`` at the class.

Every explainer class registers itself where it is defined, in the way of timm's
``register_model``::

    @register_method(
        "gradcam",
        title="GradCAM",
        kind="cam",
        summary="gradient-weighted class activation map of one layer (fast, coarse)",
        paper="Selvaraju et al., ICCV 2017",
        formula="ReLU(sum_k w_k A_k), w_k = mean_ij dy/dA_kij",
        cost="1 forward + 1 backward (to the layer)",
    )
    class GradCAM(Explainer): ...

and everything that lists methods reads it: [`methods`][] (``quick_explain``,
``compare_methods``, ``evaluate``, the sanity checks, the error report, the CLI's
choices) and the generated docs page (``python tools/methods_page.py
docs/methods/index.md``). The registry name is the one name of a method everywhere: the
explainer's ``name``, result rows, figure keys, the CLI. Aliases (``"gradcam++"``,
``"integrated_gradients"``, ``"attention_rollout"``) are accepted only by
`resolve_method` and [`as_explainer`][], at the edge.

The built-in method modules are imported on the first query, not when this module is
imported, so ``import timmlens`` does not pay for them.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from .._registry import Registry
from ..adapters import get_adapter
from ..errors import UnsupportedModelError
from .base import Explainer

#: The three engines, in registry order: layer maps, input attribution, attention.
KINDS: tuple[str, ...] = ("cam", "input", "attention")
#: What each kind applies to, unless the method says otherwise.
_DEFAULT_APPLIES_TO = {
    "cam": "every model",
    "input": "every model",
    "attention": "global-attention ViTs (ViT, DeiT, BEiT, EVA)",
}
#: The package whose ``cam``, ``input`` and ``attention`` modules register the built-ins.
_BUILTIN_PACKAGE = __package__ or "timmlens.interpretation"

ExplainerType = TypeVar("ExplainerType", bound=type[Explainer])


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the registry name (``"gradcam"``), also the explainer's ``name``.
        title: how figures and tables name it (``"GradCAM"``).
        kind: its engine: ``"cam"`` (a layer's map), ``"input"`` (input attribution) or
            ``"attention"`` (captured attention; needs global self-attention blocks).
        cls: the explainer class; ``cls(model, **options)`` builds it.
        aliases: other spellings `resolve_method` accepts.
        summary: one line for ``--help`` and the docs.
        paper: where the method comes from.
        formula: the map it computes, in one line.
        cost: forwards and backwards per batch.
        applies_to: the model families it applies to, in words.
        uses_layer: the method taps a layer (``target_layer=`` option, ``layer_names``);
            [`explain_layers`][timmlens.analysis.explain_layers] and the CLI's ``--layer``
            take these.
        compared_by_default: [`compare_methods`][timmlens.quick.compare_methods] runs it when no
            methods are named (slow or specialised methods run only when named).
        quick_options: cheap constructor options that still give a real map (fewer steps,
            samples or masks), read by the tests, the benchmarks and the leaderboard
            (``as_explainer(name, model, **spec.quick_options)``); empty when the defaults
            are cheap already.
    """

    name: str
    title: str
    kind: str
    cls: type[Explainer]
    aliases: tuple[str, ...] = ()
    summary: str = ""
    paper: str = ""
    formula: str = ""
    cost: str = ""
    applies_to: str = ""
    uses_layer: bool = False
    compared_by_default: bool = True
    quick_options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    builtin: bool = field(default=False, repr=False)
    line: int = field(default=0, repr=False, compare=False)

    @property
    def needs_attention(self) -> bool:
        """Only for models with global self-attention blocks."""
        return self.kind == "attention"

    def options(self) -> dict[str, inspect.Parameter]:
        """The constructor's options after ``model``, by name."""
        parameters = list(inspect.signature(self.cls.__init__).parameters.values())[2:]
        return {p.name: p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def unavailable_reason(self, model: nn.Module) -> str | None:
        """Why this method does not apply to ``model``, or ``None`` when it does."""
        # A method may refuse families on its own terms (LRP, DeepLift: module coverage;
        # AttnLRP: softmax attention, also windowed, which the attention capture refuses).
        check = getattr(self.cls, "unavailable_reason", None)
        if callable(check):
            return check(model)
        if self.needs_attention:
            return get_adapter(model).attention_unavailable_reason
        return None


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _order(spec: MethodSpec, registered: int) -> tuple[int, bool, str, int]:
    # Built-ins by module and line, so the order never depends on which module a program
    # happened to import first; other methods in the order they were registered.
    if spec.builtin:
        return (KINDS.index(spec.kind), False, spec.cls.__module__, spec.line)
    return (KINDS.index(spec.kind), True, "", registered)


_REGISTRY: Registry[MethodSpec] = Registry(
    "method",
    key=_key,
    order=_order,
    packages=tuple(f"{_BUILTIN_PACKAGE}.{kind}" for kind in KINDS),
    unregister="unregister_method",
    owner=lambda spec: spec.cls.__qualname__,
)


def register_method(
    name: str,
    *,
    title: str,
    kind: str,
    aliases: tuple[str, ...] = (),
    summary: str = "",
    paper: str = "",
    formula: str = "",
    cost: str = "",
    applies_to: str | None = None,
    uses_layer: bool | None = None,
    compared_by_default: bool = True,
    quick_options: Mapping[str, Any] | None = None,
) -> Callable[[ExplainerType], ExplainerType]:
    """Class decorator: register an [`Explainer`][] subclass as method ``name``.

    Sets ``cls.name = name`` and ``cls.title = title``, so results, rows and figures use
    the registry name and figures the display name.

    Args:
        name: the canonical name: lower case, no spaces (``"gradcampp"``).
        title: the display name (``"GradCAM++"``).
        kind: ``"cam"``, ``"input"`` or ``"attention"`` (see `MethodSpec`).
        aliases: other accepted spellings (matched case-insensitively, ``-`` as ``_``).
        summary: one line for ``--help`` and the docs.
        paper: the reference (authors, title, venue, year).
        formula: the map it computes, in one line.
        cost: forwards and backwards per batch, in words.
        applies_to: the families it applies to, in words (default by ``kind``).
        uses_layer: it taps a layer and takes ``target_layer=`` (default: ``kind == "cam"``).
        compared_by_default: run by [`compare_methods`][timmlens.quick.compare_methods]
            when no methods are named (``False`` for slow or specialised methods).
        quick_options: cheap constructor options for tests, benchmarks and the
            leaderboard (``{"n_steps": 4}`` for IG); checked against the constructor.

    Raises:
        ValueError: a bad name or kind, or a name or alias another method already has.
        TypeError: a quick option the constructor does not take.
    """
    if kind not in KINDS:
        raise ValueError(
            f"kind={kind!r} for method '{name}' is not an engine; use one of {', '.join(KINDS)}."
        )
    if not isinstance(name, str) or _key(name) != name or not name.isidentifier():
        raise ValueError(
            f"method name {name!r} must be lower case letters, digits and underscores "
            f"(e.g. 'gradcampp'); put other spellings in aliases=."
        )

    line = sys._getframe(1).f_lineno  # where the decorator stands: a stable built-in order

    def decorate(cls: ExplainerType) -> ExplainerType:
        if not (isinstance(cls, type) and issubclass(cls, Explainer)):
            raise TypeError(
                f"@register_method('{name}') decorates an Explainer subclass, got {cls!r}."
            )
        spec = MethodSpec(
            name=name,
            title=title,
            kind=kind,
            cls=cls,
            aliases=tuple(_key(alias) for alias in aliases),
            summary=summary,
            paper=paper,
            formula=formula,
            cost=cost,
            applies_to=applies_to or _DEFAULT_APPLIES_TO[kind],
            uses_layer=kind == "cam" if uses_layer is None else uses_layer,
            compared_by_default=compared_by_default,
            quick_options=dict(quick_options or {}),
            builtin=cls.__module__.startswith(f"{_BUILTIN_PACKAGE}."),
            line=line,
        )
        _check_options(spec, spec.quick_options, "quick option")
        _REGISTRY.add(spec, builtin=spec.builtin, same=_same_class)
        cls.name = name
        cls.title = title
        return cls

    return decorate


def _same_class(old: MethodSpec, new: MethodSpec) -> bool:
    # A module reloaded (importlib.reload, notebooks) registers a new class object.
    a, b = old.cls, new.cls
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def unregister_method(name: str) -> MethodSpec:
    """Remove method ``name`` (the canonical name) from the registry; returns its spec."""
    return _REGISTRY.remove(name)


def scoped_registry() -> contextlib.AbstractContextManager[None]:
    """Methods registered (or unregistered) inside the block are undone at its end.

    For tests and experiments: register a toy method, use it everywhere, leave no trace.
    """
    return _REGISTRY.scoped()


def _specs() -> list[MethodSpec]:
    """Every spec in registry order: by kind; built-ins (by module and line) before others
    (in registration order)."""
    return _REGISTRY.specs()


#: Every registered method by name, in registry order (a live, read-only view).
METHODS: Mapping[str, MethodSpec] = _REGISTRY.view()


def resolve_method(name: str) -> MethodSpec:
    """The `MethodSpec` for ``name`` (case-insensitive, aliases accepted).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: an unknown name; the message lists the methods and the closest match.
    """
    if not isinstance(name, str):
        raise TypeError(f"method must be a name such as 'gradcam', got {type(name).__name__}.")
    spec = _REGISTRY.lookup(name)
    if spec is not None:
        return spec
    names = _REGISTRY.names()
    hint = _REGISTRY.suggestion(name, names)
    raise ValueError(f"unknown method '{name}'; available: {', '.join(names)}.{hint}")


def supports(model: nn.Module, name: str) -> bool:
    """Whether method ``name`` applies to ``model`` (attention methods need global attention)."""
    return resolve_method(name).unavailable_reason(model) is None


def methods(kind: str | None = None, model: nn.Module | None = None) -> list[str]:
    """Registered method names in registry order, of one ``kind`` and/or applying to ``model``.

    Args:
        kind: ``"cam"``, ``"input"``, ``"attention"`` or ``None`` for all.
        model: keep only the methods that apply to it (``None``: all).
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not an engine; use one of {', '.join(KINDS)}.")
    return [
        spec.name
        for spec in _specs()
        if (kind is None or spec.kind == kind)
        and (model is None or spec.unavailable_reason(model) is None)
    ]


def default_comparison(model: nn.Module) -> list[str]:
    """The methods [`compare_methods`][timmlens.quick.compare_methods] runs on ``model`` by default:
    those registered with ``compared_by_default`` that apply to it, in registry order."""
    return [name for name in methods(model=model) if resolve_method(name).compared_by_default]


def layer_methods() -> list[str]:
    """The methods that tap a layer and take ``target_layer=`` (``uses_layer``)."""
    return [spec.name for spec in _specs() if spec.uses_layer]


def default_method(model: nn.Module) -> str:
    """The method [`quick_explain`][timmlens.interpretation.quick_explain] uses for ``model``.

    ``"rollout"`` for ViT-like models with global self-attention blocks (called with the
    predicted class it is the class-specific, gradient-weighted rollout of Chefer et al.,
    which uses all blocks, not only the last one); ``"gradcam"`` for everything else
    (CNNs, ConvNeXt, EfficientNet, Swin, ...), at the family's default layer.
    """
    return "rollout" if get_adapter(model).attention_blocks else "gradcam"


def _check_options(spec: MethodSpec, options: Mapping[str, Any], what: str = "option") -> None:
    """Unknown constructor options fail with the method's options listed."""
    parameters = inspect.signature(spec.cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    known = spec.options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "no options"
        hint = (
            f" target_layer applies to the layer methods ({', '.join(layer_methods())}) only."
            if "target_layer" in unknown
            else " Call options (such as a rollout's head_fusion) go to the call, not here."
        )
        raise TypeError(
            f"method '{spec.name}' got unknown {what}(s) {', '.join(unknown)}; it takes: "
            f"{takes}.{hint}"
        )


def create_explainer(name: str, model: nn.Module, **options: Any) -> Explainer:
    """Build the explainer registered as ``name`` for ``model``.

    Args:
        name: a registered name or alias (see [`methods`][]).
        model: an ``ImageClassifier`` or a bare timm model.
        options: constructor arguments of the explainer (``target_layer=`` for the CAM
            methods, ``n_steps=`` for IG, ``n_samples=`` for SmoothGrad, ...).

    Raises:
        ValueError: unknown method name.
        TypeError: an option the method does not take.
        UnsupportedModelError: the method does not apply to this model.
    """
    spec = resolve_method(name)
    reason = spec.unavailable_reason(model)
    if reason is not None:
        raise UnsupportedModelError(f"{spec.name}: {reason}")
    _check_options(spec, options)
    return spec.cls(model, **options)


def as_explainer(method: str | Explainer, model: nn.Module, **options: Any) -> Explainer:
    """An [`Explainer`][] for ``method``: an instance passes through, a name is built.

    Args:
        method: a registered name or alias, or an [`Explainer`][] instance.
        model: the model a name is built for.
        options: constructor options for a name; none for an instance.

    Raises:
        ValueError: options given with an instance, or an unknown name.
        TypeError: neither a name nor an explainer, or an unknown option.
        UnsupportedModelError: the method does not apply to this model.
    """
    if isinstance(method, Explainer):
        if options:
            raise ValueError(
                f"options ({', '.join(sorted(options))}) apply to a method name, not an "
                f"explainer instance; build the {type(method).__name__} with them instead."
            )
        return method
    if not isinstance(method, str):
        raise TypeError(
            f"method must be a name such as 'gradcam' or an Explainer instance, got "
            f"{type(method).__name__}."
        )
    return create_explainer(method, model, **options)


def layer_of(explainer: Explainer) -> str | None:
    """The tapped layer(s) of a CAM explainer as one string, ``None`` for other methods."""
    names = getattr(explainer, "layer_names", None)
    return ", ".join(names) if names else None
