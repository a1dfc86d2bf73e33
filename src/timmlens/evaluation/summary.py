"""Per-image rows on disk (JSONL or CSV) and their summary: mean and 95% CI."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROW_KEYS = ("id", "method", "label", "predicted", "target")


def t_critical_975(dof: int) -> float:
    """Two-sided 95% Student-t critical value (Cornish-Fisher expansion around z).

    Within 0.2% of the exact value for dof >= 3; exact tables for dof 1 and 2.
    """
    if dof <= 0:
        return math.nan
    if dof == 1:
        return 12.706
    if dof == 2:
        return 4.303
    z = 1.959964
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


@dataclass(frozen=True)
class Statistic:
    mean: float
    ci95: float  # half-width of the 95% confidence interval of the mean
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.ci95:.4f} (n={self.n})"


def summarise(values: list[float]) -> Statistic:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Statistic(math.nan, math.nan, 0)
    mean = sum(finite) / n
    if n == 1:
        return Statistic(mean, math.nan, 1)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    return Statistic(mean, t_critical_975(n - 1) * std / math.sqrt(n), n)


@dataclass
class EvaluationSummary:
    """Mean and 95% CI per method and metric, with where the rows and summary were written."""

    table: dict[str, dict[str, Statistic]]
    n_images: int
    rows_path: Path
    summary_path: Path
    metrics: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "rows": str(self.rows_path),
            "methods": {
                method: {metric: vars(stat) for metric, stat in stats.items()}
                for method, stats in self.table.items()
            },
        }

    def __str__(self) -> str:
        header = ["method", *self.metrics]
        lines = [" | ".join(header), " | ".join("---" for _ in header)]
        for method, stats in self.table.items():
            lines.append(" | ".join([method, *(str(stats[m]) for m in self.metrics)]))
        return f"{self.n_images} images, mean ± 95% CI\n" + "\n".join(lines)


class RowStore:
    """Append-only per-image rows in ``.jsonl`` or ``.csv``; ``done`` keys for resuming."""

    def __init__(self, path: Path, metrics: list[str]) -> None:
        self.path = path
        self.columns = [*ROW_KEYS, *metrics]
        if path.suffix not in {".jsonl", ".csv"}:
            raise ValueError(f"rows file must end in .jsonl or .csv, got '{path.name}'.")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        if self.path.suffix == ".jsonl":
            with self.path.open() as handle:
                return [json.loads(line) for line in handle if line.strip()]
        with self.path.open(newline="") as handle:
            return [self._parse_csv(row) for row in csv.DictReader(handle)]

    @staticmethod
    def _parse_csv(row: dict[str, str]) -> dict[str, Any]:
        parsed: dict[str, Any] = {}
        for key, value in row.items():
            if key in {"id", "method"}:
                parsed[key] = value
            elif key in {"label", "predicted", "target"}:
                parsed[key] = int(value) if value not in ("", "None") else None
            else:
                parsed[key] = float(value) if value not in ("", "None") else None
        return parsed

    def done(self) -> set[tuple[str, str]]:
        return {(row["id"], row["method"]) for row in self.read()}

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            if self.path.suffix == ".jsonl":
                for row in rows:
                    handle.write(json.dumps(row) + "\n")
                return
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            if new_file:
                writer.writeheader()
            writer.writerows(rows)


def build_summary(
    rows: list[dict[str, Any]], metrics: list[str], rows_path: Path, summary_path: Path
) -> EvaluationSummary:
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for metric in metrics:
            values[row["method"]][metric].append(row.get(metric))
    table = {
        method: {metric: summarise(per_metric[metric]) for metric in metrics}
        for method, per_metric in values.items()
    }
    n_images = len({row["id"] for row in rows})
    summary = EvaluationSummary(table, n_images, rows_path, summary_path, list(metrics))
    summary_path.write_text(json.dumps(summary.to_dict(), indent=2))
    return summary
