"""Names of models and of their classes, for titles, tables and reports.

Shared by the one-line explanations (`timmlens.quick`), `timmlens.analysis`
and the dataset sources. It draws nothing and runs no model, so importing it loads
neither matplotlib nor Captum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from .data.preprocess import timm_model_of
from .interpretation.base import num_outputs
from .viz.labels import class_label

__all__ = ["class_name_of", "model_class_names", "model_name_of"]


def model_class_names(model: nn.Module) -> Sequence[str] | None:
    """Class names the model carries itself (``pretrained_cfg["label_names"]``), if any."""
    names = getattr(timm_model_of(model), "pretrained_cfg", {}) or {}
    labels = names.get("label_names") if isinstance(names, Mapping) else None
    if labels and len(labels) == num_outputs(model):
        return list(labels)
    return None


def class_name_of(model: nn.Module, index: int) -> str:
    """The name of class ``index`` for ``model`` (see [`timmlens.viz.class_label`][])."""
    return class_label(index, num_outputs(model), model_class_names(model))


def model_name_of(model: nn.Module) -> str:
    """A short name for figures: the spec of an ``ImageClassifier``, else the architecture."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, str) and spec:
        return spec
    cfg = getattr(timm_model_of(model), "pretrained_cfg", {}) or {}
    return str(cfg.get("architecture") or type(timm_model_of(model)).__name__)
