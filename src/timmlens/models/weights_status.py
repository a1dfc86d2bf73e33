"""Whether a model's weights are trained: the one place titles, pages and file names ask.

A model created with random weights (``load_model("resnet18")``, ``pretrained=False``,
`timmlens.testing.explainable_model`) carries a mark set where it was created;
an [`ImageClassifier`][timmlens.models.ImageClassifier] adds whether it put a new, untrained head
on top. Every figure title, HTML page, saved explanation and output file name reads
[`weights_status`][], so an untrained model is never shown as if it were real.

A module you build yourself and pass in is taken as trained unless its weights look
untrained (`looks_untrained`: every normalisation layer still at its initial values,
as ``timm.create_model("resnet18")`` leaves them); say otherwise with
``ImageClassifier(module, pretrained=False)`` or `mark_random_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: set on a timm module created with random weights (survives ``copy.deepcopy``)
RANDOM_WEIGHTS_ATTRIBUTE = "_timmlens_random_weights"
RANDOM_NOTE = "random weights"
#: set on a known-answer model (``bundled:gt-*``): trained, on the synthetic task
SYNTHETIC_ATTRIBUTE = "_timmlens_synthetic_task"
SYNTHETIC_NOTE = "trained on the synthetic task"


def mark_random_weights(module: nn.Module) -> nn.Module:
    """Record that ``module``'s weights are random (untrained); returns it, unchanged otherwise."""
    object.__setattr__(module, RANDOM_WEIGHTS_ATTRIBUTE, True)
    return module


def mark_synthetic_task(module: nn.Module) -> nn.Module:
    """Record that ``module`` was trained on the synthetic known-answer task; returns it."""
    object.__setattr__(module, SYNTHETIC_ATTRIBUTE, True)
    return module


def has_synthetic_mark(module: Any) -> bool:
    """Whether ``module`` was marked by `mark_synthetic_task`."""
    return bool(getattr(module, SYNTHETIC_ATTRIBUTE, False))


def has_random_mark(module: Any) -> bool:
    """Whether ``module`` was marked by `mark_random_weights`."""
    return bool(getattr(module, RANDOM_WEIGHTS_ATTRIBUTE, False))


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _at_init(module: nn.Module) -> bool:
    """Whether a norm layer holds its initial values: running statistics never updated
    (mean 0, variance 1) and an affine part of ones (or zeros: ResNets zero-init the last
    norm of each block) and zero bias. Training changes at least one of them."""
    with torch.no_grad():
        mean = getattr(module, "running_mean", None)
        var = getattr(module, "running_var", None)
        if isinstance(mean, torch.Tensor) and bool(mean.any()):
            return False
        if isinstance(var, torch.Tensor) and not bool((var == 1).all()):
            return False
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        affine = isinstance(weight, torch.Tensor) and weight.numel() > 0
        if affine and not (bool((weight == 1).all()) or bool((weight == 0).all())):
            return False
        return not (isinstance(bias, torch.Tensor) and bool(bias.any()))


def looks_untrained(module: nn.Module) -> bool:
    """Whether ``module``'s weights look untrained: it has normalisation layers (BatchNorm,
    LayerNorm, GroupNorm and timm's subclasses) and every one of them is still at its
    initial values (`_at_init`). A model without norm layers is not judged (``False``).
    """
    norms = [m for m in module.modules() if isinstance(m, _NORMS)]
    return bool(norms) and all(_at_init(m) for m in norms)


@dataclass(frozen=True)
class WeightsStatus:
    """What a model's outputs mean.

    Attributes:
        random: the model's weights are random: nothing it shows is about real images.
        new_head: the class count of a new, untrained classifier head on trained
            features (``None``: the model's own head).
        synthetic: trained, but on the synthetic known-answer task of
            `timmlens.groundtruth` (``bundled:gt-*``), not on photos.
    """

    random: bool = False
    new_head: int | None = None
    synthetic: bool = False

    @property
    def trained(self) -> bool:
        """Trained weights and the model's own head: its predictions mean something."""
        return not self.random and self.new_head is None

    @property
    def note(self) -> str | None:
        """For titles and pages: ``"random weights"``, ``"untrained 10-class head"`` or None."""
        if self.random:
            return RANDOM_NOTE
        if self.new_head is not None:
            return f"untrained {self.new_head}-class head"
        return SYNTHETIC_NOTE if self.synthetic else None

    @property
    def tag(self) -> str:
        """For file names: ``"random-weights"``, ``"untrained-head"`` or ``""``."""
        if self.random:
            return "random-weights"
        return "untrained-head" if self.new_head is not None else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "pretrained": not self.random,
            "random_weights": self.random,
            "new_head": self.new_head,
            "synthetic_task": self.synthetic,
            "note": self.note,
        }


def weights_status(model: nn.Module) -> WeightsStatus:
    """The [`WeightsStatus`][] of an ``ImageClassifier`` or a bare (timm) module."""
    status = getattr(model, "weights_status", None)
    if isinstance(status, WeightsStatus):
        return status
    random = has_random_mark(model) or looks_untrained(model)
    return WeightsStatus(random=random, synthetic=has_synthetic_mark(model))


def with_weights_note(model: nn.Module, note: str | None = None) -> str | None:
    """``note`` with the model's weights note in front (once): ``"random weights; note"``."""
    parts = [weights_status(model).note, note]
    unique = list(dict.fromkeys(p for p in parts if p))
    return "; ".join(unique) or None


def file_tag(model: nn.Module) -> str:
    """``"_random-weights"`` (etc.) to append to a file stem, or ``""`` for a trained model."""
    tag = weights_status(model).tag
    return f"_{tag}" if tag else ""
