"""Metrics by name: the one list ``ExplanationMetrics.evaluate_all`` and ``timmlens.evaluate``
read.

A metric is anything with ``name``, ``higher_is_better``, ``needs`` and
``compute(context) -> MetricResult | (B,) tensor`` (`Metric`); the
[`register_metric`][] decorator fills in the first three and adds it, with the options it
declares (`MetricOption`; ``positive`` and the other checks are in ``metrics.options``)::

    @register_metric(
        "mass",
        higher_is_better=True,
        summary="heatmap mass in the centre",
        options=(MetricOption("margin", 8, "pixels left out at each border", positive("margin")),),
    )
    def mass(context: MetricContext) -> torch.Tensor:
        m = context.options["margin"]
        maps = context.heatmaps  # (B, H, W)
        return (maps[:, m:-m, m:-m].sum((1, 2)) / maps.sum((1, 2))).double().cpu()

after which ``ExplanationMetrics(model, margin=4).evaluate_all(images, heatmaps,
metrics=["mass"])`` and ``timmlens.evaluate(..., metrics=["mass"])`` compute it.
``needs="heatmap"`` metrics score heatmaps ``(B, H, W)``; ``needs="explainer"`` metrics
call an explainer themselves (max-sensitivity) and run through ``ExplanationMetrics.run``.

The registry itself is the library's one [`Registry`][timmlens._registry.Registry], as
the method registry is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

import torch

from ..._registry import Registry
from .options import ENGINE_OPTIONS, MetricOption
from .results import MetricResult

if TYPE_CHECKING:
    import contextlib

    from .context import MetricContext

MetricNeeds = Literal["heatmap", "explainer"]
NEEDS: tuple[str, ...] = ("heatmap", "explainer")

MetricObject = TypeVar("MetricObject", bound=Callable[..., Any])


@runtime_checkable
class Metric(Protocol):
    """What the registry holds: a named computation over one batch's `MetricContext`."""

    name: str
    higher_is_better: bool
    needs: str

    def compute(self, context: MetricContext) -> MetricResult | torch.Tensor:
        """The result, or per-image values ``(B,)`` (wrapped into a `MetricResult`)."""
        ...


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    Attributes:
        name: the registry name (``"insertion"``), the key of ``evaluate_all``'s results.
        metric: the `Metric` that computes it.
        aliases: other spellings `resolve_metric` accepts.
        higher_is_better: the direction in which an explanation is better.
        needs: ``"heatmap"`` or ``"explainer"``.
        summary: one line on what it measures.
        reference: the paper it follows.
        options: the options it reads from ``context.options`` (besides the engine's,
            `ENGINE_OPTIONS`), each with its default, check and doc.
        check: a check of several options together, ``check(options) -> None``
            (``steps`` and ``pixels_per_step`` exclude each other).
    """

    name: str
    metric: Metric
    aliases: tuple[str, ...] = ()
    higher_is_better: bool = True
    needs: str = "heatmap"
    summary: str = ""
    reference: str = ""
    options: tuple[MetricOption, ...] = ()
    check: Callable[[Mapping[str, Any]], None] | None = None

    def run(self, context: MetricContext) -> MetricResult:
        """``metric.compute(context)``, per-image values wrapped into a `MetricResult`."""
        result = self.metric.compute(context)
        if isinstance(result, MetricResult):
            return result
        if not isinstance(result, torch.Tensor) or result.shape != (len(context.targets),):
            got = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result)
            raise ValueError(
                f"metric '{self.name}' returned {got}; a metric returns a MetricResult or one "
                f"value per image, shape ({len(context.targets)},)."
            )
        return context.result(self.name, result, self.higher_is_better, {})


class _FunctionMetric:
    """A plain function ``compute(context)`` seen as a `Metric`."""

    def __init__(self, function: Callable[[MetricContext], Any]) -> None:
        self.function = function

    def compute(self, context: MetricContext) -> MetricResult | torch.Tensor:
        return self.function(context)


#: The built-in metrics in listing order, whichever module registers first; others follow
#: in registration order.
_BUILTIN_ORDER = (
    "insertion",
    "deletion",
    "sensitivity",
    "infidelity",
    "max-sensitivity",
    "road_morf",
    "road_lerf",
    "aopc",
    "average_drop",
    "increase_in_confidence",
)
_BUILTIN_PACKAGE = __package__ or "timmlens.interpretation.metrics"


def _key(name: str) -> str:
    return name.strip().lower()


def _listing_key(spec: MetricSpec, registered: int) -> tuple[int, int]:
    if spec.name in _BUILTIN_ORDER:
        return (_BUILTIN_ORDER.index(spec.name), 0)
    return (len(_BUILTIN_ORDER), registered)


_REGISTRY: Registry[MetricSpec] = Registry(
    "metric",
    key=_key,
    order=_listing_key,
    packages=(_BUILTIN_PACKAGE,),
    unregister="unregister_metric",
)


def register_metric(
    name: str,
    *,
    higher_is_better: bool,
    aliases: tuple[str, ...] = (),
    needs: MetricNeeds = "heatmap",
    summary: str = "",
    reference: str = "",
    options: tuple[MetricOption, ...] = (),
    check: Callable[[Mapping[str, Any]], None] | None = None,
) -> Callable[[MetricObject], MetricObject]:
    """Register a metric class (instantiated with no arguments) or ``compute`` function.

    The decorated object is returned unchanged; the instance (or a wrapper of the
    function) gets ``name``, ``higher_is_better`` and ``needs`` set.

    Args:
        name: the registry name (matched case-insensitively).
        higher_is_better: the direction in which an explanation is better.
        aliases: other accepted spellings.
        needs: ``"heatmap"`` or ``"explainer"``.
        summary: one line on what it measures.
        reference: the paper it follows.
        options: the options it declares (``ExplanationMetrics`` accepts and checks them).
        check: a check of several of its options together.

    Raises:
        ValueError: the name or an alias is taken, ``needs`` is not one of `NEEDS`, or an
            option name another metric declares with another default.
    """
    if needs not in NEEDS:
        raise ValueError(f"needs={needs!r}; a metric needs one of {NEEDS}.")
    keys = [_key(name), *(_key(alias) for alias in aliases)]

    def decorate(obj: MetricObject) -> MetricObject:
        builtin = getattr(obj, "__module__", "").startswith(f"{_BUILTIN_PACKAGE}.")
        _REGISTRY.check_free(keys[0], keys[1:], builtin=builtin)
        _check_declarations(keys[0], options)
        metric: Any = obj() if isinstance(obj, type) else _FunctionMetric(obj)
        metric.name, metric.higher_is_better, metric.needs = keys[0], higher_is_better, needs
        spec = MetricSpec(
            keys[0],
            metric,
            tuple(keys[1:]),
            higher_is_better,
            needs,
            summary,
            reference,
            tuple(options),
            check,
        )
        _REGISTRY.add(spec, builtin=builtin)
        return obj

    return decorate


def _check_declarations(name: str, options: tuple[MetricOption, ...]) -> None:
    """One option name, one default: refuse a name declared elsewhere with another one."""
    declared = declared_options()
    for option in options:
        other = declared.get(option.name)
        if other is not None and other.default != option.default:
            raise ValueError(
                f"metric '{name}' declares option '{option.name}' with default "
                f"{option.default!r}, but it is already declared with default {other.default!r} "
                f"(by the engine or another metric); use the same default or another name."
            )


def unregister_metric(name: str) -> MetricSpec:
    """Remove metric ``name`` (its registry name) and its aliases; returns its spec."""
    return _REGISTRY.remove(name)


def scoped_metric_registry() -> contextlib.AbstractContextManager[None]:
    """Metrics registered (or unregistered) inside the block are undone at its end."""
    return _REGISTRY.scoped()


def declared_options(names: Iterable[str] | None = None) -> dict[str, MetricOption]:
    """The engine's options and those of metrics ``names`` (default: every metric), by name."""
    specs = _REGISTRY.specs() if names is None else [_REGISTRY.get(n) for n in names]
    declared = {option.name: option for option in ENGINE_OPTIONS}
    for spec in specs:
        declared.update({option.name: option for option in spec.options})
    return declared


def metrics(needs: MetricNeeds | None = None) -> list[str]:
    """Registered metric names in registration order, all or those that need ``needs``."""
    if needs is not None and needs not in NEEDS:
        raise ValueError(f"needs={needs!r}; use one of {NEEDS} or None for all.")
    return [spec.name for spec in _REGISTRY.specs() if needs is None or spec.needs == needs]


def resolve_metric(name: str, needs: MetricNeeds | None = None) -> MetricSpec:
    """The `MetricSpec` for ``name`` (case-insensitive, aliases accepted).

    Raises:
        ValueError: not a string, unknown, or not one that needs ``needs``; the message
            says ``Unknown metric``, lists the choices and the closest match.
    """
    choices = metrics(needs)
    spec = _REGISTRY.lookup(name) if isinstance(name, str) else None
    if spec is not None and spec.name in choices:
        return spec
    hint = _REGISTRY.suggestion(name if isinstance(name, str) else "", choices)
    other = (
        f" '{spec.name}' needs an {spec.needs}; run it with ExplanationMetrics.run("
        f"'{spec.name}', image, explainer)."
        if spec is not None
        else ""
    )
    raise ValueError(f"Unknown metric {name!r}. Available: {', '.join(choices)}.{other}{hint}")
