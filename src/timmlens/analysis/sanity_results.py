"""What the sanity checks of `timmlens.analysis.sanity` measured: per method, unit and
image how similar each randomised map is to the original, with means, seed spreads,
chance levels and verdicts. Importable from `timmlens.analysis.sanity` too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .randomization import RandomizationUnit
from .similarity import METRICS, map_similarity

#: Label of the row before any unit is randomised.
REFERENCE_STEP = "original"


def _nanmean(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.nanmean(values.float(), dim=dim)


def _format_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    table = [[str(c) for c in columns]] + [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


@dataclass
class RandomizationResult:
    """What [`parameter_randomization_test`][timmlens.analysis.sanity.parameter_randomization_test]
    measured.

    Rows ("steps"): step 0 is the copy *before* any randomisation (it measures how
    reproducible the method is: 1 for deterministic methods); step ``i >= 1`` is after
    randomising ``units[:i]`` (cascading) or ``units[i - 1]`` alone (independent).

    Attributes:
        methods: method labels (registry names such as ``"gradcam"``; instances are
            labelled by their ``name`` and layer).
        units: the randomised units' names, in the order used (top-down by default).
        cascading: cascading (``True``) or independent (``False``) randomisation.
        targets: ``(B,)`` long, the class every step explains.
        original: method -> ``(B, H, W)`` maps of the user's model (CPU).
        randomized: method -> ``(steps, B, H, W)`` maps at each step (CPU).
        similarity: method -> metric (``"spearman"``, ``"spearman_abs"``, ``"ssim"``) ->
            ``(steps, B)`` similarity of each step's map with the original (CPU, NaN
            where Spearman is undefined because a map is constant), for the first seed.
        seed: the (first) seed the units were drawn from.
        seeds: every seed the test ran with (``seeds=``); one cascade per seed.
        seed_similarity: method -> metric -> ``(seeds, steps, B)``, every seed's
            similarities (``similarity`` is its first row).

    With several seeds, `mean`, `table` and `falls` average over the
    seeds and images together, and `spread` says how far the seeds disagree: one
    seed's randomised weights can leave a map more or less like the original by chance.
    """

    methods: tuple[str, ...]
    units: tuple[str, ...]
    cascading: bool
    targets: torch.Tensor
    original: dict[str, torch.Tensor] = field(repr=False)
    randomized: dict[str, torch.Tensor] = field(repr=False)
    similarity: dict[str, dict[str, torch.Tensor]] = field(repr=False)
    seed: int = 0
    unit_details: tuple[RandomizationUnit, ...] = field(default=(), repr=False)
    seeds: tuple[int, ...] = ()
    seed_similarity: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> tuple[str, ...]:
        """Row labels: ``"original"`` (nothing randomised), then each unit."""
        return (REFERENCE_STEP, *self.units)

    def _check(self, method: str, metric: str) -> None:
        if method not in self.similarity:
            raise KeyError(
                f"no method '{method}' in this result; it has {', '.join(self.methods)}."
            )
        if metric not in self.similarity[method]:
            raise KeyError(f"no metric '{metric}'; use one of {', '.join(METRICS)}.")

    def _by_seed(self, method: str, metric: str) -> torch.Tensor:
        """``(seeds, steps, B)`` similarities (one seed row without ``seed_similarity``)."""
        self._check(method, metric)
        if method in self.seed_similarity:
            return self.seed_similarity[method][metric]
        return self.similarity[method][metric][None]

    def mean(self, method: str, metric: str = "spearman") -> torch.Tensor:
        """``(steps,)`` mean similarity over images and seeds (NaN entries left out)."""
        values = self._by_seed(method, metric)
        return _nanmean(values.transpose(0, 1).flatten(1), dim=1)

    def seed_means(self, method: str, metric: str = "spearman") -> torch.Tensor:
        """``(seeds, steps)``: each seed's mean over images (NaN entries left out)."""
        return _nanmean(self._by_seed(method, metric), dim=2)

    def spread(self, method: str, metric: str = "spearman") -> dict[str, torch.Tensor]:
        """How much the seeds disagree, per step: each ``(steps,)``.

        ``"sd"``: standard deviation of the per-seed means over images (0 for one seed);
        ``"min"`` / ``"max"``: the lowest and highest per-image value over every seed
        and image (NaN left out).
        """
        values = self._by_seed(method, metric)
        means = self.seed_means(method, metric)
        count = (~torch.isnan(means)).sum(dim=0)
        centred = torch.where(torch.isnan(means), 0.0, means - _nanmean(means.T, dim=1))
        sd = (centred.pow(2).sum(dim=0) / (count - 1).clamp_min(1)).sqrt()
        flat = values.transpose(0, 1).flatten(1)
        finite = ~torch.isnan(flat)
        low = torch.where(finite, flat, torch.inf).min(dim=1).values
        high = torch.where(finite, flat, -torch.inf).max(dim=1).values
        nothing = ~finite.any(dim=1)
        return {
            "sd": sd,
            "min": torch.where(nothing, torch.nan, low),
            "max": torch.where(nothing, torch.nan, high),
        }

    def table(self) -> list[dict[str, Any]]:
        """One row per method and step: ``method, step, unit, spearman, spearman_abs, ssim``
        (means over images and seeds, NaN left out) and ``undefined`` (images whose
        Spearman is NaN, counted over seeds). With several seeds also ``spearman_sd`` and
        ``ssim_sd`` (standard deviation of the per-seed means, `spread`).
        """
        rows = []
        several = len(self.seeds) > 1
        for method in self.methods:
            means = {metric: self.mean(method, metric) for metric in METRICS}
            spreads = {m: self.spread(method, m)["sd"] for m in ("spearman", "ssim") if several}
            undefined = torch.isnan(self._by_seed(method, "spearman")).sum(dim=(0, 2))
            for step, unit in enumerate(self.steps):
                row: dict[str, Any] = {"method": method, "step": step, "unit": unit}
                row.update({metric: float(means[metric][step]) for metric in METRICS})
                row.update({f"{m}_sd": float(sd[step]) for m, sd in spreads.items()})
                row["undefined"] = int(undefined[step])
                rows.append(row)
        return rows

    def falls(self, method: str, metric: str = "spearman", margin: float = 0.5) -> bool:
        """Whether the explanation changed clearly under randomisation.

        Rule: the mean ``metric`` over images after the last step is at least ``margin``
        below its mean at step 0 (the unrandomised copy, 1 for deterministic methods).
        In the cascading test the last step has every unit randomised; in the
        independent test it has only the last (lowest) unit randomised, so look at
        `mean` for the others. If the metric is undefined for every image at the
        last step (every map constant, e.g. all-zero GradCAMs) nothing of the original
        structure is left, which counts as a fall.

        Raises:
            ValueError: the metric is undefined at step 0 (the original maps are constant).
        """
        means = self.mean(method, metric)
        reference, last = float(means[0]), float(means[-1])
        if math.isnan(reference):
            raise ValueError(
                f"{metric} of {method} is undefined at step 0 (constant original maps); "
                f"there is nothing to compare. Use metric='ssim'."
            )
        return math.isnan(last) or last <= reference - margin

    def chance(self, method: str, metric: str = "spearman") -> float:
        """Similarity of unrelated maps: each image's original map against the next image's.

        The floor the curves are read against: maps of different images share only what
        the method and architecture impose on every map (a centre bias, border effects),
        so randomised maps that sink to this level kept nothing image-specific. Mean over
        the ``B`` pairs (image ``i`` with image ``i + 1``, cyclically); NaN for one image.
        """
        self._check(method, metric)
        original = self.original[method]
        if original.shape[0] < 2:
            return math.nan
        shifted = original.roll(1, dims=0)
        return float(_nanmean(map_similarity(original, shifted)[metric], dim=0))

    def summary(self) -> str:
        """A text table of `table` with the chance level and a verdict per method."""
        mode = "cascading" if self.cascading else "independent"
        seeds = self.seeds or (self.seed,)
        head = (
            f"Model parameter randomisation ({mode}), {self.targets.numel()} image(s), "
            f"{len(self.units)} units, seed(s) {', '.join(map(str, seeds))}; similarity of "
            f"each step's map with the original"
        )
        sd_columns = ("spearman_sd", "ssim_sd") if len(seeds) > 1 else ()
        columns = ("method", "step", "unit", *METRICS, *sd_columns, "undefined")
        body = _format_rows(self.table(), columns)
        verdicts = [
            f"{method}: Spearman {'falls' if self.falls(method) else 'does NOT fall'}, "
            f"SSIM {'falls' if self.falls(method, 'ssim') else 'does NOT fall'} "
            f"(rule: last step <= step 0 - 0.5); chance level (maps of different images): "
            f"Spearman {self.chance(method):.3f}, SSIM {self.chance(method, 'ssim'):.3f}"
            for method in self.methods
            if not math.isnan(float(self.mean(method)[0]))
        ]
        return "\n".join([head, body, *verdicts])

    def __str__(self) -> str:
        return self.summary()


@dataclass
class DataRandomizationResult:
    """What [`data_randomization_test`][timmlens.analysis.sanity.data_randomization_test] measured.

    Attributes:
        methods: method names.
        targets: ``(B,)`` classes the model explained.
        random_targets: ``(B,)`` classes the random-label model explained.
        original: method -> ``(B, H, W)`` maps of the model (CPU).
        randomized: method -> ``(B, H, W)`` maps of the random-label model (CPU).
        similarity: method -> metric -> ``(B,)`` (CPU; NaN where Spearman is undefined).
    """

    methods: tuple[str, ...]
    targets: torch.Tensor
    random_targets: torch.Tensor
    original: dict[str, torch.Tensor] = field(repr=False)
    randomized: dict[str, torch.Tensor] = field(repr=False)
    similarity: dict[str, dict[str, torch.Tensor]] = field(repr=False)

    def mean(self, method: str, metric: str = "spearman") -> float:
        """Mean similarity over images (NaN entries left out; NaN if all are)."""
        if method not in self.similarity:
            raise KeyError(
                f"no method '{method}' in this result; it has {', '.join(self.methods)}."
            )
        if metric not in self.similarity[method]:
            raise KeyError(f"no metric '{metric}'; use one of {', '.join(METRICS)}.")
        return float(_nanmean(self.similarity[method][metric], dim=0))

    def table(self) -> list[dict[str, Any]]:
        """One row per method: ``method, spearman, spearman_abs, ssim`` (means)."""
        return [
            {"method": method, **{metric: self.mean(method, metric) for metric in METRICS}}
            for method in self.methods
        ]

    def summary(self) -> str:
        head = (
            f"Data randomisation, {self.targets.numel()} image(s): similarity of the "
            f"random-label model's maps with the model's"
        )
        return "\n".join([head, _format_rows(self.table(), ("method", *METRICS))])

    def __str__(self) -> str:
        return self.summary()
