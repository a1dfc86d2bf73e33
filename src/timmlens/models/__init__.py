"""Model loading: timm names, ``hf-hub:`` ids, local folders, weight files, bundled weights."""

from .bundled import BUNDLED_ARCHITECTURE, BUNDLED_SPEC, BUNDLED_SPECS, create_bundled_model
from .classifier import ImageClassifier, UntrainedHeadWarning, load_model
from .loading import RandomWeightsWarning, create_timm_model, read_weights_file
from .weights_status import WeightsStatus, mark_random_weights, weights_status

__all__ = [
    "BUNDLED_ARCHITECTURE",
    "BUNDLED_SPEC",
    "BUNDLED_SPECS",
    "ImageClassifier",
    "RandomWeightsWarning",
    "UntrainedHeadWarning",
    "WeightsStatus",
    "create_bundled_model",
    "create_timm_model",
    "load_model",
    "mark_random_weights",
    "read_weights_file",
    "weights_status",
]
