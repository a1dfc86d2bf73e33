"""aug_smooth / eigen_smooth: timmlens against pytorch-grad-cam, side by side in one run.

Real EfficientNet-Lite0 (``bundled:efficientnet_lite0``), two scikit-image photos at
224x224 on the CPU, GradCAM and GradCAM++ at the default layer, the photos' predicted
classes. pytorch-grad-cam runs one forward and backward per augmentation (six); timmlens
runs the 12 augmented images as one batch. Run with::

    pytest benchmarks/test_bench_cam_smoothing.py --benchmark-group-by=group -s \\
        --benchmark-timer=time.process_time

The summary prints each entry's time relative to pytorch-grad-cam's GradCAM with
``aug_smooth=True`` (the reference); the ratio of mins is the steadier on a shared machine.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
import torch

from _harness import print_summary, timed
from timmlens import load_model
from timmlens.data import prepare_images
from timmlens.interpretation.cam import CAMExplainer, GradCAM, GradCAMPlusPlus

GROUP = "cam-smoothing-lite0-b2-224-cpu"
BATCH = 2
REFERENCE = "pytorch-grad-cam GradCAM aug_smooth"
CASES = {
    "aug_smooth": {"aug_smooth": True},
    "aug+eigen_smooth": {"aug_smooth": True, "eigen_smooth": True},
}


@cache
def model_and_batch() -> tuple[torch.nn.Module, torch.Tensor, list[int]]:
    from skimage import data

    model = load_model("bundled:efficientnet_lite0")
    photos = [getattr(data, name)() for name in ("chelsea", "coffee")]
    batch = prepare_images(photos, model).tensor
    with torch.no_grad():
        classes = model(batch).argmax(dim=1).tolist()
    return model, batch, classes


def run(benchmark, label: str, fn: Callable[[], object]) -> None:
    timed(benchmark, GROUP, label, fn, rounds=2, warmup_rounds=0, images=BATCH)


def _pgc(benchmark, method: type[CAMExplainer], case: str) -> None:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, batch, classes = model_and_batch()
    explainer = method(model)  # the same layer and model object as ours
    peer = getattr(pytorch_grad_cam, "GradCAM" if method is GradCAM else "GradCAMPlusPlus")
    targets = [ClassifierOutputTarget(c) for c in classes]
    with peer(explainer.model, [explainer.layers[0].module]) as cam:
        label = f"pytorch-grad-cam {method.__name__} {case}"
        run(benchmark, label, lambda: cam(batch, targets, **CASES[case]))
    explainer.model.zero_grad(set_to_none=True)


def _ours(benchmark, method: type[CAMExplainer], case: str) -> None:
    model, batch, classes = model_and_batch()
    explainer = method(model)
    run(
        benchmark,
        f"timmlens {method.__name__} {case}",
        lambda: explainer(batch, classes, **CASES[case]),
    )


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", [GradCAM, GradCAMPlusPlus])
def test_pytorch_grad_cam(benchmark, method: type[CAMExplainer], case: str) -> None:
    pytest.importorskip("pytorch_grad_cam")
    _pgc(benchmark, method, case)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", [GradCAM, GradCAMPlusPlus])
def test_timmlens(benchmark, method: type[CAMExplainer], case: str) -> None:
    _ours(benchmark, method, case)


def test_summary() -> None:
    """Print times relative to pytorch-grad-cam's GradCAM aug_smooth (run with -s)."""
    print_summary(GROUP, REFERENCE, images=BATCH)
