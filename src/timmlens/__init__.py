"""timmlens: explanations for timm image classifiers, on top of Captum."""

from .adapters import describe, get_adapter
from .analysis import explain_layers
from .data import prepare_images
from .errors import (
    HubUnavailableError,
    ImageInputError,
    LayerResolutionError,
    ModelLoadError,
    TimmLensError,
    UnsupportedModelError,
    WeightsMismatchError,
)
from .evaluation import evaluate
from .models import BUNDLED_SPEC, ImageClassifier, load_model

__version__ = "0.1.0"

__all__ = [
    "BUNDLED_SPEC",
    "HubUnavailableError",
    "ImageClassifier",
    "ImageInputError",
    "LayerResolutionError",
    "ModelLoadError",
    "TimmLensError",
    "UnsupportedModelError",
    "WeightsMismatchError",
    "__version__",
    "describe",
    "evaluate",
    "explain_layers",
    "get_adapter",
    "load_model",
    "prepare_images",
]
