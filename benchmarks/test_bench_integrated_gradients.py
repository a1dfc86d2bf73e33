"""Integrated Gradients against its lower bound: n_steps forward + input-backward passes.

resnet18 (random init, :func:`~timmlens.testing.make_explainable`), a batch of 4 images at
128x128, ``n_steps=32``, ``internal_batch_size = n_steps * B`` (one chunk), fixed targets.
The limit is the same work done by hand: the B * n_steps path points in one batched
forward with ``requires_grad`` input and one ``torch.autograd.grad`` call, plus the
weighted sum over steps. Run with::

    pytest benchmarks/test_bench_integrated_gradients.py --benchmark-group-by=group -s

The last test prints both times and their ratio (target: ours <= 1.15x the limit).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import timm
import torch
from torch import nn

from _harness import print_summary, timed
from timmlens.data import data_config
from timmlens.interpretation import IntegratedGradients
from timmlens.testing import make_explainable

GROUP = "integrated-gradients-resnet18-b4-128"
BATCH, SIDE, STEPS = 4, 128, 32
TARGETS = [1, 200, 404, 999]
REFERENCE = "limit: fwd+bwd by hand"


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("resnet18"))
    batch = torch.randn(BATCH, 3, SIDE, SIDE)
    # One shared warm-up at the benchmarked shapes (kernel selection, allocator), so
    # neither side pays it and no per-test warm-up rounds are needed.
    IntegratedGradients(model, n_steps=STEPS, internal_batch_size=STEPS * BATCH)(batch, TARGETS)
    return model, batch


def run(benchmark, label: str, fn: Callable[[], object]) -> None:
    timed(benchmark, GROUP, label, fn, warmup_rounds=0, images=BATCH, n_steps=STEPS, side=SIDE)


def by_hand(model: nn.Module, inputs: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """IG attributions ``(B, C, H, W)`` with one batched forward and one input-backward."""
    nodes, weights = np.polynomial.legendre.leggauss(STEPS)
    alphas = torch.tensor((nodes + 1) / 2, dtype=inputs.dtype).view(-1, 1, 1, 1, 1)
    step_sizes = torch.tensor(weights / 2, dtype=inputs.dtype).view(-1, 1, 1, 1, 1)
    path = (baseline + alphas * (inputs - baseline)).flatten(0, 1).requires_grad_(True)
    targets = torch.tensor(TARGETS).repeat(STEPS)
    scores = model(path).gather(1, targets[:, None]).sum()
    (grads,) = torch.autograd.grad(scores, path)
    return (grads.view(STEPS, *inputs.shape) * step_sizes).sum(0) * (inputs - baseline)


def test_limit_forward_backward_by_hand(benchmark) -> None:
    model, batch = model_and_batch()
    config = data_config(model)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    baseline = ((0 - mean) / std).expand_as(batch)
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        run(benchmark, REFERENCE, lambda: by_hand(model, batch, baseline))
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_timmlens_integrated_gradients(benchmark) -> None:
    model, batch = model_and_batch()
    explainer = IntegratedGradients(model, n_steps=STEPS, internal_batch_size=STEPS * BATCH)
    run(benchmark, "timmlens IntegratedGradients", lambda: explainer(batch, TARGETS))


def test_report_ratio() -> None:
    """Print ours against the limit (run with -s; target: <= 1.15x)."""
    print_summary(GROUP, REFERENCE, images=BATCH)
