"""What a leaderboard needs for a paper: paired differences, clipped intervals, exports.

Methods scored on the same images are compared image by image (`timmlens.evaluation.paired`:
Wilcoxon signed-rank test and paired bootstrap interval of the mean difference), each
against the best method and against every reference row; a method whose difference from
the best is not significant at 5% is marked "not distinguishable" (``≈``) rather than
ranked below it. Intervals of scores with a known range (insertion and deletion AUCs are
areas under probability curves, in [0, 1]) are clipped to it. The per-image rows go to a
CSV file and the pooled table to a LaTeX ``tabular`` (booktabs).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .paired import PairedDifference, paired_difference
from .summary import FIXED_KEYS, Statistic

#: metric -> (low, high) of its values on probability scores (the leaderboard's); metrics
#: not listed are unbounded. ROAD rows are mean probabilities; Average Drop and Increase
#: in Confidence are percentages; AOPC is a mean drop in probability; sensitivity-n a
#: Pearson correlation.
METRIC_BOUNDS: dict[str, tuple[float, float]] = {
    "insertion": (0.0, 1.0),
    "deletion": (0.0, 1.0),
    "road_morf": (0.0, 1.0),
    "road_lerf": (0.0, 1.0),
    "average_drop": (0.0, 100.0),
    "increase_in_confidence": (0.0, 100.0),
    "aopc": (-1.0, 1.0),
    "sensitivity": (-1.0, 1.0),
}
NOT_DISTINGUISHABLE = "≈"
Rows = Mapping[str, Sequence[Mapping[str, Any]]]


def interval(stat: Statistic, metric: str) -> tuple[float, float]:
    """``mean ± ci95`` of ``stat``, clipped to the metric's range (`METRIC_BOUNDS`)."""
    low, high = METRIC_BOUNDS.get(metric, (-math.inf, math.inf))
    return max(low, stat.mean - stat.ci95), min(high, stat.mean + stat.ci95)


def format_statistic(stat: Statistic, metric: str, digits: int = 3) -> str:
    """``"0.938 ± 0.124"``, or ``"0.938 [0.814, 1.000]"`` where the range clips it."""
    if stat.n == 0 or not math.isfinite(stat.mean):
        return "-"
    if not math.isfinite(stat.ci95):
        return f"{stat.mean:.{digits}f}"
    low, high = interval(stat, metric)
    if (low, high) == (stat.mean - stat.ci95, stat.mean + stat.ci95):
        return f"{stat.mean:.{digits}f} ± {stat.ci95:.{digits}f}"
    return f"{stat.mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _per_image(rows: Rows, metric: str) -> dict[str, dict[tuple[str, str], float]]:
    """method -> {(model, image id): value} (NaN where undefined)."""
    table: dict[str, dict[tuple[str, str], float]] = {}
    for model, model_rows in rows.items():
        for row in model_rows:
            value = row.get(metric)
            number = float(value) if isinstance(value, (int, float)) else math.nan
            table.setdefault(row["method"], {})[(model, str(row["id"]))] = number
    return table


def paired_versus(
    rows: Rows, methods: Sequence[str], metric: str, others: Sequence[str], seed: int = 0
) -> dict[str, dict[str, PairedDifference]]:
    """``{method: {other: method - other}}`` over the (model, image) pairs both scored."""
    table = _per_image(rows, metric)
    result: dict[str, dict[str, PairedDifference]] = {}
    for method in methods:
        result[method] = {}
        for other in others:
            if other == method or method not in table or other not in table:
                continue
            keys = sorted(set(table[method]) & set(table[other]))
            a = np.array([table[method][k] for k in keys])
            b = np.array([table[other][k] for k in keys])
            result[method][other] = paired_difference(a, b, seed=seed)
    return result


def format_difference(difference: PairedDifference) -> str:
    """``"-0.012 [-0.030, 0.004], p=0.21 ≈"`` (``≈``: not distinguishable at 5%)."""
    if difference.n == 0 or not math.isfinite(difference.mean):
        return "-"
    mark = "" if difference.distinguishable else f" {NOT_DISTINGUISHABLE}"
    return (
        f"{difference.mean:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}], "
        f"p={difference.p_value:.2g}{mark}"
    )


def best_method(ranked: Sequence[str], reference: Sequence[str]) -> str | None:
    """The first method of a ranking that is not a reference row."""
    return next((method for method in ranked if method not in reference), None)


def write_rows_csv(path: Path, rows: Rows, metrics: Sequence[str]) -> Path:
    """Every per-image row of every model: ``model, id, method, label, predicted,
    target, label_name, predicted_name, target_name, <metrics>``, for the reader's own
    statistics (each model's rows named as that model names its classes)."""
    columns = ["model", *FIXED_KEYS, *metrics]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for model, model_rows in rows.items():
            for row in model_rows:
                writer.writerow({**row, "model": model})
    return path


def _latex(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%")):
        text = text.replace(char, escaped)
    return text.replace("±", r"$\pm$").replace(NOT_DISTINGUISHABLE, r"$\approx$")


def latex_table(
    ranked: Sequence[str],
    metrics: Sequence[str],
    higher_is_better: Mapping[str, bool],
    pooled: Mapping[str, Mapping[str, Statistic]],
    tied_with_best: Sequence[str],
    reference: Sequence[str],
) -> str:
    """The pooled table as a booktabs ``tabular``: the best mean per metric in bold,
    reference rows in italics, ``$\\approx$`` for methods not distinguishable from the best."""
    arrows = {m: r"$\uparrow$" if higher_is_better[m] else r"$\downarrow$" for m in metrics}
    best = {
        m: (max if higher_is_better[m] else min)(
            (pooled[x][m].mean for x in ranked if math.isfinite(pooled[x][m].mean)),
            default=math.nan,
        )
        for m in metrics
    }
    lines = [
        r"\begin{tabular}{r l " + "c " * len(metrics) + "}",
        r"\toprule",
        " & ".join(["Rank", "Method", *(f"{_latex(m)} {arrows[m]}" for m in metrics)]) + r" \\",
        r"\midrule",
    ]
    for rank, method in enumerate(ranked, start=1):
        name = _latex(method) + (r" $\approx$" if method in tied_with_best else "")
        name = rf"\textit{{{name}}}" if method in reference else name
        cells = []
        for metric in metrics:
            stat = pooled[method][metric]
            cell = _latex(format_statistic(stat, metric))
            cells.append(rf"\textbf{{{cell}}}" if stat.mean == best[metric] else cell)
        lines.append(" & ".join([str(rank), name, *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
