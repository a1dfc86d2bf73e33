"""Answers built from explanations: layer hierarchies, sanity checks, error reports."""

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
    "DataRandomizationResult",
    "LayerHierarchy",
    "RandomizationResult",
    "RandomizationUnit",
    "cascade_units",
    "data_randomization_test",
    "explain_layers",
    "hierarchy_layers",
    "map_similarity",
    "parameter_randomization_test",
    "randomize_unit",
    "spearman_per_image",
    "ssim_per_image",
]
