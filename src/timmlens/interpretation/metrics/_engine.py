"""Score many perturbed copies of a few images in bounded, batched forwards.

Every perturbation metric here is a list of *jobs*: job ``j`` is the image
``where(mask_j, finish[g_j], start[g_j])`` for a pixel mask ``mask_j`` and a pair of
images ``g_j`` (e.g. deletion: start = the image, finish = the substrate). Jobs are
composed on the model's device a chunk at a time and each chunk is scored in one
inference-mode (no-grad) forward, so memory is bounded by the chunk size, whatever the number of
steps, samples or images. The only Python loops are over chunks and, inside a chunk,
over runs of consecutive jobs that share an image pair (a handful per chunk).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..scoring import score_in_chunks

#: ``mask_fn(group, lo, hi)`` -> ``(hi - lo, H * W)`` bool mask of jobs ``lo:hi``, which
#: all use image pair ``group``; ``True`` takes the pixel from ``finish``.
MaskFn = Callable[[int, int, int], torch.Tensor]


def compose(
    start: torch.Tensor,
    finish: torch.Tensor,
    groups: torch.Tensor,
    offset: int,
    mask_fn: MaskFn,
) -> torch.Tensor:
    """Perturbed inputs for one chunk of jobs.

    Args:
        start: ``(G, C, H, W)`` image pairs' "off" images (mask ``False``).
        finish: ``(G, C, H, W)`` image pairs' "on" images (mask ``True``).
        groups: ``(J,)`` CPU long, the pair of each job in the chunk (sorted runs).
        offset: index of the chunk's first job in the whole job list.
        mask_fn: see :data:`MaskFn`.

    Returns:
        ``(J, C, H, W)`` on ``start``'s device: ``finish`` where the mask is set,
        ``start`` elsewhere, exactly (no arithmetic blending, so endpoints are exact).
    """
    _, channels, height, width = start.shape
    out = start.new_empty((groups.numel(), channels, height, width))
    values, counts = torch.unique_consecutive(groups, return_counts=True)
    lo = 0
    for group, count in zip(values.tolist(), counts.tolist(), strict=True):
        hi = lo + count
        mask = mask_fn(group, offset + lo, offset + hi).view(count, 1, height, width)
        torch.where(mask, finish[group], start[group], out=out[lo:hi])
        lo = hi
    return out


def score_jobs(
    model: nn.Module,
    start: torch.Tensor,
    finish: torch.Tensor,
    job_groups: torch.Tensor,
    job_targets: torch.Tensor,
    mask_fn: MaskFn,
    chunk: int,
    kind: str,
) -> torch.Tensor:
    """Target score of every job, one batched forward per chunk of ``chunk`` jobs.

    Args:
        model: the classifier, already in eval mode.
        start, finish: ``(G, C, H, W)`` on the model's device.
        job_groups: ``(J,)`` CPU long, image pair of each job, in runs.
        job_targets: ``(J,)`` long on the model's device, class to score per job.
        mask_fn: see :data:`MaskFn`.
        chunk: jobs per forward.
        kind: ``"probability"`` or ``"logit"``.

    Returns:
        ``(J,)`` float32 scores on the model's device.
    """

    def jobs(lo: int, hi: int) -> torch.Tensor:
        return compose(start, finish, job_groups[lo:hi], lo, mask_fn)

    return score_in_chunks(model, jobs, job_targets, chunk, kind)
