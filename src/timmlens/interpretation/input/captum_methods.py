"""The former home of Captum's gradient and reference methods, kept as an import path.

The methods live by family: [`gradients`][timmlens.interpretation.input.gradients]
(saliency, input x gradient, guided backprop, deconvolution, guided GradCAM),
[`deeplift`][timmlens.interpretation.input.deeplift] (DeepLift, DeepLiftShap,
GradientShap) and [`lrp`][timmlens.interpretation.input.lrp].
"""

from __future__ import annotations

from .baselines import reference_distribution
from .deeplift import DeepLift, DeepLiftShap, GradientShap
from .gradients import Deconvolution, GuidedBackprop, GuidedGradCam, InputXGradient, Saliency
from .lrp import LRP

__all__ = [
    "LRP",
    "Deconvolution",
    "DeepLift",
    "DeepLiftShap",
    "GradientShap",
    "GuidedBackprop",
    "GuidedGradCam",
    "InputXGradient",
    "Saliency",
    "reference_distribution",
]
