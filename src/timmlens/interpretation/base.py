"""The calling convention every explainer shares.

``explainer(images, target_class=None)`` -> heatmap: ``(H, W)`` for one image,
``(B, H, W)`` for a batch, in model-input coordinates, on the model's device.
"""

from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .._model_state import explaining, require_gradients
from ..data import ImagesInput, PreparedBatch, data_config, prepare_images
from ..errors import ImageInputError, UnsupportedModelError
from ._targets import TargetInput, validate_targets

#: Captum's assertion when a hooked layer never ran.
CAPTUM_SILENT_LAYER = "did not obtain any outputs"
#: Packages whose assertions are not the model's own input checks (found without
#: importing them).
_NOT_THE_MODEL = tuple(
    os.path.dirname(os.path.abspath(spec.origin)) + os.sep
    for spec in map(importlib.util.find_spec, ("timmlens", "captum"))
    if spec is not None and spec.origin is not None
)


def _raised_by_the_model(error: AssertionError) -> bool:
    """Whether ``error`` comes from the model's code (timm's ``_assert`` input checks)."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return False
    filename = os.path.abspath(frame.tb_frame.f_code.co_filename)
    return not filename.startswith(_NOT_THE_MODEL)


def _declared_class_counts(model: nn.Module) -> list[object]:
    """``num_classes`` of ``model`` and of its timm backbone (``ImageClassifier``), if set."""
    owners = (model, getattr(model, "backbone", None))
    return [getattr(owner, "num_classes", None) for owner in owners if owner is not None]


def declares_num_classes(model: nn.Module) -> bool:
    """Whether ``model`` (or its timm backbone) states its class count, as timm models do.

    Any other ``nn.Module`` returning logits is taken at its word; a timm model with
    ``num_classes=0`` (headless: its output is pooled features) is not a classifier.
    """
    return any(isinstance(count, int) for count in _declared_class_counts(model))


def num_outputs(model: nn.Module) -> int:
    """Number of classes of ``model`` (``ImageClassifier`` or a bare timm model)."""
    for count in _declared_class_counts(model):
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            return count
    raise UnsupportedModelError(
        f"{type(model).__name__} has no classifier (num_classes is 0 or missing), so there "
        f"is no class score to explain. Give it a head: ImageClassifier(spec, num_classes=N) "
        f"or timm.create_model(name, num_classes=N)."
    )


@contextmanager
def explanation_call(
    model: nn.Module, inputs: torch.Tensor, what: str, needs_gradients: bool = True
) -> Iterator[None]:
    """The guard around every explanation of ``inputs`` ``(B, C, H, W)`` by ``model``.

    Refuses NaN/inf inputs and (for gradient methods) ``torch.inference_mode()``, holds
    :func:`~timmlens._model_state.explaining` (per-model lock, eval mode, state
    restored), and turns the model's own input assertions (a ViT fed a size that is not
    a multiple of its patch size) into an :class:`ImageInputError` naming the size.
    """
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or inf; explanations of them would be NaN.")
    if needs_gradients:
        require_gradients(what)
    with explaining(model):
        try:
            yield
        except AssertionError as exc:
            if not _raised_by_the_model(exc):
                raise
            height, width = inputs.shape[-2:]
            expected = data_config(model).get("input_size", (None, "?", "?"))
            raise ImageInputError(
                f"The model's input check failed for {height}x{width} pixels: {exc} Its data "
                f"config gives {expected[1]}x{expected[2]}. Pass images (PIL, paths, arrays), "
                f"which timmlens resizes, or resize tensors with timmlens.prepare_images."
            ) from exc


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-map min-max normalisation to [0, 1]: ``(B, H, W)`` -> ``(B, H, W)``.

    A constant map becomes all zeros (there is nothing to rank).
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    span = (flat.max(dim=1).values - flat.min(dim=1).values).view(-1, 1, 1)
    return torch.where(span > eps, (maps - low) / span.clamp_min(eps), torch.zeros_like(maps))


class Explainer(ABC):
    """Base class: preprocessing, target checks and model-state hygiene in one place.

    Subclasses implement :meth:`attribute` on a preprocessed batch.
    """

    #: short method name used in figures, tables and the CLI
    name: str = "explainer"
    #: whether :meth:`attribute` takes gradients (refused under ``torch.inference_mode``)
    needs_gradients: bool = True

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}.")
        self.model = model
        #: the classes explained by the last call, ``(B,)``
        self.last_targets: torch.Tensor | None = None

    def __call__(
        self, images: ImagesInput, target_class: TargetInput = None, **kwargs: Any
    ) -> torch.Tensor:
        return self.explain(images, target_class=target_class, **kwargs)

    def explain(
        self, images: ImagesInput, target_class: TargetInput = None, **kwargs: Any
    ) -> torch.Tensor:
        """Heatmap(s) for ``images``: ``(H, W)`` for one image, ``(B, H, W)`` for a batch.

        Args:
            images: PIL image, path, numpy array, CHW/BCHW tensor, or a list of them.
            target_class: class to explain: one int for all images, one per image, or
                ``None`` for each image's predicted class.
        """
        batch = self.prepare(images)
        maps = self.explain_batch(batch.tensor, target_class, **kwargs)
        return maps[0] if batch.single else maps

    def prepare(self, images: ImagesInput) -> PreparedBatch:
        return prepare_images(images, self.model)

    def explain_batch(
        self, inputs: torch.Tensor, target_class: TargetInput = None, **kwargs: Any
    ) -> torch.Tensor:
        """Heatmaps ``(B, H, W)`` for a preprocessed batch ``(B, C, H, W)``."""
        targets = validate_targets(
            target_class, inputs.shape[0], num_outputs(self.model), self.model
        )
        with explanation_call(self.model, inputs, type(self).__name__, self.needs_gradients):
            return self.attribute(inputs, targets, **kwargs)

    @abstractmethod
    def attribute(
        self, inputs: torch.Tensor, targets: list[int] | None, **kwargs: Any
    ) -> torch.Tensor:
        """Heatmaps ``(B, H, W)`` for inputs ``(B, C, H, W)`` and validated targets.

        ``targets`` is ``None`` for the predicted classes. Implementations set
        ``self.last_targets``.
        """
