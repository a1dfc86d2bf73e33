"""What a metric sees: one prepared batch, its heatmaps and targets, and the options.

The context knows nothing of ``ExplanationMetrics``: it gets the model, the resolved
options and a chunk-size function, so the front imports the context and never the
other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from ...data import PreparedBatch
from .._targets import CallableTargets
from ..base import predict
from ..scoring import JobInputs, score_in_chunks, target_scores
from .results import MetricResult
from .substrates import SubstrateSpec, make_substrate

if TYPE_CHECKING:
    from .captum_metrics import SupportsExplainBatch

#: ``chunk_size(inputs (B, C, H, W), n_jobs) -> perturbed images per forward``.
ChunkSize = Callable[[torch.Tensor, int], int]

Cached = TypeVar("Cached")


@dataclass
class MetricContext:
    """One batch to score, built by `ExplanationMetrics` for every metric it runs.

    Attributes:
        model: the classifier, in eval mode for the call.
        options: every declared option's value for this call (the defaults, the front's
            options and the call's, checked): ``options["steps"]``, ``options["seed"]``, ...
        chunker: ``chunker(inputs, n_jobs)``, perturbed images per forward (the front's
            memory-bounded chunking).
        batch: the prepared images; ``inputs`` ``(B, C, H, W)`` on the model's device.
        targets: ``(B,)`` long on the model's device, the class scored per image, or a
            callable target (`CallableTargets`,
            which slices and repeats like the class tensor; results then report the
            predicted classes and ``settings["target"]`` names the callable).
        heatmaps: ``(B, H, W)`` float32 at the input resolution (``None`` for a metric
            that needs an explainer).
        explainer: the explainer (``needs="explainer"`` metrics), else ``None``.
        requested: every metric this batch is scored with, so one metric can compute
            others alongside (insertion and deletion share one stream of chunks).
        known_scores: the unperturbed images' target scores ``(B,)``, when resolving
            the targets already computed them.
    """

    model: nn.Module
    options: Mapping[str, Any]
    chunker: ChunkSize
    batch: PreparedBatch
    targets: torch.Tensor
    heatmaps: torch.Tensor | None = None
    explainer: SupportsExplainBatch | None = None
    requested: tuple[str, ...] = ()
    known_scores: torch.Tensor | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def inputs(self) -> torch.Tensor:
        """``(B, C, H, W)`` normalised model input on the model's device."""
        return self.batch.tensor

    @property
    def score(self) -> str:
        """What is scored: ``"probability"`` or ``"logit"``."""
        return self.options["score"]

    def option(self, name: str, default: Any = None) -> Any:
        """``options[name]``, or ``default`` for a name no metric declares."""
        return self.options.get(name, default)

    def original_scores(self) -> torch.Tensor:
        """Target scores of the unperturbed images ``(B,)``, computed once on first use."""
        if self.known_scores is not None:
            return self.known_scores
        return self.cached("original_scores", self._score_originals)

    def _score_originals(self) -> torch.Tensor:
        logits = predict(self.model, self.inputs, self.chunk_size(self.inputs.shape[0]))
        return target_scores(logits, self.targets, self.score)

    def chunk_size(self, n_jobs: int) -> int:
        """Perturbed inputs per forward for ``n_jobs`` of them (the front's ``chunker``)."""
        return self.chunker(self.inputs, n_jobs)

    def score_jobs(self, make_inputs: JobInputs, job_targets: torch.Tensor) -> tuple[Any, int]:
        """Scores ``(J,)`` of the jobs ``make_inputs`` builds, and the chunk size used."""
        chunk = self.chunk_size(job_targets.numel())
        return score_in_chunks(self.model, make_inputs, job_targets, chunk, self.score), chunk

    def substrate(self, spec: SubstrateSpec) -> torch.Tensor:
        """The replacement images ``(B, C, H, W)`` for ``spec`` (see `make_substrate`)."""
        options = self.options
        return make_substrate(spec, self.inputs, options["blur_kernel"], options["blur_sigma"])

    def cached(self, key: str, build: Callable[[], Cached]) -> Cached:
        """``build()`` once per context: work that several metrics of one batch share."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def result(
        self,
        name: str,
        values: torch.Tensor,
        higher_is_better: bool,
        settings: Mapping[str, Any],
        **extra: Any,
    ) -> MetricResult:
        """A `MetricResult` of per-image ``values`` ``(B,)`` for this batch's targets."""
        targets = self.targets
        if isinstance(targets, CallableTargets):  # no class: report the predicted ones
            settings = {**settings, "target": targets.label}
            targets = self.cached("predicted", lambda: predict(self.model, self.inputs).argmax(1))
        return MetricResult(
            name,
            values.detach().double().cpu(),
            targets.cpu(),
            higher_is_better,
            settings,
            single=self.batch.single,
            **extra,
        )
