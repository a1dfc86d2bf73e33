"""Run profiles: ``"full"`` (the methods' and metrics' own defaults, what papers report)
and ``"quick"`` (16 insertion/deletion steps and each method's registered
``quick_options``: fewer steps, samples or masks), a first look in minutes on a CPU.

A quick run is marked in every output (summary, ``summary.json``, leaderboard) as not
comparable to papers; the cost line of a long full run suggests it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..interpretation.registry import resolve_method

PROFILES = ("full", "quick")
#: insertion/deletion steps of the quick profile (RISE's default: 224 pixels a step)
QUICK_STEPS = 16
QUICK_NOTE = (
    f"quick profile ({QUICK_STEPS} insertion/deletion steps, each method's quick options): "
    f"not comparable to papers"
)
#: a full run above this many forwards gets the hint to try the quick profile first
#: (about five minutes of a small CNN on a laptop CPU)
QUICK_HINT_FORWARDS = 5_000


def check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(
            f"profile must be one of {', '.join(PROFILES)}, got {profile!r}; 'quick' is a "
            f"cheap first look (--quick on the command line)."
        )


def profile_options(
    profile: str,
    methods: Sequence[Any],
    method_options: Mapping[str, Mapping[str, Any]] | None,
    metric_options: Mapping[str, Any] | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The method and metric options of ``profile``; options given explicitly win.

    Args:
        profile: ``"full"`` or ``"quick"``.
        methods: registry names (explainer instances keep their own settings).
        method_options: ``{method: {option: value}}`` given by the caller.
        metric_options: ``ExplanationMetrics`` options given by the caller.
    """
    check_profile(profile)
    given_methods = {name: dict(opts) for name, opts in (method_options or {}).items()}
    given_metrics = dict(metric_options or {})
    if profile == "full":
        return given_methods, given_metrics
    for method in methods:
        if isinstance(method, str):
            spec = resolve_method(method)
            given = given_methods.get(method, given_methods.get(spec.name, {}))
            given_methods[spec.name] = {**spec.quick_options, **given}
    return given_methods, {"steps": QUICK_STEPS, **given_metrics}


def quick_hint(total_forwards: int, metric_options: Mapping[str, Any]) -> str:
    """``"; long on a CPU: ..."`` for a full run of many forwards, else ``""``."""
    if total_forwards <= QUICK_HINT_FORWARDS or "steps" in metric_options:
        return ""
    return (
        f"; a long run on a CPU: for a first look try --quick (profile='quick', "
        f"{QUICK_STEPS} curve steps, not comparable to papers)"
    )
