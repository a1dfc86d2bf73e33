"""Answers built from explanations: layer hierarchies, sanity checks, error reports."""

from .error_report import (
    ClassAccuracy,
    ConfusionPair,
    ErrorCase,
    ErrorReport,
    error_report,
)
from .hierarchy import LayerHierarchy, explain_layers, hierarchy_layers
from .randomization import RandomizationUnit, cascade_units, randomize_unit
from .sanity import (
    DataRandomizationResult,
    RandomizationResult,
    data_randomization_test,
    parameter_randomization_test,
)
from .similarity import map_similarity, spearman_per_image, ssim_per_image

__all__ = [
    "ClassAccuracy",
    "ConfusionPair",
    "DataRandomizationResult",
    "ErrorCase",
    "ErrorReport",
    "LayerHierarchy",
    "RandomizationResult",
    "RandomizationUnit",
    "cascade_units",
    "data_randomization_test",
    "error_report",
    "explain_layers",
    "hierarchy_layers",
    "map_similarity",
    "parameter_randomization_test",
    "randomize_unit",
    "spearman_per_image",
    "ssim_per_image",
]
