"""``ImageClassifier``: a complete timm classifier, wrapped without being changed."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from .._model_state import model_lock
from .._warnings import warn_caller
from ..errors import UnsupportedModelError
from .class_names import ClassNames, check_class_names, read_class_names
from .introspect import traced_num_classes, unwrap_model
from .loading import PathLike, create_timm_model
from .weights_status import WeightsStatus, has_random_mark, has_synthetic_mark, looks_untrained


class UntrainedHeadWarning(UserWarning):
    """A new classifier head was created; its outputs mean nothing until it is trained."""


def _class_count(model: nn.Module) -> int:
    """``model.num_classes`` (timm), else the ``K`` of its ``(B, K)`` output (one forward)."""
    count = getattr(model, "num_classes", None)
    if isinstance(count, int):
        return count
    # a torchvision or plain classifier
    return traced_num_classes(model) or 0


def _check_num_classes(num_classes: int) -> None:
    if num_classes < 1:
        raise ValueError(
            f"num_classes must be >= 1 (or None to keep the pretrained head), got {num_classes}."
        )


class ImageClassifier(nn.Module):
    """A timm image classifier; ``forward`` is the timm model's own, unchanged.

    The timm model is ``self.backbone`` and keeps its classifier where timm put it, so
    layer names start with ``backbone.`` (``"backbone.layer4"``, ``"backbone.fc"``,
    ``"backbone.blocks.11"``).

    A model passed in is wrapped as it is: the wrapper neither replaces its
    classifier nor changes its ``training`` flags (the explainers switch to eval mode
    only for the duration of each call), so ``my_model(x)`` still gives the same logits.
    Only when ``num_classes`` differs from the model's own count does the wrapper work
    on a deep copy with a new head, since the user's module must stay unchanged.
    Models loaded from a spec are built here and put in eval mode.

    Args:
        backbone: a model spec (timm name, ``hf-hub:`` id, local folder,
            ``"bundled:efficientnet_lite0"``) or a timm ``nn.Module``.
        num_classes: ``None`` (or the pretrained count) keeps the pretrained classifier;
            another number creates a new, untrained head (warned); for a model passed
            in, that head sits on a copy of it.
        weights: a weights file (``.safetensors``, ``.pth``, ``.bin``, ``.pt``) for an
            architecture-name ``backbone``, e.g. your fine-tuned checkpoint; without
            ``num_classes`` the head is built with the checkpoint's class count.
        class_names: one name per class, in index order: a list, a file (one name a
            line, or a JSON list) or ``"cat,dog,fox"``. Every title, page, row and
            folder label then uses them (default: the model's own ``label_names``,
            ImageNet names for 1000 classes, else ``class N``). ``self.class_names`` holds
            these, else the model's ``label_names`` (e.g. an HF folder's), else ``None``.
        pretrained: for a timm name with a pretrained tag, whether to load its weights
            (``False``: random weights); for a module passed in, ``False`` states that its
            weights are random, so every figure says so (the module is not changed).
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
        class_names: ClassNames | None = None,
        pretrained: bool = True,
        cache_dir: PathLike | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        user_module = isinstance(backbone, nn.Module)
        # A module passed in is taken as trained unless the caller says otherwise.
        self._declared_random = user_module and not pretrained
        if isinstance(backbone, nn.Module):
            # torch.compile, DataParallel, DDP: wrap the module inside (compile is warned)
            model = unwrap_model(backbone)
            self.spec = type(model).__name__
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
        self.pretrained_num_classes: int = _class_count(model)
        if num_classes is not None and num_classes != self.pretrained_num_classes:
            _check_num_classes(num_classes)
            model = self._with_new_head(model, num_classes, copied=user_module)
        self.num_classes: int = _class_count(model)
        self.backbone = model
        self.pretrained_cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", {}) or {})
        self.class_names: list[str] | None = None
        if class_names is not None:
            names = read_class_names(class_names)
            check_class_names(names, self.num_classes)
            self.class_names = names  # model_class_names reads them before label_names
        else:
            # the model's own names (an HF folder's label_names) under the same attribute,
            # so model.class_names[row["label"]] works for every model that has names
            own = self.pretrained_cfg.get("label_names")
            if isinstance(own, (list, tuple)) and len(own) == self.num_classes:
                self.class_names = [str(name) for name in own]
        if user_module:
            self.training = model.training  # only the wrapper's own flag: the model's stay
        else:
            self.eval()

    def _with_new_head(self, model: nn.Module, num_classes: int, *, copied: bool) -> nn.Module:
        """``model`` (or, for a user's module, a deep copy) with a new ``num_classes`` head."""
        if not callable(getattr(model, "reset_classifier", None)):
            raise UnsupportedModelError(
                f"num_classes={num_classes}: a new head is made with timm's "
                f"reset_classifier(), which {type(model).__name__} lacks. Replace its "
                f"classifier yourself (e.g. model.fc = nn.Linear(512, {num_classes})) and "
                f"wrap it without num_classes."
            )
        if copied:
            with model_lock(model):  # not mid-way through another thread's explanation
                model = copy.deepcopy(model)
        existing = set(model.modules())
        model.reset_classifier(num_classes)
        # Some timm versions and models leave the new head (and pool) in training mode.
        for module in model.modules():
            if module not in existing:
                module.training = model.training
        note = (
            " Your model is left unchanged; the wrapper holds a copy with a new head."
            if copied
            else ""
        )
        warn_caller(
            f"{self.spec}: a new {num_classes}-class head replaces the pretrained "
            f"{self.pretrained_num_classes}-class one; its outputs are untrained until you "
            f"fine-tune it.{note}",
            UntrainedHeadWarning,
        )
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @property
    def head(self) -> nn.Module:
        """The timm model's classifier (``backbone.get_classifier()``), read-only.

        It stays inside ``backbone`` (``backbone.fc``, ``backbone.head``,
        ``backbone.classifier``, ``backbone.head.fc``; a ``Conv2d`` for BiT's
        convolutional head). Models with two classifiers (distilled DeiT, LeViT: timm
        returns a ``(head, head_dist)`` tuple) and models without ``get_classifier``
        give ``nn.Identity()``; reach them through ``backbone``.
        """
        getter = getattr(self.backbone, "get_classifier", None)
        classifier = getter() if callable(getter) else None
        return classifier if isinstance(classifier, nn.Module) else nn.Identity()

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "head":
            # nn.Module would register the module beside the property, unused by forward.
            raise AttributeError(
                "ImageClassifier.head is the backbone's own classifier and cannot be "
                "replaced; for a new head use ImageClassifier(model, num_classes=N), which "
                "leaves the model passed in unchanged."
            )
        super().__setattr__(name, value)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # timmlens 0.1 kept the classifier beside the backbone ("head.weight"); its
        # checkpoints load into the classifier's place inside the backbone.
        classifier = next(
            (name for name, module in self.backbone.named_modules() if module is self.head), None
        )
        old_prefix = f"{prefix}head."
        if classifier:
            for key in [k for k in state_dict if k.startswith(old_prefix)]:
                new_key = f"{prefix}backbone.{classifier}.{key.removeprefix(old_prefix)}"
                state_dict.setdefault(new_key, state_dict.pop(key))
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def has_new_head(self) -> bool:
        return self.num_classes != self.pretrained_num_classes

    @property
    def weights_status(self) -> WeightsStatus:
        """Random weights, a new untrained head, or trained (read by every figure and file)."""
        random = (
            self._declared_random
            or has_random_mark(self)
            or has_random_mark(self.backbone)
            or looks_untrained(self.backbone)  # a model the user built without weights
        )
        synthetic = has_synthetic_mark(self) or has_synthetic_mark(self.backbone)
        return WeightsStatus(random, self.num_classes if self.has_new_head else None, synthetic)

    def extra_repr(self) -> str:
        note = self.weights_status.note
        return f"spec={self.spec!r}, num_classes={self.num_classes}" + (f", {note}" if note else "")


def load_model(
    spec: str | PathLike | nn.Module,
    num_classes: int | None = None,
    **kwargs: Any,
) -> ImageClassifier:
    """Load any supported model spec as an [`ImageClassifier`][] (see its args)."""
    return ImageClassifier(backbone=spec, num_classes=num_classes, **kwargs)
