"""Attention rollout throughput against one no-grad forward of the same batch.

vit_tiny_patch16_224 (random init), a batch of 8 images at 224x224 on the CPU. The
reference is the model's normal fast path: a no-grad forward with fused attention.
Rollout runs the forward with explicit attention (to capture the probabilities) and
adds the head fusion and the class-token row of the rollout. Run with::

    pytest benchmarks/test_bench_attention.py --benchmark-group-by=group -s

The last test prints each method's mean time relative to the forward (target for
the plain rollout: <= 1.3x).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
import timm
import torch
from torch import nn

from timmlens.interpretation import AttentionVisualizer

GROUP = "attention-vit_tiny-b8-224-cpu"
BATCH, SIDE = 8, 224
MEANS: dict[str, float] = {}
MINS: dict[str, float] = {}


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224").eval()
    return model, torch.randn(BATCH, 3, SIDE, SIDE)


def run(benchmark, label: str, fn: Callable[[], object]) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["images"] = BATCH
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    MEANS[label] = benchmark.stats.stats.mean
    MINS[label] = benchmark.stats.stats.min


def test_forward_fused(benchmark) -> None:
    model, batch = model_and_batch()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(batch)

    run(benchmark, "forward (no grad, fused)", forward)


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


def test_get_attention_maps(benchmark) -> None:
    model, batch = model_and_batch()
    visualizer = AttentionVisualizer(model)
    run(benchmark, "get_attention_maps", lambda: visualizer.get_attention_maps(batch))


def test_summary() -> None:
    """Print mean and min times relative to the fused forward (run with -s).

    On a shared machine the min of the rounds is the steadier of the two ratios.
    """
    label = "forward (no grad, fused)"
    if label not in MEANS:
        pytest.skip("the forward benchmark did not run")
    forward, forward_min = MEANS[label], MINS[label]
    print(f"\n{'method':<28}{'mean (s)':>10}{'images/s':>10}{'x fwd mean':>12}{'x fwd min':>11}")
    for name, mean in MEANS.items():
        print(
            f"{name:<28}{mean:>10.3f}{BATCH / mean:>10.1f}{mean / forward:>12.2f}"
            f"{MINS[name] / forward_min:>11.2f}"
        )
