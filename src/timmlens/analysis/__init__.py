"""Answers built from explanations: layer hierarchies, sanity checks, error reports.

Names are imported on first use (PEP 562), except [`error_report`][]: it shares its
name with its submodule, and the import system would rebind the package attribute to
the submodule once that is imported, so the function is bound here up front (its
module loads no drawing or attribution library).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .error_report import error_report

if TYPE_CHECKING:
    from .concepts import DatasetConcepts, fit_concepts
    from .error_report import ClassAccuracy, ConfusionPair, ErrorCase, ErrorReport
    from .hierarchy import LayerHierarchy, explain_layers, hierarchy_layers
    from .randomization import RandomizationUnit, cascade_units, randomize_unit
    from .sanity import (
        DataRandomizationResult,
        RandomizationResult,
        data_randomization_test,
        parameter_randomization_test,
    )
    from .similarity import map_similarity, spearman_per_image, ssim_per_image

_EXPORTS = {
    "ClassAccuracy": ".error_report",
    "ConfusionPair": ".error_report",
    "DataRandomizationResult": ".sanity",
    "DatasetConcepts": ".concepts",
    "ErrorCase": ".error_report",
    "ErrorReport": ".error_report",
    "LayerHierarchy": ".hierarchy",
    "RandomizationResult": ".sanity",
    "RandomizationUnit": ".randomization",
    "cascade_units": ".randomization",
    "data_randomization_test": ".sanity",
    "explain_layers": ".hierarchy",
    "fit_concepts": ".concepts",
    "hierarchy_layers": ".hierarchy",
    "map_similarity": ".similarity",
    "parameter_randomization_test": ".sanity",
    "randomize_unit": ".randomization",
    "spearman_per_image": ".similarity",
    "ssim_per_image": ".similarity",
}

__all__ = [
    "ClassAccuracy",
    "ConfusionPair",
    "DataRandomizationResult",
    "DatasetConcepts",
    "ErrorCase",
    "ErrorReport",
    "LayerHierarchy",
    "RandomizationResult",
    "RandomizationUnit",
    "cascade_units",
    "data_randomization_test",
    "error_report",
    "explain_layers",
    "fit_concepts",
    "hierarchy_layers",
    "map_similarity",
    "parameter_randomization_test",
    "randomize_unit",
    "spearman_per_image",
    "ssim_per_image",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
