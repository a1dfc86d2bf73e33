"""The one timing harness of the benchmarks: time an entry, remember it, print ratios.

Every benchmark file times its entries with :func:`timed` (pytest-benchmark's
``pedantic`` mode, one group per setting, the entry's role and method in ``extra_info``
for ``benchmarks/report.py``) and ends with :func:`print_summary`, which prints each
entry's mean and min time relative to the group's reference entry (run with ``-s``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one entry: mean and min over the rounds."""

    mean: float
    min: float


#: group -> entry label -> timing, in the order the entries ran
TIMES: dict[str, dict[str, Timing]] = {}


def timed(
    benchmark: Any,
    group: str,
    label: str,
    fn: Callable[[], object],
    *,
    rounds: int = 3,
    warmup_rounds: int = 1,
    **info: Any,
) -> object:
    """Time ``fn`` as entry ``label`` of ``group``; ``info`` goes to ``extra_info``.

    Returns what ``fn`` returned (the last round's result).
    """
    benchmark.group = group
    benchmark.extra_info.update(info)
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
    stats = getattr(benchmark.stats, "stats", None)  # None under --benchmark-disable
    if stats is not None:
        TIMES.setdefault(group, {})[label] = Timing(stats.mean, stats.min)
    return result


def print_summary(group: str, reference: str, images: int | None = None) -> None:
    """Print every entry of ``group`` against ``reference``: time ratios of means and mins.

    Skips the calling test when the reference entry did not run. On a shared machine the
    ratio of the mins is the steadier of the two.
    """
    entries = TIMES.get(group, {})
    if reference not in entries:
        pytest.skip(f"the reference entry '{reference}' of {group} did not run")
    ref = entries[reference]
    width = max(28, *(len(label) + 2 for label in entries))
    per_second = f"{'images/s':>10}" if images else ""
    print(f"\n{group}: time relative to '{reference}'")
    print(f"{'entry':<{width}}{'mean (s)':>10}{per_second}{'x ref mean':>12}{'x ref min':>11}")
    for label, timing in entries.items():
        rate = f"{images / timing.mean:>10.1f}" if images else ""
        print(
            f"{label:<{width}}{timing.mean:>10.3f}{rate}{timing.mean / ref.mean:>12.2f}"
            f"{timing.min / ref.min:>11.2f}"
        )
