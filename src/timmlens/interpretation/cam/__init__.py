"""Layer methods of the CAM family: a map from a layer's activations (and gradients)."""

from .engine import CamContext, CAMExplainer
from .fullgrad import FullGrad
from .gradcam import GradCAM, GradCAMPlusPlus
from .perturbation import AblationCAM, ScoreCAM
from .pgc_scores import FinerCAM, ShapleyCAM
from .pgc_variants import FEM, KPCACAM, GradCAMElementWise, SobelCAM
from .sess import SESS
from .variants import EigenCAM, EigenGradCAM, HiResCAM, LayerCAM, RandomCAM, XGradCAM

__all__ = [
    "FEM",
    "KPCACAM",
    "SESS",
    "AblationCAM",
    "CAMExplainer",
    "CamContext",
    "EigenCAM",
    "EigenGradCAM",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "RandomCAM",
    "ScoreCAM",
    "ShapleyCAM",
    "SobelCAM",
    "XGradCAM",
]
