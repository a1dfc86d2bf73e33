"""What a long run costs, in forwards, and a count of the forwards it makes.

A *forward* here is one image through the whole model: a chunk of 64 perturbed images
scored in one call is 64 forwards. That unit does not depend on the chunk size, and it
is what the time of an evaluation grows with, so it sizes the progress bar: the bar
advances by every chunk the model scores (a forward hook on the model), not by every
batch of images.

The plan is computed before the run from the images, the methods and the metric
settings: each metric says how many forwards one heatmap costs
(``metric.forwards_per_image(options, height, width)``), each explainer how many one
image costs (`forwards_per_image`).
Where either is not known in advance (ScoreCAM's copies depend on the layer's
channels), [`timmlens.evaluate`][] measures it on the first batch and widens the bar.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

import torch
from torch import nn

from ..interpretation.base import Explainer
from ..interpretation.metrics.registry import resolve_metric

__all__ = ["ForwardCounter", "ForwardPlan", "metric_forwards", "plan_forwards"]


class ForwardCounter:
    """Counts the images ``model`` forwards while the block runs (a forward hook).

    Each call of the model adds its batch size to `images` and passes it to
    ``on_forward`` (a progress bar's ``update``). Forwards of a submodule alone (the
    head replayed by AblationCAM) are not calls of the model and are not counted.
    The hook is removed on exit, also after an exception.
    """

    def __init__(self, model: nn.Module, on_forward: Callable[[int], Any] | None = None) -> None:
        self.model = model
        self.on_forward = on_forward
        self.images = 0
        self.calls = 0
        self._handle: Any = None

    def _hook(self, _module: nn.Module, args: tuple[Any, ...], _output: Any) -> None:
        first = args[0] if args else None
        size = first.shape[0] if isinstance(first, torch.Tensor) and first.ndim > 0 else 1
        self.images += size
        self.calls += 1
        if self.on_forward is not None:
            self.on_forward(size)

    def __enter__(self) -> ForwardCounter:
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def metric_forwards(name: str, owner: Any, height: int, width: int) -> int | None:
    """Forwards one heatmap of one ``height x width`` image costs for metric ``name``.

    ``owner`` is the ``ExplanationMetrics`` whose options apply. ``None`` when the metric
    does not say (``forwards_per_image`` is optional in the metric protocol).
    """
    cost = getattr(resolve_metric(name).metric, "forwards_per_image", None)
    return cost(owner.options, height, width) if callable(cost) else None


@dataclass(frozen=True)
class ForwardPlan:
    """The forwards a run will cost.

    Attributes:
        images: images to run (the pending ones of this rank).
        pairs: ``method -> images`` it still has to explain (resume skips the rest).
        explain: ``method -> forwards per image`` (``None``: not known yet).
        score: ``method -> forwards per image`` of all its metrics together (``None``:
            one metric's cost is not known yet).
        probes: one-image forwards that size the chunks (once per input shape).
        metrics: the metric names.
    """

    images: int
    pairs: Mapping[str, int]
    explain: Mapping[str, int | None]
    score: Mapping[str, int | None]
    probes: int = 0
    metrics: tuple[str, ...] = field(default=())

    @property
    def predictions(self) -> int:
        """One clean forward per image: the predicted class (target when there is no label)."""
        return self.images

    @property
    def explanations(self) -> int:
        return sum(self.pairs[m] * (self.explain[m] or 0) for m in self.pairs)

    @property
    def scoring(self) -> int:
        return sum(self.pairs[m] * (self.score[m] or 0) for m in self.pairs)

    @property
    def total(self) -> int:
        """Every forward the plan knows of (unknown costs count as 0 until measured)."""
        return self.probes + self.predictions + self.explanations + self.scoring

    @property
    def unknown(self) -> list[str]:
        """What the total leaves out, in words (``"scorecam (explain)"``)."""
        return [f"{m} (explain)" for m in self.pairs if self.explain[m] is None] + [
            f"{m} (metrics)" for m in self.pairs if self.score[m] is None
        ]

    def measured(self, explain: Mapping[str, float], score: Mapping[str, float]) -> ForwardPlan:
        """The plan with costs measured on a first batch put where they were unknown."""
        return replace(
            self,
            explain={
                m: c if c is not None else round(explain.get(m, 0)) for m, c in self.explain.items()
            },
            score={
                m: c if c is not None else round(score.get(m, 0)) for m, c in self.score.items()
            },
        )

    def __str__(self) -> str:
        methods = len(self.pairs)
        text = (
            f"{self.images} image{'s' * (self.images != 1)} x {methods} "
            f"method{'s' * (methods != 1)} x {len(self.metrics)} "
            f"metric{'s' * (len(self.metrics) != 1)}: {self.total:,} forwards "
            f"({self.predictions:,} predictions, {self.explanations:,} explaining, "
            f"{self.scoring:,} scoring, {self.probes} memory probe{'s' * (self.probes != 1)})"
        )
        if self.unknown:
            text += f", plus {', '.join(self.unknown)}: measured on the first batch"
        return text


def plan_forwards(
    explainers: Mapping[str, Explainer],
    metric_names: list[str],
    owner: Any,
    input_size: tuple[int, int],
    pairs: Mapping[str, int],
    images: int,
) -> ForwardPlan:
    """The `ForwardPlan` of explaining and scoring ``pairs`` (method -> images).

    Args:
        explainers: the explainers by method name.
        metric_names: registry names of the heatmap metrics.
        owner: the ``ExplanationMetrics`` that scores (its steps, samples, chunking).
        input_size: the model input ``(H, W)``.
        pairs: method -> how many images it still explains.
        images: images the run loads (each gets one prediction forward).
    """
    height, width = input_size
    per_metric = [metric_forwards(name, owner, height, width) for name in metric_names]
    per_heatmap = None if any(c is None for c in per_metric) else sum(per_metric)  # type: ignore[arg-type]
    work = {m: n for m, n in pairs.items() if n > 0}
    # ExplanationMetrics probes one image to size its chunks unless max_batch alone caps them.
    options = owner.options
    probes = int(
        bool(work) and (options["max_batch"] is None or options["memory_budget_bytes"] is not None)
    )
    return ForwardPlan(
        images=images,
        pairs=work,
        explain={m: getattr(explainers[m], "forwards_per_image", None) for m in work},
        score=dict.fromkeys(work, per_heatmap),
        probes=probes,
        metrics=tuple(metric_names),
    )
