"""Answers built from explanations: error reports, layer hierarchies, sanity checks."""

from .hierarchy import LayerHierarchy, explain_layers, hierarchy_layers

__all__ = ["LayerHierarchy", "explain_layers", "hierarchy_layers"]
