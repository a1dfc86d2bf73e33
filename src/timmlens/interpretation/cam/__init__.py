"""Layer methods of the CAM family: a map from a layer's activations (and gradients)."""

from .engine import CamContext, CAMExplainer
from .gradcam import GradCAM, GradCAMPlusPlus

__all__ = ["CAMExplainer", "CamContext", "GradCAM", "GradCAMPlusPlus"]
