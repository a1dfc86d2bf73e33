"""Attention methods: captured attention probabilities, maps and rollout."""

from .engine import AttentionExplainer, AttentionTrace
from .rollout import AttentionMaps, AttentionVisualizer

__all__ = ["AttentionExplainer", "AttentionMaps", "AttentionTrace", "AttentionVisualizer"]
