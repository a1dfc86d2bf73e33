"""Attention methods: captured attention probabilities, maps, rollout and relevance,
and relevance propagation through transformers (AttnLRP, CP-LRP)."""

from .attnlrp import CPLRP, AttnLRP
from .engine import AttentionExplainer, AttentionTrace
from .relevance import CheferRelevance, LeGrad
from .rollout import AttentionMaps, AttentionVisualizer

__all__ = [
    "CPLRP",
    "AttentionExplainer",
    "AttentionMaps",
    "AttentionTrace",
    "AttentionVisualizer",
    "AttnLRP",
    "CheferRelevance",
    "LeGrad",
]
