"""Insertion + deletion: ours vs the bare-forward limit, a per-step loop, and torchcam.

Setting: CPU, resnet18 (random weights made explainable), 4 images at 224x224, RISE
curves with 50 steps (51 points), softmax probability of a fixed target per image.
Every contender scores 4 images x 2 curves x 51 points = 408 perturbed images:

* ``ours``: ``ExplanationMetrics(model, steps=50).compute(...)`` (default chunking).
* ``limit``: the same 408 perturbed images, pre-built (untimed), through bare no-grad
  forwards at our chunk size: the ratio is our whole overhead (ranking, blurring,
  composing on the fly, scoring). CPU forward time depends a little on the pixel
  values (all-zero inputs run ~5-10% faster), hence the same images, not random ones.
* ``loop``: one forward per step per image, masks built per step (the naive way).
* ``torchcam``: ``torchcam.metrics.DeletionInsertionMetric(steps=50, batch_size=chunk)``
  fed the same heatmaps through a stand-in CAM extractor. Same work, except that its
  insertion starts from the zero baseline (no blur), so it shares deletion's all-zero
  point (400 forwards, not 408) and scores mostly-zero images, which run a little faster.

Run: ``python -m pytest benchmarks/test_bench_metrics.py --benchmark-only``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from functools import partial

import pytest
import timm
import torch

from timmlens.interpretation.metrics import ExplanationMetrics, rise_blur
from timmlens.testing import make_explainable

pytest.importorskip("pytest_benchmark")

IMAGES, SIZE, STEPS = 4, 224, 50
POINTS = STEPS + 1
FORWARDS = IMAGES * 2 * POINTS  # 408
GROUP = "insertion+deletion resnet18 4x224x224, 50 steps (CPU)"
TARGETS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def setup() -> dict:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("resnet18", pretrained=False)).eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(IMAGES, 3, SIZE, SIZE, generator=generator)
    heatmaps = torch.rand(IMAGES, 14, 14, generator=generator)
    metrics = ExplanationMetrics(model, steps=STEPS)
    metrics.compute(images[:1], heatmaps[:1], target_class=TARGETS[:1])  # probe + warm-up
    chunk = metrics.chunk_size(images, FORWARDS)
    return {
        "model": model,
        "images": images,
        "heatmaps": heatmaps,
        "metrics": metrics,
        "chunk": chunk,
    }


def _info(benchmark, name: str, chunk: int) -> None:
    benchmark.extra_info.update(
        {"contender": name, "chunk": chunk, "perturbed_images": FORWARDS, "images": IMAGES}
    )


@pytest.mark.benchmark(group=GROUP)
def test_ours(benchmark, setup) -> None:
    metrics = setup["metrics"]

    def run() -> dict:
        return metrics.compute(setup["images"], setup["heatmaps"], target_class=TARGETS)

    results = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    _info(benchmark, "ours", metrics.last_chunk_size)
    assert results["deletion"].y.shape == (IMAGES, POINTS)


def perturbed_inputs(images: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    """The 408 perturbed images our curves score, built step by step: ``(408, 3, H, W)``."""
    maps = torch.nn.functional.interpolate(heatmaps[:, None], size=(SIZE, SIZE), mode="bilinear")
    starts = {"deletion": images, "insertion": rise_blur(images)}
    finishes = {"deletion": torch.zeros_like(images), "insertion": images}
    out = []
    for b in range(IMAGES):
        order = maps[b].flatten().argsort(descending=True, stable=True)
        for kind in ("deletion", "insertion"):
            for t in range(POINTS):
                chosen = order[: t * SIZE * SIZE // STEPS]
                current = starts[kind][b].clone().flatten(1)
                current[:, chosen] = finishes[kind][b].flatten(1)[:, chosen]
                out.append(current.view(3, SIZE, SIZE))
    return torch.stack(out)


@pytest.mark.benchmark(group=GROUP)
def test_limit_bare_forwards(benchmark, setup) -> None:
    """The same 408 perturbed images, pre-built, through bare no-grad forwards."""
    model, chunk = setup["model"], setup["chunk"]
    batches = perturbed_inputs(setup["images"], setup["heatmaps"]).split(chunk)

    def run() -> None:
        with torch.no_grad():
            for batch in batches:
                model(batch)

    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    _info(benchmark, "limit (bare no-grad forwards, our chunk size)", chunk)


@pytest.mark.benchmark(group=GROUP)
def test_per_step_loop(benchmark, setup) -> None:
    """One forward per step per image, each perturbed image built when it is needed."""
    model, images, heatmaps = setup["model"], setup["images"], setup["heatmaps"]
    maps = torch.nn.functional.interpolate(heatmaps[:, None], size=(SIZE, SIZE), mode="bilinear")
    starts = {"deletion": images, "insertion": rise_blur(images)}
    finishes = {"deletion": torch.zeros_like(images), "insertion": images}

    def run() -> None:
        with torch.no_grad():
            for b in range(IMAGES):
                order = maps[b].flatten().argsort(descending=True, stable=True)
                for kind in ("deletion", "insertion"):
                    for t in range(POINTS):
                        chosen = order[: t * SIZE * SIZE // STEPS]
                        current = starts[kind][b].clone().flatten(1)
                        current[:, chosen] = finishes[kind][b].flatten(1)[:, chosen]
                        model(current.view(1, 3, SIZE, SIZE)).softmax(1)[0, TARGETS[b]].item()

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    _info(benchmark, "per-step loop (batch 1)", 1)


class _FixedCams:
    """A torchcam CAM-extractor stand-in returning fixed heatmaps (no hooks, no gradients)."""

    def __init__(self, model: torch.nn.Module, cams: torch.Tensor) -> None:
        self.model = model
        self.cams = cams

    def __call__(self, class_idx=None, scores=None, normalized=True, **_: object) -> list:
        return [self.cams]

    def fuse_cams(self, cams: list) -> torch.Tensor:
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self) -> Iterator[None]:
        yield


@pytest.mark.benchmark(group=GROUP)
def test_torchcam(benchmark, setup) -> None:
    metrics_module = pytest.importorskip("torchcam.metrics")
    if not hasattr(metrics_module, "DeletionInsertionMetric"):
        pytest.skip("this torchcam has no DeletionInsertionMetric")
    model, chunk = setup["model"], setup["chunk"]
    extractor = _FixedCams(model, setup["heatmaps"])
    metric = metrics_module.DeletionInsertionMetric(
        extractor, partial(torch.softmax, dim=-1), steps=STEPS, batch_size=chunk
    )

    def run() -> dict:
        metric.reset()
        with torch.no_grad():
            metric.update(setup["images"], class_idx=TARGETS)
        return metric.summary()

    summary = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    _info(benchmark, "torchcam DeletionInsertionMetric", chunk)
    assert math.isfinite(summary["deletion_auc"])
