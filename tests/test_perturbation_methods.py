"""Captum's perturbation methods and RISE: each equals its reference computed directly.

Occlusion, feature ablation, Shapley value sampling, KernelSHAP and LIME must give
exactly Captum's own attributions for the same window / feature mask, baseline, targets
and seed; RISE must equal a plain per-mask loop over the paper's masks.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum import attr as captum_attr
from torch import nn

from timmlens.data import prepare_images
from timmlens.errors import ImageInputError, TargetError
from timmlens.interpretation.input.baselines import make_baseline
from timmlens.interpretation.input.perturbation import (
    FeatureAblation,
    Lime,
    Occlusion,
    ShapleyValueSampling,
    cell_feature_mask,
    patch_pixels,
)
from timmlens.interpretation.input.rise import RISE
from timmlens.interpretation.registry import as_explainer, resolve_method
from timmlens.testing import explainable_model

SIDE, CLASSES, TARGETS = 64, 10, [1, 7]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {
        "cnn": explainable_model("test_resnet", num_classes=CLASSES),
        "vit": explainable_model("test_vit", num_classes=CLASSES, img_size=SIDE),
    }


def _images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def _photos(photos: dict, model: nn.Module) -> torch.Tensor:
    """Chelsea and coffee at ``SIDE`` pixels: superpixels need real pictures (noise is one)."""
    batch = prepare_images([photos["chelsea"], photos["coffee"]], model).tensor
    return F.interpolate(batch, size=(SIDE, SIDE), mode="bilinear", antialias=True)


def _black(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return make_baseline("black", x, model)


# (method, options, Captum class, Captum arguments besides inputs/target/baselines,
#  whether Captum is called image by image after torch.manual_seed(seed))
GRID3 = cell_feature_mask(SIDE, SIDE, (3, 3), torch.device("cpu"))
CASES = {
    "occlusion": (
        {"window": 32, "stride": 16},
        captum_attr.Occlusion,
        {"sliding_window_shapes": (3, 32, 32), "strides": (3, 16, 16)},
        False,
    ),
    "featureablation": (
        {"grid": 3},
        captum_attr.FeatureAblation,
        {"feature_mask": GRID3},
        False,
    ),
    "shapley": (
        {"grid": 3, "n_samples": 2},
        captum_attr.ShapleyValueSampling,
        {"feature_mask": GRID3, "n_samples": 2},
        False,
    ),
    "kernelshap": (
        {"grid": 3, "n_samples": 12},
        captum_attr.KernelShap,
        {"feature_mask": GRID3, "n_samples": 12},
        True,
    ),
    "lime": (
        {"grid": 3, "n_samples": 12},
        captum_attr.Lime,
        {"feature_mask": GRID3, "n_samples": 12},
        True,
    ),
}


def _captum(
    model: nn.Module, x: torch.Tensor, method: type, arguments: dict, per_image: bool, seed: int
) -> torch.Tensor:
    """Captum called directly on the plain model with ``target=``."""
    baselines = _black(model, x)
    step = 1 if per_image else x.shape[0]
    parts = []
    for lo in range(0, x.shape[0], step):
        torch.manual_seed(seed)
        parts.append(
            method(model).attribute(
                x[lo : lo + step],
                target=TARGETS[lo : lo + step],
                baselines=baselines[lo : lo + step],
                perturbations_per_eval=8,
                **arguments,
            )
        )
    return torch.cat(parts)


@pytest.mark.parametrize("family", ["cnn", "vit"])
@pytest.mark.parametrize("method", list(CASES))
def test_attributions_equal_captum_called_directly(models, family, method):
    model = models[family]
    options, captum_class, arguments, per_image = CASES[method]
    x = _images()
    explainer = as_explainer(method, model, perturbations_per_eval=8, seed=3, **options)
    ours = explainer.attributions(x, TARGETS)
    state = torch.get_rng_state()
    theirs = _captum(model, x, captum_class, arguments, per_image, seed=3)
    torch.set_rng_state(state)
    assert ours.shape == (2, 3, SIDE, SIDE)
    assert ours.abs().amax() > 0
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_default_window_and_cells_follow_the_patch_grid_or_fourteen_cells(models):
    vit, cnn = models["vit"], models["cnn"]
    assert patch_pixels(vit) == (16, 16) and patch_pixels(cnn) is None
    assert Occlusion(vit).window_and_stride(SIDE, SIDE) == ((16, 16), (8, 8))
    assert Occlusion(cnn).window_and_stride(224, 224) == ((16, 16), (8, 8))  # 224 / 14
    assert Occlusion(cnn).window_and_stride(SIDE, SIDE) == ((5, 5), (2, 2))
    vit_cells = FeatureAblation(vit).features(_images(1))
    cnn_cells = FeatureAblation(cnn).features(_images(1))
    assert vit_cells.unique().numel() == 16  # the 4x4 token grid
    assert torch.equal(vit_cells[0, 0, :16, :16], torch.zeros(16, 16, dtype=torch.long))
    assert cnn_cells.unique().numel() == 14 * 14


def test_slic_features_are_superpixels_of_the_denormalised_image(models, photos):
    from skimage.segmentation import slic

    model = models["cnn"]
    x = _photos(photos, model)
    explainer = FeatureAblation(model, feature_mask="slic", n_segments=12, perturbations_per_eval=8)
    masks = explainer.features(x)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    pixels = (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).double().numpy()
    for i, image in enumerate(pixels):
        labels = slic(image, n_segments=12, compactness=10.0, start_label=0)
        ours = masks[i, 0].numpy()
        # the same partition (ids renumbered 0..n-1)
        pairs = set(zip(labels.ravel().tolist(), ours.ravel().tolist(), strict=True))
        assert len(pairs) == len(np.unique(labels)) == len(np.unique(ours)) == ours.max() + 1
        assert ours.max() + 1 >= 6  # superpixels, not one segment
    theirs = captum_attr.FeatureAblation(model).attribute(
        x, target=TARGETS, baselines=_black(model, x), feature_mask=masks, perturbations_per_eval=8
    )
    torch.testing.assert_close(explainer.attributions(x, TARGETS), theirs, atol=1e-5, rtol=1e-5)


def test_random_methods_leave_the_global_rng_alone_and_ignore_it(models):
    model = models["vit"]
    explainer = ShapleyValueSampling(model, grid=4, n_samples=2, seed=5)
    x = _images()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = explainer.attributions(x, TARGETS)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    torch.testing.assert_close(explainer.attributions(x, TARGETS), first)
    other_seed = ShapleyValueSampling(model, grid=4, n_samples=2, seed=6)
    assert not torch.allclose(other_seed.attributions(x, TARGETS), first)


def test_superpixel_shapley_gives_a_batch_what_it_gives_each_image(models, photos):
    model = models["cnn"]
    explainer = ShapleyValueSampling(model, feature_mask="slic", n_segments=8, n_samples=2)
    x = _photos(photos, model)
    counts = [explainer.features(x[i : i + 1]).max().item() + 1 for i in range(2)]
    assert counts[0] != counts[1] and min(counts) > 1  # so a batched draw would differ
    together = explainer.attributions(x, TARGETS)
    alone = torch.cat([explainer.attributions(x[i : i + 1], TARGETS[i]) for i in range(2)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_slic_without_scikit_image_says_how_to_install_it(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(ImportError, match="pip install scikit-image"):
        Lime(models["cnn"], feature_mask="slic")
    Lime(models["cnn"], feature_mask="cells")  # cells need nothing


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"feature_mask": "grid"}, "unknown feature_mask 'grid'"),
        ({"grid": (4, 0)}, "grid must be a positive integer"),
        ({"n_samples": 0}, "n_samples must be an integer >= 1"),
    ],
)
def test_bad_feature_options_are_refused_with_what_to_do(models, options, message):
    with pytest.raises(ValueError, match=message):
        ShapleyValueSampling(models["cnn"], **options)


def test_registry_metadata_of_the_perturbation_methods():
    for name in ("occlusion", "featureablation", "shapley", "kernelshap", "lime", "rise"):
        spec = resolve_method(name)
        assert spec.kind == "input" and not spec.cls.needs_gradients
        assert spec.paper and spec.formula and "forward" in spec.cost and spec.applies_to


def test_real_model_occlusion_and_superpixel_ablation_equal_captum(real_model, photos):
    x = prepare_images(photos["chelsea"], real_model).tensor
    side = x.shape[-1]
    occlusion = Occlusion(real_model, window=side // 2, stride=side // 2, perturbations_per_eval=4)
    theirs = captum_attr.Occlusion(real_model).attribute(
        x,
        sliding_window_shapes=(3, side // 2, side // 2),
        strides=(3, side // 2, side // 2),
        baselines=_black(real_model, x),
        target=285,
        perturbations_per_eval=4,
    )
    torch.testing.assert_close(occlusion.attributions(x, 285), theirs, atol=1e-5, rtol=1e-5)
    ablation = FeatureAblation(
        real_model, feature_mask="slic", n_segments=6, perturbations_per_eval=4
    )
    mask = ablation.features(x)
    theirs = captum_attr.FeatureAblation(real_model).attribute(
        x, baselines=_black(real_model, x), target=285, feature_mask=mask, perturbations_per_eval=4
    )
    torch.testing.assert_close(ablation.attributions(x, 285), theirs, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ RISE
def _rise_loop(model: nn.Module, x: torch.Tensor, explainer: RISE, targets: list[int]):
    """Petsiuk et al.'s sum, one masked image at a time."""
    masks = explainer.masks(SIDE, SIDE)
    baselines = _black(model, x)
    saliency = torch.zeros(x.shape[0], SIDE, SIDE)
    with torch.no_grad():
        for i in range(len(masks)):
            mask = masks.build(i, i + 1, torch.device("cpu"))[0]
            for b, target in enumerate(targets):
                masked = baselines[b] + mask * (x[b] - baselines[b])
                score = model(masked[None]).softmax(dim=1)[0, target]
                saliency[b] += score * mask
    return saliency / (len(masks) * explainer.p)


@pytest.mark.parametrize("family", ["cnn", "vit"])
def test_rise_equals_a_plain_per_mask_loop(models, family):
    model = models[family]
    explainer = RISE(model, n_masks=12, cells=4, p=0.5, seed=1)
    x = _images()
    result = explainer.explain_full(x, TARGETS)
    expected = _rise_loop(model, x, explainer, TARGETS)
    torch.testing.assert_close(result.attributions, expected, atol=1e-5, rtol=1e-5)
    assert result.heatmap.amin() == 0 and result.heatmap.amax() == 1


def test_rise_does_not_depend_on_the_chunk_size(models):
    model = models["cnn"]
    x = _images(3, seed=2)
    one = RISE(model, n_masks=8, max_batch=1).explain_full(x, [0, 1, 2]).attributions
    many = RISE(model, n_masks=8, max_batch=1000).explain_full(x, [0, 1, 2]).attributions
    torch.testing.assert_close(one, many, atol=1e-6, rtol=1e-5)


def test_rise_masks_are_the_papers_generate_masks():
    """skimage ``resize(order=1, mode="reflect")`` of the grid, cropped at the shift."""
    from skimage.transform import resize

    explainer = RISE(nn.Identity(), n_masks=40, cells=7, p=0.3, seed=7)
    height, width = 64, 50
    masks = explainer.masks(height, width)
    built = masks.build(0, len(masks), torch.device("cpu"))
    cell = (int(np.ceil(height / 7)), int(np.ceil(width / 7)))
    for i in range(len(masks)):
        grid = masks.grids[i].numpy()
        up = resize(grid, (8 * cell[0], 8 * cell[1]), order=1, mode="reflect", anti_aliasing=False)
        dy, dx = masks.shifts[i].tolist()
        assert 0 <= dy < cell[0] and 0 <= dx < cell[1]
        np.testing.assert_allclose(
            built[i].numpy(), up[dy : dy + height, dx : dx + width], atol=1e-6
        )
    assert set(np.unique(masks.grids.numpy())) <= {0.0, 1.0}
    assert abs(masks.grids.mean().item() - 0.3) < 0.05
    # seeded privately: the same masks again, the global RNG untouched
    state = torch.get_rng_state()
    assert torch.equal(explainer.masks(height, width).grids, masks.grids)
    assert torch.equal(torch.get_rng_state(), state)


def test_rise_defaults_are_the_papers():
    explainer = RISE(nn.Identity())
    assert (explainer.n_masks, explainer.cells, explainer.p, explainer.score) == (
        4000,
        7,
        0.5,
        "probability",
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [({"p": 0}, r"p \(the probability"), ({"n_masks": 0}, "n_masks"), ({"score": "x"}, "score")],
)
def test_rise_refuses_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        RISE(nn.Identity(), **options)


def test_the_registry_sees_every_option_a_method_forwards(models):
    options = list(resolve_method("lime").options())
    assert options[:4] == ["n_samples", "feature_mask", "grid", "n_segments"]
    assert {"baseline", "perturbations_per_eval", "signed", "seed"} <= set(options)
    assert resolve_method("kernelshap").options()["n_samples"].default == 256
    assert resolve_method("shapley").options()["n_samples"].default == 25
    with pytest.raises(TypeError, match="method 'occlusion' got unknown option"):
        as_explainer("occlusion", models["cnn"], n_samples=3)


def test_kernelshap_over_one_feature_is_refused_with_the_minimum_size(models):
    """A 1x1 input is one cell: KernelSHAP's Shapley kernel weighs coalitions of 1 to n - 1
    features, none for n = 1 (Captum raised a raw ``Categorical`` ValueError)."""
    explainer = as_explainer("kernelshap", models["cnn"], n_samples=8)
    with pytest.raises(ImageInputError, match=r"at least 2 features.*1x1.*grid=\(2, 2\)"):
        explainer(torch.randn(1, 3, 1, 1), 1)
    assert explainer(torch.randn(1, 3, 2, 2), 1).shape == (1, 2, 2)  # 2x2 cells: enough


@pytest.mark.parametrize("name", ["kernelshap", "saliency"])
def test_a_target_tensor_without_data_is_refused(models, name):
    """A ``meta`` tensor has no values to read (was: a raw NotImplementedError)."""
    explainer = as_explainer(name, models["cnn"])
    with pytest.raises(TargetError, match=r"target_class is on the 'meta' device.*\.to\('cpu'\)"):
        explainer(_images(1), torch.tensor(1, device="meta"))
