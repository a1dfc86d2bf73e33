"""Zennit called directly: the reference the `lrp` tests compare with."""

from __future__ import annotations

import torch
from torch import nn


def zennit_relevance(
    model: nn.Module, composite, x: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Zennit's ``Gradient`` attributor under ``composite``, relevance seeded with each
    image's target logit: ``(B, C, H, W)`` like ``x``."""
    from zennit.attribution import Gradient

    rows = torch.arange(len(targets))

    def logit_of_target(output: torch.Tensor) -> torch.Tensor:
        seed = torch.zeros_like(output)
        seed[rows, targets] = output[rows, targets]
        return seed

    with Gradient(model, composite) as attributor:
        return attributor(x, logit_of_target)[1]
