"""Metric options: each metric declares its own (name, default, check, doc) where it is
registered; ``ExplanationMetrics`` only merges and checks them.

One name has one meaning: a name declared by several metrics (``substrate``, ``tie_order``)
is the same `MetricOption` object, and the registry refuses a second declaration of a
name with another default. The engine's own options (`ENGINE_OPTIONS`: what is scored,
the seed, the chunking) apply to every metric.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..scoring import SCORE_KINDS
from ._inputs import positive_int


def _keep(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class MetricOption:
    """One option of one or more metrics.

    Attributes:
        name: the keyword of ``ExplanationMetrics(model, name=...)`` and of its calls.
        default: the value when it is not given.
        doc: one line: what it sets, its unit, its default's source.
        check: ``check(value) -> value``: raises ``ValueError`` (with what was expected)
            for a bad value, returns the value to use (e.g. a tuple for a sequence).
    """

    name: str
    default: Any
    doc: str
    check: Callable[[Any], Any] = _keep

    def validate(self, value: Any) -> Any:
        """``value`` checked and normalised by `check`."""
        return self.check(value)


def positive(name: str) -> Callable[[Any], Any]:
    """A check: a positive int."""

    def check(value: Any) -> Any:
        positive_int(name, value, allow_none=False)
        return value

    return check


def positive_or_none(name: str) -> Callable[[Any], Any]:
    """A check: a positive int or ``None``."""

    def check(value: Any) -> Any:
        positive_int(name, value)
        return value

    return check


def positive_number(name: str) -> Callable[[Any], float]:
    """A check: a finite number > 0, returned as a float."""

    def check(value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not value > 0
        ):
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
        return float(value)

    return check


def _score(value: Any) -> str:
    if value == "prob":
        return "probability"
    if value not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS} (or 'prob'), got {value!r}.")
    return value


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"seed must be an int, got {value!r}.")
    return value


#: The engine's options, which every metric takes.
ENGINE_OPTIONS: tuple[MetricOption, ...] = (
    MetricOption(
        "score",
        "probability",
        "what is scored: 'probability' (softmax of the target, as RISE) or 'logit' (the raw "
        "target logit, as Ancona et al.); a callable target_class selects from it",
        _score,
    ),
    MetricOption("seed", 0, "seed of every random draw; each call starts from it afresh", _seed),
    MetricOption(
        "max_batch",
        None,
        "at most this many perturbed images per forward (None: set by the memory budget)",
        positive_or_none("max_batch"),
    ),
    MetricOption(
        "memory_budget_bytes",
        None,
        "memory one chunk may use, estimated by a probe forward (None: a quarter of the "
        "free CUDA memory, 512 MiB elsewhere)",
        positive_or_none("memory_budget_bytes"),
    ),
)


def unknown_option_error(unknown: Iterable[str], known: Iterable[str], where: str) -> TypeError:
    """The error for options nobody declares: the valid names and the closest one."""
    unknown, known = sorted(unknown), sorted(known)
    first = unknown[0]
    # a metric's options carry its name ("n" is "sensitivity_n", "noise" "road_noise")
    close = difflib.get_close_matches(first, known, n=1) or [
        name for name in known if name.endswith(f"_{first}") or name.startswith(f"{first}_")
    ]
    hint = f" Did you mean {' or '.join(repr(c) for c in close[:2])}?" if close else ""
    return TypeError(
        f"{where} got unknown option{'s' * (len(unknown) > 1)} "
        f"{', '.join(repr(u) for u in unknown)}; valid options: {', '.join(known)}.{hint}"
    )


def defaults(declared: Mapping[str, MetricOption]) -> dict[str, Any]:
    """Every option's default, normalised by its check (a sequence becomes a tuple, ...)."""
    return {name: option.validate(option.default) for name, option in declared.items()}


def merge_options(
    declared: Mapping[str, MetricOption],
    given: Mapping[str, Any],
    base: Mapping[str, Any] | None,
    where: str,
) -> dict[str, Any]:
    """``given`` checked against ``declared`` on top of ``base`` (default: the defaults).

    Raises:
        TypeError: an option ``declared`` lacks (the message lists the valid ones).
        ValueError: a value its option's check refuses.
    """
    unknown = set(given) - set(declared)
    if unknown:
        raise unknown_option_error(unknown, declared, where)
    values = dict(base) if base is not None else defaults(declared)
    values.update({name: declared[name].validate(value) for name, value in given.items()})
    return values
