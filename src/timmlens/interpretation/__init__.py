"""Explanation methods: every registered method's class, the registry and the engines.

31 methods in three families: CAM (GradCAM, GradCAM++, ScoreCAM, ... on a layer's
activations), input attribution (Captum's Saliency, Integrated Gradients, SmoothGrad,
DeepLift, SHAP, LIME, Occlusion, ..., and RISE) and attention/relevance (rollout,
Chefer's relevance, LeGrad); `timmlens.interpretation.metrics` scores them. Every
method's class is importable from here.

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
    from .attention import (
        CPLRP,
        AttentionMaps,
        AttentionVisualizer,
        AttnLRP,
        CheferRelevance,
        LeGrad,
    )
    from .base import Explainer, normalize_maps
    from .cam import (
        FEM,
        KPCACAM,
        SESS,
        AblationCAM,
        EigenCAM,
        EigenGradCAM,
        FinerCAM,
        FullGrad,
        GradCAM,
        GradCAMElementWise,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        RandomCAM,
        ScoreCAM,
        ShapleyCAM,
        SobelCAM,
        XGradCAM,
    )
    from .input import (
        LRP,
        RISE,
        CenterPrior,
        Deconvolution,
        DeepLift,
        DeepLiftShap,
        FeatureAblation,
        GradientShap,
        GuidedBackprop,
        GuidedGradCam,
        IGResult,
        InputXGradient,
        IntegratedGradients,
        KernelShap,
        Lime,
        Occlusion,
        Saliency,
        ShapleyValueSampling,
        SmoothGrad,
    )
    from .registry import (
        as_explainer,
        create_explainer,
        methods,
        register_method,
    )

#: every registered method's class, by its engine's package (a test holds this to the registry)
_METHOD_CLASSES: dict[str, tuple[str, ...]] = {
    ".cam": (
        "AblationCAM",
        "EigenCAM",
        "EigenGradCAM",
        "FullGrad",
        "GradCAM",
        "GradCAMPlusPlus",
        "HiResCAM",
        "LayerCAM",
        "RandomCAM",
        "SESS",
        "ScoreCAM",
        "XGradCAM",
        # pytorch-grad-cam's remaining CAMs (issue 31)
        "FEM",
        "FinerCAM",
        "GradCAMElementWise",
        "KPCACAM",
        "ShapleyCAM",
        "SobelCAM",
    ),
    ".input": (
        "LRP",
        "RISE",
        "CenterPrior",
        "Deconvolution",
        "DeepLift",
        "DeepLiftShap",
        "FeatureAblation",
        "GradientShap",
        "GuidedBackprop",
        "GuidedGradCam",
        "InputXGradient",
        "IntegratedGradients",
        "KernelShap",
        "Lime",
        "Occlusion",
        "Saliency",
        "ShapleyValueSampling",
        "SmoothGrad",
    ),
    ".attention": (
        "AttnLRP",
        "AttentionVisualizer",
        "CPLRP",
        "CheferRelevance",
        "LeGrad",
    ),
}

_EXPORTS = {
    "ArchitectureComparison": "timmlens.quick",
    "AttentionMaps": ".attention",
    "Explainer": ".base",
    "ExplanationResult": "timmlens.quick",
    "IGResult": ".input",
    "MethodComparison": "timmlens.quick",
    "as_explainer": ".registry",
    "compare_architectures": "timmlens.quick",
    "compare_methods": "timmlens.quick",
    "create_explainer": ".registry",
    "methods": ".registry",
    "normalize_maps": ".base",
    "quick_explain": "timmlens.quick",
    "register_method": ".registry",
    **{name: package for package, names in _METHOD_CLASSES.items() for name in names},
}

__all__ = [
    "CPLRP",
    "FEM",
    "KPCACAM",
    "LRP",
    "RISE",
    "SESS",
    "AblationCAM",
    "ArchitectureComparison",
    "AttentionMaps",
    "AttentionVisualizer",
    "AttnLRP",
    "CenterPrior",
    "CheferRelevance",
    "Deconvolution",
    "DeepLift",
    "DeepLiftShap",
    "EigenCAM",
    "EigenGradCAM",
    "Explainer",
    "ExplanationResult",
    "FeatureAblation",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GradientShap",
    "GuidedBackprop",
    "GuidedGradCam",
    "HiResCAM",
    "IGResult",
    "InputXGradient",
    "IntegratedGradients",
    "KernelShap",
    "LayerCAM",
    "LeGrad",
    "Lime",
    "MethodComparison",
    "Occlusion",
    "RandomCAM",
    "Saliency",
    "ScoreCAM",
    "ShapleyCAM",
    "ShapleyValueSampling",
    "SmoothGrad",
    "SobelCAM",
    "XGradCAM",
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
