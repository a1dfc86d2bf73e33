"""Answers built from explanations: layer hierarchies, sanity checks, error reports, neurons.

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
    from .error_report import ClassAccuracy, ConfusionPair, ErrorCase, ErrorReport
    from .hierarchy import LayerHierarchy, explain_layers, hierarchy_layers
    from .neurons import (
        ChannelAttribution,
        ChannelConductance,
        channel_attribution,
        channel_conductance,
    )
    from .randomization import RandomizationUnit, cascade_units, randomize_unit
    from .sanity import (
        DataRandomizationResult,
        RandomizationResult,
        data_randomization_test,
        parameter_randomization_test,
    )
    from .similarity import map_similarity, spearman_per_image, ssim_per_image

_EXPORTS = {
    "ChannelAttribution": ".neurons",
    "ChannelConductance": ".neurons",
    "ClassAccuracy": ".error_report",
    "ConfusionPair": ".error_report",
    "DataRandomizationResult": ".sanity",
    "ErrorCase": ".error_report",
    "ErrorReport": ".error_report",
    "LayerHierarchy": ".hierarchy",
    "RandomizationResult": ".sanity",
    "RandomizationUnit": ".randomization",
    "cascade_units": ".randomization",
    "channel_attribution": ".neurons",
    "channel_conductance": ".neurons",
    "data_randomization_test": ".sanity",
    "explain_layers": ".hierarchy",
    "hierarchy_layers": ".hierarchy",
    "map_similarity": ".similarity",
    "parameter_randomization_test": ".sanity",
    "randomize_unit": ".randomization",
    "spearman_per_image": ".similarity",
    "ssim_per_image": ".similarity",
}

__all__ = [
    "ChannelAttribution",
    "ChannelConductance",
    "ClassAccuracy",
    "ConfusionPair",
    "DataRandomizationResult",
    "ErrorCase",
    "ErrorReport",
    "LayerHierarchy",
    "RandomizationResult",
    "RandomizationUnit",
    "cascade_units",
    "channel_attribution",
    "channel_conductance",
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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
