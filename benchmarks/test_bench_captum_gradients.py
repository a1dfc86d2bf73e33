"""Captum's gradient and reference methods against a forward+backward and Captum by hand.

resnet18 (random init, :func:`~timmlens.testing.make_explainable`), a batch of 4 images
at 160x160 on the CPU (8 at 224x224 on CUDA), predicted classes. Each group is one run:

* the **limit**: one forward plus a backward of the target logits to the input;
* **ours** through the registry at its defaults (``saliency``, ``inputxgradient``,
  ``guidedbackprop``, ``deconvolution``, ``guidedgradcam`` on ``layer4``, ``deeplift``
  with black pixels, ``deepliftshap`` over 8 baselines, ``gradientshap`` with 16
  samples over 8 baselines, ``lrp``);
* the **peer**: the same Captum class called directly on the model with the same
  targets, baselines and sample counts (what a Captum user writes by hand).

One backward methods should cost about the limit (target: at most 1.15x of Captum by
hand); ``deepliftshap`` and ``gradientshap`` cost their rows x the limit by design. Run::

    pytest benchmarks/test_bench_captum_gradients.py --benchmark-group-by=group -s
"""

from __future__ import annotations

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
BATCH, SIDE = (8, 224) if DEVICE.type == "cuda" else (4, 160)
GROUP = f"captum-gradients-resnet18-b{BATCH}-{SIDE}-{DEVICE.type}"
LIMIT = "forward+backward"
N_BASELINES, GRADIENTSHAP_SAMPLES = 8, 16
METHODS = [
    "saliency",
    "inputxgradient",
    "guidedbackprop",
    "deconvolution",
    "guidedgradcam",
    "deeplift",
    "deepliftshap",
    "gradientshap",
    "lrp",
]


@cache
def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("resnet18")).to(DEVICE).eval()
    images = torch.randn(BATCH, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    images = images.to(DEVICE)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    return model, images, targets


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def measure(benchmark, label: str, fn: Callable[[], object], role: str, **info: Any) -> None:
    def run() -> object:
        result = fn()
        _sync()
        return result

    timed(benchmark, GROUP, label, run, rounds=3, role=role, method=label, images=BATCH, **info)


def test_limit_forward_backward(benchmark) -> None:
    model, images, targets = setup()

    def forward_backward() -> torch.Tensor:
        x = images.clone().requires_grad_(True)
        score = model(x).gather(1, targets[:, None]).sum()
        return torch.autograd.grad(score, x)[0]

    measure(benchmark, LIMIT, forward_backward, "limit")


#: ours then Captum by hand, method by method: on a shared machine whose load drifts,
#: the two sides of a ratio run minutes apart otherwise
ENTRIES = [
    (m, side) for m in METHODS for side in ("ours", "captum") if (m, side) != ("lrp", "captum")
]


@pytest.mark.parametrize(("method", "side"), ENTRIES)
def test_method(benchmark, method: str, side: str) -> None:
    if side == "ours":
        timmlens(benchmark, method)
    else:
        captum_by_hand(benchmark, method)


def timmlens(benchmark, method: str) -> None:
    model, images, targets = setup()
    explainer = create_explainer(method, model)
    chosen = targets.tolist()
    measure(benchmark, method, lambda: explainer.attributions(images, chosen), "ours")


def _black(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    from timmlens.data import normalization

    mean, std = normalization(model, images)
    return ((0 - mean) / std).expand(images.shape).contiguous()


def _references(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Black pixels and 7 noisy copies (pixel std 0.1), as ours draws them."""
    from timmlens.data import normalization

    _, std = normalization(model, images)
    draws = torch.randn(N_BASELINES - 1, *images.shape[1:], generator=torch.Generator())
    base = _black(images[:1], model)
    return torch.cat([base, base + 0.1 * draws.to(images.device) / std])


def _by_hand(method: str, model: nn.Module, images: torch.Tensor) -> tuple[Any, dict]:
    """The Captum object and ``attribute`` arguments a user would write for ``method``."""
    import captum.attr as ca

    if method == "saliency":
        return ca.Saliency(model), {"abs": False}
    if method == "guidedgradcam":
        return ca.GuidedGradCam(model, model.layer4), {"interpolate_mode": "bilinear"}
    if method == "deeplift":
        return ca.DeepLift(model), {"baselines": _black(images, model)}
    if method == "deepliftshap":
        return ca.DeepLiftShap(model), {"baselines": _references(images, model)}
    if method == "gradientshap":
        arguments = {"baselines": _references(images, model), "n_samples": GRADIENTSHAP_SAMPLES}
        return ca.GradientShap(model), arguments
    plain = {
        "inputxgradient": ca.InputXGradient,
        "guidedbackprop": ca.GuidedBackprop,
        "deconvolution": ca.Deconvolution,
    }
    return plain[method](model), {}


def captum_by_hand(benchmark, method: str) -> None:
    model, images, targets = setup()
    captum, arguments = _by_hand(method, model, images)
    label = f"captum {method}"

    def run() -> torch.Tensor:
        x = images.clone().requires_grad_(True)
        return captum.attribute(x, target=targets, **arguments).detach()

    measure(benchmark, label, run, "peer", versus=method)


def test_summary() -> None:
    """Print every entry relative to the forward+backward (run with -s)."""
    print_summary(GROUP, LIMIT, images=BATCH)
