"""timmlens: explanations for timm image classifiers, on top of Captum."""

from ._model_state import model_lock
from .adapters import describe, get_adapter
from .analysis import (
    data_randomization_test,
    error_report,
    explain_layers,
    parameter_randomization_test,
)
from .data import ImageScalingWarning, prepare_images
from .errors import (
    DistributedRunError,
    GradientsDisabledError,
    HubUnavailableError,
    ImageInputError,
    LabelNameError,
    LayerResolutionError,
    ModelLoadError,
    OutputPathError,
    RunMismatchError,
    TimmLensError,
    UnsupportedModelError,
    WeightsMismatchError,
)
from .evaluation import evaluate
from .models import BUNDLED_SPEC, ImageClassifier, load_model

__version__ = "0.1.0"

__all__ = [
    "BUNDLED_SPEC",
    "DistributedRunError",
    "GradientsDisabledError",
    "HubUnavailableError",
    "ImageClassifier",
    "ImageInputError",
    "ImageScalingWarning",
    "LabelNameError",
    "LayerResolutionError",
    "ModelLoadError",
    "OutputPathError",
    "RunMismatchError",
    "TimmLensError",
    "UnsupportedModelError",
    "WeightsMismatchError",
    "__version__",
    "data_randomization_test",
    "describe",
    "error_report",
    "evaluate",
    "explain_layers",
    "get_adapter",
    "load_model",
    "model_lock",
    "parameter_randomization_test",
    "prepare_images",
]
