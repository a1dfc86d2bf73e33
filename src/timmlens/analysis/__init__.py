"""Answers built from explanations and activations: layer hierarchies, sanity checks,
error reports, the concepts a layer has learned (deep feature factorization) and the
pixels that drive one of its channels (conductance).

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
    from .activations import LayerActivations, default_activation_layer, layer_activations
    from .concept_explorer import ConceptExplanation, explain_concepts
    from .concept_maps import concept_maps, visualize_concept
    from .concepts import DatasetConcepts, fit_concepts
    from .dff import (
        ConceptFactorization,
        concept_class_scores,
        deep_feature_factorization,
        factorize_activations,
        shift_nonnegative,
    )
    from .error_report import ClassAccuracy, ConfusionPair, ErrorCase, ErrorReport
    from .feature_params import Robustness
    from .feature_vis import FeatureVisualization, visualize_feature
    from .hierarchy import LayerHierarchy, explain_layers, hierarchy_layers
    from .neurons import (
        ChannelAttribution,
        ChannelConductance,
        channel_attribution,
        channel_conductance,
    )
    from .objectives import Objective
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
    "ConceptExplanation": ".concept_explorer",
    "ConceptFactorization": ".dff",
    "ConfusionPair": ".error_report",
    "DataRandomizationResult": ".sanity",
    "DatasetConcepts": ".concepts",
    "ErrorCase": ".error_report",
    "ErrorReport": ".error_report",
    "FeatureVisualization": ".feature_vis",
    "Objective": ".objectives",
    "Robustness": ".feature_params",
    "visualize_feature": ".feature_vis",
    "LayerActivations": ".activations",
    "LayerHierarchy": ".hierarchy",
    "RandomizationResult": ".sanity",
    "RandomizationUnit": ".randomization",
    "cascade_units": ".randomization",
    "channel_attribution": ".neurons",
    "channel_conductance": ".neurons",
    "concept_class_scores": ".dff",
    "concept_maps": ".concept_maps",
    "data_randomization_test": ".sanity",
    "deep_feature_factorization": ".dff",
    "default_activation_layer": ".activations",
    "explain_concepts": ".concept_explorer",
    "explain_layers": ".hierarchy",
    "factorize_activations": ".dff",
    "fit_concepts": ".concepts",
    "hierarchy_layers": ".hierarchy",
    "layer_activations": ".activations",
    "map_similarity": ".similarity",
    "parameter_randomization_test": ".sanity",
    "randomize_unit": ".randomization",
    "shift_nonnegative": ".dff",
    "visualize_concept": ".concept_maps",
    "spearman_per_image": ".similarity",
    "ssim_per_image": ".similarity",
}

__all__ = [
    "ChannelAttribution",
    "ChannelConductance",
    "ClassAccuracy",
    "ConceptExplanation",
    "ConceptFactorization",
    "ConfusionPair",
    "DataRandomizationResult",
    "DatasetConcepts",
    "ErrorCase",
    "ErrorReport",
    "FeatureVisualization",
    "LayerActivations",
    "LayerHierarchy",
    "Objective",
    "RandomizationResult",
    "RandomizationUnit",
    "Robustness",
    "cascade_units",
    "channel_attribution",
    "channel_conductance",
    "concept_class_scores",
    "concept_maps",
    "data_randomization_test",
    "deep_feature_factorization",
    "default_activation_layer",
    "error_report",
    "explain_concepts",
    "explain_layers",
    "factorize_activations",
    "fit_concepts",
    "hierarchy_layers",
    "layer_activations",
    "map_similarity",
    "parameter_randomization_test",
    "randomize_unit",
    "shift_nonnegative",
    "spearman_per_image",
    "ssim_per_image",
    "visualize_concept",
    "visualize_feature",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
