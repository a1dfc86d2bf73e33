"""GradCAM / GradCAM++ throughput against a bare forward pass and peer libraries.

resnet18 (random init, :func:`~timmlens.testing.make_explainable`), a batch of 16 images
at 224x224 on the CPU, predicted classes, full pipeline of each library (heatmaps at
input resolution). Run with::

    pytest benchmarks/test_bench_gradcam.py --benchmark-group-by=group -s

The last test prints each method's time relative to the bare no-grad forward (target
for our GradCAM: <= 1.25x, i.e. >= 0.8x its throughput). On a machine shared with other work,
wall-clock times swing by 2x between tests; add ``--benchmark-timer=time.process_time``
to compare the CPU time each method costs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
import timm
import torch
from torch import nn

from _harness import print_summary, timed
from timmlens.interpretation import GradCAM, GradCAMPlusPlus
from timmlens.testing import make_explainable

GROUP = "gradcam-resnet18-b16-224-cpu"
BATCH, SIDE = 16, 224
REFERENCE = "bare forward (no grad)"


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("resnet18"))
    return model, torch.randn(BATCH, 3, SIDE, SIDE)


def run(benchmark, label: str, fn: Callable[[], object]) -> None:
    timed(benchmark, GROUP, label, fn, images=BATCH)


def test_bare_forward(benchmark) -> None:
    model, batch = model_and_batch()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(batch)

    run(benchmark, REFERENCE, forward)


def test_timmlens_gradcam(benchmark) -> None:
    model, batch = model_and_batch()
    explainer = GradCAM(model, target_layer="layer4")
    run(benchmark, "timmlens GradCAM", lambda: explainer(batch))


def test_timmlens_gradcam_plusplus(benchmark) -> None:
    model, batch = model_and_batch()
    explainer = GradCAMPlusPlus(model, target_layer="layer4")
    run(benchmark, "timmlens GradCAM++", lambda: explainer(batch))


def test_pytorch_grad_cam_gradcam(benchmark) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    model, batch = model_and_batch()
    with pgc.GradCAM(model, [model.layer4]) as cam:
        run(benchmark, "pytorch-grad-cam GradCAM", lambda: cam(batch, targets=None))
    model.zero_grad(set_to_none=True)


def test_torchcam_gradcam(benchmark) -> None:
    methods = pytest.importorskip("torchcam.methods")
    model, batch = model_and_batch()

    def torchcam_call() -> torch.Tensor:
        scores = model(batch)
        cams = extractor(class_idx=scores.argmax(dim=1).tolist(), scores=scores)
        # torchcam returns layer-resolution maps: upsample like the others do.
        return nn.functional.interpolate(cams[0][:, None], size=(SIDE, SIDE), mode="bilinear")

    with methods.GradCAM(model, target_layer="layer4") as extractor:
        run(benchmark, "torchcam GradCAM", torchcam_call)
    model.zero_grad(set_to_none=True)


def test_summary() -> None:
    """Print times relative to the bare forward (run with -s)."""
    print_summary(GROUP, REFERENCE, images=BATCH)
