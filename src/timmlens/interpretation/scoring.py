"""Scoring many inputs in bounded, batched forwards: the engine every perturbation shares.

Perturbation metrics (insertion, deletion, sensitivity-n), perturbation CAMs (ScoreCAM,
AblationCAM) and RISE all score a long list of *jobs*, each an input built on the fly
and a class to score. [`score_in_chunks`][] builds and scores them a chunk at a time
(one inference-mode forward per chunk), the perturbation pluggable as a callable;
`chunk_size_for` sizes the chunks from one memory probe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from .._model_state import explaining

ScoreKind = Literal["probability", "logit"]
SCORE_KINDS: tuple[str, ...] = ("probability", "logit")

#: What one chunk runs: ``"forward"`` (inference-mode scoring: metrics, perturbation CAMs,
#: RISE) or ``"backward"`` (forward + backward: Integrated Gradients, SmoothGrad).
MemoryKind = Literal["forward", "backward"]
MEMORY_KINDS: tuple[str, ...] = ("forward", "backward")

# The two kinds' defaults differ because their per-input estimates differ, not their
# needs. The forward probe (`estimate_sample_bytes`) measures the *transient*
# peak of one leaf module, so what it leaves out (the allocator's cache and
# fragmentation, the composed chunk, the caller's own tensors) gets a wide margin: a
# quarter of free CUDA memory. The backward probe (`forward_with_activation_bytes`
# x ``ACTIVATION_BYTES_FACTOR``) already sums every activation autograd keeps, a full
# account of the chunk, so it may take half. Off CUDA the free memory cannot be asked.
#: Forward-only chunks: share of the free CUDA memory (a quarter).
FORWARD_CUDA_FREE_FRACTION = 0.25
#: Forward-only chunks off CUDA (CPU, MPS, ...): 512 MiB.
FORWARD_BUDGET_BYTES = 512 * 2**20
#: Forward + backward chunks: share of the free CUDA memory (a half).
BACKWARD_CUDA_FREE_FRACTION = 0.5
#: Forward + backward chunks off CUDA: 2 GiB.
BACKWARD_BUDGET_BYTES = 2 * 2**30

#: ``kind -> (share of free CUDA memory, bytes off CUDA)``.
MEMORY_DEFAULTS: dict[str, tuple[float, int]] = {
    "forward": (FORWARD_CUDA_FREE_FRACTION, FORWARD_BUDGET_BYTES),
    "backward": (BACKWARD_CUDA_FREE_FRACTION, BACKWARD_BUDGET_BYTES),
}

#: ``make_inputs(lo, hi)`` -> ``(hi - lo, C, H, W)``: the inputs of jobs ``lo:hi``. A
#: perturbation is any such callable; `masked_perturbation` builds the common one.
JobInputs = Callable[[int, int], torch.Tensor]
#: ``mask_fn(group, lo, hi)`` -> ``(hi - lo, H * W)`` mask of jobs ``lo:hi``, which all use
#: image pair ``group``: bool (``True`` takes the pixel from ``finish``) or float weights
#: (``0``: ``start``, ``1``: ``finish``, blended linearly in between).
MaskFn = Callable[[int, int, int], torch.Tensor]


def target_scores(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Score of each row's target class: logits ``(N, K)``, targets ``(N,)`` -> ``(N,)``,
    float32 (float64 for float64 logits: a float64 model keeps its precision).

    ``kind="probability"``: softmax probability; ``kind="logit"``: the raw logit. A
    callable target (`CallableTargets`) is
    applied to the same ``(N, K)`` values a class index would select from.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"the model returned {shape}; metrics need (batch, num_classes) logits. Wrap the "
            f"model so forward returns logits (timmlens.ImageClassifier does)."
        )
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if kind == "probability":
        logits = logits.softmax(dim=1)
    if callable(targets):  # CallableTargets (a tensor is not callable)
        return targets(logits)
    return logits.gather(1, targets.view(-1, 1).to(logits.device)).view(-1)


def _nbytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(item) for item in value)
    if isinstance(value, dict):
        return sum(_nbytes(item) for item in value.values())
    return 0


#: A backward pass keeps roughly every forward activation plus its gradient alive.
ACTIVATION_BYTES_FACTOR = 2.0


@torch.no_grad()
def probe_forward(model: nn.Module, inputs: torch.Tensor) -> tuple[Any, int, int]:
    """The one memory probe: a no-grad forward of ``inputs`` with hooks on every leaf.

    Returns:
        ``(output, peak, total)``: the model's output, the largest input + output bytes
        of one leaf module (what a no-grad forward holds at a time) and the output
        bytes of all leaves together (what autograd keeps for a backward pass).
    """
    peak = total = 0

    def record(_module: nn.Module, args: object, output: object) -> None:
        nonlocal peak, total
        produced = _nbytes(output)
        peak = max(peak, _nbytes(args) + produced)
        total += produced

    leaves = [module for module in model.modules() if next(module.children(), None) is None]
    handles = [leaf.register_forward_hook(record) for leaf in leaves]
    try:
        output = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return output, peak, total


def estimate_sample_bytes(model: nn.Module, sample: torch.Tensor) -> int:
    """Heuristic memory of scoring one perturbed copy of ``sample`` ``(1, C, H, W)``.

    One probe forward (`probe_forward`) records, over all leaf modules, the largest
    input + output size. Under no-grad a forward holds little more than that at any
    time, so the estimate is twice it (residual branches, kernel workspaces), plus the
    composed input twice and 5 bytes per pixel for masks. It is an estimate: pass
    ``max_batch`` for a hard cap.
    """
    with explaining(model):  # eval mode, and no other thread's forward fires these hooks
        _, peak, _ = probe_forward(model, sample)
    composite = _nbytes(sample)
    if peak == 0:  # no leaf modules to watch: assume a CNN-like blow-up of the input
        peak = 8 * composite
    return 2 * peak + 2 * composite + 5 * sample.shape[-1] * sample.shape[-2]


def forward_with_activation_bytes(
    model: nn.Module, inputs: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """One no-grad forward of ``inputs`` ``(B, C, H, W)`` that also measures the memory
    of a backward pass (`probe_forward`'s total, per sample, plus the input).

    That is close to what autograd keeps for the backward pass (an overestimate where
    modules work in place, an underestimate for fused kernels, which
    `ACTIVATION_BYTES_FACTOR` covers). Runs inside the caller's explanation guard.

    Returns:
        The model's output ``(B, K)`` and the activation bytes per sample.
    """
    logits, _, total = probe_forward(model, inputs)
    per_sample = inputs[0].numel() * inputs.element_size() + total // inputs.shape[0]
    return logits, max(1, per_sample)


def samples_per_chunk(bytes_per_sample: int, budget_bytes: int) -> int:
    """How many forward+backward samples fit the budget (at least 1).

    ``budget_bytes`` comes from `memory_budget` (kind ``"backward"``). Rule:
    ``budget // (ACTIVATION_BYTES_FACTOR * bytes_per_sample)``, with ``bytes_per_sample``
    from `forward_with_activation_bytes`.
    """
    return max(1, int(budget_bytes // (ACTIVATION_BYTES_FACTOR * bytes_per_sample)))


def memory_budget(
    device: torch.device, kind: MemoryKind = "forward", budget_bytes: int | None = None
) -> int:
    """Bytes one chunk may use: the one memory probe every chunked engine reads.

    An explicit ``budget_bytes`` wins. Otherwise, on CUDA a share of the memory free
    right now (``"forward"``: a quarter, ``"backward"``: a half), elsewhere a fixed
    amount (``"forward"``: 512 MiB, ``"backward"``: 2 GiB); see `MEMORY_DEFAULTS`
    for why they differ. Always at least 1.
    """
    if budget_bytes is not None:
        return budget_bytes
    if kind not in MEMORY_DEFAULTS:
        raise ValueError(
            f"memory kind must be one of {MEMORY_KINDS}, got {kind!r}; use 'forward' for "
            f"inference-only chunks and 'backward' for chunks that also take gradients."
        )
    fraction, off_cuda = MEMORY_DEFAULTS[kind]
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(int(free * fraction), 1)
    return off_cuda


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
    sample_bytes: int | None = None,
) -> int:
    """Jobs per forward for ``n_jobs`` inputs shaped like ``sample`` ``(1, C, H, W)``.

    ``max_batch`` if given (capped by ``memory_budget_bytes`` if that is given too),
    else the forward budget (`memory_budget`) divided by the probe estimate per
    input (``sample_bytes`` when the caller has it cached, else
    `estimate_sample_bytes`); then balanced so the chunks have equal sizes.
    """
    limit = max_batch
    if limit is None or memory_budget_bytes is not None:
        budget = memory_budget(sample.device, "forward", memory_budget_bytes)
        per_input = sample_bytes or estimate_sample_bytes(model, sample)
        by_budget = max(1, budget // per_input)
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
        chunk: jobs per forward (`chunk_size_for`).
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


def compose(
    start: torch.Tensor,
    finish: torch.Tensor,
    groups: torch.Tensor,
    offset: int,
    mask_fn: MaskFn,
) -> torch.Tensor:
    """Perturbed inputs for one chunk of jobs.

    Args:
        start: ``(G, C, H, W)`` image pairs' "off" images (mask ``False`` / 0).
        finish: ``(G, C, H, W)`` image pairs' "on" images (mask ``True`` / 1).
        groups: ``(J,)`` CPU long, the pair of each job in the chunk (sorted runs).
        offset: index of the chunk's first job in the whole job list.
        mask_fn: see `MaskFn`.

    Returns:
        ``(J, C, H, W)`` on ``start``'s device. A bool mask selects exactly (no arithmetic,
        so a curve's endpoints are the images themselves); float weights blend,
        ``start + w * (finish - start)`` (ScoreCAM's and RISE's soft masks).
    """
    _, channels, height, width = start.shape
    out = start.new_empty((groups.numel(), channels, height, width))
    values, counts = torch.unique_consecutive(groups, return_counts=True)
    lo = 0
    # one run per image pair in the chunk: a handful of Python iterations, not one per job
    for group, count in zip(values.tolist(), counts.tolist(), strict=True):
        hi = lo + count
        mask = mask_fn(group, offset + lo, offset + hi).view(count, 1, height, width)
        if mask.dtype == torch.bool:
            torch.where(mask, finish[group], start[group], out=out[lo:hi])
        else:
            torch.lerp(start[group], finish[group], mask.to(start.dtype), out=out[lo:hi])
        lo = hi
    return out


def masked_perturbation(
    start: torch.Tensor, finish: torch.Tensor, groups: torch.Tensor, mask_fn: MaskFn
) -> JobInputs:
    """The perturbation "job ``j`` is ``finish`` where its mask is set, ``start`` elsewhere".

    Args:
        start, finish: ``(G, C, H, W)`` on the model's device (deletion: the images and
            the substrate; insertion: the blurred images and the images).
        groups: ``(J,)`` CPU long, the image pair of each job, in runs.
        mask_fn: see `MaskFn`.

    Returns:
        ``make_inputs(lo, hi)`` for [`score_in_chunks`][]. A perturbation whose values
        depend on the mask (ROAD's noisy linear imputation) is another such builder; the
        engine needs nothing else.
    """

    def make_inputs(lo: int, hi: int) -> torch.Tensor:
        return compose(start, finish, groups[lo:hi], lo, mask_fn)

    return make_inputs
