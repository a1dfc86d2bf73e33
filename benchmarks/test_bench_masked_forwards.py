"""The masked-forward methods against their forward limit and the peers, side by side.

ScoreCAM, AblationCAM, RISE and occlusion all score many masked copies of the images.
Each group times, on one model and batch (resnet18, random init made explainable by
:func:`~timmlens.testing.make_explainable`; predicted classes; on the CPU 2 images at
128x128, on CUDA 4 at 224x224):

* the **forward limit**: the same number of masked images through bare inference-mode
  forwards at the best batch size, inputs prepared outside the timing (what any
  implementation must at least pay; target: ours at most 1.15x);
* **ours**, at its defaults except the settings named below;
* the **peers** at equal settings: pytorch-grad-cam's ScoreCAM and AblationCAM
  (``layer4``, ``batch_size`` = the limit's best batch) and Captum's ``Occlusion``
  called directly (same window, stride, black baseline and ``perturbations_per_eval``).

Settings: ScoreCAM and AblationCAM on ``layer4`` (512 channels: 512 masked or ablated
copies per image); RISE with 500 masks (7x7 cells); occlusion with a 16-pixel window
and stride 8 (15 x 15 = 225 windows per image at 128 px). AblationCAM runs only the head
on its copies, so its limit (full forwards) is what a per-copy rerun such as
pytorch-grad-cam's cannot beat, and "one bare forward" shows its cost in forwards
(target: at least 20x faster than pytorch-grad-cam).

The best batch size: every candidate of :data:`BATCH_CANDIDATES` runs three timed
forwards of a same-shape batch after a warm-up; the batch with the most images per
second (from the fastest of the three) wins. Run with::

    pytest benchmarks/test_bench_masked_forwards.py --benchmark-group-by=group -s
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache

import pytest
import timm
import torch
from torch import nn

from _harness import TIMES, print_summary, timed
from timmlens.interpretation.cam.perturbation import AblationCAM, ScoreCAM
from timmlens.interpretation.input.perturbation import Occlusion
from timmlens.interpretation.input.rise import RISE
from timmlens.testing import make_explainable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH, SIDE = (4, 224) if DEVICE.type == "cuda" else (2, 128)
CHANNELS = 512  # resnet18's layer4
RISE_MASKS = 500
WINDOW, STRIDE = 16, 8
WINDOWS = ((SIDE - WINDOW) // STRIDE + 1) ** 2  # Captum's window positions per image
BATCH_CANDIDATES = (8, 16, 32, 64, 128)
LIMIT = "forward limit"
#: Each call is seconds of forwards and the batch-size probe has warmed the model up:
#: two timed rounds, no warm-up round, keep the file within minutes on 2 cores.
ROUNDS = {"rounds": 2, "warmup_rounds": 0}


def group(method: str) -> str:
    return f"{method}-resnet18-b{BATCH}-{SIDE}-{DEVICE.type}"


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("resnet18")).to(DEVICE).eval()
    images = torch.randn(BATCH, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    return model, images.to(DEVICE)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@cache
def best_batch() -> int:
    """The candidate batch size with the most images per second through bare forwards."""
    model, batch = model_and_batch()
    rates = {}
    for size in BATCH_CANDIDATES:
        images = batch[:1].expand(size, -1, -1, -1).contiguous()
        fastest = float("inf")
        with torch.inference_mode():
            model(images)  # warm-up
            for _ in range(3):
                _sync()
                start = time.perf_counter()
                model(images)
                _sync()
                fastest = min(fastest, time.perf_counter() - start)
        rates[size] = size / fastest
    return max(rates, key=rates.__getitem__)


def limit(benchmark, method: str, n_images: int) -> None:
    """Time ``n_images`` masked images through bare forwards at the best batch size."""
    model, batch = model_and_batch()
    chunk = best_batch()
    images = batch[:1].expand(chunk, -1, -1, -1).contiguous()
    sizes = [chunk] * (n_images // chunk) + ([n_images % chunk] if n_images % chunk else [])

    def run() -> None:
        with torch.inference_mode():
            for size in sizes:
                model(images[:size])
        _sync()

    label = f"{LIMIT} ({n_images} images, batch {chunk})"
    timed(benchmark, group(method), label, run, **ROUNDS, role="limit", method=LIMIT)


def ours(benchmark, method: str, explain: Callable[[torch.Tensor], object]) -> None:
    _, batch = model_and_batch()

    def run() -> object:
        result = explain(batch)
        _sync()
        return result

    timed(benchmark, group(method), f"timmlens {method}", run, **ROUNDS, role="ours", method=method)


def peer(benchmark, method: str, label: str, run: Callable[[], object]) -> None:
    def synced() -> object:
        result = run()
        _sync()
        return result

    # one round: the peers are the slow side, and one round of them is minutes on a CPU
    timed(
        benchmark,
        group(method),
        label,
        synced,
        rounds=1,
        warmup_rounds=0,
        role="peer",
        method=label,
        versus=method,
    )


def summary(method: str) -> None:
    """Print the group's times relative to its forward limit (run with -s)."""
    limits = [label for label in TIMES.get(group(method), {}) if label.startswith(LIMIT)]
    if not limits:
        pytest.skip(f"the forward limit of {group(method)} did not run")
    print_summary(group(method), limits[0], images=BATCH)


def _grad_cam(name: str) -> Callable[[], object]:
    pgc = pytest.importorskip("pytorch_grad_cam")
    model, batch = model_and_batch()
    cam = getattr(pgc, name)(model, [model.layer4])
    cam.batch_size = best_batch()  # both read it: the same chunks as the limit
    return lambda: cam(batch, targets=None)


# ------------------------------------------------------------------------------ ScoreCAM
def test_scorecam_forward_limit(benchmark) -> None:
    limit(benchmark, "scorecam", BATCH * CHANNELS)


def test_scorecam_timmlens(benchmark) -> None:
    model, _ = model_and_batch()
    ours(benchmark, "scorecam", ScoreCAM(model, target_layer="layer4"))


def test_scorecam_pytorch_grad_cam(benchmark) -> None:
    peer(benchmark, "scorecam", "pytorch-grad-cam ScoreCAM", _grad_cam("ScoreCAM"))


def test_scorecam_summary() -> None:
    summary("scorecam")


# --------------------------------------------------------------------------- AblationCAM
def test_ablationcam_forward_limit(benchmark) -> None:
    limit(benchmark, "ablationcam", BATCH * CHANNELS)


def test_ablationcam_bare_forward(benchmark) -> None:
    model, batch = model_and_batch()

    def forward() -> None:
        with torch.inference_mode():
            model(batch)
        _sync()

    label = f"one bare forward ({BATCH} images)"
    timed(benchmark, group("ablationcam"), label, forward, rounds=5, role="limit", method=label)


def test_ablationcam_timmlens(benchmark) -> None:
    model, _ = model_and_batch()
    ours(benchmark, "ablationcam", AblationCAM(model, target_layer="layer4"))


def test_ablationcam_pytorch_grad_cam(benchmark) -> None:
    peer(benchmark, "ablationcam", "pytorch-grad-cam AblationCAM", _grad_cam("AblationCAM"))


def test_ablationcam_summary() -> None:
    summary("ablationcam")


# ---------------------------------------------------------------------------------- RISE
def test_rise_forward_limit(benchmark) -> None:
    limit(benchmark, "rise", BATCH * RISE_MASKS)


def test_rise_timmlens(benchmark) -> None:
    model, _ = model_and_batch()
    ours(benchmark, "rise", RISE(model, n_masks=RISE_MASKS))


def test_rise_summary() -> None:
    summary("rise")


# ----------------------------------------------------------------------------- occlusion
def test_occlusion_forward_limit(benchmark) -> None:
    limit(benchmark, "occlusion", BATCH * WINDOWS)


def _occlusion() -> Occlusion:
    model, _ = model_and_batch()
    return Occlusion(model, window=WINDOW, stride=STRIDE)


def test_occlusion_timmlens(benchmark) -> None:
    ours(benchmark, "occlusion", _occlusion())


def test_occlusion_captum(benchmark) -> None:
    from captum.attr import Occlusion as CaptumOcclusion

    model, batch = model_and_batch()
    explainer = _occlusion()
    baselines = explainer.baselines_for(batch)
    per_eval = explainer.per_eval(batch, BATCH)  # what ours passes to Captum
    with torch.no_grad():
        targets = model(batch).argmax(dim=1)
    occlusion = CaptumOcclusion(model)

    def run() -> torch.Tensor:
        return occlusion.attribute(
            batch,
            sliding_window_shapes=(3, WINDOW, WINDOW),
            strides=(3, STRIDE, STRIDE),
            baselines=baselines,
            target=targets,
            perturbations_per_eval=per_eval,
        )

    peer(benchmark, "occlusion", "captum Occlusion", run)


def test_occlusion_summary() -> None:
    summary("occlusion")
