"""Issue 26, the method floor: no silent wrong result.

Every heatmap is float32 on the model's device (also for a half-precision model, where a
method that cannot run refuses), a constant map from any method warns with its likely
cause, a callable that selects one class is that class for RandomCAM too, and a
non-finite heatmap is an error in the pointing game.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import timm
import torch
from torch import nn

from timmlens import DegenerateMapWarning, UnsupportedModelError
from timmlens.errors import MetricInputError
from timmlens.interpretation.metrics import pointing_game
from timmlens.interpretation.registry import create_explainer, methods, resolve_method
from timmlens.testing import explainable_model

SIDE, CLASSES = 32, 10
#: Methods that cannot run on a float16 model on CPU, and refuse: Captum's GradientShap
#: mixes its float32 noise into the half inputs (a dtype error), DeepLift's rescale rule
#: divides by input differences that float16 rounds to zero (NaN attributions).
NO_FLOAT16 = {"gradientshap", "deeplift", "deepliftshap"}
#: Refused when built for a float16 model: LRP's stabiliser (Zennit's 1e-6, Captum's 1e-9)
#: is below float16's normal range.
REFUSED_FOR_FLOAT16 = {"lrp"}
#: beyond each method's quick_options: fewer samples still where half precision on CPU
#: is slow (ScoreCAM, RISE)
HALF_OPTIONS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 16},
    "rise": {"n_masks": 4},
    "scorecam": {"max_batch": 64},
}


@pytest.fixture(scope="module")
def half_model() -> nn.Module:
    return explainable_model("test_resnet", num_classes=CLASSES).half()


@pytest.fixture(scope="module")
def random_resnet() -> nn.Module:
    """timm's test_resnet with its own random initialisation (no make_explainable):
    every residual block's last norm is zero, so the blocks add nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return timm.create_model("test_resnet", pretrained=False, num_classes=CLASSES).eval()


def _inputs(batch: int = 1, dtype: torch.dtype = torch.float32, side: int = SIDE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, side, side, generator=generator).to(dtype)


# ------------------------------------------------------------ 1. one dtype rule
@pytest.mark.parametrize("method", methods(kind="cam") + methods(kind="input"))
def test_every_heatmap_is_float32_on_a_half_model(half_model, method):
    if method in REFUSED_FOR_FLOAT16:
        with pytest.raises(UnsupportedModelError, match=rf"^{method}: the model runs in float16"):
            create_explainer(method, half_model)
        return
    explainer = create_explainer(
        method,
        half_model,
        **{**resolve_method(method).quick_options, **HALF_OPTIONS.get(method, {})},
    )
    inputs = _inputs(dtype=torch.float16)
    if method in NO_FLOAT16:
        with pytest.raises(UnsupportedModelError, match=rf"^{method} cannot explain this float16"):
            explainer.explain_full(inputs, target_class=3)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateMapWarning)  # lime's Lasso on a tiny model
        result = explainer.explain_full(inputs, target_class=3)
    assert result.heatmap.dtype == torch.float32
    assert result.heatmap.device == next(half_model.parameters()).device
    assert torch.isfinite(result.heatmap).all()
    assert next(half_model.parameters()).dtype == torch.float16  # left as found


def test_a_float64_model_gets_float32_maps_too():
    model = explainable_model("test_resnet", num_classes=CLASSES).double()
    inputs = _inputs(dtype=torch.float64, side=64)
    explanation = create_explainer("gradcam", model).explain_full(inputs, 3)
    assert explanation.heatmap.dtype == torch.float32 and explanation.heatmap.std() > 0
    assert explanation.attributions.dtype == torch.float64  # raw: the method's own dtype


def test_a_one_cell_layer_map_says_so():
    """test_resnet's last layer is 1x1 at 32 px: every CAM is constant there."""
    model = explainable_model("test_resnet", num_classes=CLASSES)
    with pytest.warns(DegenerateMapWarning, match=r"is 1x1 at this input size"):
        create_explainer("gradcam", model, relu=False)(_inputs(), 3)


# -------------------------------------------------- 2. constant maps warn, once
def _random_resnet_cases() -> tuple[torch.Tensor, list[int]]:
    """Two (image, class) pairs whose AblationCAM on `random_resnet` is all zero (every
    ablation weight negative: the ReLU clips the whole map), at 64 px (a 2x2 last layer)."""
    images = _inputs(10, side=64)
    return images[[1, 3]], [1, 3]


@pytest.mark.parametrize(
    ("method", "options", "cause"),
    [
        ("lime", {"grid": 2, "n_samples": 8}, "too few samples for a fit (raise n_samples"),
        ("ablationcam", {}, "timm zero-initialises the last norm of each residual block"),
    ],
)
def test_a_constant_map_warns_with_its_likely_cause(random_resnet, method, options, cause):
    explainer = create_explainer(method, random_resnet, **options)
    images, classes = _random_resnet_cases()
    with pytest.warns(DegenerateMapWarning) as record:
        heatmap = explainer(images, target_class=classes)
    assert (heatmap == 0).all()  # the silent result of before
    message = str(record[0].message)
    assert message.startswith(f"{method}: the heatmap of image(s) [0, 1] is all zero")
    assert cause in message
    assert len([r for r in record if r.category is DegenerateMapWarning]) == 1


def test_randomcam_legitimate_zero_maps_do_not_warn(random_resnet):
    explainer = create_explainer("randomcam", random_resnet, relu=True, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer(_inputs(4, side=64), target_class=[0, 1, 2, 3])


def test_real_maps_do_not_warn():
    model = explainable_model("test_resnet", num_classes=CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_explainer("gradcam", model)(_inputs(2, side=64), target_class=3)


# ------------------------------------------ 3. a callable's class, for randomcam
def test_randomcam_callable_that_selects_a_class_is_that_class():
    model = explainable_model("test_resnet", num_classes=CLASSES)
    explainer = create_explainer("randomcam", model)
    inputs = _inputs(2, side=64)
    by_class = explainer(inputs, target_class=3)
    assert torch.equal(explainer(inputs, target_class=lambda z: z[:, 3]), by_class)
    assert torch.equal(explainer(inputs, target_class=lambda z: 2 * z[:, 3:4]), by_class)
    # a score of several classes has no class: its own seeded draw, the same every call
    group = explainer(inputs, target_class=lambda z: z[:, [3, 4]].sum(1))
    assert not torch.equal(group, by_class)
    assert torch.equal(explainer(inputs, target_class=lambda z: z[:, [3, 4]].sum(1)), group)
    with torch.inference_mode():  # randomcam takes no gradients: it runs here too
        assert torch.equal(explainer(inputs, target_class=lambda z: z[:, 3]), by_class)


# --------------------------------------------- 4. non-finite maps in pointing
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_pointing_game_refuses_a_non_finite_heatmap(bad):
    heatmaps = torch.rand(3, 8, 8)
    heatmaps[1] = bad
    with pytest.raises(MetricInputError, match=r"heatmap of image 1 .*(NaN|inf)"):
        pointing_game(heatmaps, boxes=[[0, 0, 4, 4]] * 3)
    heatmaps[1] = torch.rand(8, 8)
    heatmaps[2, 3, 3] = bad
    with pytest.raises(MetricInputError, match=r"heatmap of image 2 "):
        pointing_game(heatmaps, masks=torch.ones(3, 8, 8, dtype=torch.bool))


# ------------------------------------- 5. the which-method page marks guided rows
def _board(models: list[str]):
    from timmlens.evaluation.leaderboard import build_leaderboard

    names = ["gradcam", "saliency", "guidedgradcam", "randomcam", "centerprior"]
    rows = {
        model: [
            {"id": f"img{i}", "method": name, "insertion": 0.1 * k + 0.01 * i, "deletion": 0.2}
            for k, name in enumerate(names)
            for i in range(2)
        ]
        for model in models
    }
    return build_leaderboard(rows, names, ["insertion", "deletion"])


def test_the_which_method_page_marks_guidedgradcam_on_networks_without_relu():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from leaderboard import page

    board = _board(["lite0", "resnet"])
    text = page(board, 60.0, {}, steps=4, without_relu=["lite0"])
    marked = [line for line in text.splitlines() if "`guidedgradcam` †" in line]
    assert len(marked) == 2  # the pooled table and lite0's, not resnet's
    assert "#### resnet" in text.split(marked[-1])[1]
    assert '!!! note "Rows marked † are not separate methods here"' in text
    assert "`guidedgradcam` is exactly the plain gradient times the upsampled GradCAM" in text
    plain = page(board, 60.0, {}, steps=4, without_relu=[])
    assert "†" not in plain
    # and the page as generated says it
    generated = (Path(__file__).resolve().parents[1] / "docs" / "which_method.md").read_text()
    assert "| `guidedgradcam` † |" in generated and "not separate methods here" in generated
