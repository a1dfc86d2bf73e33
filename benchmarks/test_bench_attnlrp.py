"""AttnLRP / CP-LRP against a plain forward+backward of the same batch (issue 29).

vit_tiny_patch16_224 (random init), a batch of 8 images at 224x224 on the CPU. The
references: a forward plus a backward of the target logit to the input, with timm's
fused attention (the model's fast path) and with explicit attention (what any method
that propagates through the probabilities must run). Target: AttnLRP <= 1.5x the fused
forward+backward. Run with::

    pytest benchmarks/test_bench_attnlrp.py --benchmark-group-by=group -s
"""

from __future__ import annotations

from functools import cache

import pytest
import timm
import torch
from torch import nn

from _harness import print_summary, timed
from timmlens.interpretation.registry import create_explainer

GROUP = "attnlrp-vit_tiny-b8-224-cpu"
BATCH, SIDE, TARGET = 8, 224, 1
FUSED = "forward+backward (fused)"


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224").eval()
    return model, torch.randn(BATCH, 3, SIDE, SIDE)


@pytest.mark.parametrize("fused", [True, False])
def test_forward_backward(benchmark, fused: bool) -> None:
    model, batch = model_and_batch()
    attention = [m for m in model.modules() if hasattr(m, "fused_attn")]

    def forward_backward() -> torch.Tensor:
        flags = [m.fused_attn for m in attention]
        try:
            for module in attention:
                module.fused_attn = fused
            x = batch.clone().requires_grad_(True)
            return torch.autograd.grad(model(x)[:, TARGET].sum(), x)[0]
        finally:
            for module, flag in zip(attention, flags, strict=True):
                module.fused_attn = flag

    label = FUSED if fused else "forward+backward (explicit attention)"
    timed(benchmark, GROUP, label, forward_backward, images=BATCH, role="limit")


@pytest.mark.parametrize(
    ("method", "rule"),
    [("attnlrp", "epsilon"), ("attnlrp", "zero"), ("attnlrp", "gamma"), ("cplrp", "epsilon")],
)
def test_relevance_propagation(benchmark, method: str, rule: str) -> None:
    model, batch = model_and_batch()
    explainer = create_explainer(method, model, linear_rule=rule)
    timed(
        benchmark,
        GROUP,
        f"{method} linear_rule={rule}",
        lambda: explainer(batch, target_class=TARGET),
        images=BATCH,
        role="ours",
        method=method,
    )


def test_summary() -> None:
    """Print mean and min times relative to the fused forward+backward (run with -s)."""
    print_summary(GROUP, FUSED, images=BATCH)
