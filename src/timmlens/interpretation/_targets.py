"""Target classes: validation and resolution against a batch of logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch

TargetInput = int | Sequence[int] | torch.Tensor | None


def validate_targets(
    target_class: TargetInput, batch_size: int, num_classes: int
) -> list[int] | None:
    """Check ``target_class`` for a batch; ``None`` means "the predicted class".

    Returns:
        One class index per image, or ``None``.

    Raises:
        ValueError: a class outside ``[0, num_classes)`` or a list of the wrong length.
    """
    if target_class is None:
        return None
    if isinstance(target_class, torch.Tensor):
        if target_class.ndim > 1 or target_class.is_floating_point():
            raise ValueError(
                f"target_class tensor must be a 0-d or 1-d integer tensor, got "
                f"{tuple(target_class.shape)} {target_class.dtype}."
            )
        target_class = target_class.tolist()
    if isinstance(target_class, bool) or not isinstance(target_class, (int, Sequence)):
        raise ValueError(
            f"target_class must be an int, a list of ints (one per image) or None, got "
            f"{type(target_class).__name__}."
        )
    targets = [target_class] * batch_size if isinstance(target_class, int) else list(target_class)
    if len(targets) != batch_size:
        raise ValueError(
            f"target_class has {len(targets)} entries for a batch of {batch_size} images; give "
            f"one int for all, one per image, or None for the predicted classes."
        )
    for target in targets:
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < num_classes:
            raise ValueError(
                f"target_class {target!r} is out of range: valid classes are 0..{num_classes - 1} "
                f"(the model has {num_classes} outputs)."
            )
    return targets


def resolve_targets(target_class: TargetInput, logits: torch.Tensor) -> torch.Tensor:
    """Class index per image as a ``(B,)`` long tensor on the logits' device.

    ``None`` picks each image's predicted class (argmax of ``logits``).
    """
    batch_size, num_classes = logits.shape
    targets = validate_targets(target_class, batch_size, num_classes)
    if targets is None:
        return logits.argmax(dim=1)
    return torch.tensor(targets, device=logits.device, dtype=torch.long)


class TargetScore(torch.nn.Module):
    """``model``'s logit for each image's target class: ``(B, C, H, W)`` -> ``(B,)``.

    With ``targets=None`` each image's predicted class is used, chosen inside the same
    forward pass: the argmax is piecewise constant, so the gradient of the selected
    logit is exactly the gradient for the predicted class, at the cost of one forward.
    The classes used by the last call are kept in ``last_targets``, its logits
    (detached) in ``last_logits``.
    """

    def __init__(self, model: torch.nn.Module, targets: list[int] | None) -> None:
        super().__init__()
        self.model = model
        self.targets = targets
        self.last_targets: torch.Tensor | None = None
        self.last_logits: torch.Tensor | None = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs)
        if self.targets is None:
            chosen = logits.detach().argmax(dim=1)
        else:
            chosen = torch.tensor(self.targets, device=logits.device, dtype=torch.long)
            if logits.shape[0] != chosen.shape[0]:
                # Captum expands batches in method-specific orders (IG: step-major); a fixed
                # target list cannot know which row is which image, so refuse.
                raise ValueError(
                    f"TargetScore got {logits.shape[0]} rows for {chosen.shape[0]} targets; "
                    f"pass targets through Captum's additional_forward_args instead."
                )
        self.last_targets = chosen
        self.last_logits = logits.detach()
        return logits.gather(1, chosen[:, None])[:, 0]
