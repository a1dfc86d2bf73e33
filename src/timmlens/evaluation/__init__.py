"""Dataset-level evaluation, on one process or under torchrun.

Names are imported on first use (PEP 562): the evaluator pulls in the methods and the
metrics, which ``import timmlens`` should not pay for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .benchmark import benchmark
    from .evaluator import evaluate
    from .leaderboard import Leaderboard
    from .run_identity import load_model_seeded
    from .sources import DatasetSource, ImageFolderSource, Sample, as_source
    from .summary import EvaluationSummary, Statistic

_EXPORTS = {
    "DatasetSource": ".sources",
    "Leaderboard": ".leaderboard",
    "benchmark": ".benchmark",
    "EvaluationSummary": ".summary",
    "ImageFolderSource": ".sources",
    "Sample": ".sources",
    "Statistic": ".summary",
    "as_source": ".sources",
    "evaluate": ".evaluator",
    "load_model_seeded": ".run_identity",
}

__all__ = [
    "DatasetSource",
    "EvaluationSummary",
    "ImageFolderSource",
    "Leaderboard",
    "Sample",
    "Statistic",
    "as_source",
    "benchmark",
    "evaluate",
    "load_model_seeded",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
