"""The CI slice of the zoo sweep (``benchmarks/zoo_coverage.py``): one tiny family per
layout x every registered method, judged as the sweep judges a cell.

Each cell must work (finite, non-constant maps that differ between two classes; a
class-agnostic method gives the same map twice) or be refused with a ``TimmLensError``
that names its reason; a crash, a constant or a class-independent map fails. The full
sweep over every timm family stays in ``benchmarks/`` (``docs/zoo_coverage.md``).
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

from timmlens.interpretation.registry import methods
from timmlens.testing import calibrate_batchnorm, explainable_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from zoo_coverage import FAILING, REFUSED, WORKS, run_cell

# every method on six families: 4-5 minutes on 2 cores, the bulk of the zoo tests
pytestmark = pytest.mark.slow

# layout -> (timm name, kwargs, input side)
LAYOUTS = {
    # 96 px as in the sweep: at 64 px a stride-32 layer is 2x2 and RandomCAM / LIME can
    # give constant maps on random weights.
    "NCHW": ("test_resnet", {}, 96),
    "NHWC": ("test_mambaout", {}, 96),
    "tokens+0": (
        "vit_tiny_patch16_224",
        {"img_size": 32, "depth": 1, "class_token": False, "global_pool": "avg"},
        32,
    ),
    "tokens+1": ("vit_tiny_patch16_224", {"img_size": 32, "depth": 1}, 32),
    "tokens+2": ("deit_tiny_distilled_patch16_224", {"img_size": 32, "depth": 1}, 32),
    "tokens+5": ("vit_tiny_patch16_224", {"img_size": 32, "depth": 1, "reg_tokens": 4}, 32),
    "hierarchical tokens": ("pit_ti_224", {"img_size": 64, "depth": (1, 1, 1)}, 64),
}
# Constant maps these tiny random-weight models give (observed; any other failure, and any
# new constant map, fails): the CAMs on PiT's 2x2 last stage, whose ReLU'd maps random
# weights leave all zero, and LIME on MambaOut, whose LayerNorm'd random logits move by
# 0.03 under masking, below the alpha=0.01 of Captum's Lasso: it selects no cell.
# Trained weights do not show them (docs/methods/matrix.md).
KNOWN_CONSTANT = {
    ("NHWC", "lime"),
    *(
        ("hierarchical tokens", m)
        for m in ("gradcam", "gradcampp", "hirescam", "xgradcam", "guidedgradcam")
    ),
    # GradCAM's weights with a second-order term, or on FinerCAM's score: the same zeros
    ("hierarchical tokens", "shapleycam"),
    ("hierarchical tokens", "finercam"),
}

# FEM's k-sigma rule (k=2) selects nothing on these 2x2 maps: no value of 4 is more than
# sqrt(3) deviations above their mean, so every weight is 0 whatever the sign (its
# DegenerateMapWarning says so).
KNOWN_ZERO_WEIGHTS = {
    (layout, "fem"): "constant map (the signed map is constant too)"
    for layout in ("tokens+0", "tokens+1", "tokens+2", "tokens+5", "hierarchical tokens")
}


@cache
def _model(layout: str) -> tuple[nn.Module, torch.Tensor, list[int]]:
    name, kwargs, side = LAYOUTS[layout]
    model = explainable_model(name, num_classes=10, **kwargs)
    # As the sweep builds it: BatchNorm statistics of the random net on random images.
    images = torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(1))
    calibrate_batchnorm(model, images)
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ranked = model(x)[0].argsort(descending=True)
    return model, x, [int(ranked[0]), int(ranked[1])]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_method_works_or_is_refused_with_a_reason(layout: str) -> None:
    model, x, classes = _model(layout)
    cells = {method: run_cell(method, model, x, classes, timeout=60) for method in methods()}
    failing = {
        m: c.note
        for m, c in cells.items()
        if c.status == FAILING
        and not ((layout, m) in KNOWN_CONSTANT and c.note == "constant map")
        and KNOWN_ZERO_WEIGHTS.get((layout, m)) != c.note
    }
    assert not failing, f"{layout}: {failing}"
    for method, cell in cells.items():
        if cell.status == REFUSED:  # the reason names the error class and says why
            assert cell.note.split(":")[0].endswith("Error") and len(cell.note) > 30, method
    if layout != "hierarchical tokens":
        assert cells["gradcam"].status == WORKS
    attention = ("rollout", "chefer", "legrad")
    expected = WORKS if layout.startswith("tokens") else REFUSED
    assert all(cells[m].status == expected for m in attention), {m: cells[m] for m in attention}
