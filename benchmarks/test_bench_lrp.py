"""``lrp`` (Zennit composites with timm canonizers) against a forward+backward and Zennit by hand.

Two models: timm's ``resnet50`` (random init, :func:`~timmlens.testing.make_explainable`)
and the real EfficientNet-Lite0 (``bundled:efficientnet_lite0``); a batch of 8 images at
224x224 on CUDA (128x128 on the CPU), fixed targets. Each group is one run:

* the **limit**: one forward plus a backward of the target logits to the input;
* **ours**: ``lrp`` through the registry, each composite (``epsilon_plus_flat`` is the
  default), with a memory budget that holds the batch of 8 in one chunk (the work the
  limit does); and the default composite with the default budget (2 GiB on the CPU:
  resnet50 at 224 px runs as 7 + 1 images);
* **before**: Zennit's own ``EpsilonPlusFlat`` and ``Gradient`` attributor with the same
  canonizers and layer map as ``lrp``, its rules as Zennit's hooks (what ``lrp`` ran
  before its rules became their layers' backward, less its z+ shortcut; equal maps);
* the **peer**: Zennit's ``EpsilonPlusFlat`` and ``Gradient`` attributor called by hand on
  the same model with Zennit's ``SequentialMergeBatchNorm`` (what a Zennit user writes;
  it finds no pair in timm's ``BatchNormAct2d`` models and rules no residual add, so it
  does less work than ours there).

The issue's target: ``lrp`` at most 1.5x the limit. ``LRP_BENCH_SIDE`` / ``LRP_BENCH_MODELS``
(comma-separated) shrink the run on a busy CPU; ``LRP_BENCH_ROUNDS`` (2) sets the rounds
of each entry. Run::

    pytest benchmarks/test_bench_lrp.py --benchmark-group-by=group -s

On a CPU shared with other jobs, add ``OMP_NUM_THREADS=1`` and
``--benchmark-timer=time.process_time`` (CPU seconds of one thread: the work done,
whatever else runs; docs/methods/lrp.md has the figures).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import timm
import torch
from torch import nn

from _harness import print_summary, timed
from timmlens.interpretation.registry import create_explainer
from timmlens.testing import make_explainable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH = 8
SIDE = int(os.environ.get("LRP_BENCH_SIDE", 224 if DEVICE.type == "cuda" else 128))
MODELS = tuple(os.environ.get("LRP_BENCH_MODELS", "resnet50,efficientnet_lite0").split(","))
ROUNDS = int(os.environ.get("LRP_BENCH_ROUNDS", 2))
LIMIT = "forward+backward"
COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")


def group(model_name: str) -> str:
    return f"lrp-{model_name}-b{BATCH}-{SIDE}-{DEVICE.type}"


@cache
def setup(model_name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    if model_name == "efficientnet_lite0":
        from timmlens import load_model

        model = load_model("bundled:efficientnet_lite0").to(DEVICE).eval()
    else:
        torch.manual_seed(0)
        model = make_explainable(timm.create_model(model_name)).to(DEVICE).eval()
    images = torch.randn(BATCH, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    images = images.to(DEVICE)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    return model, images, targets


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def measure(benchmark, model_name: str, label: str, fn: Callable[[], object], **info: Any) -> None:
    def run() -> object:
        result = fn()
        _sync()
        return result

    timed(benchmark, group(model_name), label, run, rounds=ROUNDS, images=BATCH, **info)


@pytest.mark.parametrize("model_name", MODELS)
def test_limit_forward_backward(benchmark, model_name: str) -> None:
    model, images, targets = setup(model_name)

    def forward_backward() -> torch.Tensor:
        x = images.clone().requires_grad_(True)
        score = model(x).gather(1, targets[:, None]).sum()
        return torch.autograd.grad(score, x)[0]

    measure(benchmark, model_name, LIMIT, forward_backward, role="limit", method="limit")


#: a budget that holds the benchmark's batch in one chunk
ONE_CHUNK = 64 * 2**30


@pytest.mark.parametrize(
    ("composite", "budget"), [(c, ONE_CHUNK) for c in COMPOSITES] + [(COMPOSITES[0], None)]
)
@pytest.mark.parametrize("model_name", MODELS)
def test_lrp(benchmark, model_name: str, composite: str, budget: int | None) -> None:
    model, images, targets = setup(model_name)
    explainer = create_explainer("lrp", model, composite=composite, memory_budget_bytes=budget)
    chosen = targets.tolist()
    label = f"lrp {composite}" + (" (default budget)" if budget is None else "")
    measure(
        benchmark,
        model_name,
        label,
        lambda: explainer.attributions(images, chosen),
        role="ours",
        method="lrp",
    )


def _seed_of(targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    rows = torch.arange(len(targets), device=targets.device)

    def seed(output: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(output)
        out[rows, targets] = output[rows, targets]
        return out

    return seed


@pytest.mark.parametrize("model_name", MODELS)
def test_before_zennit_zplus(benchmark, model_name: str) -> None:
    """Zennit's attributor with lrp's canonizers and layer map, Zennit's own ZPlus."""
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    from timmlens.interpretation.input.zennit_rules import batchnorm_pairs, canonizers, layer_map

    model, images, targets = setup(model_name)
    pairs = batchnorm_pairs(model, images[:1])
    seed = _seed_of(targets)

    def run() -> torch.Tensor:
        composite = EpsilonPlusFlat(layer_map=layer_map(), canonizers=canonizers(pairs))
        with Gradient(model, composite) as attributor:
            return attributor(images, seed)[1]

    measure(benchmark, model_name, "before: zennit ZPlus, same canonizers", run, role="ours")


@pytest.mark.parametrize("model_name", MODELS)
def test_zennit_by_hand(benchmark, model_name: str) -> None:
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    model, images, targets = setup(model_name)
    rows = torch.arange(BATCH, device=DEVICE)

    def run() -> torch.Tensor:
        composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])

        def seed(output: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(output)
            out[rows, targets] = output[rows, targets]
            return out

        with Gradient(model, composite) as attributor:
            return attributor(images, seed)[1]

    measure(benchmark, model_name, "zennit by hand", run, role="peer", method="lrp")


@pytest.mark.parametrize("model_name", MODELS)
def test_summary(model_name: str) -> None:
    """Print every entry relative to the forward+backward (run with -s)."""
    print_summary(group(model_name), LIMIT, images=BATCH)
