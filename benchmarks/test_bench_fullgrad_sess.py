"""FullGrad and SESS against pytorch-grad-cam 1.5.7, side by side, on the real Lite0.

The bundled EfficientNet-Lite0 at 224 px on the CPU, photos from scikit-image. Run with::

    pytest benchmarks/test_bench_fullgrad_sess.py --benchmark-group-by=group -s

* FullGrad, 2 images: ours vs pytorch-grad-cam's ``FullGrad`` handed the same 49 bias
  layers (its own rule finds none on timm's ``BatchNormAct2d``: it would time the input
  term alone), against one forward + backward to the input by hand.
* SESS, 1 image, GradCAM base, 3 scales (9 windows): ours vs pytorch-grad-cam's
  ``SESS``, against one forward + backward of the 9 windows as one batch by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import pytest
import torch
from torch import nn

from _harness import print_summary, timed
from timmlens.adapters import bias_layers
from timmlens.interpretation import SESS, FullGrad

FULLGRAD = "fullgrad-lite0-b2-224-cpu"
SESS_GROUP = "sess-lite0-b1-224-3scales-cpu"
REFERENCE = "forward+backward by hand"
SCALES = 3


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    from skimage import data

    from timmlens import load_model, prepare_images

    model = load_model("bundled:efficientnet_lite0")
    return model, prepare_images([data.chelsea(), data.coffee()], model).tensor


def forward_backward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    return torch.autograd.grad(logits.max(dim=1).values.sum(), x)[0]


@contextmanager
def peer_fullgrad(model: nn.Module) -> Iterator[object]:
    """pytorch-grad-cam's FullGrad on our bias layers (the pre-activation probes)."""
    import pytorch_grad_cam.fullgrad_cam as peer

    layers = bias_layers(model)
    by_probe = {id(layer.probe): layer for layer in layers}
    find, get_bias = peer.find_layer_predicate_recursive, peer.FullGrad.get_bias_data
    peer.find_layer_predicate_recursive = lambda *_: [layer.probe for layer in layers]
    peer.FullGrad.get_bias_data = lambda _self, probe: by_probe[id(probe)].bias()
    try:
        with peer.FullGrad(model, []) as cam:
            yield cam
    finally:
        peer.find_layer_predicate_recursive, peer.FullGrad.get_bias_data = find, get_bias
        model.zero_grad(set_to_none=True)


def test_fullgrad_reference(benchmark) -> None:
    model, batch = model_and_batch()
    timed(benchmark, FULLGRAD, REFERENCE, lambda: forward_backward(model.eval(), batch))


def test_fullgrad_timmlens(benchmark) -> None:
    model, batch = model_and_batch()
    explainer = FullGrad(model)
    timed(benchmark, FULLGRAD, "timmlens FullGrad", lambda: explainer(batch))


def test_fullgrad_pytorch_grad_cam(benchmark) -> None:
    pytest.importorskip("pytorch_grad_cam")
    model, batch = model_and_batch()
    with peer_fullgrad(model) as cam:
        timed(benchmark, FULLGRAD, "pytorch-grad-cam FullGrad", lambda: cam(batch, None), rounds=1)


def test_fullgrad_summary() -> None:
    print_summary(FULLGRAD, REFERENCE, images=2)


def test_sess_reference(benchmark) -> None:
    model, _ = model_and_batch()
    windows = SESS(model, num_scales=SCALES).windows(224, 224)[1]
    crops = torch.randn(len(windows), 3, 224, 224)
    timed(benchmark, SESS_GROUP, REFERENCE, lambda: forward_backward(model.eval(), crops))


def test_sess_timmlens(benchmark) -> None:
    model, batch = model_and_batch()
    explainer = SESS(model, num_scales=SCALES)
    timed(benchmark, SESS_GROUP, "timmlens SESS", lambda: explainer(batch[:1]))


def test_sess_pytorch_grad_cam(benchmark) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    model, batch = model_and_batch()
    layer = model.get_submodule(SESS(model).layer_names[0])
    with pgc.SESS(model, [layer], base_method=pgc.GradCAM, num_scales=SCALES) as cam:
        timed(benchmark, SESS_GROUP, "pytorch-grad-cam SESS", lambda: cam(batch[:1], None))
    model.zero_grad(set_to_none=True)


def test_sess_summary() -> None:
    print_summary(SESS_GROUP, REFERENCE, images=1)
