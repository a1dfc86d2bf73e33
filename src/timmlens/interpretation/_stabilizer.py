"""The LRP stabiliser: one home for the ``lrp`` rules and the transformer ones."""

from __future__ import annotations

import torch

__all__ = ["stabilize"]


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = 1`` (``-0.0`` too), never zero.

    Zennit's ``zennit.core.stabilize`` bit for bit (its default, unclipped form), in three
    elementwise passes instead of its six: a tenth of the time on a CPU, where the
    residual sums of a ResNet-50 spent 0.2 s of an ``lrp`` call in it. A new tensor
    shaped like ``z``.
    """
    # -0.0 + 0.0 = +0.0, so -0.0 takes +epsilon as 0.0 does; differentiable in z
    return torch.copysign(z.new_tensor(epsilon), z + 0.0).add_(z)
