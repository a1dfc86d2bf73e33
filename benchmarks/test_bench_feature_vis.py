"""Feature visualisation of one real EfficientNet-Lite0 channel: time against its floor.

224 x 224 px, 256 steps, channel 0 of ``bn2`` (the family's feature layer), on the CPU.
Each step is one forward+backward of the transformed copies (2 by default) plus the
parameterisation (an inverse FFT) and the transformations, so the floor is 256
forward+backward passes of a batch of 2 (the issue's target: within 2 minutes on
2 CPU cores). Entries:

* ``256 x forward+backward (batch 2)``: the floor (``torch.autograd.grad`` of a logit);
* ``256 x forward+backward (batch 1)``: one copy per step, for scale;
* ``visualize_feature maco`` / ``fourier``: the whole call.

Run with::

    pytest benchmarks/test_bench_feature_vis.py --benchmark-group-by=group -s
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from _harness import print_summary, timed
from timmlens import BUNDLED_SPEC, load_model
from timmlens.analysis import visualize_feature

GROUP = "feature-vis-lite0-224-256steps-cpu"
REFERENCE = "256 x forward+backward (batch 2)"
STEPS, SIZE, CHANNEL = 256, 224, 0


@cache
def model() -> nn.Module:
    return load_model(BUNDLED_SPEC).eval()


def run(benchmark, label: str, role: str, fn) -> None:
    # each entry costs a minute: one round, no warm-up
    timed(benchmark, GROUP, label, fn, role=role, method=label, rounds=1, warmup_rounds=0)


def _passes(batch: int) -> None:
    net = model()
    inputs = torch.zeros(batch, 3, SIZE, SIZE, requires_grad=True)
    for _ in range(STEPS):
        torch.autograd.grad(net(inputs)[:, 0].sum(), inputs)


def test_forward_backward_batch2(benchmark) -> None:
    run(benchmark, REFERENCE, "limit", lambda: _passes(2))


def test_forward_backward_batch1(benchmark) -> None:
    run(benchmark, "256 x forward+backward (batch 1)", "limit", lambda: _passes(1))


def test_visualize_maco(benchmark) -> None:
    run(
        benchmark,
        "visualize_feature maco",
        "ours",
        lambda: visualize_feature(model(), channel=CHANNEL, steps=STEPS, size=SIZE, progress=False),
    )


def test_visualize_fourier(benchmark) -> None:
    run(
        benchmark,
        "visualize_feature fourier",
        "ours",
        lambda: visualize_feature(
            model(), channel=CHANNEL, steps=STEPS, size=SIZE, method="fourier", progress=False
        ),
    )


def test_summary() -> None:
    print_summary(GROUP, REFERENCE)
