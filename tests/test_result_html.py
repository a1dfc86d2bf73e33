"""Notebook HTML of results (issue 30, item 6): ``Explanation`` (CAM, rollout, relevance,
batches) and ``AttentionMaps`` show their figure inline with the photo under the map and
the classes as the model names them, drawn once for both of a notebook's displays."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timmlens import ImageClassifier
from timmlens.interpretation import AttentionVisualizer, GradCAM
from timmlens.interpretation.registry import resolve_method

NAMES = ["ant", "bee", "<b>cat</b>"]  # a name with markup: shown as text, never rendered
_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Norm layers moved off their initial values (random otherwise): not flagged random."""
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
            module.weight.data.uniform_(0.5, 1.5)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def cnn() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(
        _trained_looking(timm.create_model("test_resnet", num_classes=3)), class_names=NAMES
    )


@pytest.fixture(scope="module")
def vit() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(
        _trained_looking(timm.create_model("test_vit", num_classes=3)), class_names=NAMES
    )


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Green textured photos: the colour tells whether the photo is under the map."""
    rng = np.random.default_rng(0)
    pictures = []
    for _ in range(2):
        pixels = np.zeros((48, 64, 3), dtype=np.uint8)
        pixels[..., 1] = rng.integers(150, 255, (48, 64), dtype=np.uint8)
        pictures.append(Image.fromarray(pixels))
    return pictures


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in _IMG.findall(html)]


def _green_excess(png: bytes) -> float:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64)
    return float((pixels[..., 1] - (pixels[..., 0] + pixels[..., 2]) / 2).mean())


def _check_classes(html: str, names: list[str]) -> None:
    for name in names:
        shown = name.replace("<", "&lt;").replace(">", "&gt;")
        assert shown in html, (name, html[-600:])
    assert "<b>cat</b>" not in html  # escaped everywhere, the alt text too


def test_explanation_html_shows_the_figure_with_the_photo_and_the_class_names(cnn, photos):
    result = GradCAM(cnn).explain_full(photos, target_class=[1, 2])
    html = result._repr_html_()
    (png,) = _pngs(html)
    assert png == result._repr_png_() and png.startswith(b"\x89PNG")
    assert _green_excess(png) > 10  # the green photo shows through the map
    assert html.count("<li>") == 2  # one caption per image of the batch
    assert "image 0: " in html and "image 1: " in html
    assert "<strong>GradCAM @ " in html and "heatmap (2, " in html
    predicted = result.context["predicted_names"]
    _check_classes(html, ["bee", "<b>cat</b>", *predicted])
    # a tensor input has no photo: the model's view of it is drawn instead
    tensor_result = GradCAM(cnn).explain_full(torch.rand(1, 3, 32, 32), target_class=0)
    assert "image 0: " in tensor_result._repr_html_() and "ant" in tensor_result._repr_html_()


@pytest.mark.parametrize("method", ["rollout", "chefer"])
def test_rollout_and_relevance_results_show_their_classes(vit, photos, method):
    result = resolve_method(method).cls(vit).explain_full(photos)
    html = result._repr_html_()
    (png,) = _pngs(html)
    assert _green_excess(png) > 10 and html.count("<li>") == 2
    _check_classes(html, [*result.context["predicted_names"]])


def test_attention_maps_html_shows_the_photo_and_the_predictions(vit, photos):
    maps = AttentionVisualizer(vit).get_attention_maps(photos)
    with torch.no_grad():
        predicted = vit(torch.cat([AttentionVisualizer(vit).prepare(p).tensor for p in photos]))
    names = [NAMES[k] for k in predicted.argmax(-1).tolist()]
    assert maps.predicted_names == tuple(names)
    html = maps._repr_html_()
    photo, grid = _pngs(html)
    assert grid == maps._repr_png_()
    assert np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")).shape == (48, 64, 3)
    assert _green_excess(photo) > 100  # the photo itself
    _check_classes(html, [f"image {i}: predicted {name}" for i, name in enumerate(names)])
    assert "AttentionMaps(" in html and "first image" in html
    # built by hand (no photo, no classes): the grid alone, no crash
    bare = type(maps)(
        maps.batched_maps, maps.layer_names, maps.grid, maps.num_prefix_tokens, maps.token_indices
    )
    assert len(_pngs(bare._repr_html_())) == 1 and "<li>" not in bare._repr_html_()


def test_a_notebook_draws_the_figure_once_for_both_displays(cnn, photos, monkeypatch):
    formatters = pytest.importorskip("IPython.core.formatters")
    result = GradCAM(cnn).explain_full(photos[0])
    drawn = []
    original = type(result).figure

    def counted(self, **options):
        drawn.append(1)
        return original(self, **options)

    monkeypatch.setattr(type(result), "figure", counted)
    shown, _ = formatters.DisplayFormatter().format(result)
    assert {"text/html", "image/png"} <= set(shown) and len(drawn) == 1
    assert _pngs(shown["text/html"]) == [shown["image/png"]]
