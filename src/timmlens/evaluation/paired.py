"""Paired statistics for rankings of methods scored on the same images.

Two methods scored on the same images are compared image by image, not by their means'
intervals: the Wilcoxon signed-rank test of the per-image differences and a paired
bootstrap interval of the mean difference. Neighbours in a ranking whose difference is
not significant are marked "not distinguishable". Agreement between two rankings of
methods (a metric's and the known answer's) is Kendall's tau with a bootstrap interval
over images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Two-sided level of the tests and intervals.
ALPHA = 0.05
DEFAULT_BOOTSTRAP = 2000


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval (t-based), clipped to the score's range.

    Attributes:
        mean: the mean over the images that have a value.
        low: lower end of the 95% interval.
        high: upper end.
        n: number of images with a value (NaN values are left out).
    """

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over the images where both have a value.

    Attributes:
        mean: mean per-image difference.
        low: lower end of the paired-bootstrap 95% interval of the mean difference.
        high: upper end.
        p_value: two-sided Wilcoxon signed-rank p-value (1.0 when every difference is 0).
        n: number of pairs.
    """

    mean: float
    low: float
    high: float
    p_value: float
    n: int

    @property
    def distinguishable(self) -> bool:
        return self.p_value < ALPHA


def estimate(
    values: Sequence[float] | np.ndarray, bounds: tuple[float, float] = (0.0, 1.0)
) -> Estimate:
    """Mean and t-based 95% interval of ``values`` (NaN left out), clipped to ``bounds``."""
    from scipy import stats

    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(data.mean())
    if data.size == 1:
        return Estimate(mean, mean, mean, 1)
    half = float(stats.t.ppf(1 - ALPHA / 2, data.size - 1) * data.std(ddof=1) / data.size**0.5)
    low, high = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return Estimate(mean, low, high, int(data.size))


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> PairedDifference:
    """Compare ``a`` and ``b`` ``(N,)`` image by image (pairs with a NaN are left out)."""
    from scipy import stats

    first, second = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(
            f"paired scores must be two (N,) arrays over the same images, got "
            f"{first.shape} and {second.shape}."
        )
    keep = np.isfinite(first) & np.isfinite(second)
    diff = first[keep] - second[keep]
    if diff.size == 0:
        return PairedDifference(math.nan, math.nan, math.nan, math.nan, 0)
    if np.all(diff == 0):
        return PairedDifference(0.0, 0.0, 0.0, 1.0, int(diff.size))
    p_value = float(stats.wilcoxon(diff, zero_method="zsplit").pvalue) if diff.size > 1 else 1.0
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(diff.size, size=(n_bootstrap, diff.size))].mean(1)
    low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return PairedDifference(float(diff.mean()), float(low), float(high), p_value, int(diff.size))


@dataclass(frozen=True)
class RankedRow:
    """One method in a ranking by one score.

    Attributes:
        name: the method.
        estimate: its mean and interval.
        versus_next: the paired difference to the next method down (``None`` for the last).
    """

    name: str
    estimate: Estimate
    versus_next: PairedDifference | None

    @property
    def tied_with_next(self) -> bool:
        """Not distinguishable from the next method down (paired test, 5% level)."""
        return self.versus_next is not None and not self.versus_next.distinguishable


def rank_methods(
    scores: Mapping[str, np.ndarray],
    *,
    higher_is_better: bool = True,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> list[RankedRow]:
    """Rank methods by their mean score, each compared with its neighbour image by image.

    Args:
        scores: ``{method: (N,) per-image scores}``, all over the same N images.
        higher_is_better: the score's direction.
        bounds: the score's range, for clipping intervals.
        seed: of the paired bootstraps.
    """
    estimates = {name: estimate(values, bounds) for name, values in scores.items()}
    sign = -1.0 if higher_is_better else 1.0

    def key(name: str) -> tuple[bool, float, str]:  # methods with no value last
        mean = estimates[name].mean
        return (bool(np.isnan(mean)), 0.0 if np.isnan(mean) else sign * mean, name)

    order = sorted(estimates, key=key)
    rows = []
    for position, name in enumerate(order):
        following = order[position + 1] if position + 1 < len(order) else None
        versus = None
        if following is not None:
            versus = paired_difference(scores[name], scores[following], seed=seed)
        rows.append(RankedRow(name, estimates[name], versus))
    return rows


@dataclass(frozen=True)
class Agreement:
    """Kendall's tau between two rankings of the same methods, with a bootstrap interval.

    Attributes:
        tau: Kendall's tau-b of the methods' mean scores.
        low: lower end of the 95% bootstrap interval (images resampled).
        high: upper end.
        methods: number of methods ranked.
    """

    tau: float
    low: float
    high: float
    methods: int

    def __str__(self) -> str:
        return f"{self.tau:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def ranking_agreement(
    reference: Mapping[str, np.ndarray],
    other: Mapping[str, np.ndarray],
    *,
    other_higher_is_better: bool = True,
    n_bootstrap: int = 500,
    seed: int = 0,
) -> Agreement:
    """How well ``other``'s ranking of methods agrees with ``reference``'s (higher is better).

    Both map each method to ``(N,)`` per-image scores over the same N images; a metric
    where lower is better is turned round first, so tau = +1 means the same order.
    """
    from scipy import stats

    names = sorted(set(reference) & set(other))
    if len(names) < 3:
        raise ValueError(f"an agreement needs at least 3 common methods, got {names}.")
    truth = np.stack([np.asarray(reference[n], dtype=np.float64) for n in names])
    judged = np.stack([np.asarray(other[n], dtype=np.float64) for n in names])
    if not other_higher_is_better:
        judged = -judged

    def tau(columns: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            value = stats.kendalltau(
                np.nanmean(truth[:, columns], 1), np.nanmean(judged[:, columns], 1)
            ).statistic
        return float(value)

    everything = np.arange(truth.shape[1])
    rng = np.random.default_rng(seed)
    draws = [tau(rng.integers(truth.shape[1], size=truth.shape[1])) for _ in range(n_bootstrap)]
    low, high = np.nanquantile(np.asarray(draws), [ALPHA / 2, 1 - ALPHA / 2])
    return Agreement(tau(everything), float(low), float(high), len(names))
