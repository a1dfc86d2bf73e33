"""Layer methods of the CAM family: a map from a layer's activations (and gradients)."""

from .engine import CamContext, CAMExplainer
from .fullgrad import FullGrad
from .gradcam import GradCAM, GradCAMPlusPlus
from .perturbation import AblationCAM, ScoreCAM
from .sess import SESS
from .variants import EigenCAM, EigenGradCAM, HiResCAM, LayerCAM, RandomCAM, XGradCAM

__all__ = [
    "SESS",
    "AblationCAM",
    "CAMExplainer",
    "CamContext",
    "EigenCAM",
    "EigenGradCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "RandomCAM",
    "ScoreCAM",
    "XGradCAM",
]
