"""Attention methods: captured attention probabilities, maps and rollout."""

from .rollout import AttentionMaps, AttentionVisualizer

__all__ = ["AttentionMaps", "AttentionVisualizer"]
