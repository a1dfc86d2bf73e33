"""Messages that point the right way, and metrics that refuse a model with no classifier."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from timmlens import (
    GradientsDisabledError,
    ImageInputError,
    LabelNameError,
    LayerResolutionError,
    UnsupportedModelError,
)
from timmlens.interpretation import (
    AttentionVisualizer,
    GradCAM,
    IntegratedGradients,
    SmoothGrad,
)
from timmlens.interpretation.metrics import ExplanationMetrics
from timmlens.testing import explainable_model


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    return explainable_model("test_resnet")


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    return explainable_model("test_vit", img_size=64)


def inputs(size: int = 96, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- inference mode
@pytest.mark.parametrize("make", [GradCAM, lambda m: IntegratedGradients(m, n_steps=4), SmoothGrad])
def test_gradient_methods_under_inference_mode_say_they_need_gradients(cnn, make) -> None:
    explainer = make(cnn)
    with torch.inference_mode(), pytest.raises(GradientsDisabledError) as caught:
        explainer(inputs(), target_class=1)
    message = str(caught.value)
    assert "needs gradients" in message and "inference_mode" in message
    assert "layer" not in message.lower()  # it used to blame the layer
    assert isinstance(caught.value, RuntimeError)  # what the raw error was


def test_gradcam_layer_maps_and_class_rollout_also_refuse_inference_mode(cnn, vit) -> None:
    with torch.inference_mode():
        with pytest.raises(GradientsDisabledError, match="GradCAM needs gradients"):
            GradCAM(cnn).attribute_layer(inputs(), 1)
        with pytest.raises(GradientsDisabledError, match="class-specific attention rollout"):
            AttentionVisualizer(vit).attention_rollout(inputs(64), target_class=1)


def test_gradient_free_attention_works_under_inference_mode(vit) -> None:
    visualizer = AttentionVisualizer(vit)
    expected = visualizer.attention_rollout(inputs(64))
    with torch.inference_mode():
        rollout = visualizer.attention_rollout(inputs(64))
        maps = visualizer.get_attention_maps(inputs(64))
    assert torch.allclose(rollout, expected)
    assert len(maps) == len(visualizer.blocks)


def test_no_grad_around_a_gradient_method_is_fine(cnn) -> None:
    expected = GradCAM(cnn)(inputs(), target_class=1)
    with torch.no_grad():
        assert torch.allclose(GradCAM(cnn)(inputs(), target_class=1), expected)


# ------------------------------------------------------------------ input size
def test_vit_input_not_a_multiple_of_the_patch_size_reports_the_size(vit) -> None:
    odd = inputs(70, batch=1)
    for call in (
        lambda: GradCAM(vit)(odd),
        lambda: GradCAM(vit).attribute_layer(odd),
        lambda: AttentionVisualizer(vit).attention_rollout(odd),
        lambda: AttentionVisualizer(vit).get_attention_maps(odd),
    ):
        with pytest.raises(ImageInputError) as caught:
            call()
        message = str(caught.value)
        assert "70x70" in message and "divisible by patch size (16)" in message
        assert "did not run" not in message  # it used to blame the layer it recommended


def test_a_layer_that_really_did_not_run_is_still_named(cnn) -> None:
    # layer4 runs, but a module outside the forward path never does.
    cnn.add_module("unused", torch.nn.Conv2d(3, 3, 1))
    try:
        with pytest.raises(LayerResolutionError, match="did not run"):
            GradCAM(cnn, target_layer="unused")(inputs())
    finally:
        del cnn.unused


# --------------------------------------------------------------------- targets
def test_numpy_integer_targets_are_accepted(cnn) -> None:
    explainer = GradCAM(cnn)
    expected = explainer(inputs(), target_class=[5, 1])
    logits = np.array([[0, 0, 0, 0, 0, 9.0]])
    assert torch.allclose(explainer(inputs(), target_class=[logits.argmax(), 1]), expected)
    assert torch.allclose(explainer(inputs(), target_class=np.array([5, 1])), expected)
    assert torch.allclose(explainer(inputs(), target_class=[np.int64(5), np.int32(1)]), expected)
    single = explainer(inputs(batch=1)[0], target_class=np.int64(5))
    assert torch.allclose(single, explainer(inputs(batch=1)[0], target_class=5))
    with pytest.raises(ValueError, match="integers"):
        explainer(inputs(), target_class=np.array([5.0, 1.0]))
    with pytest.raises(ValueError, match=r"valid classes are 0\.\.999"):
        explainer(inputs(), target_class=[np.int64(1000), 1])


def test_string_targets_are_class_names(cnn) -> None:
    explainer = GradCAM(cnn)  # a 1000-class model: ImageNet names apply
    by_index = explainer(inputs(), target_class=281)
    assert torch.allclose(explainer(inputs(), target_class="tabby"), by_index)
    assert torch.allclose(explainer(inputs(), target_class=["n02123045", 281]), by_index)
    with pytest.raises(LabelNameError, match=r"target_class: 'tabbby' is not a class.*'tabby'"):
        explainer(inputs(), target_class="tabbby")
    metrics = ExplanationMetrics(cnn, steps=4)
    heatmap = torch.rand(2, 96, 96)
    named = metrics.deletion(inputs(), heatmap, target_class="tabby")
    assert named.targets.tolist() == [281, 281]


def test_string_target_on_a_model_without_names_is_a_clear_error() -> None:
    model = explainable_model("test_resnet", num_classes=10)
    with pytest.raises(LabelNameError, match=r"'cat' is not a class.*class indices 0\.\.9"):
        GradCAM(model)(inputs(), target_class="cat")


def test_target_layer_of_the_wrong_type(cnn) -> None:
    with pytest.raises(LayerResolutionError, match=r"got int 123.*layer4"):
        GradCAM(cnn, target_layer=123)
    with pytest.raises(LayerResolutionError, match="got float"):
        GradCAM(cnn, target_layer=4.0)


# ------------------------------------------------------------- headless models
def test_metrics_refuse_a_model_without_classifier() -> None:
    headless = timm.create_model("test_resnet", num_classes=0)
    with pytest.raises(UnsupportedModelError, match="has no classifier") as caught:
        ExplanationMetrics(headless)
    with pytest.raises(UnsupportedModelError) as from_explainer:
        GradCAM(headless)(inputs())
    assert str(caught.value) == str(from_explainer.value)  # the explainers' message


def test_metrics_still_accept_a_plain_logit_module() -> None:
    # Not a timm model, no num_classes attribute: its (B, K) output is taken as logits.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
    result = ExplanationMetrics(model, steps=4).deletion(torch.randn(1, 3, 8, 8), torch.rand(8, 8))
    assert np.isfinite(float(result))


def test_quick_explain_takes_class_names_and_numpy_indices(cnn) -> None:
    from timmlens.interpretation import quick_explain

    picture = np.random.default_rng(0).integers(0, 256, (80, 90, 3), dtype=np.uint8)
    named = quick_explain(cnn, picture, save_path=None, target_class="tabby")
    indexed = quick_explain(cnn, picture, save_path=None, target_class=np.int64(281))
    assert named.target_class == indexed.target_class == 281
    assert torch.allclose(named.heatmap, indexed.heatmap)
    with pytest.raises(LabelNameError, match="tabbby"):
        quick_explain(cnn, picture, save_path=None, target_class="tabbby")


def test_bytes_are_not_a_list_of_class_indices(cnn) -> None:
    with pytest.raises(ValueError, match="got bytes"):
        GradCAM(cnn)(inputs(), target_class=b"ab")
