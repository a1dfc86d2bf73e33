"""Layer methods of the CAM family: a map from a layer's activations (and gradients)."""

from .gradcam import GradCAM, GradCAMPlusPlus

__all__ = ["GradCAM", "GradCAMPlusPlus"]
