"""Answers built from explanations: error reports, layer hierarchies, sanity checks."""
