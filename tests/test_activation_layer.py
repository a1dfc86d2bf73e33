"""Gradient-free CAMs read the post-activation layer: EfficientNet's ``bn2``, not ``conv_head``.

``conv_head`` is a bare convolution; its output is pre-BatchNorm and signed (70% negative
on chelsea with the real Lite0). Gradient CAMs weight it by signed gradients and are
fine; ScoreCAM's positive softmax weights turn it into an all-negative map that the ReLU
zeroes (a constant heatmap), and EigenCAM's components follow the unnormalised channel
scales. The rule (``adapter.activation_layer``): a conv default layer followed by a
norm with an activation gives way to that norm-activation module.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from timmlens.adapters import get_adapter
from timmlens.interpretation import create_explainer
from timmlens.testing import explainable_model

GRADIENT_FREE = ("scorecam", "ablationcam", "eigencam", "randomcam")


@pytest.mark.parametrize(
    ("name", "default", "activation"),
    [
        ("test_efficientnet", "conv_head", "bn2"),
        ("mobilenetv2_050", "conv_head", "bn2"),
        ("test_resnet", "layer4", "layer4"),
        ("test_convnext", "stages.3", "stages.3"),
        ("test_vit", "blocks.-1.norm1", "blocks.-1.norm1"),
    ],
)
def test_the_rule_across_families(name, default, activation):
    model = explainable_model(name, num_classes=10)
    adapter = get_adapter(model)
    resolve = adapter.resolve_layers
    assert adapter.default_layer == resolve(default)[0].name
    assert adapter.activation_layer == resolve(activation)[0].name
    for method in GRADIENT_FREE:
        assert create_explainer(method, model).layer_names == [adapter.activation_layer]
    for method in ("gradcam", "gradcampp", "layercam", "eigengradcam"):
        assert create_explainer(method, model).layer_names == [adapter.default_layer]
    # an explicit layer is taken as given
    assert create_explainer("scorecam", model, target_layer=default).layer_names == [
        adapter.default_layer
    ]


@pytest.fixture(scope="module")
def chelsea(real_model, photos):
    """Chelsea as the real model sees it (224 px), with GradCAM's map at the default
    ``conv_head`` as the reference."""
    inputs = create_explainer("gradcam", real_model).prepare(photos["chelsea"]).tensor
    gradcam = create_explainer("gradcam", real_model).explain(inputs)[0]
    return inputs, gradcam


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).correlation)


def test_real_efficientnet_conv_head_is_pre_activation(real_model, chelsea):
    inputs, _ = chelsea
    outputs = {}
    hooks = [
        real_model.get_submodule(name).register_forward_hook(
            lambda _m, _a, out, name=name: outputs.__setitem__(name, out.detach())
        )
        for name in ("backbone.conv_head", "backbone.bn2")
    ]
    with torch.no_grad():
        real_model(inputs)
    for hook in hooks:
        hook.remove()
    head, bn2 = outputs["backbone.conv_head"], outputs["backbone.bn2"]
    assert (head < 0).float().mean() > 0.5  # mostly negative: pre-BN
    assert head.mean(dim=1).max() < 0  # the channel average is negative everywhere
    assert bn2.min() >= 0  # ReLU6 after BN
    assert get_adapter(real_model).activation_layer == "backbone.bn2"


# 1 + 2 x 1280 forwards of the real model at 224 px (minutes on 2 CPU cores); the cheap
# tests above check the cause and the rule, `make test-all` (CI) runs this one too.
@pytest.mark.slow
def test_real_efficientnet_scorecam_finds_the_cat(real_model, chelsea):
    """At ``conv_head`` ScoreCAM's map is constant; at the post-activation default it is
    not, and it ranks pixels as GradCAM does."""
    inputs, gradcam = chelsea
    at_head = create_explainer("scorecam", real_model, target_layer="conv_head", max_batch=320)
    assert at_head.explain(inputs).std() == 0  # the ReLU of an all-negative map
    default = create_explainer("scorecam", real_model, max_batch=320)
    heatmap = default.explain(inputs)[0]
    assert heatmap.std() > 0.1
    assert _spearman(heatmap, gradcam) > 0.3


def test_real_efficientnet_eigencam_follows_the_rule(real_model, chelsea):
    inputs, gradcam = chelsea
    at_head = create_explainer("eigencam", real_model, target_layer="conv_head").explain(inputs)
    default = create_explainer("eigencam", real_model).explain(inputs)
    assert _spearman(default, gradcam) > _spearman(at_head, gradcam)
