"""Model loading: timm names, ``hf-hub:`` ids, local folders, weight files, bundled weights."""

from .bundled import BUNDLED_ARCHITECTURE, BUNDLED_SPEC, BUNDLED_SPECS, create_bundled_model
from .classifier import ImageClassifier, UntrainedHeadWarning, load_model
from .loading import RandomWeightsWarning, create_timm_model, read_weights_file

__all__ = [
    "BUNDLED_ARCHITECTURE",
    "BUNDLED_SPEC",
    "BUNDLED_SPECS",
    "ImageClassifier",
    "RandomWeightsWarning",
    "UntrainedHeadWarning",
    "create_bundled_model",
    "create_timm_model",
    "load_model",
    "read_weights_file",
]
