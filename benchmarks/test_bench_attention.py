"""Attention rollout throughput against one no-grad forward of the same batch.

vit_tiny_patch16_224 (random init), a batch of 8 images at 224x224 on the CPU. The
reference is the model's normal fast path: a no-grad forward with fused attention.
Rollout runs the forward with explicit attention (to capture the probabilities) and
adds the head fusion and the class-token row of the rollout. Run with::

    pytest benchmarks/test_bench_attention.py --benchmark-group-by=group -s

The last test prints each method's mean time relative to the forward (target for
the plain rollout: <= 1.3x), and relative to a forward plus a backward of the target
logit to the input (fused attention), the limit of the gradient methods chefer and
legrad (target: <= 1.3x).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
import timm
import torch
from torch import nn

from _harness import print_summary, timed
from timmlens.interpretation import AttentionVisualizer
from timmlens.interpretation.registry import create_explainer

GROUP = "attention-vit_tiny-b8-224-cpu"
BATCH, SIDE = 8, 224
REFERENCE = "forward (no grad, fused)"
FORWARD_BACKWARD = "forward+backward (fused)"
TARGET = 1


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224").eval()
    return model, torch.randn(BATCH, 3, SIDE, SIDE)


def run(benchmark, label: str, fn: Callable[[], object]) -> None:
    timed(benchmark, GROUP, label, fn, images=BATCH)


def test_forward_fused(benchmark) -> None:
    model, batch = model_and_batch()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(batch)

    run(benchmark, REFERENCE, forward)


def test_rollout(benchmark) -> None:
    model, batch = model_and_batch()
    visualizer = AttentionVisualizer(model)
    run(benchmark, "rollout", lambda: visualizer.attention_rollout(batch))


def test_rollout_discard(benchmark) -> None:
    model, batch = model_and_batch()
    visualizer = AttentionVisualizer(model)
    run(
        benchmark,
        "rollout discard_ratio=0.9",
        lambda: visualizer.attention_rollout(batch, discard_ratio=0.9),
    )


def test_class_specific_rollout(benchmark) -> None:
    model, batch = model_and_batch()
    visualizer = AttentionVisualizer(model)
    run(
        benchmark,
        "class-specific rollout",
        lambda: visualizer.attention_rollout(batch, target_class=1),
    )


def test_forward_backward_fused(benchmark) -> None:
    model, batch = model_and_batch()

    def forward_backward() -> torch.Tensor:
        x = batch.clone().requires_grad_(True)
        return torch.autograd.grad(model(x)[:, TARGET].sum(), x)[0]

    timed(
        benchmark,
        GROUP,
        FORWARD_BACKWARD,
        forward_backward,
        images=BATCH,
        role="limit",
        method="forward+backward",
    )


@pytest.mark.parametrize("method", ["chefer", "legrad"])
def test_gradient_relevance(benchmark, method: str) -> None:
    model, batch = model_and_batch()
    explainer = create_explainer(method, model)
    timed(
        benchmark,
        GROUP,
        method,
        lambda: explainer(batch, target_class=TARGET),
        images=BATCH,
        role="ours",
        method=method,
    )


def test_get_attention_maps(benchmark) -> None:
    model, batch = model_and_batch()
    visualizer = AttentionVisualizer(model)
    run(benchmark, "get_attention_maps", lambda: visualizer.get_attention_maps(batch))


def test_summary() -> None:
    """Print mean and min times relative to the fused forward (run with -s).

    On a shared machine the min of the rounds is the steadier of the two ratios.
    """
    print_summary(GROUP, REFERENCE, images=BATCH)
    print_summary(GROUP, FORWARD_BACKWARD, images=BATCH)
