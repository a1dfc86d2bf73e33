"""Issue 17's bad inputs: each error names the method, the family and an alternative.

(A callable target of the wrong shape: ``tests/test_callable_targets.py``.)
"""

from __future__ import annotations

from functools import cache

import pytest
import timm
import torch
from torch import nn

from timmlens.errors import LayerResolutionError, UnsupportedModelError
from timmlens.interpretation import create_explainer
from timmlens.testing import explainable_model


class FlatClassifier(nn.Module):
    """A classifier without any spatial layer: flatten, then two linear layers."""

    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(3 * 16 * 16, 8)
        self.fc2 = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(self.flat(x)).relu())


@cache
def _model(key: str) -> nn.Module:
    if key == "swin":  # a small Swin: windowed attention, the smallest that timm builds
        return timm.create_model(
            "swin_tiny_patch4_window7_224",
            num_classes=10,
            img_size=56,
            embed_dim=24,
            depths=(1, 1, 1, 1),
            num_heads=(1, 1, 1, 1),
            window_size=7,
        ).eval()
    name, kwargs = {
        "cnn": ("test_resnet", {}),
        "convnext": ("test_convnext", {}),
        "vit": ("test_vit", {"img_size": 32}),
    }[key]
    return explainable_model(name, num_classes=10, **kwargs)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "eigencam", "guidedgradcam"])
def test_a_layer_method_without_a_spatial_layer(method: str) -> None:
    with pytest.raises(
        LayerResolutionError,
        match=rf"^{method} \(family '[^']+'\): FlatClassifier: .*no default CAM layer.* 'ig', "
        rf"'saliency' or 'occlusion'",
    ):
        create_explainer(method, FlatClassifier())


def test_a_named_layer_without_a_spatial_map() -> None:
    explainer = create_explainer("gradcam", FlatClassifier(), target_layer="fc1")
    with pytest.raises(
        LayerResolutionError,
        match=r"^gradcam \(family '[^']+'\): Layer 'fc1' outputs shape \(1, 8\), which has no "
        r"spatial grid .* 'ig', 'saliency' or 'occlusion'",
    ):
        explainer.explain(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("method", ["rollout", "chefer", "legrad"])
@pytest.mark.parametrize(
    ("key", "family", "why"),
    [
        ("cnn", "resnet", "has no attention layers"),
        ("swin", "swin_transformer", "has windowed attention"),
    ],
)
def test_an_attention_method_on_a_cnn_or_swin(method: str, key: str, family: str, why: str) -> None:
    with pytest.raises(
        UnsupportedModelError, match=rf"^{method}: \S+ \({family}\) {why}.* Use GradCAM"
    ):
        create_explainer(method, _model(key))


@pytest.mark.parametrize(
    ("method", "key", "family", "modules", "alternative"),
    [
        ("lrp", "vit", "vision_transformer", r"Attention \(x\d+\), Block \(x\d+\)", "'ig'"),
        ("deeplift", "vit", "vision_transformer", r"GELU \(x\d+\), LayerNorm", "'ig'"),
        ("deepliftshap", "convnext", "convnext", r"GELUTanh \(x\d+\), LayerNorm", "'ig'"),
    ],
)
def test_relevance_rules_on_unsupported_modules(
    method: str, key: str, family: str, modules: str, alternative: str
) -> None:
    with pytest.raises(
        UnsupportedModelError,
        match=rf"^{method}: \S+ \(family '{family}'\) is not covered: .*{modules}.*"
        rf"Try {alternative}",
    ):
        create_explainer(method, _model(key))  # refused when made, before any forward
