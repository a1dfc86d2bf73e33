"""Attention methods: captured attention probabilities, maps, rollout and relevance."""

from .engine import AttentionExplainer, AttentionTrace
from .relevance import CheferRelevance, LeGrad
from .rollout import AttentionMaps, AttentionVisualizer

__all__ = [
    "AttentionExplainer",
    "AttentionMaps",
    "AttentionTrace",
    "AttentionVisualizer",
    "CheferRelevance",
    "LeGrad",
]
