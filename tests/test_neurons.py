"""Neuron and layer attributions through the adapter (timmlens.analysis.neurons).

Reference: Captum's ``NeuronConductance``, ``NeuronGradient``,
``NeuronIntegratedGradients`` and ``LayerConductance`` called directly on the same model
and layer (a CNN, whose layer output is already NCHW, so the spatial tap is the layer).
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    LayerConductance,
    NeuronConductance,
    NeuronGradient,
    NeuronIntegratedGradients,
)

from timmlens import ChannelIndexError, TargetError
from timmlens.analysis import channel_attribution, channel_conductance
from timmlens.interpretation._targets import TargetScore
from timmlens.testing import explainable_model

STEPS = 4
CHANNEL = 30


@pytest.fixture(scope="module")
def cnn():
    """``test_resnet`` (10 classes): at 64 px its default layer ``layer4`` is 96 x 2 x 2.

    Channel 30 is active at every position on the test inputs (0.8 to 2.1), so the
    attributions compared below are not trivially zero.
    """
    return explainable_model("test_resnet", seed=0, num_classes=10)


@pytest.fixture(scope="module")
def inputs():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def baselines(inputs):
    """A tensor baseline, so Captum and timmlens start the path at the same point."""
    return torch.randn(inputs.shape, generator=torch.Generator().manual_seed(1)) * 0.1


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max())


def test_whole_channel_conductance_is_captum_summed_over_the_channel_neurons(
    cnn, inputs, baselines
):
    ours = channel_attribution(cnn, inputs, CHANNEL, n_steps=STEPS, baseline=baselines)
    assert ours.layer == "layer4" and ours.grid == (2, 2) and ours.num_channels == 96
    targets = cnn(inputs).argmax(1)
    assert torch.equal(ours.targets, targets)
    captum = NeuronConductance(TargetScore(cnn), cnn.layer4)
    reference = sum(
        captum.attribute(
            inputs,
            (CHANNEL, u, v),
            baselines=baselines,
            additional_forward_args=(targets,),
            n_steps=STEPS,
        )
        for u in range(2)
        for v in range(2)
    )
    assert ours.attributions.shape == (2, 3, 64, 64)
    assert _maxdiff(ours.attributions, reference) < 1e-5 * reference.abs().max()


@pytest.mark.parametrize("method", ["conductance", "gradient", "integrated_gradients"])
def test_one_neuron_equals_captum_called_directly(cnn, inputs, baselines, method):
    ours = channel_attribution(
        cnn,
        inputs,
        CHANNEL,
        method=method,
        position=(1, 0),
        target_class=3,
        n_steps=STEPS,
        baseline=baselines,
    )
    if method == "conductance":
        reference = NeuronConductance(TargetScore(cnn), cnn.layer4).attribute(
            inputs,
            (CHANNEL, 1, 0),
            baselines=baselines,
            additional_forward_args=(torch.tensor([3, 3]),),
            n_steps=STEPS,
        )
    elif method == "gradient":
        reference = NeuronGradient(cnn, cnn.layer4).attribute(
            inputs.clone().requires_grad_(), (CHANNEL, 1, 0)
        )
    else:
        reference = NeuronIntegratedGradients(cnn, cnn.layer4).attribute(
            inputs, (CHANNEL, 1, 0), baselines=baselines, n_steps=STEPS, method="riemann_trapezoid"
        )
    assert _maxdiff(ours.attributions, reference) <= 1e-6 * max(1.0, reference.abs().max())
    assert ours.targets is None if method != "conductance" else ours.targets.tolist() == [3, 3]


def test_whole_channel_gradient_is_captums_slice_selector(cnn, inputs):
    ours = channel_attribution(cnn, inputs, CHANNEL, method="gradient")
    reference = NeuronGradient(cnn, cnn.layer4).attribute(
        inputs.clone().requires_grad_(), (CHANNEL, slice(None), slice(None))
    )
    assert _maxdiff(ours.attributions, reference) <= 1e-6 * max(1.0, reference.abs().max())
    assert ours.heatmap.shape == (2, 64, 64)
    assert float(ours.heatmap.min()) == 0.0 and float(ours.heatmap.max()) == 1.0


def test_layer_conductance_equals_captum_and_is_complete(cnn, inputs, baselines):
    ours = channel_conductance(cnn, inputs, target_class=[1, 4], n_steps=STEPS, baseline=baselines)
    targets = torch.tensor([1, 4])
    reference, delta = LayerConductance(TargetScore(cnn), cnn.layer4).attribute(
        inputs,
        baselines=baselines,
        additional_forward_args=(targets,),
        n_steps=STEPS,
        method="riemann_trapezoid",
        return_convergence_delta=True,
    )
    assert ours.conductance.shape == (2, 96, 2, 2)
    assert _maxdiff(ours.conductance, reference) <= 1e-6 * max(1.0, reference.abs().max())
    assert torch.allclose(ours.channel_totals, reference.sum(dim=(2, 3)))
    top = reference.sum(dim=(2, 3)).topk(5, dim=1).indices
    assert torch.equal(ours.top_channels, top)
    assert torch.equal(ours.top_scores, ours.channel_totals.gather(1, top))
    # completeness: layer4 is a cut of the network, and the trapezoid path ends exactly
    # at the baseline and the input, so the finite differences telescope
    logits = cnn(torch.cat([inputs, baselines])).detach()
    change = (
        logits[:2].gather(1, targets[:, None])[:, 0] - logits[2:].gather(1, targets[:, None])[:, 0]
    )
    assert torch.allclose(ours.conductance.sum(dim=(1, 2, 3)), change, atol=1e-4)
    assert torch.allclose(ours.convergence_delta, delta, atol=1e-5)
    assert ours.heatmap.shape == (2, 64, 64)


def test_channel_conductance_pixels_add_up_to_the_channel_total(cnn, inputs, baselines):
    """Completeness of the whole-channel conductance: the pixels' sum approaches the
    channel's layer conductance. Here the layer side is exact at any step count (the head
    after layer4 is linear, so dF/dA is constant along the path); the pixel side is a
    Riemann sum of a curved path (0.7% off at 64 steps, 3.5% at 32)."""
    pixels = channel_attribution(cnn, inputs[:1], CHANNEL, n_steps=64, baseline=baselines[:1])
    layer = channel_conductance(cnn, inputs[:1], n_steps=64, baseline=baselines[:1])
    total = layer.channel_totals[:, CHANNEL]
    assert torch.allclose(pixels.attributions.sum(dim=(1, 2, 3)), total, rtol=0.03, atol=0)


def test_chunked_paths_equal_one_pass(cnn, inputs, baselines):
    """A tiny memory budget splits the path points; the sums are the same."""
    whole = channel_attribution(cnn, inputs, CHANNEL, n_steps=STEPS, baseline=baselines)
    parts = channel_attribution(
        cnn, inputs, CHANNEL, n_steps=STEPS, baseline=baselines, memory_budget_bytes=1
    )
    assert _maxdiff(whole.attributions, parts.attributions) < 1e-6
    layer = channel_conductance(cnn, inputs, n_steps=STEPS, baseline=baselines)
    chunked = channel_conductance(
        cnn, inputs, n_steps=STEPS, baseline=baselines, memory_budget_bytes=1
    )
    assert _maxdiff(layer.conductance, chunked.conductance) < 1e-6


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "layer"),
    [
        ("test_vit", {"img_size": 32}, 32, "blocks.5.norm1"),  # tokens with a class token
        (  # channels-last stages, shrunk to two one-block stages
            "swin_tiny_patch4_window7_224",
            {
                "img_size": 64,
                "window_size": 2,
                "embed_dim": 24,
                "depths": (1, 1),
                "num_heads": (1, 2),
            },
            64,
            "layers.1",
        ),
    ],
)
def test_zero_configuration_on_token_and_channels_last_models(name, kwargs, size, layer):
    model = explainable_model(name, seed=0, num_classes=10, **kwargs)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    for method in ("conductance", "gradient"):
        result = channel_attribution(model, images, 2, method=method, n_steps=2)
        assert result.layer == layer
        assert result.attributions.shape == (2, 3, size, size)
        assert result.heatmap.shape == (2, size, size)
        assert result.attributions.abs().sum() > 0
    ranking = channel_conductance(model, images, n_steps=2, top_k=3)
    assert ranking.conductance.shape[:2] == (2, result.num_channels)
    assert ranking.conductance.shape[2:] == result.grid
    assert ranking.top_channels.shape == (2, 3)


def test_a_vit_channel_is_its_feature_over_the_patch_tokens():
    """Through the token tap a ViT channel is feature ``c`` of the patch tokens (the class
    token dropped): the whole-channel gradient is that sum's input gradient."""
    model = explainable_model("test_vit", seed=0, num_classes=10, img_size=32)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = channel_attribution(model, images, 2, method="gradient")
    assert ours.layer == "blocks.5.norm1"
    outputs = []
    handle = model.blocks[5].norm1.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    try:
        x = images.clone().requires_grad_()
        model(x)
    finally:
        handle.remove()
    tokens = outputs[0][:, model.num_prefix_tokens :, 2]  # (B, h * w) patch tokens, feature 2
    assert tokens.shape[1] == ours.grid[0] * ours.grid[1]
    (reference,) = torch.autograd.grad(tokens.sum(), x)
    assert _maxdiff(ours.attributions, reference) <= 1e-6 * max(1.0, reference.abs().max())


def test_a_channel_out_of_range_names_the_channel_count(cnn, inputs):
    with pytest.raises(ChannelIndexError) as caught:
        channel_attribution(cnn, inputs, 96, method="gradient")
    assert str(caught.value) == (
        "channel 96 is not a channel of layer layer4, which has 96 channels (valid: 0 to "
        "95). Rank them with channel_conductance() and pick one of its top_channels."
    )
    with pytest.raises(ChannelIndexError, match=r"position \(2, 0\) is not on the 2x2 grid"):
        channel_attribution(cnn, inputs, 0, method="gradient", position=(2, 0))


def test_a_bad_method_lists_the_methods(cnn, inputs):
    with pytest.raises(ValueError) as caught:
        channel_attribution(cnn, inputs, 0, method="deeplift")
    assert str(caught.value) == (
        "unknown neuron attribution method 'deeplift'; expected one of conductance, gradient, "
        "integrated_gradients. 'conductance' explains a class through the channel; "
        "'gradient' is the fast look at what excites it."
    )
    with pytest.raises(ValueError, match="unknown quadrature 'simpson'"):
        channel_conductance(cnn, inputs, quadrature="simpson")
    with pytest.raises(TargetError, match="a callable target is not supported here"):
        channel_conductance(cnn, inputs, target_class=lambda z: z[:, 0])


def test_the_model_is_left_as_found(inputs):
    model = explainable_model("test_resnet", seed=0, num_classes=10).train()
    model.fc.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    channel_attribution(model, inputs, 1, n_steps=2)
    channel_conductance(model, inputs, n_steps=2)
    assert all(module.training for module in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())
