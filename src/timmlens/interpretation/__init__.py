"""Explanation methods: GradCAM, GradCAM++, Integrated Gradients, SmoothGrad, attention."""

from .attention import AttentionMaps, AttentionVisualizer
from .base import Explainer, normalize_maps
from .cam import GradCAM, GradCAMPlusPlus
from .input import IGResult, IntegratedGradients, SmoothGrad
from .quick import (
    ArchitectureComparison,
    ExplanationResult,
    MethodComparison,
    compare_architectures,
    compare_methods,
    quick_explain,
)
from .registry import available_methods, create_explainer, method_names

__all__ = [
    "ArchitectureComparison",
    "AttentionMaps",
    "AttentionVisualizer",
    "Explainer",
    "ExplanationResult",
    "GradCAM",
    "GradCAMPlusPlus",
    "IGResult",
    "IntegratedGradients",
    "MethodComparison",
    "SmoothGrad",
    "available_methods",
    "compare_architectures",
    "compare_methods",
    "create_explainer",
    "method_names",
    "normalize_maps",
    "quick_explain",
]
