"""Issue 31's pytorch-grad-cam methods: ours against pytorch-grad-cam 1.5.7, side by side.

One group per method, each with our explainer and pytorch-grad-cam's class on the same
model, layer, batch and targets (the predicted classes; SobelCAM: class 0, no forward),
full pipelines (heatmaps at input resolution). The summary prints our time relative to
theirs (``x ref``: below 1 is faster). ``BENCH_MODEL`` (default ``resnet18``, random
init), ``BENCH_BATCH`` (4) and ``BENCH_SIDE`` (224) set the size::

    BENCH_BATCH=2 BENCH_SIDE=160 pytest benchmarks/test_bench_cam_pgc_more.py -s \\
        --benchmark-group-by=group
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import timm
import torch
from torch import nn

from _harness import print_summary, timed
from timmlens.interpretation.cam import (
    FEM,
    KPCACAM,
    FinerCAM,
    GradCAMElementWise,
    ShapleyCAM,
    SobelCAM,
)
from timmlens.testing import make_explainable

MODEL = os.environ.get("BENCH_MODEL", "resnet18")
BATCH = int(os.environ.get("BENCH_BATCH", "4"))
SIDE = int(os.environ.get("BENCH_SIDE", "224"))
LAYER = "layer4"
THEIRS = "pytorch-grad-cam"
#: ours -> pytorch-grad-cam's class name (SobelCAM: their sobel_cam function)
METHODS: dict[type, str] = {
    GradCAMElementWise: "GradCAMElementWise",
    FEM: "FEM",
    KPCACAM: "KPCA_CAM",
    ShapleyCAM: "ShapleyCAM",
    FinerCAM: "FinerCAM",
    SobelCAM: "sobel_cam",
}


def group(method: type) -> str:
    return f"pgc-more-{method.__name__}-{MODEL}-b{BATCH}-{SIDE}-cpu"


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model(MODEL))
    return model, torch.randn(BATCH, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))


def _ours(method: type, model: nn.Module) -> Callable[[torch.Tensor], object]:
    if method is SobelCAM:
        explainer = SobelCAM(model)
        return lambda batch: explainer(batch, target_class=0)
    explainer = method(model, target_layer=LAYER)
    return lambda batch: explainer(batch)


def _theirs(method: type, model: nn.Module) -> tuple[Callable[[torch.Tensor], object], object]:
    pgc = pytest.importorskip("pytorch_grad_cam")
    if method is SobelCAM:
        from pytorch_grad_cam.sobel_cam import sobel_cam

        def edges(batch: torch.Tensor) -> object:
            # their input: uint8 HxWx3 pictures (the conversion is not timed separately)
            pixels = (batch.clamp(-2, 2) * 60 + 128).byte().permute(0, 2, 3, 1).numpy()
            return np.stack([sobel_cam(image) for image in pixels])

        return edges, None
    cam = getattr(pgc, METHODS[method])(model, [model.get_submodule(LAYER)])
    return (lambda batch: cam(batch, None)), cam


@pytest.mark.parametrize("method", list(METHODS), ids=lambda m: m.__name__)
@pytest.mark.parametrize("side", ["timmlens", THEIRS])
def test_method(benchmark, method: type, side: str) -> None:
    model, batch = model_and_batch()
    if side == "timmlens":
        ours = _ours(method, model)
        timed(benchmark, group(method), "timmlens", lambda: ours(batch))
        return
    call, cam = _theirs(method, model)
    try:
        timed(benchmark, group(method), THEIRS, lambda: call(batch))
    finally:
        if cam is not None:
            inner = getattr(cam, "base_cam", cam)  # FinerCAM wraps a GradCAM
            handles = inner.activations_and_grads
            handles.gradients = []  # their clear() cannot detach views in place
            handles.release()
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method", list(METHODS), ids=lambda m: m.__name__)
def test_summary(method: type) -> None:
    """Print our time relative to pytorch-grad-cam's (run with -s)."""
    print_summary(group(method), THEIRS, images=BATCH)
