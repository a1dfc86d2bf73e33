"""Any classifier, the way people hold it: torchvision and plain CNNs, torch.compile,
Sequential / DataParallel wrappers, and ``with GradCAM(model) as cam:``."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from timmlens import ImageClassifier, get_adapter
from timmlens.errors import LayerResolutionError
from timmlens.interpretation import GradCAM, create_explainer, quick_explain
from timmlens.interpretation.base import num_outputs
from timmlens.models.wrappers import CompiledModelWarning
from timmlens.testing import explainable_model

SIZE = 96  # resnet18's layer4 is 3x3 here


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def hand_written_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Selvaraju et al.: ReLU(sum_k mean(dy_c/dA_k) A_k), bilinear to the input, min-max."""
    kept: dict[str, torch.Tensor] = {}

    def keep(_m: nn.Module, _a: object, out: torch.Tensor) -> None:
        out.retain_grad()
        kept["A"] = out

    handle = layer.register_forward_hook(keep)
    try:
        logits = model(x)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    activations, gradients = kept["A"].detach(), kept["A"].grad
    cam = (gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(1).clamp_min(0)
    cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    flat = cam[:, 0].flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (cam[:, 0] - low) / (high - low)


def hook_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks))
        for name, m in model.named_modules()
    }


# ------------------------------------------------------------ torchvision, plain CNNs
def test_torchvision_resnet18_gradcam_equals_a_hand_written_one_on_layer4(
    resnet18: nn.Module, inputs: torch.Tensor
) -> None:
    adapter = get_adapter(resnet18)
    assert adapter.default_layer == "layer4"
    assert "traced one forward" in adapter.default_layer_reason
    assert num_outputs(resnet18) == 1000
    ours = GradCAM(resnet18)(inputs)
    reference = hand_written_gradcam(resnet18, resnet18.layer4, inputs.clone())
    assert ours.shape == (2, SIZE, SIZE)
    assert reference.std() > 0.1  # a real, non-constant map
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in resnet18.parameters())


def test_image_classifier_wraps_a_torchvision_model(resnet18, inputs) -> None:
    wrapped = ImageClassifier(resnet18)
    assert wrapped.num_classes == 1000
    assert get_adapter(wrapped).default_layer == "backbone.layer4"
    torch.testing.assert_close(GradCAM(wrapped)(inputs), GradCAM(resnet18)(inputs))


def test_another_torchvision_family_finds_its_last_spatial_stage() -> None:
    mobilenet = torchvision.models.mobilenet_v3_small(weights=None)
    assert get_adapter(mobilenet).default_layer == "features"  # avgpool, classifier follow


class PlainCNN(nn.Module):
    """A hand-written CNN: a shared ReLU (called twice), functional pooling, no num_classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.classify = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.classify(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_a_plain_cnn_is_explained_at_its_last_conv(inputs) -> None:
    torch.manual_seed(0)
    model = PlainCNN().eval()
    assert get_adapter(model).default_layer == "conv2"  # not the shared ReLU
    assert num_outputs(model) == 5
    torch.testing.assert_close(
        GradCAM(model)(inputs), hand_written_gradcam(model, model.conv2, inputs.clone())
    )


def test_a_token_model_without_timm_facts_asks_for_a_layer() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 16, stride=16)
            self.mix = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.mix(self.embed(x).flatten(2).transpose(1, 2))
            return self.head(tokens.mean(1))

    with pytest.raises(LayerResolutionError, match=r"'embed', is followed by token layers"):
        GradCAM(Tokens())


# ------------------------------------------------------------------- wrappers
def test_a_compiled_model_is_explained_through_its_original_module(resnet18, inputs) -> None:
    compiled = torch.compile(resnet18, backend="eager")
    with pytest.warns(CompiledModelWarning, match=r"explains the original ResNet") as caught:
        explainer = GradCAM(compiled)
    assert caught[0].filename == __file__  # the warning points at this line, not timmlens
    assert explainer.model is resnet18
    torch.testing.assert_close(explainer(inputs), GradCAM(resnet18)(inputs))
    with pytest.warns(CompiledModelWarning):
        result = quick_explain(compiled, inputs[0], save_path=None)
    assert result.heatmap.shape == (SIZE, SIZE)


def test_data_parallel_and_sequential_wrappers(resnet18, inputs) -> None:
    expected = GradCAM(resnet18)(inputs)
    parallel = nn.DataParallel(resnet18)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DataParallel is unwrapped silently
        torch.testing.assert_close(GradCAM(parallel)(inputs), expected)
    sequential = nn.Sequential(nn.Identity(), resnet18)
    assert get_adapter(sequential).default_layer == "1.layer4"
    torch.testing.assert_close(GradCAM(sequential)(inputs), expected)


def test_a_timm_model_in_a_sequential_keeps_its_adapter() -> None:
    timm_model = explainable_model("test_vit", num_classes=4, img_size=32)
    bare = get_adapter(timm_model)
    wrapped = get_adapter(nn.Sequential(nn.Identity(), timm_model))
    assert wrapped.is_timm and wrapped.prefix == "1."
    assert wrapped.default_layer == f"1.{bare.default_layer}"  # the class-token rule
    assert [b.name for b in wrapped.attention_blocks] == [
        f"1.{b.name}" for b in bare.attention_blocks
    ]


# ----------------------------------------------------------- context manager
def test_with_block_keeps_hooks_between_calls_and_removes_them_after(resnet18, inputs) -> None:
    before = hook_counts(resnet18)
    outside = GradCAM(resnet18)(inputs)
    assert hook_counts(resnet18) == before  # a call outside a block leaves nothing
    with GradCAM(resnet18) as cam:
        during = hook_counts(resnet18)
        assert during["layer4"][0] == before["layer4"][0] + 1  # the tap
        assert during[""][1] == before[""][1] + 1  # its input-size pre-hook
        first = cam(inputs)
        assert hook_counts(resnet18) == during  # the same hooks serve every call
        second = cam(inputs[:1])
        with cam:  # nested: one set of taps
            assert hook_counts(resnet18) == during
        assert hook_counts(resnet18) == during
    assert hook_counts(resnet18) == before
    torch.testing.assert_close(first, outside)
    torch.testing.assert_close(second[0], outside[0])


def test_with_block_removes_hooks_after_an_error(resnet18, inputs) -> None:
    before = hook_counts(resnet18)
    with (
        pytest.raises(ValueError, match="out of range"),
        create_explainer("gradcam", resnet18) as cam,
    ):
        cam(inputs, target_class=5000)
    assert hook_counts(resnet18) == before


def test_with_block_and_another_thread_share_a_model(resnet18, inputs) -> None:
    before = hook_counts(resnet18)
    expected = GradCAM(resnet18, target_layer="layer3")(inputs)
    results: list[torch.Tensor] = []
    with GradCAM(resnet18) as cam:
        worker = threading.Thread(
            target=lambda: results.append(GradCAM(resnet18, target_layer="layer3")(inputs))
        )
        worker.start()
        cam(inputs)
        worker.join()
    torch.testing.assert_close(results[0], expected)
    assert hook_counts(resnet18) == before


def test_library_warnings_point_at_the_callers_line() -> None:
    from timmlens import load_model
    from timmlens.models import RandomWeightsWarning, UntrainedHeadWarning

    with pytest.warns(RandomWeightsWarning) as random_weights:
        model = load_model("test_resnet")
    with pytest.warns(UntrainedHeadWarning) as new_head:
        ImageClassifier(model.backbone, num_classes=3)
    assert random_weights[0].filename == new_head[0].filename == __file__
