"""Input attribution: Captum's engines on the input pixels (gradients, paths, perturbations)."""

from .captum_methods import (
    LRP,
    Deconvolution,
    DeepLift,
    DeepLiftShap,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    Saliency,
)
from .center_prior import CenterPrior
from .engine import CaptumInputExplainer
from .integrated_gradients import IGResult, IntegratedGradients
from .perturbation import FeatureAblation, KernelShap, Lime, Occlusion, ShapleyValueSampling
from .rise import RISE
from .smoothgrad import SmoothGrad

__all__ = [
    "LRP",
    "RISE",
    "CaptumInputExplainer",
    "CenterPrior",
    "Deconvolution",
    "DeepLift",
    "DeepLiftShap",
    "FeatureAblation",
    "GradientShap",
    "GuidedBackprop",
    "GuidedGradCam",
    "IGResult",
    "InputXGradient",
    "IntegratedGradients",
    "KernelShap",
    "Lime",
    "Occlusion",
    "Saliency",
    "ShapleyValueSampling",
    "SmoothGrad",
]
