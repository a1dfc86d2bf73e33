"""Dataset-level evaluation, on one process or under torchrun."""

from .evaluator import METRICS, evaluate
from .sources import DatasetSource, ImageFolderSource, Sample, as_source
from .summary import EvaluationSummary, Statistic

__all__ = [
    "METRICS",
    "DatasetSource",
    "EvaluationSummary",
    "ImageFolderSource",
    "Sample",
    "Statistic",
    "as_source",
    "evaluate",
]
