"""A leaderboard of methods: per-image rows of several models -> table, JSON, markdown.

Nothing here runs a model: `benchmark` runs
``evaluate`` once per model and hands the rows over. Each entry is a mean with its
95% confidence interval (Student t over the images, clipped to the metric's range), per
model and pooled over every (model, image) pair; methods are ranked by the pooled mean
of the first metric, in its better direction, and compared image by image with the best
method and the reference rows (`leaderboard_stats`): one that is not distinguishable from
the best is marked ``≈``. Besides markdown, JSON and PNG it writes the per-image rows
(``leaderboard_rows.csv``) and the pooled table as LaTeX (``leaderboard.tex``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..interpretation.metrics.registry import resolve_metric
from .leaderboard_stats import (
    NOT_DISTINGUISHABLE,
    best_method,
    format_difference,
    format_statistic,
    latex_table,
    paired_versus,
    write_rows_csv,
)
from .profiles import QUICK_NOTE
from .run_identity import jsonable
from .summary import Statistic, summarise

__all__ = ["REFERENCE_METHODS", "Leaderboard", "build_leaderboard"]

#: Rows every number reads against: a seeded random CAM and the centre-Gaussian prior.
REFERENCE_METHODS: tuple[str, ...] = ("randomcam", "centerprior")


@dataclass
class Leaderboard:
    """Methods x metrics, per model and pooled over models.

    Attributes:
        methods: method names, best first by the pooled mean of ``metrics[0]``.
        metrics: metric names (registry order as given).
        higher_is_better: metric -> its direction.
        models: model names (the evaluate sub-folder of each).
        pooled: method -> metric -> `Statistic` over every (model, image) row.
        per_model: model -> method -> metric -> `Statistic` over its images.
        images: model -> images scored.
        failures: model spec -> why it did not load or run (the others went on).
        not_applicable: model -> methods that do not apply to it (attention on a CNN).
        reference: the reference methods among ``methods``.
        settings: what the run used (steps, method options, ...), for the record.
        paths: what was written: ``markdown``, ``json``, ``plot``, ``rows_csv``, ``latex``.
        image_rows: model -> its per-image rows (the paired comparisons and the CSV).
    """

    methods: list[str]
    metrics: list[str]
    higher_is_better: dict[str, bool]
    models: list[str]
    pooled: dict[str, dict[str, Statistic]]
    per_model: dict[str, dict[str, dict[str, Statistic]]]
    images: dict[str, int]
    failures: dict[str, str] = field(default_factory=dict)
    not_applicable: dict[str, list[str]] = field(default_factory=dict)
    reference: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    image_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def best(self) -> str | None:
        """The best method by the first metric that is not a reference row."""
        return best_method(self.methods, self.reference)

    def versus(self, metric: str) -> dict[str, dict[str, Any]]:
        """``{method: {other: PairedDifference}}`` against the best and the references."""
        others = [m for m in [self.best, *self.reference] if m is not None]
        return paired_versus(self.image_rows, self.methods, metric, others)

    @property
    def tied_with_best(self) -> list[str]:
        """Methods not distinguishable from the best by the first metric (paired, 5%)."""
        if self.best is None or not self.image_rows:
            return []
        versus = self.versus(self.metrics[0])
        best = self.best
        return [
            m for m in self.methods if best in versus[m] and not versus[m][best].distinguishable
        ]

    def _paired_section(self) -> list[str]:
        """Markdown: per metric, each method minus the best and minus each reference row."""
        if not self.image_rows or self.best is None:
            return []
        others = [self.best, *[r for r in self.reference if r != self.best]]
        lines = [
            "",
            "### Paired differences",
            "",
            f"Per (model, image) pair: mean difference [paired bootstrap 95% CI], two-sided "
            f"Wilcoxon signed-rank p; {NOT_DISTINGUISHABLE} not distinguishable at 5%. The "
            f"best method is `{self.best}`.",
        ]
        for metric in self.metrics:
            versus = self.versus(metric)
            head = [metric, *(f"− `{o}`" + (" (best)" if o == self.best else "") for o in others)]
            body = [
                [
                    f"`{m}`",
                    *(format_difference(versus[m][o]) if o in versus[m] else "" for o in others),
                ]
                for m in self.methods
            ]
            lines += ["", *_table(head, body)]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (NaN as ``None``), as ``leaderboard.json`` holds it."""

        def stats(table: Mapping[str, Mapping[str, Statistic]]) -> dict[str, Any]:
            return {m: {k: vars(s) for k, s in row.items()} for m, row in table.items()}

        return jsonable(
            {
                "methods": self.methods,
                "metrics": [
                    {"name": m, "higher_is_better": self.higher_is_better[m]} for m in self.metrics
                ],
                "models": [{"name": model, "images": self.images[model]} for model in self.models],
                "reference_methods": self.reference,
                "pooled": stats(self.pooled),
                "per_model": {model: stats(table) for model, table in self.per_model.items()},
                "failures": self.failures,
                "not_applicable": self.not_applicable,
                "settings": self.settings,
                "best": self.best,
                # per metric: {method: {other: vars(PairedDifference)}}, other = best, references
                "paired": {
                    metric: {
                        m: {o: vars(d) for o, d in versus.items()}
                        for m, versus in self.versus(metric).items()
                    }
                    for metric in self.metrics
                }
                if self.image_rows
                else {},
            }
        )

    def markdown(self) -> str:
        """The leaderboard as markdown: the pooled table, then one table per model."""
        total = sum(self.images.values())
        arrows = {m: "↑" if self.higher_is_better[m] else "↓" for m in self.metrics}
        head = ["rank", "method", *(f"{m} {arrows[m]}" for m in self.metrics)]
        lines = [
            f"Mean ± 95% CI over {total} (model, image) pairs: "
            f"{', '.join(f'{m} ({self.images[m]} images)' for m in self.models)}. "
            f"↑ higher is better, ↓ lower is better; ranked by {self.metrics[0]}. "
            f"Reference rows ({', '.join(f'`{r}`' for r in self.reference) or 'none'}) "
            f"are in italics: a method below them on a metric does no better than chance "
            f"or the centre bias there.",
            "",
            *_table(head, self._rows(self.pooled, ranked=True)),
            *self._paired_section(),
        ]
        if self.settings.get("profile") == "quick":
            lines[:0] = [f"**{QUICK_NOTE[0].upper()}{QUICK_NOTE[1:]}.**", ""]
        for model in self.models:
            lines += [
                "",
                f"### {model} ({self.images[model]} images)",
                "",
                *_table(head[1:], self._rows(self.per_model[model], ranked=False)),
            ]
            if self.not_applicable.get(model):
                lines += ["", f"Not applicable: {', '.join(self.not_applicable[model])}."]
        if self.failures:
            lines += ["", "### Models that did not run", ""]
            lines += [f"- `{spec}`: {why}" for spec, why in self.failures.items()]
        return "\n".join(lines) + "\n"

    def _rows(self, table: Mapping[str, Mapping[str, Statistic]], ranked: bool) -> list[list[str]]:
        rows = []
        tied = self.tied_with_best if ranked else []
        for rank, method in enumerate((m for m in self.methods if m in table), start=1):
            name = f"*`{method}`*" if method in self.reference else f"`{method}`"
            name += f" {NOT_DISTINGUISHABLE} best" if method in tied and method != self.best else ""
            cells = [format_statistic(table[method][metric], metric) for metric in self.metrics]
            rows.append([str(rank), name, *cells] if ranked else [name, *cells])
        return rows

    def __str__(self) -> str:
        return self.markdown()

    def write(self, out: Path, plot: bool = True) -> None:
        """Write ``leaderboard.md``, ``leaderboard.json`` and (``plot``) ``leaderboard.png``."""
        out.mkdir(parents=True, exist_ok=True)
        self.paths["markdown"] = out / "leaderboard.md"
        self.paths["json"] = out / "leaderboard.json"
        self.paths["markdown"].write_text("# Leaderboard\n\n" + self.markdown(), encoding="utf-8")
        self.paths["json"].write_text(
            json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        if self.image_rows:
            self.paths["rows_csv"] = write_rows_csv(
                out / "leaderboard_rows.csv", self.image_rows, self.metrics
            )
        self.paths["latex"] = out / "leaderboard.tex"
        self.paths["latex"].write_text(
            latex_table(
                self.methods,
                self.metrics,
                self.higher_is_better,
                self.pooled,
                [m for m in self.tied_with_best if m != self.best],
                self.reference,
            ),
            encoding="utf-8",
        )
        if plot and self.methods:
            from ..viz.leaderboard_plot import leaderboard_figure

            self.paths["plot"] = out / "leaderboard.png"
            leaderboard_figure(self).savefig(self.paths["plot"], dpi=120, bbox_inches="tight")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" for _ in head) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _sort_key(stat: Statistic | None, higher: bool) -> float:
    if stat is None or stat.n == 0 or not math.isfinite(stat.mean):
        return math.inf  # no value: last
    return -stat.mean if higher else stat.mean


def build_leaderboard(
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    methods: Sequence[str],
    metrics: Sequence[str],
    *,
    reference: Sequence[str] = REFERENCE_METHODS,
    failures: Mapping[str, str] | None = None,
    not_applicable: Mapping[str, Sequence[str]] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Leaderboard:
    """A `Leaderboard` from each model's rows (``{model: [row, ...]}``).

    A row is ``evaluate``'s: ``id``, ``method`` and one value per metric (``None`` or NaN
    where undefined; those are left out of the means). Only ``methods`` are kept.
    """
    metrics = list(metrics)
    higher = {m: resolve_metric(m).higher_is_better for m in metrics}
    wanted = set(methods)
    values: dict[str, dict[str, list[float]]] = {m: {k: [] for k in metrics} for m in methods}
    per_model: dict[str, dict[str, dict[str, Statistic]]] = {}
    images: dict[str, int] = {}
    for model, model_rows in rows.items():
        kept = [row for row in model_rows if row["method"] in wanted]
        images[model] = len({row["id"] for row in kept})
        own: dict[str, dict[str, list[float]]] = {}
        for row in kept:
            for metric in metrics:
                value = row.get(metric)
                own.setdefault(row["method"], {k: [] for k in metrics})[metric].append(value)
                values[row["method"]][metric].append(value)
        per_model[model] = {
            method: {metric: summarise(own[method][metric]) for metric in metrics}
            for method in methods
            if method in own
        }
    pooled = {
        method: {metric: summarise(values[method][metric]) for metric in metrics}
        for method in methods
        if any(values[method][metric] for metric in metrics)
    }
    first = metrics[0]
    ranked = sorted(pooled, key=lambda m: _sort_key(pooled[m][first], higher[first]))
    return Leaderboard(
        methods=ranked,
        metrics=metrics,
        higher_is_better=higher,
        models=list(rows),
        pooled=pooled,
        per_model=per_model,
        images=images,
        failures=dict(failures or {}),
        not_applicable={k: list(v) for k, v in (not_applicable or {}).items() if v},
        reference=[m for m in reference if m in pooled],
        settings=dict(settings or {}),
        image_rows={model: [dict(row) for row in model_rows] for model, model_rows in rows.items()},
    )
