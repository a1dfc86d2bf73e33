"""``ImageClassifier``: a timm backbone and its classifier head as one ``nn.Module``."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import nn

from .loading import PathLike, create_timm_model


class UntrainedHeadWarning(UserWarning):
    """A new classifier head was created; its outputs mean nothing until it is trained."""


def _module_path(root: nn.Module, target: nn.Module) -> str | None:
    return next((name for name, module in root.named_modules() if module is target), None)


def _split_classifier(model: nn.Module) -> nn.Module:
    """Detach timm's final classifier from ``model`` and return it.

    The classifier's slot in ``model`` becomes ``nn.Identity``, so ``model(x)`` gives the
    pooled pre-logit features and ``head(model(x))`` the logits, exactly as before.
    Models whose classifier is not a single linear layer (distilled DeiT with two
    heads, convolutional heads) keep it inside; their head is then ``nn.Identity``.
    """
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(classifier, nn.Linear):
        return nn.Identity()
    path = _module_path(model, classifier)
    if path is None or not path:
        return nn.Identity()
    parent_name, _, attribute = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, nn.Identity())
    return classifier


class ImageClassifier(nn.Module):
    """A timm image classifier as ``head(backbone(x))``.

    Layer names start with ``backbone.`` (``"backbone.layer4"``, ``"backbone.blocks.11"``),
    the convention of the tutorials our users follow.

    Args:
        backbone: a model spec (timm name, ``hf-hub:`` id, local folder,
            ``"bundled:efficientnet_lite0"``) or a timm ``nn.Module``.
        num_classes: ``None`` (or the pretrained count) keeps the pretrained classifier;
            another number creates a new, untrained head (warned).
        weights: a weights file for an architecture-name ``backbone``.
        timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size=64``).

    Shapes:
        ``forward``: ``(B, C, H, W)`` -> logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        backbone: str | PathLike | nn.Module = "bundled:efficientnet_lite0",
        num_classes: int | None = None,
        *,
        weights: PathLike | None = None,
        pretrained: bool = True,
        cache_dir: PathLike | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(backbone, nn.Module):
            model = backbone
            self.spec = type(backbone).__name__
        else:
            if weights is not None and num_classes is not None:
                # A fine-tuned checkpoint carries its own head: build the model to fit it.
                timm_kwargs.setdefault("num_classes", num_classes)
            model = create_timm_model(
                backbone,
                weights=weights,
                pretrained=pretrained,
                cache_dir=cache_dir,
                **timm_kwargs,
            )
            self.spec = os.fspath(backbone)
        self.pretrained_num_classes: int = int(getattr(model, "num_classes", 0))
        if num_classes is not None and num_classes != self.pretrained_num_classes:
            if num_classes < 1:
                raise ValueError(
                    f"num_classes must be >= 1 (or None to keep the "
                    f"pretrained head), got {num_classes}."
                )
            model.reset_classifier(num_classes)
            warnings.warn(
                f"{self.spec}: a new {num_classes}-class head replaces the pretrained "
                f"{self.pretrained_num_classes}-class one; its outputs are untrained until you "
                f"fine-tune it.",
                UntrainedHeadWarning,
                stacklevel=2,
            )
        self.num_classes: int = int(getattr(model, "num_classes", num_classes or 0))
        self.head = _split_classifier(model)
        self.backbone = model
        self.pretrained_cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", {}) or {})
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @property
    def has_new_head(self) -> bool:
        return self.num_classes != self.pretrained_num_classes

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, num_classes={self.num_classes}"


def load_model(
    spec: str | PathLike | nn.Module,
    num_classes: int | None = None,
    **kwargs: Any,
) -> ImageClassifier:
    """Load any supported model spec as an :class:`ImageClassifier` (see its args)."""
    return ImageClassifier(backbone=spec, num_classes=num_classes, **kwargs)
