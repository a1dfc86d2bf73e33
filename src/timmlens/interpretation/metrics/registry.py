"""Metrics by name: the one list ``ExplanationMetrics.evaluate_all`` and ``timmlens.evaluate``
read.

A metric is anything with ``name``, ``higher_is_better``, ``needs`` and
``compute(context) -> MetricResult | (B,) tensor`` (`Metric`); the
[`register_metric`][] decorator fills in the first three and adds it::

    @register_metric("mass", higher_is_better=True, summary="heatmap mass in the centre")
    def mass(context: MetricContext) -> torch.Tensor:
        maps = context.heatmaps  # (B, H, W)
        return (maps[:, 8:-8, 8:-8].sum((1, 2)) / maps.sum((1, 2))).double().cpu()

after which ``metrics.evaluate_all(images, heatmaps, metrics=["mass"])`` and
``timmlens.evaluate(..., metrics=["mass"])`` compute it. ``needs="heatmap"`` metrics score
heatmaps ``(B, H, W)``; ``needs="explainer"`` metrics call an explainer themselves
(max-sensitivity) and are reached through their own ``ExplanationMetrics`` method.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

import torch

from .results import MetricResult

if TYPE_CHECKING:
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
    """

    name: str
    metric: Metric
    aliases: tuple[str, ...] = ()
    higher_is_better: bool = True
    needs: str = "heatmap"
    summary: str = ""
    reference: str = ""

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


_SPECS: dict[str, MetricSpec] = {}
_ALIASES: dict[str, str] = {}
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


def _key(name: str) -> str:
    return name.strip().lower()


def register_metric(
    name: str,
    *,
    higher_is_better: bool,
    aliases: tuple[str, ...] = (),
    needs: MetricNeeds = "heatmap",
    summary: str = "",
    reference: str = "",
) -> Callable[[MetricObject], MetricObject]:
    """Register a metric class (instantiated with no arguments) or ``compute`` function.

    The decorated object is returned unchanged; the instance (or a wrapper of the
    function) gets ``name``, ``higher_is_better`` and ``needs`` set.

    Raises:
        ValueError: the name or an alias is taken, or ``needs`` is not one of `NEEDS`.
    """
    if needs not in NEEDS:
        raise ValueError(f"needs={needs!r}; a metric needs one of {NEEDS}.")
    keys = [_key(name), *(_key(alias) for alias in aliases)]
    taken = [key for key in keys if key in _SPECS or key in _ALIASES]
    if taken:
        raise ValueError(
            f"metric name(s) {taken} already registered; pick another name, or remove the old "
            f"one first with unregister_metric()."
        )

    def decorate(obj: MetricObject) -> MetricObject:
        metric: Any = obj() if isinstance(obj, type) else _FunctionMetric(obj)
        metric.name, metric.higher_is_better, metric.needs = keys[0], higher_is_better, needs
        _SPECS[keys[0]] = MetricSpec(
            keys[0], metric, tuple(keys[1:]), higher_is_better, needs, summary, reference
        )
        _ALIASES.update(dict.fromkeys(keys[1:], keys[0]))
        return obj

    return decorate


def unregister_metric(name: str) -> MetricSpec:
    """Remove metric ``name`` (its registry name) and its aliases; returns its spec."""
    if name not in _SPECS:
        raise KeyError(f"no metric '{name}' is registered; registered: {', '.join(_SPECS)}.")
    spec = _SPECS.pop(name)
    for alias in spec.aliases:
        _ALIASES.pop(alias, None)
    return spec


@contextlib.contextmanager
def scoped_metric_registry() -> Iterator[None]:
    """Metrics registered (or unregistered) inside the block are undone at its end."""
    specs, aliases = dict(_SPECS), dict(_ALIASES)
    try:
        yield
    finally:
        _SPECS.clear()
        _SPECS.update(specs)
        _ALIASES.clear()
        _ALIASES.update(aliases)


def metrics(needs: MetricNeeds | None = None) -> list[str]:
    """Registered metric names in registration order, all or those that need ``needs``."""
    if needs is not None and needs not in NEEDS:
        raise ValueError(f"needs={needs!r}; use one of {NEEDS} or None for all.")
    specs = sorted(_SPECS.values(), key=_listing_key)
    return [spec.name for spec in specs if needs is None or spec.needs == needs]


def _listing_key(spec: MetricSpec) -> int:
    if spec.name in _BUILTIN_ORDER:
        return _BUILTIN_ORDER.index(spec.name)
    return len(_BUILTIN_ORDER) + list(_SPECS).index(spec.name)


def resolve_metric(name: str, needs: MetricNeeds | None = None) -> MetricSpec:
    """The `MetricSpec` for ``name`` (case-insensitive, aliases accepted).

    Raises:
        ValueError: not a string, unknown, or not one that needs ``needs``; the message
            says ``Unknown metric``, lists the choices and the closest match.
    """
    choices = metrics(needs)
    key = _key(name) if isinstance(name, str) else None
    key = _ALIASES.get(key, key) if key is not None else None
    if key in choices:
        return _SPECS[key]
    spellings = [*choices, *(alias for alias, target in _ALIASES.items() if target in choices)]
    close = difflib.get_close_matches(key or "", spellings, n=1)
    hint = f" Did you mean '{_ALIASES.get(close[0], close[0])}'?" if close else ""
    other = (
        f" '{key}' needs an {_SPECS[key].needs}; call its own ExplanationMetrics method."
        if key in _SPECS
        else ""
    )
    raise ValueError(f"Unknown metric {name!r}. Available: {', '.join(choices)}.{other}{hint}")
