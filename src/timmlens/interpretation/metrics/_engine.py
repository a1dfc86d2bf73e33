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

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from ..._model_state import explaining

ScoreKind = Literal["probability", "logit"]
SCORE_KINDS: tuple[str, ...] = ("probability", "logit")

#: Default memory budget for one chunk off CUDA (CPU, MPS, ...): 512 MiB.
DEFAULT_BUDGET_BYTES = 512 * 2**20
#: Default share of the free CUDA memory one chunk may use: a quarter.
CUDA_FREE_FRACTION = 0.25

#: ``mask_fn(group, lo, hi)`` -> ``(hi - lo, H * W)`` bool mask of jobs ``lo:hi``, which
#: all use image pair ``group``; ``True`` takes the pixel from ``finish``.
MaskFn = Callable[[int, int, int], torch.Tensor]


def target_scores(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Score of each row's target class: logits ``(N, K)``, targets ``(N,)`` -> ``(N,)`` float32.

    ``kind="probability"``: softmax probability; ``kind="logit"``: the raw logit.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"the model returned {shape}; metrics need (batch, num_classes) logits. Wrap the "
            f"model so forward returns logits (timmlens.ImageClassifier does)."
        )
    logits = logits.float()
    if kind == "probability":
        logits = logits.softmax(dim=1)
    return logits.gather(1, targets.view(-1, 1).to(logits.device)).view(-1)


def _nbytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(item) for item in value)
    if isinstance(value, dict):
        return sum(_nbytes(item) for item in value.values())
    return 0


@torch.no_grad()
def estimate_sample_bytes(model: nn.Module, sample: torch.Tensor) -> int:
    """Heuristic memory of scoring one perturbed copy of ``sample`` ``(1, C, H, W)``.

    One probe forward records, over all leaf modules, the largest input + output size.
    Under no-grad a forward holds little more than that at any time, so the estimate
    is twice it (residual branches, kernel workspaces), plus the composed input twice
    and 5 bytes per pixel for masks. It is an estimate: pass ``max_batch`` for a hard cap.
    """
    peak = 0

    def record(_module: nn.Module, args: object, output: object) -> None:
        nonlocal peak
        peak = max(peak, _nbytes(args) + _nbytes(output))

    leaves = [module for module in model.modules() if next(module.children(), None) is None]
    with explaining(model):  # eval mode, and no other thread's forward fires these hooks
        handles = [leaf.register_forward_hook(record) for leaf in leaves]
        try:
            model(sample)
        finally:
            for handle in handles:
                handle.remove()
    composite = _nbytes(sample)
    if peak == 0:  # no leaf modules to watch: assume a CNN-like blow-up of the input
        peak = 8 * composite
    return 2 * peak + 2 * composite + 5 * sample.shape[-1] * sample.shape[-2]


def default_budget(device: torch.device) -> int:
    """Bytes one chunk may use: a quarter of free CUDA memory, else 512 MiB."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(int(free * CUDA_FREE_FRACTION), 1)
    return DEFAULT_BUDGET_BYTES


def balanced_chunk(limit: int, n_jobs: int) -> int:
    """Largest chunk <= ``limit`` that splits ``n_jobs`` into as few, equal-sized chunks.

    ``limit=51, n_jobs=204`` -> 51 (4 chunks); ``limit=57, n_jobs=204`` -> 51, not 57+57+57+33.
    """
    limit = max(1, min(limit, n_jobs))
    n_chunks = math.ceil(n_jobs / limit)
    return math.ceil(n_jobs / n_chunks)


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

    Forwards run under ``torch.inference_mode`` (no autograd bookkeeping at all).

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
    n_jobs = job_groups.numel()
    # allocated outside inference mode, so the caller gets an ordinary tensor
    scores = torch.empty(n_jobs, device=start.device, dtype=torch.float32)
    with torch.inference_mode():
        for lo in range(0, n_jobs, chunk):
            hi = min(lo + chunk, n_jobs)
            inputs = compose(start, finish, job_groups[lo:hi], lo, mask_fn)
            scores[lo:hi] = target_scores(model(inputs), job_targets[lo:hi], kind)
    return scores
