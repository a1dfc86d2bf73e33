"""Deep feature factorization against pytorch-grad-cam's own ``dff``, on the same activations.

The real ImageNet EfficientNet-Lite0 on scikit-image photos and tiny random timm models
(CNN, ViT, Swin/NHWC) at 32-64 px; the factorization must equal pytorch-grad-cam's.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch
from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (
    DeepFeatureFactorization,
    dff,
)

from test_concurrency import assert_same_state, model_state
from timmlens import ConceptInputError, ConceptLabelError, OptionalDependencyError
from timmlens.analysis import (
    concept_class_scores,
    deep_feature_factorization,
    factorize_activations,
    layer_activations,
    shift_nonnegative,
)
from timmlens.data import prepare_images
from timmlens.errors import LayerResolutionError
from timmlens.testing import explainable_model

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def real_batch(real_model, photos):
    """chelsea and coffee, preprocessed for the real EfficientNet-Lite0 (224 px)."""
    return prepare_images([photos["chelsea"], photos["coffee"]], real_model).tensor


@pytest.fixture(scope="module")
def vit_avg() -> torch.nn.Module:
    """vit_tiny at 64 px with average pooling (its head reads the mean of the patch tokens)."""
    return explainable_model("vit_tiny_patch16_224", num_classes=10, img_size=64, global_pool="avg")


def _pgc_dff(activations: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-grad-cam's dff on a copy (it writes into its input)."""
    return dff(activations.cpu().numpy().copy(), n_components=k)


# ------------------------------------------------------------ equality with pytorch-grad-cam
@pytest.mark.parametrize("k", [2, 5])
def test_concepts_and_maps_equal_pgc_dff_on_a_small_cnn(small, k) -> None:
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    activations = layer_activations(small, x).activations
    concepts, explanations = _pgc_dff(activations, k)
    ours = factorize_activations(activations, k)
    assert np.abs(ours.concepts.numpy() - concepts.T).max() == 0.0
    assert np.abs(ours.loadings.numpy() - explanations).max() == 0.0


@pytest.fixture(scope="module")
def conv_head_activations(real_model, real_batch) -> torch.Tensor:
    """The real model's conv_head output (before its norm): mostly negative."""
    return layer_activations(real_model, real_batch, "backbone.conv_head").activations


@pytest.fixture(scope="module")
def real_result(real_model, real_batch):
    """DFF with 4 concepts at the default layer (bn2, after conv_head's norm and ReLU6)."""
    return deep_feature_factorization(real_model, real_batch, n_concepts=4, top_k=3)


def test_signed_real_activations_equal_pgc_dff(conv_head_activations) -> None:
    # conv_head is signed, which exercises the shift; still equal to the last bit.
    assert (conv_head_activations < 0).float().mean() > 0.5
    concepts, explanations = _pgc_dff(conv_head_activations, 4)
    ours = factorize_activations(conv_head_activations, 4)
    assert np.abs(ours.concepts.numpy() - concepts.T).max() == 0.0
    assert np.abs(ours.loadings.numpy() - explanations).max() == 0.0


def test_full_call_equals_pgc_deep_feature_factorization(real_model, real_batch, real_result):
    backbone = real_model.backbone
    pgc = DeepFeatureFactorization(
        real_model, target_layer=backbone.bn2, computation_on_concepts=backbone.classifier
    )
    try:
        concepts, explanations, concept_outputs = pgc(real_batch, n_components=4)
    finally:
        pgc.activations_and_grads.release()  # its hooks would stay on the shared model
    ours = real_result
    assert ours.layer == "backbone.bn2"  # the default: the norm + ReLU6 after conv_head
    assert np.abs(ours.concepts.numpy() - concepts.T).max() == 0.0
    # its classifier-on-concepts outputs are our class scores
    assert ours.class_scores is not None
    assert np.abs(ours.class_scores.numpy() - concept_outputs).max() < 1e-4
    # its explanations: each map min-max scaled at 7x7, then resized to 224 (cv2 bilinear)
    assert np.abs(ours.normalized_maps().numpy() - np.stack(explanations)).max() < 1e-4
    assert ours.maps.shape == (2, 4, 224, 224)


def test_real_model_concepts_name_the_photos(real_result) -> None:
    assert real_result.labels_unavailable_reason is None
    assert real_result.top_classes is not None and real_result.top_classes.shape == (4, 3)
    names = {name for labels in real_result.top_labels for name in labels}
    assert "Egyptian cat" in names or "tabby" in names
    assert "espresso" in names or "cup" in names


# ------------------------------------------------------------ properties
def test_reconstruction_error_decreases_as_k_grows(conv_head_activations) -> None:
    errors = [factorize_activations(conv_head_activations, k).relative_error for k in (1, 2, 4, 8)]
    assert all(later < earlier for earlier, later in itertools.pairwise(errors))
    assert 0 < errors[-1] < errors[0] < 1


def test_shift_makes_each_channel_start_at_zero() -> None:
    activations = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0)) - 0.5
    matrix, offset = shift_nonnegative(activations)
    assert matrix.shape == (5, 2 * 3 * 4)
    assert torch.equal(matrix.min(dim=1).values, torch.zeros(5))
    assert torch.allclose(offset, activations.transpose(0, 1).flatten(1).min(dim=1).values)
    # column b*h*w + i*w + j is position (i, j) of image b
    assert torch.allclose(matrix[:, 1 * 12 + 2 * 4 + 3] + offset, activations[1, :, 2, 3])


@pytest.mark.parametrize(
    ("name", "kwargs", "layer_grid"),
    [
        ("test_resnet", {}, (2, 2)),
        (
            "swin_tiny_patch4_window7_224",
            {
                "img_size": 64,
                "window_size": 2,
                "embed_dim": 32,
                "depths": (1, 1, 1, 1),
                "num_heads": (1, 1, 2, 2),
            },
            (2, 2),
        ),
    ],
)
def test_maps_come_out_at_input_resolution(name, kwargs, layer_grid) -> None:
    model = explainable_model(name, num_classes=10, **kwargs)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = deep_feature_factorization(model, x, n_concepts=3)
    assert result.low_res_maps.shape == (2, 3, *layer_grid)
    assert result.maps.shape == (2, 3, 64, 64)
    assert result.normalized_maps().shape == (2, 3, 64, 64)
    assert (result.maps >= 0).all()


def test_vit_maps_come_out_at_input_resolution(vit_avg) -> None:
    # the class token is dropped: 16 patch tokens of 64 px / 16 px patches, a 4x4 grid
    result = deep_feature_factorization(vit_avg, torch.randn(2, 3, 64, 64), n_concepts=3)
    assert result.low_res_maps.shape == (2, 3, 4, 4)
    assert result.maps.shape == (2, 3, 64, 64)
    assert result.labels_unavailable_reason is None
    assert result.layer == "blocks.11"


def test_class_scores_are_the_resnet_fc_by_hand(small) -> None:
    concepts = torch.rand(4, small.fc.in_features, generator=torch.Generator().manual_seed(0))
    expected = concepts @ small.fc.weight.T + small.fc.bias
    assert torch.allclose(concept_class_scores(small, concepts), expected, atol=1e-6)


def test_class_scores_are_the_vit_head_after_fc_norm_by_hand(vit_avg) -> None:
    concepts = torch.rand(4, 192, generator=torch.Generator().manual_seed(0))
    norm = vit_avg.fc_norm
    mean = concepts.mean(dim=1, keepdim=True)
    var = concepts.var(dim=1, unbiased=False, keepdim=True)
    normed = (concepts - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    expected = normed @ vit_avg.head.weight.T + vit_avg.head.bias
    assert torch.allclose(concept_class_scores(vit_avg, concepts), expected, atol=1e-5)


def test_class_token_vit_says_why_concepts_have_no_classes() -> None:
    model = explainable_model("test_vit", num_classes=10, img_size=32)
    result = deep_feature_factorization(model, torch.randn(2, 3, 32, 32), n_concepts=2)
    assert result.class_scores is None and result.top_labels == []
    assert result.labels_unavailable_reason is not None
    assert "reads the class token" in result.labels_unavailable_reason


def test_headless_model_has_activations_but_no_labels() -> None:
    model = explainable_model("test_resnet", num_classes=0)
    x = torch.randn(1, 3, 64, 64)
    assert layer_activations(model, x).logits is None
    result = deep_feature_factorization(model, x, n_concepts=2)
    assert result.labels_unavailable_reason == (
        "the model has no classifier (num_classes=0), so concepts have no classes"
    )


def test_model_left_as_found() -> None:
    model = explainable_model("test_resnet", num_classes=10).train()
    before = model_state(model)
    deep_feature_factorization(model, torch.randn(2, 3, 64, 64), n_concepts=2)
    assert_same_state(before, model_state(model))


def test_images_as_pictures(small, photos) -> None:
    result = deep_feature_factorization(small, photos["chelsea"], n_concepts=2)
    assert result.maps.shape[:2] == (1, 2)


# ------------------------------------------------------------ errors
def test_too_many_concepts(small) -> None:
    with pytest.raises(ConceptInputError) as info:
        deep_feature_factorization(small, torch.randn(1, 3, 64, 64), n_concepts=97)
    assert str(info.value) == (
        "n_concepts=97 is more than the 96 channels of layer 'layer4'; NMF finds at most one "
        "concept per channel. Use n_concepts <= 96, or a layer with more channels."
    )


def test_too_few_concepts(small) -> None:
    with pytest.raises(ConceptInputError) as info:
        deep_feature_factorization(small, torch.randn(1, 3, 64, 64), n_concepts=0)
    assert str(info.value) == "n_concepts=0: at least 1 concept is needed. Try n_concepts=8."


def test_layer_without_a_spatial_map(small) -> None:
    with pytest.raises(LayerResolutionError) as info:
        deep_feature_factorization(small, torch.randn(1, 3, 64, 64), layer="global_pool")
    assert str(info.value).startswith(
        "Layer 'global_pool' comes after global pooling (or is the classifier), so its "
        "output has no spatial extent to show. Use a layer before pooling, e.g. layer4"
    )
    with pytest.raises(LayerResolutionError) as info:
        deep_feature_factorization(small, torch.randn(1, 3, 64, 64), layer="global_pool.flatten")
    assert str(info.value).startswith(
        "Layer 'global_pool.flatten' outputs shape (1, 96), which has no spatial grid"
    )


def test_nan_activations() -> None:
    model = explainable_model("test_resnet", num_classes=10)
    with torch.no_grad():
        model.layer4[-1].bn2.weight[3] = float("nan")
    with pytest.raises(ConceptInputError) as info:
        deep_feature_factorization(model, torch.randn(1, 3, 64, 64), n_concepts=2)
    assert str(info.value) == (
        "The activations of layer 'layer4' hold 4 NaN or infinite values; NMF needs finite "
        "values. Check the model's weights and the inputs, or pick another layer."
    )


def test_concept_width_must_match_the_head(small) -> None:
    with pytest.raises(ConceptLabelError) as info:
        concept_class_scores(small, torch.rand(2, 7))
    assert str(info.value) == (
        "The classifier reads 96 features, but the concepts have shape (2, 7); concept labels "
        "need (K, 96) vectors from the layer whose average the head reads."
    )


def test_missing_scikit_learn(small, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(OptionalDependencyError, match=r'pip install "timmlens\[concepts\]"'):
        deep_feature_factorization(small, torch.randn(1, 3, 64, 64), n_concepts=2)
