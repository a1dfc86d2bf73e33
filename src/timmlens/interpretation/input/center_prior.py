"""A centre-Gaussian prior: the map that knows nothing about the image or the model.

Photos are framed with the object near the middle, so "the centre matters most" already
scores well on insertion and deletion. Read against it (and against ``randomcam``), a
method's number says how much it adds to that framing bias; a leaderboard includes both
as reference rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._targets import CallableTargets
from ..base import Explainer, Explanation, normalize_maps
from ..registry import register_method

__all__ = ["CenterPrior", "center_gaussian"]


def center_gaussian(height: int, width: int, sigma: float, device: torch.device) -> torch.Tensor:
    """``exp(-(dy^2 / (2 (sigma H)^2) + dx^2 / (2 (sigma W)^2)))`` about the centre: ``(H, W)``.

    ``dy``, ``dx`` are pixel-centre offsets from the image centre, so the map is symmetric
    (its ties make the insertion/deletion order follow the metrics' documented tie rule).
    """
    ys = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2
    xs = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2
    gy = torch.exp(-(ys**2) / (2 * (sigma * height) ** 2))
    gx = torch.exp(-(xs**2) / (2 * (sigma * width) ** 2))
    return gy[:, None] * gx[None, :]


@register_method(
    "centerprior",
    title="Centre prior",
    kind="input",
    aliases=("center_prior", "centre_prior", "center_gaussian"),
    compared_by_default=False,
    summary="a centred Gaussian, the same for every image and class: the framing-bias baseline",
    paper="centre-bias baseline of saliency benchmarks (Judd et al., ICCV 2009)",
    formula="exp(-(dy^2 / 2(sigma H)^2 + dx^2 / 2(sigma W)^2)), normalised to [0, 1]",
    cost="no forward (1 forward to resolve predicted classes)",
)
class CenterPrior(Explainer):
    """A centred Gaussian map ``(B, H, W)``; image and class are ignored by design.

    Args:
        model: the classifier (used only to resolve predicted classes).
        sigma: standard deviation as a fraction of the input height and width
            (default 0.25: the map falls to ~14% at the border midpoints).
    """

    needs_gradients = False
    class_agnostic = True
    #: none for given classes (the predicted ones take one forward, see the cost)
    forwards_per_image: int | None = 0

    def __init__(self, model: nn.Module, sigma: float = 0.25) -> None:
        super().__init__(model)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ValueError(f"CenterPrior's sigma must be a positive number, got {sigma!r}.")
        self.sigma = float(sigma)

    def __repr__(self) -> str:
        return f"CenterPrior(sigma={self.sigma})"

    def attribute(
        self, inputs: torch.Tensor, targets: list[int] | CallableTargets | None, **kwargs: Any
    ) -> Explanation:
        if kwargs:
            raise TypeError(f"CenterPrior takes no call options, got {', '.join(kwargs)}.")
        size, _, height, width = inputs.shape
        prior = center_gaussian(height, width, self.sigma, inputs.device)
        heatmap = normalize_maps(prior.expand(size, height, width).contiguous())
        if isinstance(targets, CallableTargets):
            chosen = targets  # no class: the explainer reports the predicted ones
        elif targets is None:  # the class is only reported: one forward for the predictions
            with torch.no_grad():
                chosen = self.model(inputs).argmax(dim=1).cpu()
        else:
            chosen = torch.tensor(targets, dtype=torch.long)
        return Explanation(heatmap=heatmap, targets=chosen, attributions=heatmap)
