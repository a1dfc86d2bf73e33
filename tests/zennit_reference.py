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


def zennit_composite(name: str, bounds=None, **options):
    """Zennit's own composite ``name`` (one of ``lrp``'s composites) with ``options``
    (``canonizers``, ``layer_map``); ``bounds``: ``(low, high)`` for ``epsilon_gamma_box``."""
    from zennit import composites

    if name == "epsilon_gamma_box":
        options.update(low=bounds[0], high=bounds[1])
    kind = {
        "epsilon_plus_flat": composites.EpsilonPlusFlat,
        "epsilon_gamma_box": composites.EpsilonGammaBox,
        "epsilon_alpha2_beta1": composites.EpsilonAlpha2Beta1,
    }[name]
    return kind(**options)
