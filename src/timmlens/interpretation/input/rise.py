"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko, BMVC 2018).

RISE scores the target class on ``N`` randomly masked copies of the image and sums the
masks weighted by those scores::

    S(x) = sum_i f(x * M_i) * M_i / (N * p)

The masks are the paper's (its ``generate_masks``): a random binary ``s x s`` grid,
each cell kept with probability ``p``, upsampled bilinearly to ``(s + 1) * ceil(H / s)``
pixels (scikit-image's ``resize(order=1, mode="reflect")``: half-pixel centres and a
mirrored border), then cropped to ``H x W`` at a random shift of less than one cell.
Paper defaults: ``N = 4000``, ``s = 7``, ``p = 0.5``, softmax probabilities.

Only the grids and shifts are drawn up front (a private ``torch.Generator`` on the CPU:
the global RNG is untouched and the masks are the same on every device); the masks
themselves are built a chunk at a time, on the model's device, inside
[`score_in_chunks`][timmlens.interpretation.scoring.score_in_chunks], so ``N`` full-size masks are
never held at once. A masked pixel becomes the baseline (black pixels by default, as in
IG); the paper's code multiplies the *normalised* image, i.e. pixels become the mean
colour: pass ``baseline=torch.zeros(3, 1, 1)`` for that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._targets import target_rows
from ..base import Explainer, Explanation, normalize_maps
from ..registry import register_method
from ..scoring import SCORE_KINDS, ScoreKind, chunk_size_for, score_in_chunks
from .baselines import BaselineSpec, make_baseline, validate_baseline
from .checks import check_budget, check_positive_int

__all__ = ["RISE", "RiseMasks", "mirrored_linear_weights"]


def mirrored_linear_weights(size: int, out: int, device: torch.device) -> torch.Tensor:
    """Linear interpolation from ``size`` to ``out`` samples as an ``(out, size)`` matrix.

    Output sample ``o`` sits at input coordinate ``(o + 0.5) * size / out - 0.5``
    (half-pixel centres); coordinates outside ``[0, size - 1]`` are mirrored about the
    end samples (scipy's ``"mirror"``, scikit-image's ``"reflect"``), which is what the
    RISE code's ``skimage.transform.resize(order=1, mode="reflect")`` does per axis.
    """
    coords = (torch.arange(out, dtype=torch.float64) + 0.5) * size / out - 0.5
    if size > 1:
        coords = coords.abs()  # mirror below 0
        coords = torch.where(coords > size - 1, 2 * (size - 1) - coords, coords)
    low = coords.floor().clamp(0, size - 1)
    frac = coords - low
    high = (low + 1).clamp(max=size - 1)
    weights = torch.zeros(out, size, dtype=torch.float64)
    rows = torch.arange(out)
    weights.index_put_((rows, low.long()), 1 - frac, accumulate=True)
    weights.index_put_((rows, high.long()), frac, accumulate=True)
    return weights.to(device=device, dtype=torch.float32)


@dataclass(frozen=True)
class RiseMasks:
    """``N`` RISE masks for ``H x W`` images, built on demand from their random draws.

    Attributes:
        grids: ``(N, s, s)`` float, the binary grids (1: cell kept).
        shifts: ``(N, 2)`` long, each mask's crop offset ``(dy, dx)`` in ``[0, cell)``.
        height, width: the image size.
    """

    grids: torch.Tensor
    shifts: torch.Tensor
    height: int
    width: int

    @classmethod
    def draw(
        cls, n_masks: int, cells: int, p: float, height: int, width: int, seed: int
    ) -> RiseMasks:
        """The paper's random draws: grids ``rand(N, s, s) < p`` and shifts below one cell."""
        generator = torch.Generator().manual_seed(seed)
        grids = (torch.rand(n_masks, cells, cells, generator=generator) < p).float()
        cell = (math.ceil(height / cells), math.ceil(width / cells))
        shifts = torch.stack(
            [torch.randint(0, c, (n_masks,), generator=generator) for c in cell], dim=1
        )
        return cls(grids, shifts, height, width)

    def __len__(self) -> int:
        return self.grids.shape[0]

    def build(self, lo: int, hi: int, device: torch.device) -> torch.Tensor:
        """Masks ``lo:hi`` as ``(hi - lo, H, W)`` float32 on ``device``, values in [0, 1]."""
        cells = self.grids.shape[-1]
        axes = []
        for axis, size in enumerate((self.height, self.width)):
            upsampled = (cells + 1) * math.ceil(size / cells)
            weights = mirrored_linear_weights(cells, upsampled, device)  # (up, s)
            # rows shift..shift+size of the upsampled grid: the crop, as weight rows
            rows = self.shifts[lo:hi, axis, None].to(device) + torch.arange(size, device=device)
            axes.append(weights[rows])  # (n, size, s)
        grids = self.grids[lo:hi].to(device)
        return axes[0] @ grids @ axes[1].transpose(1, 2)


@register_method(
    "rise",
    title="RISE",
    kind="input",
    compared_by_default=False,
    summary="random masks weighted by the class score they leave (forwards only, any model)",
    paper="Petsiuk, Das & Saenko, RISE: Randomized Input Sampling for Explanation, BMVC 2018",
    formula="S = sum_i softmax_c(f(x * M_i)) M_i / (N p), M_i upsampled random s x s grids",
    cost="N forwards per image (N=4000 masks), batched within the memory budget",
    applies_to="every model (forwards only: no gradients, no layer)",
    quick_options={"n_masks": 32},
)
class RISE(Explainer):
    """RISE saliency (see the module docstring).

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        n_masks: ``N``, random masks (shared by all images of a call).
        cells: ``s``, the grid is ``s x s`` cells.
        p: probability that a cell is kept (in (0, 1]).
        seed: seed of the masks' private generator.
        score: ``"probability"`` (softmax, the paper's) or ``"logit"``.
        baseline: what a masked pixel becomes: ``"black"`` (default) or another
            `make_baseline` spec; soft mask values blend linearly.
        max_batch: masked images per forward; ``None`` sizes it from the memory budget.
        memory_budget_bytes: forward budget for automatic chunking; ``None``: a quarter of
            the free CUDA memory, 512 MiB elsewhere.

    The raw saliency ``(B, H, W)`` is `Explanation.attributions`; the heatmap is it
    min-max scaled to [0, 1].
    """

    needs_gradients = False
    constant_map_causes = (
        "every masked copy scores the same: random weights, a target whose score does not "
        "depend on the input, or too few masks (raise n_masks)"
    )

    def __init__(
        self,
        model: nn.Module,
        n_masks: int = 4000,
        cells: int = 7,
        p: float = 0.5,
        seed: int = 0,
        *,
        score: ScoreKind = "probability",
        baseline: BaselineSpec = "black",
        max_batch: int | None = None,
        memory_budget_bytes: int | None = None,
    ) -> None:
        super().__init__(model)
        self.n_masks = check_positive_int(n_masks, "n_masks", "The paper uses 4000.")
        self.cells = check_positive_int(cells, "cells", "The paper uses 7 (a 7x7 grid).")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(
                f"p (the probability a cell is kept) must be in (0, 1], got {p!r}. The paper "
                f"uses 0.5."
            )
        self.p = float(p)
        self.seed = int(seed)
        if score not in SCORE_KINDS:
            raise ValueError(
                f"score must be one of {', '.join(SCORE_KINDS)}, got {score!r}. RISE weighs "
                f"masks by the softmax probability: use 'probability'."
            )
        self.score: ScoreKind = score
        self.baseline = validate_baseline(baseline)
        if max_batch is not None:
            check_positive_int(max_batch, "max_batch", "Or None to size it from memory.")
        self.max_batch = max_batch
        self.memory_budget_bytes = check_budget(memory_budget_bytes)

    def masks(self, height: int, width: int) -> RiseMasks:
        """The masks every call on ``height x width`` images uses (same seed, same masks)."""
        return RiseMasks.draw(self.n_masks, self.cells, self.p, height, width, self.seed)

    def attribute(
        self, inputs: torch.Tensor, targets: list[int] | None, **kwargs: Any
    ) -> Explanation:
        """The explanation of preprocessed ``inputs`` ``(B, C, H, W)``."""
        if kwargs:
            raise TypeError(f"unexpected arguments for RISE: {sorted(kwargs)}.")
        inputs = inputs.detach()
        batch, device = inputs.shape[0], inputs.device
        with torch.no_grad():
            logits = self.model(inputs)
        chosen = logits.argmax(dim=1) if targets is None else target_rows(targets, device)
        baselines = make_baseline(self.baseline, inputs, self.model, self.seed)
        masks = self.masks(*inputs.shape[-2:])
        # Jobs are mask-major (job m * B + b: mask m on image b), and a chunk holds whole
        # masks, so each mask is built once per chunk for all images.
        jobs = chunk_size_for(
            self.model, inputs[:1], len(masks) * batch, self.max_batch, self.memory_budget_bytes
        )
        per_chunk = max(1, jobs // batch)

        def make_inputs(lo: int, hi: int) -> torch.Tensor:
            weights = masks.build(lo // batch, -(-hi // batch), device)[:, None, None]
            blended = torch.lerp(baselines, inputs, weights.to(inputs.dtype))  # (n, B, C, H, W)
            return blended.flatten(0, 1)

        scores = score_in_chunks(
            self.model, make_inputs, chosen.repeat(len(masks)), per_chunk * batch, self.score
        ).view(len(masks), batch)
        saliency = inputs.new_zeros((batch, *inputs.shape[-2:]), dtype=torch.float32)
        for lo in range(0, len(masks), per_chunk):
            hi = min(lo + per_chunk, len(masks))
            saliency += torch.einsum("nb,nhw->bhw", scores[lo:hi], masks.build(lo, hi, device))
        saliency /= len(masks) * self.p
        return Explanation(
            heatmap=normalize_maps(saliency), targets=chosen, logits=logits, attributions=saliency
        )
