"""Neuron and layer attributions on the real EfficientNet-Lite0: ours against Captum's.

One photo (chelsea) at 224x224 on the CPU, the predicted class, ``conv_head`` (the
family's CAM layer) through the spatial tap, 16 path steps. Entries, relative to one
forward+backward of the model:

* ``channel_attribution(method="gradient")``: Captum's ``NeuronGradient`` of a whole
  channel (one forward and backward; the fast look);
* ``channel_attribution(method="conductance")``: conductance through a whole channel
  (``n_steps`` forwards, ``2 n_steps`` backwards), next to Captum's ``NeuronConductance``
  of *one* neuron called directly (a whole channel of ``h * w = 49`` neurons through
  Captum would cost 49 of those);
* ``channel_conductance``: Captum's ``LayerConductance``, next to Captum called directly.

Run with::

    pytest benchmarks/test_bench_neurons.py --benchmark-group-by=group -s
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from _harness import print_summary, timed
from timmlens import BUNDLED_SPEC, load_model, prepare_images
from timmlens.adapters import get_adapter, spatial_tap
from timmlens.analysis import channel_attribution, channel_conductance
from timmlens.interpretation._targets import TargetScore

GROUP = "neurons-lite0-b1-224-cpu"
REFERENCE = "forward+backward"
STEPS = 16
CHANNEL = 112  # the top channel for tiger cat (docs/discover.md)


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from skimage import data

    model = load_model(BUNDLED_SPEC).eval()
    batch = prepare_images(data.chelsea(), model).tensor
    with torch.no_grad():
        target = model(batch).argmax(dim=1)
    return model, batch, target


def run(benchmark, label: str, role: str, fn, path: bool = False) -> None:
    # the path methods cost tens of forward+backward passes: one round, no warm-up
    rounds = {"rounds": 1, "warmup_rounds": 0} if path else {"rounds": 3}
    timed(benchmark, GROUP, label, fn, images=1, role=role, method=label, **rounds)


def test_forward_backward(benchmark) -> None:
    model, batch, _ = model_and_batch()
    inputs = batch.clone().requires_grad_(True)

    def forward_backward() -> torch.Tensor:
        (grad,) = torch.autograd.grad(model(inputs).max(dim=1).values.sum(), inputs)
        return grad

    run(benchmark, REFERENCE, "limit", forward_backward)


def test_channel_gradient(benchmark) -> None:
    model, batch, _ = model_and_batch()
    run(
        benchmark,
        "channel_attribution gradient",
        "ours",
        lambda: channel_attribution(model, batch, CHANNEL, method="gradient"),
    )


def test_channel_conductance_pixels(benchmark) -> None:
    model, batch, _ = model_and_batch()
    run(
        benchmark,
        f"channel_attribution conductance ({STEPS} steps)",
        "ours",
        lambda: channel_attribution(model, batch, CHANNEL, n_steps=STEPS),
        path=True,
    )


def _captum_on_conv_head(model: nn.Module, make, *args, **kwargs):
    adapter = get_adapter(model)
    (layer,) = adapter.resolve_layers(None)
    with spatial_tap(model, layer.module, layer.name, adapter.layout_for) as view:
        return make(TargetScore(model), view).attribute(*args, **kwargs)


def test_captum_one_neuron_conductance(benchmark) -> None:
    from captum.attr import NeuronConductance

    model, batch, target = model_and_batch()
    baseline = -torch.ones_like(batch)  # black for Lite0's mean = std = 0.5
    run(
        benchmark,
        f"Captum NeuronConductance, 1 neuron ({STEPS})",
        "peer",
        lambda: _captum_on_conv_head(
            model,
            NeuronConductance,
            batch,
            (CHANNEL, 3, 3),
            baselines=baseline,
            additional_forward_args=(target,),
            n_steps=STEPS,
        ),
        path=True,
    )


def test_layer_conductance(benchmark) -> None:
    model, batch, _ = model_and_batch()
    run(
        benchmark,
        f"channel_conductance ({STEPS} steps)",
        "ours",
        lambda: channel_conductance(model, batch, n_steps=STEPS),
        path=True,
    )


def test_captum_layer_conductance(benchmark) -> None:
    from captum.attr import LayerConductance

    model, batch, target = model_and_batch()
    baseline = -torch.ones_like(batch)
    run(
        benchmark,
        f"Captum LayerConductance ({STEPS} steps)",
        "peer",
        lambda: _captum_on_conv_head(
            model,
            LayerConductance,
            batch,
            baselines=baseline,
            additional_forward_args=(target,),
            n_steps=STEPS,
            method="riemann_trapezoid",
        ),
        path=True,
    )


def test_summary() -> None:
    """Print mean times relative to one forward+backward (run with -s)."""
    print_summary(GROUP, REFERENCE, images=1)
