"""Input attribution: Captum's engines on the input pixels (gradients, paths, perturbations)."""

from .center_prior import CenterPrior
from .deeplift import DeepLift, DeepLiftShap, GradientShap
from .engine import CaptumInputExplainer
from .gradients import Deconvolution, GuidedBackprop, GuidedGradCam, InputXGradient, Saliency
from .integrated_gradients import IGResult, IntegratedGradients
from .lrp import LRP
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
