"""Preprocessing with each model's timm data config, input kinds, geometry, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timmlens import ImageInputError, prepare_images
from timmlens.data import (
    ImageScalingWarning,
    data_config,
    denormalize,
    eval_transform,
    heatmap_to_original,
)


@pytest.fixture(scope="module")
def resnet():
    return timm.create_model("test_resnet").eval()


def test_each_model_gets_its_own_data_config(real_model, photos):
    vit = timm.create_model("vit_tiny_patch16_224")
    assert data_config(real_model)["mean"] == (0.5, 0.5, 0.5)
    assert data_config(real_model)["crop_pct"] == 0.875
    assert data_config(vit)["crop_pct"] == 0.9
    batch = prepare_images(photos["chelsea"], real_model)
    expected = eval_transform(real_model)(Image.fromarray(photos["chelsea"]))
    assert batch.single and batch.tensor.shape == (1, 3, 224, 224)
    assert torch.allclose(batch.tensor[0], expected)


def test_all_input_kinds_give_the_same_tensor(resnet, tmp_path, photos):
    array = photos["coffee"]
    path = tmp_path / "coffee.png"
    Image.fromarray(array).save(path)
    from_pil = prepare_images(Image.fromarray(array), resnet).tensor
    for other in (str(path), path, array, array.astype(np.float32) / 255.0):
        assert torch.allclose(prepare_images(other, resnet).tensor, from_pil, atol=1e-5)
    chw = prepare_images(from_pil[0], resnet)
    assert chw.single and torch.equal(chw.tensor, from_pil)
    batch = prepare_images([array, path], resnet)
    assert not batch.single and batch.tensor.shape[0] == 2
    assert not prepare_images(from_pil, resnet).single


def test_grayscale_and_rgba_become_rgb(resnet):
    gray = np.full((40, 50), 128, np.uint8)
    out = prepare_images(gray, resnet).tensor
    assert out.shape[1] == 3
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent -> composited on white
    white = prepare_images(np.full((40, 50, 3), 255, np.uint8), resnet).tensor
    assert torch.allclose(prepare_images(rgba, resnet).tensor, white, atol=1e-5)
    assert torch.allclose(prepare_images(gray[..., None], resnet).tensor, out)


def test_geometry_locates_the_crop_in_the_original(real_model):
    # A photo whose pixel values encode their own coordinates.
    height, width = 300, 451
    ys, xs = np.mgrid[0:height, 0:width]
    array = np.stack([ys * 255 // height, xs * 255 // width, np.zeros_like(xs)], -1).astype(
        np.uint8
    )
    batch = prepare_images(array, real_model)
    geometry = batch.geometries[0]
    assert geometry.original_size == (height, width)
    pixels = denormalize(batch.tensor, real_model)[0]
    top, left, crop_h, crop_w = geometry.crop_box
    scale_y = height / geometry.resized_size[0]
    scale_x = width / geometry.resized_size[1]
    # The input's centre pixel comes from this original pixel:
    centre_y = (top + crop_h / 2) * scale_y
    centre_x = (left + crop_w / 2) * scale_x
    assert abs(float(pixels[0, crop_h // 2, crop_w // 2]) * height - centre_y) < 3
    assert abs(float(pixels[1, crop_h // 2, crop_w // 2]) * width - centre_x) < 3


def test_heatmap_to_original_undoes_resize_and_crop(real_model, photos):
    batch = prepare_images(photos["chelsea"], real_model)
    geometry = batch.geometries[0]
    heatmap = torch.zeros(224, 224)
    heatmap[:, :112] = 1.0  # left half of the crop is hot
    back = heatmap_to_original(heatmap, geometry)
    assert back.shape == (300, 451)
    assert math.isnan(float(back[150, 5])) and math.isnan(float(back[150, 445]))
    _, left, _, _ = geometry.crop_box
    scale = 300 / geometry.resized_size[0]
    hot_x = int((left + 40) * scale)
    cold_x = int((left + 180) * scale)
    assert float(back[150, hot_x]) == pytest.approx(1.0, abs=1e-4)
    assert float(back[150, cold_x]) == pytest.approx(0.0, abs=1e-4)


def test_bad_inputs_get_clear_errors(resnet, tmp_path):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    with pytest.raises(ImageInputError, match="not an image file"):
        prepare_images(not_image, resnet)
    with pytest.raises(ImageInputError, match="does not exist"):
        prepare_images(tmp_path / "missing.png", resnet)
    with pytest.raises(ImageInputError, match="empty"):
        prepare_images(np.zeros((0, 10, 3), np.uint8), resnet)
    with pytest.raises(ImageInputError, match="empty"):
        prepare_images(Image.new("RGB", (0, 0)), resnet)
    with pytest.raises(ImageInputError, match="has 4 channels, the model expects 3"):
        prepare_images(torch.zeros(1, 4, 32, 32), resnet)
    with pytest.raises(ImageInputError, match="5 dimensions"):
        prepare_images(torch.zeros(1, 1, 3, 32, 32), resnet)
    with pytest.raises(ImageInputError, match="NaN or inf"):
        prepare_images(torch.full((3, 8, 8), float("nan")), resnet)
    with pytest.raises(ImageInputError, match="channels last"):
        prepare_images(np.zeros((3, 32, 32), np.uint8), resnet)
    with pytest.warns(ImageScalingWarning, match=r"\[7, 7\].*min-max"):
        prepare_images(np.full((8, 8, 3), 7.0), resnet)
    with pytest.raises(ImageInputError, match="no images"):
        prepare_images([], resnet)
    with pytest.raises(ImageInputError, match="unsupported type"):
        prepare_images(42, resnet)
