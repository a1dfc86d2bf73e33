"""Scoring many inputs in bounded, batched forwards: the engine every perturbation shares.

Perturbation metrics (insertion, deletion, sensitivity-n), perturbation CAMs (ScoreCAM,
AblationCAM) and RISE all score a long list of *jobs*, each an input built on the fly
and a class to score. :func:`score_in_chunks` builds and scores them a chunk at a time
(one inference-mode forward per chunk), the perturbation pluggable as a callable;
:func:`chunk_size_for` sizes the chunks from one memory probe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from .._model_state import explaining

ScoreKind = Literal["probability", "logit"]
SCORE_KINDS: tuple[str, ...] = ("probability", "logit")

#: Default memory budget for one chunk off CUDA (CPU, MPS, ...): 512 MiB.
DEFAULT_BUDGET_BYTES = 512 * 2**20
#: Default share of the free CUDA memory one chunk may use: a quarter.
CUDA_FREE_FRACTION = 0.25

#: ``make_inputs(lo, hi)`` -> ``(hi - lo, C, H, W)``: the inputs of jobs ``lo:hi``.
JobInputs = Callable[[int, int], torch.Tensor]


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


def chunk_size_for(
    model: nn.Module,
    sample: torch.Tensor,
    n_jobs: int,
    max_batch: int | None = None,
    memory_budget_bytes: int | None = None,
) -> int:
    """Jobs per forward for ``n_jobs`` inputs shaped like ``sample`` ``(1, C, H, W)``.

    ``max_batch`` if given (capped by ``memory_budget_bytes`` if that is given too),
    else the budget (:func:`default_budget` when ``None``) divided by the probe
    estimate per input; then balanced so the chunks have equal sizes.
    """
    limit = max_batch
    if limit is None or memory_budget_bytes is not None:
        budget = memory_budget_bytes or default_budget(sample.device)
        by_budget = max(1, budget // estimate_sample_bytes(model, sample))
        limit = by_budget if limit is None else min(limit, by_budget)
    return balanced_chunk(limit, n_jobs)


def score_in_chunks(
    model: nn.Module,
    make_inputs: JobInputs,
    targets: torch.Tensor,
    chunk: int,
    kind: str = "probability",
) -> torch.Tensor:
    """Target score of every job: one batched, inference-mode forward per ``chunk`` jobs.

    Args:
        model: the classifier, already in eval mode.
        make_inputs: builds the inputs of jobs ``lo:hi`` on the model's device (the
            perturbation: masks, blends, imputations, ...).
        targets: ``(J,)`` long, the class scored for each job.
        chunk: jobs per forward (:func:`chunk_size_for`).
        kind: ``"probability"`` (softmax) or ``"logit"``.

    Returns:
        ``(J,)`` float32 scores on the model's device.
    """
    n_jobs = targets.numel()
    device = targets.device
    # allocated outside inference mode, so the caller gets an ordinary tensor
    scores = torch.empty(n_jobs, device=device, dtype=torch.float32)
    with torch.inference_mode():
        for lo in range(0, n_jobs, chunk):
            hi = min(lo + chunk, n_jobs)
            scores[lo:hi] = target_scores(model(make_inputs(lo, hi)), targets[lo:hi], kind)
    return scores
