"""Figures, quick_explain and the comparisons, on tiny models and small images."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
import timm
import torch
from matplotlib.figure import Figure
from PIL import Image

from timmlens import ImageClassifier, prepare_images
from timmlens.errors import UnsupportedModelError
from timmlens.interpretation import compare_architectures, compare_methods, quick_explain
from timmlens.interpretation.metrics import MetricResult
from timmlens.interpretation.registry import (
    create_explainer,
    default_method,
    methods,
    resolve_method,
)
from timmlens.testing import make_explainable
from timmlens.viz import (
    class_label,
    heatmap_on_picture,
    plot_architectures,
    plot_attention_maps,
    plot_curves,
    plot_images,
    plot_methods,
    plot_overlay,
    save_figure,
)

FAST = {"ig": {"n_steps": 4}, "smoothgrad": {"n_samples": 3}}


def _tiny(name: str, **kwargs) -> ImageClassifier:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kwargs)
    return ImageClassifier(make_explainable(model))


@pytest.fixture(scope="module")
def resnet() -> ImageClassifier:
    return _tiny("test_resnet")


@pytest.fixture(scope="module")
def vit() -> ImageClassifier:
    return _tiny("test_vit")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A 120 x 200 photo: wider than tall, so the centre crop cuts its sides."""
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 200, dtype=np.float32)[None, :, None]
    noise = rng.uniform(0, 60, (120, 200, 3)).astype(np.float32)
    return Image.fromarray(np.clip(gradient * 0.7 + noise, 0, 255).astype(np.uint8))


def _panels(fig: Figure) -> list:
    """The figure's axes without its colour bars."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _axes_images(fig: Figure) -> list:
    return [image for ax in fig.axes for image in ax.get_images()]


# ------------------------------------------------------------------ labels
def test_class_labels_use_imagenet_names_only_for_1000_classes():
    assert class_label(282, 1000) == "tiger cat"
    assert class_label(3, 10) == "class 3"
    assert class_label(1, 10, ["cat", "dog"]) == "dog"


def test_heatmap_on_picture_undoes_the_crop(resnet, photo):
    batch = prepare_images(photo, resnet)
    heatmap = torch.rand(batch.tensor.shape[-2:])
    on_photo = heatmap_on_picture(heatmap, (photo.height, photo.width), batch.geometries[0])
    assert on_photo.shape == (photo.height, photo.width)
    # The centre crop keeps the middle of the 200-pixel-wide photo: its sides are NaN.
    assert np.isnan(on_photo[:, 0]).all() and np.isnan(on_photo[:, -1]).all()
    assert np.isfinite(on_photo[50:70, 60:140]).all()


# ------------------------------------------------------------------ static figures
def test_overlay_on_the_original_photo_with_class_and_probability(resnet, photo):
    batch = prepare_images(photo, resnet)
    heatmap = torch.rand(batch.tensor.shape[-2:])
    fig = plot_overlay(
        photo, heatmap, batch.geometries[0], label="tiger cat", probability=0.873, method="GradCAM"
    )
    assert isinstance(fig, Figure)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 2  # original + overlay (the colour bar has no title)
    assert "tiger cat (87.3%)" in titled[1].get_title()
    shapes = [image.get_array().shape[:2] for image in _axes_images(fig)]
    assert shapes == [(120, 200)] * 3  # photo, photo under the overlay, heatmap on the photo


def test_method_image_and_architecture_grids(photo):
    heatmaps = {"GradCAM": torch.rand(32, 32), "IG": torch.rand(32, 32)}
    fig = plot_methods(photo, heatmaps, label="class 3", probability=0.5, note="random weights")
    assert [ax.get_title() for ax in _panels(fig)] == ["original", "GradCAM", "IG"]
    assert "class 3 (50.0%)" in fig._suptitle.get_text()
    assert "random weights" in fig._suptitle.get_text()

    fig = plot_images([photo] * 5, torch.rand(5, 16, 16), labels=["a $b$"] * 5, ncols=3)
    assert sum(ax.get_visible() for ax in _panels(fig)) == 5
    assert len(_panels(fig)) == 6

    entries = [
        {"model": "m1", "heatmap": torch.rand(8, 8), "label": "cat", "probability": 0.2},
        {"model": "m2", "heatmap": torch.rand(8, 8), "note": "random weights"},
    ]
    fig = plot_architectures(photo, entries)
    assert "m2 [random weights]" in fig.axes[1].get_title()


def test_curves_show_aucs():
    x = torch.linspace(0, 1, 5, dtype=torch.float64)

    def result(name: str, values: list[float]) -> MetricResult:
        y = torch.tensor([values])
        auc = torch.trapezoid(y.double(), x)
        return MetricResult(name, auc, torch.tensor([1]), name == "insertion", x=x, y=y)

    insertion = result("insertion", [0.1, 0.3, 0.6, 0.8, 0.9])
    deletion = result("deletion", [0.9, 0.4, 0.2, 0.1, 0.0])
    fig = plot_curves({"GradCAM": insertion}, {"GradCAM": deletion})
    assert len(fig.axes) == 2
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [f"GradCAM (AUC {float(insertion):.3f})"]
    assert len(fig.axes[1].get_lines()) == 1


def test_attention_grid_layers_by_heads():
    maps = torch.rand(3, 4, 5, 5)  # (L, heads, h, w)
    fig = plot_attention_maps(maps, max_heads=2)
    assert len(_panels(fig)) == 3 * 3  # 2 heads + the mean, per block
    assert fig.axes[0].get_title() == "head 0" and fig.axes[2].get_title() == "mean"


def test_save_figure_creates_folders(tmp_path, photo):
    fig = plot_overlay(photo, torch.rand(10, 10), label="price $5", probability=0.1)
    path = save_figure(fig, tmp_path / "a" / "b.png")
    assert path.is_file() and path.stat().st_size > 1000


# ------------------------------------------------------------------ quick_explain
def test_quick_explain_cnn(resnet, photo, tmp_path):
    result = quick_explain(resnet, photo, save_path=tmp_path / "explanation.png")
    assert result.figure_path is not None and result.figure_path.is_file()
    assert result.method == "gradcam" and result.layer == "backbone.layer4"
    assert result.target_class == result.predicted_class
    assert result.class_name == class_label(result.predicted_class, 1000)
    assert 0 < result.probability <= 1 and result.probability == result.target_probability
    size = prepare_images(photo, resnet).tensor.shape[-2:]
    assert result.heatmap.shape == size and result.heatmap.device.type == "cpu"
    title = result.figure.axes[1].get_title()
    assert result.class_name in title and f"{result.probability:.1%}" in title


def test_quick_explain_vit_uses_rollout_and_target(vit, photo):
    result = quick_explain(vit, photo, save_path=None, target_class=7)
    assert result.method == "rollout" and result.layer is None
    assert result.target_class == 7 and result.figure_path is None
    assert torch.isfinite(result.heatmap).all()


def test_quick_explain_new_head_names_classes_by_number(photo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ImageClassifier(make_explainable(timm.create_model("test_resnet")), num_classes=4)
    result = quick_explain(model, photo, save_path=None, method="gradcam++")
    assert result.class_name == f"class {result.predicted_class}"
    assert result.method == "gradcampp"


# ------------------------------------------------------------------ comparisons
def test_compare_methods_one_heatmap_per_method(resnet, photo, tmp_path):
    methods = ["gradcam", "gradcam++", "ig", "smoothgrad"]
    comparison = compare_methods(
        resnet, photo, methods, save_path=tmp_path / "methods.png", method_options=FAST
    )
    assert list(comparison.heatmaps) == ["gradcam", "gradcampp", "ig", "smoothgrad"]
    size = prepare_images(photo, resnet).tensor.shape[-2:]
    assert all(h.shape == size for h in comparison.heatmaps.values())
    assert len(_panels(comparison.figure)) == 5
    assert comparison.figure_path.is_file() and comparison.metrics == {}


def test_compare_methods_with_metrics(vit, photo, tmp_path):
    comparison = compare_methods(
        vit,
        photo,
        ["gradcam", "rollout"],
        save_path=tmp_path / "vit.png",
        with_metrics=True,
        metric_steps=4,
    )
    for scores in comparison.metrics.values():
        assert set(scores) == {"insertion", "deletion"}
        assert math.isfinite(float(scores["insertion"]))
    assert comparison.curves_path is not None and comparison.curves_path.is_file()
    rows = comparison.table()
    assert [row["method"] for row in rows] == ["gradcam", "rollout"]


def test_compare_architectures(resnet, vit, photo, tmp_path):
    comparison = compare_architectures(
        {"resnet": resnet, "vit": vit},
        photo,
        save_path=tmp_path / "arch.png",
        notes={"vit": "random weights"},
    )
    assert list(comparison.heatmaps) == ["resnet", "vit"]
    assert all(entry.method == "gradcam" for entry in comparison.entries)
    assert "vit [random weights]" in comparison.figure.axes[1].get_title()
    assert comparison.figure_path.is_file()


# ------------------------------------------------------------------ registry
def test_registry_names_aliases_and_applicability(resnet, vit):
    assert resolve_method("GradCAM++").name == "gradcampp"
    assert resolve_method("integrated_gradients").name == "ig"
    with pytest.raises(ValueError, match="Did you mean 'smoothgrad'"):
        resolve_method("smoothgrd")
    assert "rollout" not in methods(model=resnet)
    assert "rollout" in methods(model=vit)
    assert default_method(resnet) == "gradcam" and default_method(vit) == "rollout"
    with pytest.raises(UnsupportedModelError):
        create_explainer("rollout", resnet)
    assert create_explainer("ig", resnet, n_steps=3).n_steps == 3


# ------------------------------------------------------------------ HTML
def test_html_labels_are_escaped(photo, tmp_path):
    from timmlens.viz.interactive import explanation_html

    evil = "<script>alert(1)</script>"
    path = explanation_html(
        tmp_path / "page.html",
        photo,
        {evil: torch.rand(16, 16), "ok": torch.rand(16, 16)},
        label=evil,
        probability=0.5,
        model_name=evil,
        attention=[torch.rand(4, 4)] * 2,
    )
    text = path.read_text(encoding="utf-8")
    assert evil not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_missing_plotly_says_how_to_install(monkeypatch):
    from timmlens.viz import interactive

    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ImportError, match=r"timmlens\[interactive\]"):
        interactive.require_plotly()
