"""Issue 20: untrained models are labelled, figures are paper-ready, explanations save and load.

Tiny models (timm's ``test_resnet`` / ``test_vit``) on a small photo; each test checks a
property that failed before: titles of random-weight models, the target and the
prediction labelled apart, colour bars, titles broken only between names, the format
from the suffix, no file written unless asked, and the ``.npz`` round trip.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timmlens import ImageClassifier, evaluate, load_explanation, load_model
from timmlens.cli import main as cli_main
from timmlens.errors import ExplanationFileError, OutputPathError
from timmlens.interpretation import (
    AttentionVisualizer,
    GradCAM,
    compare_architectures,
    compare_methods,
    quick_explain,
)
from timmlens.models import WeightsStatus, weights_status
from timmlens.testing import explainable_model, make_explainable
from timmlens.viz import OverlayPanel, plot_attention_maps, plot_grid, plot_layers
from timmlens.viz.labels import class_heading, wrap_title
from timmlens.viz.static import DEFAULT_CMAP

TWO = ["gradcam", "gradcampp"]  # two cheap methods: one forward and backward each


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea()).resize((120, 80))


def _small(model: ImageClassifier) -> ImageClassifier:
    """Feed the model 64 px inputs (its data config says 160): tests stay fast on 2 cores."""
    cfg = {**model.backbone.pretrained_cfg, "input_size": (3, 64, 64)}
    model.backbone.pretrained_cfg = model.pretrained_cfg = cfg
    return model


@pytest.fixture(scope="module")
def random_model() -> ImageClassifier:
    """``load_model("test_resnet")``: random weights, as the CLI loads an untagged name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = load_model("test_resnet")
    make_explainable(model.backbone)
    return _small(model)


@pytest.fixture(scope="module")
def random_quick(random_model, photo):
    return quick_explain(random_model, photo, target_class=4)


@pytest.fixture(scope="module")
def trained() -> ImageClassifier:
    """A module passed in is taken as trained (no random mark): stands in for real weights."""
    torch.manual_seed(0)
    module = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))  # non-trivial maps without the random mark
    return _small(ImageClassifier(module))


@pytest.fixture(scope="module")
def trained_quick(trained, photo):
    return quick_explain(trained, photo)


def _heat_titles(figure) -> str:
    texts = [ax.get_title() for ax in figure.axes]
    if figure._suptitle is not None:
        texts.append(figure._suptitle.get_text())
    return "\n".join(texts)


# ------------------------------------------------------------------ 1. honest labels
def test_weights_status_is_recorded_where_the_model_is_made(random_model, trained):
    assert weights_status(random_model) == WeightsStatus(random=True)
    assert weights_status(random_model).note == "random weights"
    assert weights_status(trained).trained and weights_status(trained).note is None
    with pytest.warns(UserWarning, match="new 5-class head"):
        headed = ImageClassifier(trained.backbone, num_classes=5)
    assert weights_status(headed).note == "untrained 5-class head"
    assert weights_status(headed).tag == "untrained-head"
    # A module the user declares untrained, and the test helpers' models.
    assert weights_status(ImageClassifier(trained.backbone, pretrained=False)).random
    assert weights_status(explainable_model("test_resnet")).random


def test_every_figure_of_a_random_weights_model_says_so(random_model, random_quick, photo):
    assert "[random weights]" in _heat_titles(random_quick.figure)
    comparison = compare_methods(random_model, photo, methods=TWO)
    assert "random weights" in _heat_titles(comparison.figure)
    models = compare_architectures({"r": random_model}, photo)
    assert "r [random weights]" in _heat_titles(models.figure)
    from timmlens import explain_layers

    hierarchy = explain_layers(random_model, photo)
    assert hierarchy.note == "random weights"
    assert "random weights" in _heat_titles(plot_layers(hierarchy))


def test_a_new_untrained_head_is_labelled(trained, photo):
    with pytest.warns(UserWarning):
        headed = ImageClassifier(trained.backbone, num_classes=3)
    result = quick_explain(headed, photo)
    assert "[untrained 3-class head]" in _heat_titles(result.figure)
    assert result.weights.note == "untrained 3-class head"


def test_a_trained_model_gets_no_note(trained_quick):
    assert "[" not in _heat_titles(trained_quick.figure)


def test_target_and_prediction_are_labelled_apart(trained, trained_quick, photo):
    predicted = trained_quick.predicted_class
    other = (predicted + 1) % 10
    result = quick_explain(trained, photo, target_class=other)
    expected = (
        f"target class {other} ({result.target_probability:.1%}), "
        f"predicted class {predicted} ({result.probability:.1%})"
    )
    assert result.heading == expected
    title = _heat_titles(result.figure)
    assert f"target class {other} ({result.target_probability:.1%})," in title
    assert "%) (" not in title  # no probability that reads as the other class's
    assert class_heading("tabby", 0.5, "tabby", 0.5) == "tabby (50.0%)"


def test_cli_names_random_weights_and_labels_target_and_prediction(tmp_path, photo, capsys):
    image = tmp_path / "cat.png"
    photo.save(image)
    out = tmp_path / "out"
    code = cli_main(
        ["explain", str(image), "--model", "test_resnet", "--target", "3", "--out", str(out)]
    )
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert ": target tiger shark (" in line and ", predicted " in line, line  # class 3
    assert "[random weights]" in line
    assert [p.name for p in out.iterdir()] == ["cat_gradcam_random-weights.png"]


# ------------------------------------------------------------------ 2. figures
def test_every_heatmap_figure_has_a_labelled_colorbar(trained, trained_quick, photo):
    figures = {
        "quick": trained_quick.figure,
        "methods": compare_methods(trained, photo, methods=TWO).figure,
        "architectures": compare_architectures({"a": trained}, photo).figure,
    }
    for name, figure in figures.items():
        bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
        assert bars, f"{name}: no colour bar"
        assert all(bar.get_ylabel().startswith("relevance") for bar in bars), name


def test_attention_grid_states_its_scale(photo):
    vit = explainable_model("test_vit", num_classes=10, img_size=32)
    maps = AttentionVisualizer(vit).get_attention_maps(photo)
    figure = plot_attention_maps(maps, max_heads=2)
    bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel().startswith("attention weight")
    grid = maps.cls_to_patches(head=None).float()
    top = float(torch.cat([grid.flatten(), grid.mean(1).flatten()]).max())
    images = [im for ax in figure.axes if ax not in bars for im in ax.get_images()]
    assert len({im.get_clim() for im in images}) == 1  # one scale for every map
    assert images[0].get_clim() == (0.0, pytest.approx(top, rel=1e-5))
    suptitle = figure._suptitle.get_text()
    assert f"0 to {top:.3g}" in suptitle and "uniform attention 1/N" in suptitle
    per_map = plot_attention_maps(maps, max_heads=2, scale="per_map")
    assert "each map scaled to its own maximum" in per_map._suptitle.get_text()


def test_titles_break_only_between_names():
    name = "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    text = f"{name}: target tiger cat (12.0%), predicted Egyptian cat (40.1%) [random weights]"
    wrapped = wrap_title(text, 20)
    lines = wrapped.splitlines()
    for part in (name, "tiger cat", "Egyptian cat", "[random weights]"):
        assert any(part in line for line in lines), (part, lines)
    figure = plot_grid([OverlayPanel(np.zeros((8, 8, 3), np.uint8), torch.rand(8, 8), None, text)])
    assert name in figure.axes[0].get_title().splitlines()[0]


def test_default_colormap_is_deliberate_and_settable(trained, trained_quick, photo):
    def heat_cmap(figure) -> str:
        return next(im for ax in figure.axes for im in ax.get_images() if im.get_alpha())

    assert DEFAULT_CMAP == "inferno"
    assert heat_cmap(trained_quick.figure).get_cmap().name == "inferno"
    chosen = quick_explain(trained, photo, cmap="jet").figure
    assert heat_cmap(chosen).get_cmap().name == "jet"


def test_crop_is_marked_or_left_out(trained, trained_quick, photo):
    from matplotlib.patches import Rectangle

    from timmlens.viz import plot_overlay

    marked = trained_quick.figure.axes[1]
    hatched = [p for p in marked.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert hatched, "the part outside the crop is not marked"
    result = trained_quick
    only = plot_overlay(result.image, result.heatmap, result.geometry, crop="only")
    x0, x1 = only.axes[1].get_xlim()
    assert x1 - x0 < photo.width - 1  # zoomed to the crop
    with pytest.raises(ValueError, match="crop must be one of"):
        plot_overlay(result.image, result.heatmap, result.geometry, crop="everything")


@pytest.mark.parametrize(("suffix", "magic"), [(".pdf", b"%PDF"), (".svg", b"<svg")])
def test_the_format_follows_the_suffix(trained_quick, tmp_path, suffix, magic):
    path = trained_quick.save_figure(tmp_path / f"fig{suffix}", dpi=72)
    assert path == tmp_path / f"fig{suffix}"
    assert magic in path.read_bytes()[:400]


def test_a_path_without_suffix_gets_png_and_a_bad_suffix_is_refused(trained, photo, tmp_path):
    result = quick_explain(trained, photo, save_path=tmp_path / "figure")
    assert result.figure_path == tmp_path / "figure.png" and result.figure_path.is_file()
    with pytest.raises(OutputPathError, match=r"'\.docx' is not a figure format"):
        result.save_figure(tmp_path / "figure.docx")


def test_quick_explain_writes_nothing_unless_asked(trained, photo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = quick_explain(trained, photo)
    assert result.figure_path is None and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 3. save and load
def test_quick_explain_round_trip(random_quick, photo, tmp_path):
    result = random_quick
    path = result.save(tmp_path / "cat")
    assert path == tmp_path / "cat.npz"
    loaded = load_explanation(path)
    assert np.array_equal(loaded.heatmap.numpy(), result.heatmap.numpy())
    assert loaded.target_class == result.target_class == 4
    assert loaded.predicted_class == result.predicted_class
    assert loaded.method == "gradcam" and loaded.layer == result.layer
    assert loaded.geometry == result.geometry
    assert loaded.weights_note == "random weights"
    assert loaded.metadata["model"]["weights"]["pretrained"] is False
    assert loaded.metadata["timmlens_version"]
    assert torch.equal(loaded.probabilities, result.probabilities)
    assert loaded.image.shape == (photo.height, photo.width, 3)
    # Plain numpy reads it without pickle.
    with np.load(path, allow_pickle=False) as archive:
        assert json.loads(archive["metadata_json"].tobytes())["method"] == "gradcam"
    assert loaded._repr_png_().startswith(b"\x89PNG")
    assert result._repr_png_().startswith(b"\x89PNG")


def test_method_comparison_and_explanation_round_trip(trained, photo, tmp_path):
    comparison = compare_methods(trained, photo, methods=TWO)
    loaded = load_explanation(comparison.save(tmp_path / "methods.npz"))
    assert list(loaded.heatmaps) == TWO
    for name, heatmap in comparison.heatmaps.items():
        assert np.array_equal(loaded.heatmaps[name].numpy(), heatmap.numpy())
    assert loaded.target_class == comparison.target_class
    explanation = GradCAM(trained).explain_full([photo, photo], target_class=[1, 2])
    batch = load_explanation(explanation.save(tmp_path / "batch.npz"))
    assert np.array_equal(batch.heatmap.numpy(), explanation.heatmap.numpy())
    assert batch.target_class == [1, 2] and batch.layer == explanation.context["layer"]
    assert batch.metadata["model"]["weights"]["pretrained"] is True
    assert explanation._repr_png_().startswith(b"\x89PNG")


def test_load_refuses_what_it_did_not_write(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ExplanationFileError, match="without timmlens metadata"):
        load_explanation(other)
    with pytest.raises(FileNotFoundError):
        load_explanation(tmp_path / "missing.npz")


def test_evaluate_keeps_the_maps_and_resumes_missing_ones(random_model, photo, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png"):
        photo.save(data / name)
    out = tmp_path / "run"
    options = {"metric_options": {"steps": 4}, "progress": False, "metrics": ["insertion"]}
    evaluate(random_model, data, out=out, save_maps=True, **options)
    maps = sorted(p.name for p in (out / "maps" / "gradcam").iterdir())
    assert maps == ["a.png.npz", "b.png.npz"]
    first = load_explanation(out / "maps" / "gradcam" / "a.png.npz")
    assert first.metadata["id"] == "a.png" and first.weights_note == "random weights"
    (out / "maps" / "gradcam" / "b.png.npz").unlink()
    evaluate(random_model, data, out=out, save_maps=True, **options)  # resume: redo b only
    again = load_explanation(out / "maps" / "gradcam" / "b.png.npz")
    assert again.heatmap.shape == first.heatmap.shape
    rows = (out / "rows.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 2


def test_cli_evaluate_save_maps(tmp_path, photo, capsys):
    data = tmp_path / "data"
    data.mkdir()
    photo.save(data / "a.png")
    out = tmp_path / "run"
    args = ["evaluate", str(data), "--model", "test_resnet", "--out", str(out), "--steps", "4"]
    code = cli_main([*args, "--metrics", "insertion", "--save-maps"])
    assert code == 0, capsys.readouterr().err
    assert (out / "maps" / "gradcam" / "a.png.npz").is_file()
