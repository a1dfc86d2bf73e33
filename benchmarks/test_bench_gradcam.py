"""GradCAM / GradCAM++ throughput against a bare forward pass and peer libraries.

resnet18 (random init, :func:`~timmlens.testing.make_explainable`), a batch of 16 images
at 224x224 on the CPU, predicted classes, full pipeline of each library (heatmaps at
input resolution). Run with::

    pytest benchmarks/test_bench_gradcam.py --benchmark-group-by=group -s

The last test prints each method's mean time and its throughput relative to the bare
no-grad forward (target for our GradCAM: >= 0.8x). On a machine shared with other work,
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

from timmlens.interpretation import GradCAM, GradCAMPlusPlus
from timmlens.testing import make_explainable

GROUP = "gradcam-resnet18-b16-224-cpu"
BATCH, SIDE = 16, 224
MEANS: dict[str, float] = {}


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("resnet18"))
    return model, torch.randn(BATCH, 3, SIDE, SIDE)


def run(benchmark, label: str, fn: Callable[[], object]) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["images"] = BATCH
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    MEANS[label] = benchmark.stats.stats.mean


def test_bare_forward(benchmark) -> None:
    model, batch = model_and_batch()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(batch)

    run(benchmark, "bare forward (no grad)", forward)


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
    """Print mean times and throughput relative to the bare forward (run with -s)."""
    bare = MEANS.get("bare forward (no grad)")
    if bare is None:
        pytest.skip("the bare-forward benchmark did not run")
    print(f"\n{'method':<28}{'mean (s)':>10}{'images/s':>10}{'x bare fwd':>12}")
    for label, mean in MEANS.items():
        print(f"{label:<28}{mean:>10.3f}{BATCH / mean:>10.1f}{bare / mean:>12.2f}")
