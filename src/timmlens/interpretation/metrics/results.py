"""The value a metric returns: a float to print and compare, with everything behind it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True, eq=False)
class MetricResult:
    """One metric on one image or a batch; behaves like its float `value`.

    ``f"{result:.4f}"``, ``float(result)``, ``round(result, 3)``, ``result > 0.5``,
    ``insertion - deletion`` and ``sorted(results)`` all work on `value`, the mean
    over images (NaN entries, e.g. an undefined correlation, are left out of the mean).
    ``repr(result)`` shows the metric, its value and its settings.

    Attributes:
        name: ``"insertion"``, ``"deletion"``, ``"sensitivity-n"``, ``"max-sensitivity"``
            or ``"infidelity"``.
        per_image: ``(B,)`` float64 on CPU: the AUC (curves) or score of each image.
        targets: ``(B,)`` long on CPU: the class each image was scored for.
        higher_is_better: the direction in which an explanation is better.
        settings: every setting the value depends on (steps, substrate, score, ...).
        x: ``(T,)`` float64 on CPU, fraction of pixels changed at each curve point
            (curve metrics only, else ``None``).
        y: ``(B, T)`` float32 on CPU, the score of the target class at each point
            (curve metrics only, else ``None``).
        details: extra per-image tensors on CPU (sensitivity-n: ``"heatmap_sums"`` and
            ``"output_drops"``, both ``(B, n_samples)``).
        single: whether the caller passed one image (then `curve` is unbatched).
    """

    name: str
    per_image: torch.Tensor
    targets: torch.Tensor
    higher_is_better: bool
    settings: Mapping[str, Any] = field(default_factory=dict)
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    details: Mapping[str, torch.Tensor] = field(default_factory=dict)
    single: bool = False

    @property
    def value(self) -> float:
        """Mean of `per_image` over images, NaN entries left out (NaN if all are)."""
        finite = self.per_image[~torch.isnan(self.per_image)]
        return float(finite.mean()) if finite.numel() else math.nan

    @property
    def auc(self) -> torch.Tensor:
        """Per-image areas under the curve, ``(B,)`` (an alias of `per_image`)."""
        return self.per_image

    @property
    def curve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: x ``(T,)``; y ``(T,)`` for one image, ``(B, T)`` for a batch."""
        if self.x is None or self.y is None:
            raise AttributeError(f"{self.name} is not a curve metric; it has no curve.")
        return self.x, (self.y[0] if self.single else self.y)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary (for tables and JSON): value, per-image values, settings."""
        return {
            "metric": self.name,
            "value": self.value,
            "per_image": self.per_image.tolist(),
            "targets": self.targets.tolist(),
            "higher_is_better": self.higher_is_better,
            "settings": dict(self.settings),
        }

    # -- float behaviour -------------------------------------------------------------
    def __float__(self) -> float:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        images = self.per_image.numel()
        better = "higher" if self.higher_is_better else "lower"
        settings = ", ".join(f"{key}={value!r}" for key, value in self.settings.items())
        return (
            f"MetricResult({self.name}={self.value:.6g} over {images} image"
            f"{'s' if images != 1 else ''}, {better} is better; {settings})"
        )

    def __round__(self, ndigits: int | None = None) -> float | int:
        return round(self.value, ndigits)

    def __hash__(self) -> int:
        return hash(self.value)

    @staticmethod
    def _other(other: object) -> float | None:
        if isinstance(other, MetricResult):
            return other.value
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return float(other)
        return None

    def __eq__(self, other: object) -> bool:
        value = self._other(other)
        return NotImplemented if value is None else self.value == value

    def __lt__(self, other: object) -> bool:
        value = self._other(other)
        return NotImplemented if value is None else self.value < value

    def __le__(self, other: object) -> bool:
        value = self._other(other)
        return NotImplemented if value is None else self.value <= value

    def __gt__(self, other: object) -> bool:
        value = self._other(other)
        return NotImplemented if value is None else self.value > value

    def __ge__(self, other: object) -> bool:
        value = self._other(other)
        return NotImplemented if value is None else self.value >= value

    def __add__(self, other: object) -> float:
        value = self._other(other)
        return NotImplemented if value is None else self.value + value

    __radd__ = __add__

    def __sub__(self, other: object) -> float:
        value = self._other(other)
        return NotImplemented if value is None else self.value - value

    def __rsub__(self, other: object) -> float:
        value = self._other(other)
        return NotImplemented if value is None else value - self.value

    def __mul__(self, other: object) -> float:
        value = self._other(other)
        return NotImplemented if value is None else self.value * value

    __rmul__ = __mul__

    def __truediv__(self, other: object) -> float:
        value = self._other(other)
        return NotImplemented if value is None else self.value / value

    def __rtruediv__(self, other: object) -> float:
        value = self._other(other)
        return NotImplemented if value is None else value / self.value

    def __neg__(self) -> float:
        return -self.value
