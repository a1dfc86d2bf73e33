"""Input attribution: Captum's engines on the input pixels (Integrated Gradients, SmoothGrad)."""

from .engine import CaptumInputExplainer
from .integrated_gradients import IGResult, IntegratedGradients
from .smoothgrad import SmoothGrad

__all__ = ["CaptumInputExplainer", "IGResult", "IntegratedGradients", "SmoothGrad"]
