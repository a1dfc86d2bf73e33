"""ROAD against pytorch-grad-cam, and the confidence metrics and AOPC against their
forward limits.

resnet18 (random init, :func:`~timmlens.testing.make_explainable`), 4 images at
224 x 224, random 14 x 14 heatmaps upsampled bilinearly, fixed targets, softmax
probability. Run with::

    pytest benchmarks/test_bench_road.py --benchmark-group-by=group -s

(``TIMMLENS_BENCH_ROAD_IMAGES=1`` runs one image instead of 4, for a quick look on a
busy machine: every part scales with the images, so the ratios barely move.)

**ROAD** (group ``ROAD``): MoRF and LeRF at 10, 20, ..., 90 % removed: 4 images x 2
orders x 9 percentiles = 72 imputations and 72 scored images.

* ``timmlens ROAD``: ``ExplanationMetrics.compute(..., metrics=["road_morf", "road_lerf"])``.
* ``timmlens imputation``: only our imputation of the 72 masks (:func:`impute`), so
  ``ours - imputation`` is our forward time.
* ``forward limit``: the 72 imputed images, built outside, through bare no-grad
  forwards at our chunk size. Target: our forward time within 1.15x of it.
* ``pytorch-grad-cam ROAD``: ``ROADMostRelevantFirstAverage`` and
  ``ROADLeastRelevantFirstAverage`` with the same percentiles (its percentile is the
  share kept; the set 10..90 is the same either way): one image and one percentile at a
  time through the authors' imputer, each percentile also rescoring the originals
  (return_diff). Target: at least 3x slower than ours.
* ``pytorch-grad-cam imputation``: the authors' imputer alone on the same 72 masks.

**Confidence + AOPC** (group ``confidence``): Average Drop and Increase in Confidence
(4 masked images + 4 originals) and AOPC with 25 steps of 9 x 9 patches (4 x 25 + 4
originals), ours against the same images through bare forwards.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from _harness import TIMES, print_summary, timed
from timmlens.interpretation.metrics import ExplanationMetrics, impute, pixel_ranks
from timmlens.interpretation.metrics.confidence import normalised_maps, patch_ranks
from timmlens.interpretation.metrics.road import removal_masks, removed_counts
from timmlens.testing import make_explainable

IMAGES, SIDE = int(os.environ.get("TIMMLENS_BENCH_ROAD_IMAGES", "4")), 224
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
TARGETS = [1, 2, 3, 4][:IMAGES]
AOPC_STEPS = 25
ROAD_GROUP = f"ROAD MoRF+LeRF resnet18 {IMAGES}x{SIDE}, 9 percentiles (CPU)"
CONF_GROUP = f"confidence + AOPC resnet18 {IMAGES}x{SIDE} (CPU)"
LIMIT = f"forward limit ({IMAGES * 18} imputed images)"
OURS, OURS_IMPUTATION = "timmlens ROAD", "timmlens imputation"
PEER, PEER_IMPUTATION = "pytorch-grad-cam ROAD", "pytorch-grad-cam imputation"


@cache
def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("resnet18")).eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(IMAGES, 3, SIDE, SIDE, generator=generator)
    small = torch.rand(IMAGES, 1, 14, 14, generator=generator)
    maps = F.interpolate(small, size=(SIDE, SIDE), mode="bilinear", align_corners=False)[:, 0]
    return model, images, maps


@cache
def masks() -> list[tuple[int, torch.Tensor]]:
    """``(image, (9, H*W) removed)`` for each image and order, as our ROAD builds them."""
    _, _, maps = setup()
    ranks = pixel_ranks(maps)
    counts = removed_counts(PERCENTILES, SIDE * SIDE)
    orders = ("morf", "lerf")
    return [(b, removal_masks(ranks[b], counts, o)) for b in range(IMAGES) for o in orders]


def _metrics() -> ExplanationMetrics:
    model, _, _ = setup()
    return ExplanationMetrics(model, road_percentiles=PERCENTILES, aopc_steps=AOPC_STEPS)


# ---------------------------------------------------------------------------------- ROAD
def test_road_timmlens(benchmark) -> None:
    _, images, maps = setup()
    metrics = _metrics()

    def run() -> dict:
        return metrics.compute(images, maps, TARGETS, metrics=["road_morf", "road_lerf"])

    result = timed(benchmark, ROAD_GROUP, OURS, run, rounds=1, warmup_rounds=0, role="ours")
    assert result["road_morf"].y.shape == (IMAGES, 9)
    benchmark.extra_info["chunk"] = metrics.last_chunk_size


def test_road_timmlens_imputation(benchmark) -> None:
    _, images, _ = setup()

    def run() -> None:
        for b, removed in masks():
            impute(images[b], removed, 0.01, [np.random.default_rng(0)] * len(removed))

    timed(benchmark, ROAD_GROUP, OURS_IMPUTATION, run, rounds=1, warmup_rounds=0, role="ours")


def test_road_forward_limit(benchmark) -> None:
    model, images, _ = setup()
    imputed = torch.cat([impute(images[b], removed) for b, removed in masks()])
    chunk = _metrics().chunk_size(images, len(imputed))

    def run() -> None:
        with torch.inference_mode():
            for batch in imputed.split(chunk):
                model(batch)

    timed(benchmark, ROAD_GROUP, LIMIT, run, rounds=2, warmup_rounds=0, role="limit")


def test_road_pytorch_grad_cam(benchmark) -> None:
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, images, maps = setup()
    cams = maps.numpy()
    targets = [ClassifierOutputSoftmaxTarget(t) for t in TARGETS]
    morf = road.ROADMostRelevantFirstAverage(percentiles=list(PERCENTILES))
    lerf = road.ROADLeastRelevantFirstAverage(percentiles=list(PERCENTILES))

    def run() -> tuple:
        with torch.no_grad():
            return morf(images, cams, targets, model), lerf(images, cams, targets, model)

    with torch.random.fork_rng():  # its imputer draws from the global RNG
        timed(benchmark, ROAD_GROUP, PEER, run, rounds=1, warmup_rounds=0, role="peer")


def test_road_pytorch_grad_cam_imputation(benchmark) -> None:
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    _, images, _ = setup()
    imputer = road.NoisyLinearImputer(noise=0.01)

    def run() -> None:
        for b, removed in masks():
            for mask in removed:
                imputer(images[b], (~mask).float().view(SIDE, SIDE))

    with torch.random.fork_rng():
        timed(benchmark, ROAD_GROUP, PEER_IMPUTATION, run, rounds=1, warmup_rounds=0, role="peer")


def test_road_summary() -> None:
    """Times relative to the forward limit, and our forward share (run with -s)."""
    print_summary(ROAD_GROUP, LIMIT, images=IMAGES)
    entries = TIMES.get(ROAD_GROUP, {})
    if {OURS, OURS_IMPUTATION, LIMIT} <= entries.keys():
        forwards = entries[OURS].mean - entries[OURS_IMPUTATION].mean
        print(
            f"ours per image: imputation {entries[OURS_IMPUTATION].mean / IMAGES:.2f} s, "
            f"forwards {forwards / IMAGES:.2f} s = {forwards / entries[LIMIT].mean:.2f}x the "
            f"forward limit"
        )
    if {OURS, PEER} <= entries.keys():
        print(f"pytorch-grad-cam / ours: {entries[PEER].mean / entries[OURS].mean:.2f}x")
    if {OURS_IMPUTATION, PEER_IMPUTATION} <= entries.keys():
        ratio = entries[PEER_IMPUTATION].mean / entries[OURS_IMPUTATION].mean
        print(f"imputation, pytorch-grad-cam / ours: {ratio:.2f}x")


# ------------------------------------------------------------------- confidence + AOPC
def test_confidence_and_aopc_timmlens(benchmark) -> None:
    _, images, maps = setup()
    metrics = _metrics()

    def run() -> dict:
        return metrics.compute(
            images, maps, TARGETS, metrics=["average_drop", "increase_in_confidence", "aopc"]
        )

    timed(benchmark, CONF_GROUP, "timmlens confidence + AOPC", run, rounds=2, role="ours")


def test_confidence_and_aopc_forward_limit(benchmark) -> None:
    """Originals, image x map, and AOPC's 25 patch removals per image, pre-built."""
    model, images, maps = setup()
    ranks, _ = patch_ranks(maps, 9, "row_major")
    removed = [
        torch.where((ranks[b] < k).view(1, SIDE, SIDE), 0.0, images[b])
        for b in range(IMAGES)
        for k in range(1, AOPC_STEPS + 1)
    ]
    built = torch.cat([images, images * normalised_maps(maps)[:, None], torch.stack(removed)])
    chunk = _metrics().chunk_size(images, len(built))

    def run() -> None:
        with torch.inference_mode():
            for batch in built.split(chunk):
                model(batch)

    timed(benchmark, CONF_GROUP, "forward limit", run, rounds=2, role="limit")


def test_confidence_summary() -> None:
    print_summary(CONF_GROUP, "forward limit", images=IMAGES)
