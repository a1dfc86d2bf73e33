"""timmlens: explanations for timm image classifiers, on top of Captum.

``import timmlens`` costs little more than ``import torch, timm``: the analyses and the
evaluation (which need the methods, Captum and, for reports, matplotlib) are imported
on first use (PEP 562), and so are the subpackages' own exports.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._model_state import model_lock
from ._version import __version__
from ._warnings import DegenerateMapWarning
from .adapters import describe, get_adapter
from .data import ImageScalingWarning, prepare_images
from .errors import (
    ChannelIndexError,
    ConceptInputError,
    ConceptLabelError,
    DeviceError,
    DistributedRunError,
    ExplanationFileError,
    GradientsDisabledError,
    HubUnavailableError,
    ImageInputError,
    LabelNameError,
    LayerResolutionError,
    MetricInputError,
    ModelLoadError,
    OptionalDependencyError,
    OutputPathError,
    RunMismatchError,
    TargetError,
    TimmLensError,
    UnsupportedModelError,
    WeightsMismatchError,
)
from .models import BUNDLED_SPEC, ImageClassifier, load_model

if TYPE_CHECKING:
    from .analysis import (
        data_randomization_test,
        deep_feature_factorization,
        error_report,
        explain_concepts,
        explain_layers,
        fit_concepts,
        parameter_randomization_test,
    )
    from .evaluation import benchmark, evaluate
    from .saving import load_explanation

_EXPORTS = {
    "benchmark": ".evaluation",
    "data_randomization_test": ".analysis",
    "deep_feature_factorization": ".analysis",
    "error_report": ".analysis",
    "evaluate": ".evaluation",
    "explain_concepts": ".analysis",
    "explain_layers": ".analysis",
    "fit_concepts": ".analysis",
    "load_explanation": ".saving",
    "parameter_randomization_test": ".analysis",
}

__all__ = [
    "BUNDLED_SPEC",
    "ChannelIndexError",
    "ConceptInputError",
    "ConceptLabelError",
    "DegenerateMapWarning",
    "DeviceError",
    "DistributedRunError",
    "ExplanationFileError",
    "GradientsDisabledError",
    "HubUnavailableError",
    "ImageClassifier",
    "ImageInputError",
    "ImageScalingWarning",
    "LabelNameError",
    "LayerResolutionError",
    "MetricInputError",
    "ModelLoadError",
    "OptionalDependencyError",
    "OutputPathError",
    "RunMismatchError",
    "TargetError",
    "TimmLensError",
    "UnsupportedModelError",
    "WeightsMismatchError",
    "__version__",
    "benchmark",
    "data_randomization_test",
    "deep_feature_factorization",
    "describe",
    "error_report",
    "evaluate",
    "explain_concepts",
    "explain_layers",
    "fit_concepts",
    "get_adapter",
    "load_explanation",
    "load_model",
    "model_lock",
    "parameter_randomization_test",
    "prepare_images",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
