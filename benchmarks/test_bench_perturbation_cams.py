"""ScoreCAM and AblationCAM against the forward limit and pytorch-grad-cam.

resnet18 (random init, :func:`~timmlens.testing.make_explainable`), layer ``layer4``
(512 channels), predicted classes; on CUDA 4 images at 224x224, on the CPU 1 image at
112x112 (the peers' full forwards per channel take minutes otherwise). Run with::

    pytest benchmarks/test_bench_perturbation_cams.py --benchmark-group-by=group -s

* ScoreCAM scores ``B x 512`` masked images: its limit is those images through bare
  no-grad forwards at the best batch size (target: at most 1.15x).
* AblationCAM runs the network up to ``layer4`` once and only the head for the
  ``B x 512`` ablated copies; pytorch-grad-cam reruns the whole network for every copy.
  Its group shows the same ``B x 512`` full forwards (what a per-copy rerun cannot beat)
  and one bare forward of the ``B`` images (target: at least 20x faster than
  pytorch-grad-cam).

Both peers get the same chunk size as the forward limit's best batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache

import pytest
import timm
import torch
from torch import nn

from _harness import print_summary, timed
from timmlens.interpretation.cam.perturbation import AblationCAM, ScoreCAM
from timmlens.testing import make_explainable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH, SIDE = (4, 224) if DEVICE.type == "cuda" else (1, 112)
CHANNELS = 512  # resnet18's layer4
SCORE_GROUP = f"scorecam-resnet18-b{BATCH}-{SIDE}-{DEVICE.type}"
ABLATION_GROUP = f"ablationcam-resnet18-b{BATCH}-{SIDE}-{DEVICE.type}"
LIMIT = f"forward limit ({BATCH}x{CHANNELS} images)"
BARE = f"bare forward ({BATCH} images)"


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("resnet18")).to(DEVICE)
    return model, torch.randn(BATCH, 3, SIDE, SIDE, device=DEVICE)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@cache
def best_batch() -> int:
    """The batch size with the most images per second through bare forwards (one probe each)."""
    model, batch = model_and_batch()
    rates = {}
    for size in (16, 32, 64, 128):
        images = batch[:1].expand(size, -1, -1, -1).contiguous()
        with torch.inference_mode():
            model(images)  # warm-up
            _sync()
            start = time.perf_counter()
            model(images)
            _sync()
        rates[size] = size / (time.perf_counter() - start)
    return max(rates, key=rates.__getitem__)


def forward_limit() -> Callable[[], object]:
    """``B x C`` images through bare forwards at the best batch size (built once, outside)."""
    model, batch = model_and_batch()
    chunk = best_batch()
    images = batch[:1].expand(chunk, -1, -1, -1).contiguous()
    n_chunks = -(-BATCH * CHANNELS // chunk)

    def run() -> None:
        with torch.inference_mode():
            for _ in range(n_chunks):
                model(images)
        _sync()

    return run


def ours(method: type) -> Callable[[], object]:
    model, batch = model_and_batch()
    explainer = method(model, target_layer="layer4")

    def run() -> torch.Tensor:
        maps = explainer(batch)
        _sync()
        return maps

    return run


def peer(name: str) -> Callable[[], object]:
    pgc = pytest.importorskip("pytorch_grad_cam")
    model, batch = model_and_batch()
    cam = getattr(pgc, name)(model, [model.layer4])
    cam.batch_size = best_batch()  # both peers read it: the same chunks as the limit
    return lambda: cam(batch, targets=None)


# ------------------------------------------------------------------------------ ScoreCAM
def test_scorecam_forward_limit(benchmark) -> None:
    timed(benchmark, SCORE_GROUP, LIMIT, forward_limit(), rounds=2, images=BATCH)


def test_scorecam_timmlens(benchmark) -> None:
    timed(benchmark, SCORE_GROUP, "timmlens ScoreCAM", ours(ScoreCAM), rounds=2, images=BATCH)


def test_scorecam_pytorch_grad_cam(benchmark) -> None:
    run = peer("ScoreCAM")
    timed(
        benchmark,
        SCORE_GROUP,
        "pytorch-grad-cam ScoreCAM",
        run,
        rounds=1,
        warmup_rounds=0,
        images=BATCH,
    )


def test_scorecam_summary() -> None:
    """Print times relative to the forward limit (run with -s)."""
    print_summary(SCORE_GROUP, LIMIT, images=BATCH)


# --------------------------------------------------------------------------- AblationCAM
def test_ablationcam_bare_forward(benchmark) -> None:
    model, batch = model_and_batch()

    def forward() -> None:
        with torch.inference_mode():
            model(batch)
        _sync()

    timed(benchmark, ABLATION_GROUP, BARE, forward, rounds=5, images=BATCH)


def test_ablationcam_timmlens(benchmark) -> None:
    timed(benchmark, ABLATION_GROUP, "timmlens AblationCAM", ours(AblationCAM), rounds=5)


def test_ablationcam_forward_limit(benchmark) -> None:
    timed(
        benchmark, ABLATION_GROUP, LIMIT, forward_limit(), rounds=1, warmup_rounds=0, images=BATCH
    )


def test_ablationcam_pytorch_grad_cam(benchmark) -> None:
    run = peer("AblationCAM")
    timed(benchmark, ABLATION_GROUP, "pytorch-grad-cam AblationCAM", run, rounds=1, warmup_rounds=0)


def test_ablationcam_summary() -> None:
    """Print times relative to one bare forward (run with -s)."""
    print_summary(ABLATION_GROUP, BARE, images=BATCH)
