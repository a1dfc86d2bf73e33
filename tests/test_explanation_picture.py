"""``explain_full(...)``'s notebook picture (issue 30, item 6): the heatmap on the photo,
each panel titled with the classes as the model names them, not ``class 0`` on black."""

from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timmlens import ImageClassifier
from timmlens.data import denormalize, prepare_images
from timmlens.interpretation import GradCAM
from timmlens.saving import figure_png
from timmlens.viz.static import plot_overlay

NAMES = ["ant", "bee", "cat"]


@pytest.fixture(scope="module")
def named_model() -> ImageClassifier:
    """A 3-class test_resnet with trained-looking norms (random otherwise) and names."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return ImageClassifier(model.eval(), class_names=NAMES)


@pytest.fixture(scope="module")
def green_photo() -> Image.Image:
    """A green photo with texture: the colour tells whether the photo is under the map."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[..., 1] = rng.integers(150, 255, (48, 64), dtype=np.uint8)
    return Image.fromarray(pixels)


def _png_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64)


def _green_excess(pixels: np.ndarray) -> float:
    """Mean of G - (R + B) / 2 over the picture: high where a green photo shows through."""
    return float((pixels[..., 1] - (pixels[..., 0] + pixels[..., 2]) / 2).mean())


def test_titles_name_the_classes_and_the_photo_is_under_the_map(named_model, green_photo):
    result = GradCAM(named_model).explain_full(green_photo, target_class="bee")
    assert result.context["target_names"] == ["bee"]
    assert result.pictures is not None and result.pictures[0] is not None
    figure = result.figure()
    texts = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert any(text.startswith("target bee") or text.startswith("bee") for text in texts), texts
    assert not any("class 1" in text for text in texts)
    panel = next(ax for ax in figure.axes if ax.get_title())
    # the photo first (at its own size), the heatmap over it
    assert np.array_equal(np.asarray(panel.images[0].get_array()), np.asarray(green_photo))
    assert len(panel.images) == 2

    shown = _png_pixels(result._repr_png_())
    batch = prepare_images(green_photo, named_model)
    overlay = plot_overlay(
        green_photo, result.heatmap[0], batch.geometries[0], label="bee", show_original=False
    )
    reference = _png_pixels(figure_png(overlay))
    bare = GradCAM(named_model).explain_full(green_photo, target_class="bee")
    object.__setattr__(bare, "pictures", None)  # what the picture was before: map on black
    without_photo = _png_pixels(bare._repr_png_())
    # the photo shows through as in the overlay function's figure, unlike the bare map
    assert _green_excess(shown) > 0.6 * _green_excess(reference) > 0
    assert _green_excess(without_photo) < 0.3 * _green_excess(shown)


def test_batch_titles_carry_target_and_prediction_names(named_model, green_photo):
    photos = [green_photo, green_photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    result = GradCAM(named_model).explain_full(photos, target_class=[0, 2])
    assert result.context["target_names"] == ["ant", "cat"]
    predicted = [NAMES[int(i)] for i in result.logits.argmax(-1)]
    assert result.context["predicted_names"] == predicted
    titles = result.titles()
    for title, target, top in zip(titles, ["ant", "cat"], predicted, strict=True):
        assert target in title and "%" in title
        if top != target:
            assert f"predicted {top}" in title
    texts = [ax.get_title() for ax in result.figure().axes if ax.get_title()]
    assert len(texts) == 2 and all("class " not in text for text in texts)


def test_tensor_inputs_are_drawn_as_the_model_sees_them(named_model, green_photo):
    x = prepare_images(green_photo, named_model).tensor
    result = GradCAM(named_model).explain_full(x, target_class=1)
    assert torch.allclose(result.pictures[0], denormalize(x, named_model)[0].cpu())
    assert result.titles()[0].split(" (")[0] in ("bee", "target bee")


def test_callable_targets_title_the_callable_and_the_prediction(named_model, green_photo):
    def group(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, :2].sum(-1)

    result = GradCAM(named_model).explain_full(green_photo, target_class=group)
    title = result.titles()[0]
    assert title.startswith("custom target (group), predicted ")
    assert title.split("predicted ")[1].split(" (")[0] in NAMES


def test_saving_keeps_the_names_and_leaves_the_pictures(named_model, green_photo, tmp_path):
    from timmlens import load_explanation

    result = GradCAM(named_model).explain_full([green_photo, green_photo], target_class=[1, 2])
    loaded = load_explanation(result.save(tmp_path / "batch.npz"))
    assert loaded.metadata["target_names"] == ["bee", "cat"]
    assert "pictures" not in loaded.metadata
