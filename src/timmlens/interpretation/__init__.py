"""Explanation methods: GradCAM, GradCAM++, Integrated Gradients, SmoothGrad, attention.

Names are imported on first use (PEP 562), so ``import timmlens`` loads no Captum.
``quick_explain`` and the comparisons draw figures; they live in `timmlens.quick`,
above the methods, and are re-exported here because users know them from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ..quick import (
        ArchitectureComparison,
        ExplanationResult,
        MethodComparison,
        compare_architectures,
        compare_methods,
        quick_explain,
    )
    from .attention import AttentionMaps, AttentionVisualizer
    from .base import Explainer, normalize_maps
    from .cam import GradCAM, GradCAMPlusPlus
    from .input import IGResult, IntegratedGradients, SmoothGrad
    from .registry import (
        as_explainer,
        create_explainer,
        methods,
        register_method,
    )

_EXPORTS = {
    "ArchitectureComparison": "timmlens.quick",
    "AttentionMaps": ".attention",
    "AttentionVisualizer": ".attention",
    "Explainer": ".base",
    "ExplanationResult": "timmlens.quick",
    "GradCAM": ".cam",
    "GradCAMPlusPlus": ".cam",
    "IGResult": ".input",
    "IntegratedGradients": ".input",
    "MethodComparison": "timmlens.quick",
    "SmoothGrad": ".input",
    "as_explainer": ".registry",
    "compare_architectures": "timmlens.quick",
    "compare_methods": "timmlens.quick",
    "create_explainer": ".registry",
    "methods": ".registry",
    "normalize_maps": ".base",
    "quick_explain": "timmlens.quick",
    "register_method": ".registry",
}

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
    "as_explainer",
    "compare_architectures",
    "compare_methods",
    "create_explainer",
    "methods",
    "normalize_maps",
    "quick_explain",
    "register_method",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
