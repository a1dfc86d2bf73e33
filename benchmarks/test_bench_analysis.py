"""The layer hierarchy: every stage from one pass, against one GradCAM call per stage.

resnet18 (random init, made explainable), a batch of 8 images at 224x224 on the CPU,
predicted classes. ``explain_layers`` taps the five ``feature_info`` stages at once, so
its cost should stay near one forward+backward however many layers it shows; a loop of
GradCAM calls costs one forward+backward per layer. Run with::

    pytest benchmarks/test_bench_analysis.py --benchmark-group-by=group -s
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import timm
import torch
from torch import nn

from _harness import print_summary, timed
from timmlens.analysis import explain_layers, hierarchy_layers
from timmlens.interpretation import GradCAM
from timmlens.testing import make_explainable

GROUP = "layers-resnet18-b8-224-cpu"
BATCH, SIDE = 8, 224
REFERENCE = "forward+backward"


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("resnet18"))
    return model, torch.randn(BATCH, 3, SIDE, SIDE)


def run(benchmark, label: str, role: str, fn: Callable[[], object]) -> None:
    timed(benchmark, GROUP, label, fn, images=BATCH, role=role, method=label)


def test_forward(benchmark) -> None:
    model, batch = model_and_batch()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(batch)

    run(benchmark, "forward (no grad)", "limit", forward)


def test_forward_backward(benchmark) -> None:
    model, batch = model_and_batch()
    inputs = batch.clone().requires_grad_(True)

    def forward_backward() -> torch.Tensor:
        logits = model(inputs)
        (grad,) = torch.autograd.grad(logits.max(dim=1).values.sum(), inputs)
        return grad

    run(benchmark, REFERENCE, "limit", forward_backward)


def test_explain_layers_one_pass(benchmark) -> None:
    model, batch = model_and_batch()
    run(benchmark, "explain_layers (5 stages)", "ours", lambda: explain_layers(model, batch))


def test_gradcam_per_layer_loop(benchmark) -> None:
    model, batch = model_and_batch()
    explainers = [GradCAM(model, target_layer=layer) for layer in hierarchy_layers(model)]
    run(
        benchmark,
        "GradCAM per stage (5 calls)",
        "peer",
        lambda: [explainer(batch) for explainer in explainers],
    )


def test_summary() -> None:
    """Print mean times relative to one forward+backward (run with -s)."""
    print_summary(GROUP, REFERENCE, images=BATCH)
