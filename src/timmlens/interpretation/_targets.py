"""Target classes: validation and resolution against a batch of logits."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import numpy as np
import torch
from torch import nn

from .scoring import ScoreKind, target_scores

#: a class index (Python or numpy integer), a class name, one of them per image
#: (list, 1-d integer tensor or array), or ``None`` for each image's predicted class
TargetInput = int | str | Sequence[int | str] | torch.Tensor | np.ndarray | None


def _is_index(value: object) -> bool:
    """Python and numpy integers (``argmax`` returns ``np.int64``), but not ``bool``."""
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _class_name_resolver(model: nn.Module | None, name: str) -> int:
    """The class index ``name`` stands for in ``model``'s own class names (or ImageNet's)."""
    if model is None:  # a caller that has only a class count
        raise ValueError(
            f"target_class {name!r} is a class name, but no model was given to look it up "
            f"in; pass the class index instead."
        )
    from ..evaluation.sources import label_resolver_for  # the one class-name matcher

    return label_resolver_for(model).resolve(name, where="target_class")


def validate_targets(
    target_class: TargetInput,
    batch_size: int,
    num_classes: int,
    model: nn.Module | None = None,
) -> list[int] | None:
    """Check ``target_class`` for a batch; ``None`` means "the predicted class".

    Class names (``"tabby"``, a WordNet id, one of the model's ``label_names``) are
    resolved through ``model``'s names, as folder names are in [`timmlens.evaluate`][].

    Returns:
        One class index per image, or ``None``.

    Raises:
        ValueError: a class outside ``[0, num_classes)``, a list of the wrong length, or
            a name that is not a class of ``model`` ([`LabelNameError`][timmlens.LabelNameError]).
    """
    if target_class is None:
        return None
    if isinstance(target_class, (torch.Tensor, np.ndarray)):
        kind = target_class.dtype
        floating = (
            target_class.is_floating_point()
            if isinstance(target_class, torch.Tensor)
            else not np.issubdtype(kind, np.integer)
        )
        if target_class.ndim > 1 or floating:
            raise ValueError(
                f"target_class {type(target_class).__name__} must be 0-d or 1-d of integers, "
                f"got shape {tuple(target_class.shape)} of {kind}."
            )
        target_class = target_class.tolist()
    if isinstance(target_class, str) or _is_index(target_class):
        targets: list[object] = [target_class] * batch_size
    elif isinstance(target_class, Sequence) and not isinstance(target_class, (bytes, bytearray)):
        targets = list(target_class)
    else:
        raise ValueError(
            f"target_class must be a class index, a class name, a list of them (one per "
            f"image) or None, got {type(target_class).__name__}."
        )
    if len(targets) != batch_size:
        raise ValueError(
            f"target_class has {len(targets)} entries for a batch of {batch_size} images; give "
            f"one class for all, one per image, or None for the predicted classes."
        )
    indices = []
    for target in targets:
        if isinstance(target, str):
            target = _class_name_resolver(model, target)
        if not _is_index(target):
            raise ValueError(
                f"target_class entries must be class indices or names, got "
                f"{type(target).__name__} {target!r}."
            )
        if not 0 <= int(target) < num_classes:
            raise ValueError(
                f"target_class {int(target)} is out of range: valid classes are "
                f"0..{num_classes - 1} (the model has {num_classes} outputs)."
            )
        indices.append(int(target))
    return indices


class TargetScore(nn.Module):
    """``model``'s score for each row's target class: ``(N, C, H, W), (N,)`` -> ``(N,)``.

    The one module form of `target_scores`, for
    Captum. Targets travel as a forward argument (Captum's ``additional_forward_args``),
    so Captum expands them alongside the inputs whatever its expansion order
    (step-major for IG, sample-major for ``NoiseTunnel``). With ``targets=None`` each
    row's predicted class is used, chosen inside the same forward pass: the argmax is
    piecewise constant, so the gradient of the selected logit is exactly the gradient
    for the predicted class, at the cost of one forward.

    The module is made per call: `seen` holds the classes and detached logits of
    its latest forward, for the call that owns it.
    """

    def __init__(self, model: nn.Module, kind: ScoreKind = "logit") -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        #: ``((N,) classes, (N, K) logits)`` of the latest forward, detached
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(inputs)
        if targets is None:
            chosen = logits.detach().argmax(dim=1)
        else:
            chosen = targets.to(device=logits.device, dtype=torch.long).view(-1)
        self.seen = (chosen, logits.detach())
        return target_scores(logits, chosen, self.kind)
