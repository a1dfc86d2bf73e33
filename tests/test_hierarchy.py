"""explain_layers: the stages it picks, each map equal to GradCAM at that layer, the grid."""

from __future__ import annotations

import copy

import pytest
import torch

from timmlens.analysis.hierarchy import explain_layers, hierarchy_layers
from timmlens.interpretation import GradCAM, GradCAMPlusPlus
from timmlens.testing import explainable_model
from timmlens.viz import class_label, plot_layers


@pytest.fixture(scope="module")
def cnn():
    return explainable_model("test_resnet")


@pytest.fixture(scope="module")
def vit():
    return explainable_model("test_vit", img_size=64)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_default_layers_are_the_feature_stages_early_to_late(cnn):
    stages = [entry["module"] for entry in cnn.feature_info]
    assert hierarchy_layers(cnn) == stages


def test_class_token_vit_swaps_its_last_block_for_the_default_cam_layer(vit):
    # The last block's output gives patch tokens no gradient under class-token pooling.
    layers = hierarchy_layers(vit)
    last = len(vit.blocks) - 1
    assert layers[:-1] == [f"blocks.{i}" for i in range(last)]
    assert layers[-1] == f"blocks.{last}.norm1"


def test_a_default_layer_after_the_last_stage_is_appended(real_model):
    layers = hierarchy_layers(real_model)
    assert layers[-1] == "backbone.conv_head"
    assert layers[:-1] == [f"backbone.{e['module']}" for e in real_model.backbone.feature_info]


@pytest.mark.parametrize("model_name", ["cnn", "vit"])
@pytest.mark.parametrize("cam_class", [GradCAM, GradCAMPlusPlus])
def test_each_map_equals_the_cam_of_that_layer_alone(request, model_name, cam_class, images):
    model = request.getfixturevalue(model_name)
    method = "gradcam++" if cam_class is GradCAMPlusPlus else "gradcam"
    hierarchy = explain_layers(model, images, target_class=[1, 3], method=method)
    assert hierarchy.heatmaps.shape == (len(hierarchy.layers), 2, 64, 64)
    assert hierarchy.targets.tolist() == [1, 3]
    for layer, raw, maps in zip(
        hierarchy.layers, hierarchy.raw_maps, hierarchy.heatmaps, strict=True
    ):
        alone = cam_class(model, target_layer=layer)
        torch.testing.assert_close(maps, alone(images, target_class=[1, 3]), atol=1e-5, rtol=0)
        torch.testing.assert_close(raw, alone.attribute_layer(images, [1, 3]), atol=1e-6, rtol=1e-4)
        assert tuple(raw.shape[-2:]) in hierarchy.grid_sizes


def test_predicted_class_probability_and_labels(cnn, images):
    hierarchy = explain_layers(cnn, images)
    with torch.no_grad():
        probabilities = cnn(images).softmax(-1)
    assert hierarchy.targets.tolist() == probabilities.argmax(1).tolist()
    torch.testing.assert_close(hierarchy.probabilities, probabilities.max(1).values)
    assert hierarchy.labels == [class_label(t, 1000) for t in hierarchy.targets.tolist()]
    assert hierarchy.heatmaps.min() >= 0 and hierarchy.heatmaps.max() <= 1


def test_real_model_on_photos_localises_later(real_model, photos):
    hierarchy = explain_layers(real_model, photos["chelsea"])
    assert hierarchy.single and hierarchy.labels == ["tiger cat"]
    assert hierarchy.grid_sizes == [
        (112, 112),
        (56, 56),
        (28, 28),
        (14, 14),
        (7, 7),
        (7, 7),
    ]
    # Early maps respond to edges everywhere, late ones to one region: the share of the
    # map's mass above half its maximum grows from the first stage to the last.
    mass = (hierarchy.heatmaps[:, 0] > 0.5).float().mean(dim=(1, 2))
    assert mass[-1] > 2 * mass[0]


def test_model_left_as_found(cnn, images):
    cnn.train()
    before = copy.deepcopy(cnn.state_dict())
    explain_layers(cnn, images)
    assert cnn.training and all(m.training for m in cnn.modules())
    assert all(p.requires_grad and p.grad is None for p in cnn.parameters())
    for key, value in cnn.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    cnn.eval()


def test_explicit_layers_and_errors(cnn, images):
    hierarchy = explain_layers(cnn, images, layers=["layer1", "layer2"])
    assert hierarchy.layers == ["layer1", "layer2"]
    assert hierarchy.heatmap("layer2", 1).shape == (64, 64)
    with pytest.raises(ValueError, match="layer methods gradcam, gradcampp"):
        explain_layers(cnn, images, method="ig")
    with pytest.raises(ValueError, match="layers is empty"):
        explain_layers(cnn, images, layers=[])


def test_pointing_game_per_layer(cnn, images):
    hierarchy = explain_layers(cnn, images)
    everywhere = torch.ones(2, 64, 64, dtype=torch.bool)
    rates = hierarchy.pointing_game(masks=everywhere)
    assert list(rates) == hierarchy.layers
    assert all(rate == 1.0 for rate in rates.values())


def test_plot_layers_grid(cnn, images):
    hierarchy = explain_layers(cnn, images)
    fig = plot_layers(hierarchy, note="random weights")
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    visible = [ax for ax in fig.axes if ax.get_visible() and ax not in bars]
    assert len(visible) == 2 * (len(hierarchy.layers) + 1)
    # Every layer's map is min-max normalised: one shared, labelled colour bar.
    assert len(bars) == 1 and bars[0].get_ylabel() == "relevance"
    assert visible[1].get_title().startswith(hierarchy.layers[0])
    assert "random weights" in fig._suptitle.get_text()
