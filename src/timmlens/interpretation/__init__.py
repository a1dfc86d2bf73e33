"""Explanation methods: GradCAM, GradCAM++, Integrated Gradients, SmoothGrad, attention."""

from .base import Explainer, normalize_maps

__all__ = ["Explainer", "normalize_maps"]
