"""Sanity checks (Adebayo et al. 2018): similarity, units, re-initialisation, tests, plot."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from scipy.stats import rankdata, spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from timmlens import ImageClassifier
from timmlens.analysis.randomization import (
    cascade_units,
    discover_units,
    randomize_unit,
    resolve_unit,
)
from timmlens.analysis.sanity import (
    RandomizationResult,
    data_randomization_test,
    parameter_randomization_test,
)
from timmlens.analysis.similarity import (
    average_ranks,
    map_similarity,
    pearson_columns,
    spearman_per_image,
    ssim_per_image,
)
from timmlens.interpretation import GradCAM
from timmlens.testing import explainable_model
from timmlens.viz.sanity_plots import plot_randomization

IG_FAST = {"ig": {"n_steps": 4}}


def _quiet_model(name: str, **kwargs) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, **kwargs).eval()


@pytest.fixture(scope="module")
def small_images(photos) -> torch.Tensor:
    """Two photos as a normalised (2, 3, 96, 96) batch (mean = std = 0.5)."""
    pictures = [torch.from_numpy(photos[n]).permute(2, 0, 1) for n in ("chelsea", "coffee")]
    batch = torch.stack(
        [F.interpolate(p[None].float() / 255, size=(96, 96), mode="area")[0] for p in pictures]
    )
    return (batch - 0.5) / 0.5


@pytest.fixture(scope="module")
def effnet() -> nn.Module:
    return explainable_model("test_efficientnet")


@pytest.fixture(scope="module")
def cascade(effnet, small_images) -> RandomizationResult:
    return parameter_randomization_test(
        effnet, small_images, ("gradcam", "ig"), method_options=IG_FAST, progress=False
    )


def _maps(seed: int, shape=(3, 32, 40), zeros: float = 0.5) -> torch.Tensor:
    """Random maps with many exact zeros (GradCAM-like ties) and rounded values."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(shape, generator=generator).round(decimals=2)
    maps[torch.rand(shape, generator=generator) < zeros] = 0
    return maps


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    def norm(x: torch.Tensor) -> np.ndarray:
        x = x.double().numpy()
        return (x - x.min()) / (x.max() - x.min())

    return structural_similarity(
        norm(a),
        norm(b),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
    )


# ------------------------------------------------------------------------- similarity
def test_average_ranks_match_scipy_rankdata():
    values = _maps(0, (4, 500))
    expected = np.stack([rankdata(row.numpy(), method="average") for row in values])
    np.testing.assert_array_equal(average_ranks(values).numpy(), expected)


def test_pearson_columns_match_numpy_and_flag_constant_columns():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((50, 3)))
    y = 0.3 * x + torch.from_numpy(rng.random((50, 3)))
    rho = pearson_columns(x, y)
    for k in range(3):
        expected = np.corrcoef(x[:, k].numpy(), y[:, k].numpy())[0, 1]
        assert rho[k].item() == pytest.approx(expected, abs=1e-12)
    x[:, 1] = 2.0  # a constant column has no correlation
    rho = pearson_columns(x, y)
    assert torch.isnan(rho[1]) and torch.isfinite(rho[[0, 2]]).all()


def test_spearman_matches_scipy_with_ties():
    a, b = _maps(1), _maps(2)
    b = 0.5 * a + b  # correlated, still with ties
    ours = spearman_per_image(a, b)
    for i in range(a.shape[0]):
        x, y = a[i].flatten(), b[i].flatten()
        assert ours[i].item() == pytest.approx(spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-6)
    assert ours.shape == (3,)
    assert ours.dtype == torch.float32


def test_spearman_is_right_past_int32_rank_sums():
    # A tie group over 65,535 pixels (80 % zeros of 300 x 300) overflows int32 rank sums
    # (torchmetrics' spearman_corrcoef); the average ranks here are exact.
    a, b = _maps(3, (1, 300, 300), zeros=0.8), _maps(4, (1, 300, 300), zeros=0.8)
    b = a + 0.2 * b
    expected = spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic
    assert spearman_per_image(a, b).item() == pytest.approx(expected, abs=1e-6)


def test_spearman_abs_ranks_absolute_values_of_signed_maps():
    a, b = _maps(5) - 0.5, _maps(6) - 0.5
    similarity = map_similarity(a, b)
    for i in range(a.shape[0]):
        x, y = a[i].abs().flatten().numpy(), b[i].abs().flatten().numpy()
        assert similarity["spearman_abs"][i].item() == pytest.approx(
            spearmanr(x, y).statistic, abs=1e-6
        )
    assert not torch.allclose(similarity["spearman"], similarity["spearman_abs"])


def test_ssim_matches_skimage_reference():
    a = _maps(7, (3, 48, 64), zeros=0.3)
    b = 0.6 * a + 0.4 * _maps(8, (3, 48, 64), zeros=0.3)
    ours = ssim_per_image(a, b)
    for i in range(a.shape[0]):
        assert ours[i].item() == pytest.approx(_skimage_ssim(a[i], b[i]), abs=1e-4)
    # Scale does not matter: maps are min-max normalised first.
    assert torch.allclose(ssim_per_image(3 * a + 1, b), ours, atol=1e-5)


def test_identical_and_constant_maps():
    maps = _maps(9)
    same = map_similarity(maps, maps.clone())
    for metric in ("spearman", "spearman_abs", "ssim"):
        assert torch.allclose(same[metric], torch.ones(3), atol=1e-5), metric
    constant = torch.zeros(2, 20, 20)
    structured = _maps(10, (2, 20, 20))
    result = map_similarity(constant, structured)
    assert torch.isnan(result["spearman"]).all()
    assert torch.isnan(result["spearman_abs"]).all()
    assert torch.isfinite(result["ssim"]).all() and (result["ssim"] < 0.5).all()
    assert torch.allclose(ssim_per_image(constant, torch.full((2, 20, 20), 3.0)), torch.ones(2))


def test_similarity_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        map_similarity(torch.zeros(2, 20, 20), torch.zeros(2, 20, 21))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        map_similarity(torch.zeros(20, 20), torch.zeros(20, 20))
    with pytest.raises(ValueError, match="NaN"):
        map_similarity(torch.full((1, 20, 20), float("nan")), torch.zeros(1, 20, 20))
    with pytest.raises(ValueError, match="at least 11"):
        ssim_per_image(torch.rand(1, 8, 8), torch.rand(1, 8, 8))


# ------------------------------------------------------------------------------ units
@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        (
            "test_resnet",
            {},
            ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"],
        ),
        (
            "test_efficientnet",
            {},
            ["classifier", "bn2", "conv_head"]
            + [f"blocks.{i}" for i in range(4, -1, -1)]
            + ["bn1", "conv_stem"],
        ),
        (
            "test_vit",
            {"img_size": 64},
            ["head", "norm"]
            + [f"blocks.{i}" for i in range(5, -1, -1)]
            + ["patch_embed", "{cls_token,pos_embed}"],
        ),
    ],
)
def test_discovered_units_are_top_down(name, kwargs, expected):
    model = _quiet_model(name, **kwargs)
    assert [unit.name for unit in discover_units(model)] == expected


def test_units_inside_an_image_classifier_have_the_backbone_prefix():
    model = ImageClassifier(_quiet_model("test_vit", img_size=64))
    names = [unit.name for unit in discover_units(model)]
    assert names[:3] == ["backbone.head", "backbone.norm", "backbone.blocks.5"]
    assert names[-1] == "backbone.{cls_token,pos_embed}"
    # Every parameter belongs to exactly one unit.
    owned = [p for unit in discover_units(model) for p in unit.parameter_names(model)]
    assert sorted(owned) == sorted(name for name, _ in model.named_parameters())


def test_units_without_feature_stages_are_top_level_children():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    units = discover_units(model, torch.zeros(1, 3, 16, 16))
    assert [unit.name for unit in units] == ["4", "0"]


def test_explicit_layers_resolve_names_parameters_and_unit_names():
    model = ImageClassifier(_quiet_model("test_vit", img_size=64))
    units = cascade_units(model, ["blocks.5", "backbone.pos_embed", "backbone.{cls_token}"])
    assert [u.name for u in units] == [
        "backbone.blocks.5",
        "backbone.pos_embed",
        "backbone.cls_token",
    ]
    assert units[1].parameter_names(model) == ["backbone.pos_embed"]
    assert resolve_unit(model, model.backbone.norm).name == "backbone.norm"
    # "head" is the wrapper's alias of the classifier inside the backbone: the unit takes
    # the module's own name, so its parameters are the model's.
    head = resolve_unit(model, "head")
    assert head.name == "backbone.head"
    assert set(head.parameter_names(model)) <= dict(model.named_parameters()).keys()
    assert head.parameter_names(model) == ["backbone.head.weight", "backbone.head.bias"]


def test_bad_layers_give_clear_errors():
    model = _quiet_model("test_resnet")
    with pytest.raises(ValueError, match=r"no module or parameter named 'layer9'.*fc, layer4"):
        cascade_units(model, ["layer9"])
    with pytest.raises(ValueError, match="empty"):
        cascade_units(model, [])
    with pytest.raises(ValueError, match="twice"):
        cascade_units(model, ["layer4", "layer4"])
    with pytest.raises(ValueError, match="no parameters"):
        cascade_units(model, ["global_pool"])


# ---------------------------------------------------------------- re-initialisation
def test_randomize_unit_changes_exactly_that_unit_and_is_seeded():
    model = explainable_model("test_efficientnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    first = copy.deepcopy(model)
    randomize_unit(first, "blocks.3", seed=5)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is untouched
    changed = {k for k, v in first.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("blocks.3.") for k in changed)
    weights = [k for k, _ in model.named_parameters() if k.startswith("blocks.3.")]
    assert {k for k in weights if k.endswith("conv_pw.weight")} <= changed
    # BatchNorm: back to its initial state, running statistics included.
    bn = first.get_submodule("blocks.3.0.bn1")
    assert torch.all(bn.running_var == 1) and torch.all(bn.weight == 1)
    # Reproducible; another seed draws other values.
    again, other = copy.deepcopy(model), copy.deepcopy(model)
    randomize_unit(again, "blocks.3", seed=5)
    randomize_unit(other, "blocks.3", seed=6)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert not torch.equal(
        first.state_dict()["blocks.3.0.conv_pw.weight"],
        other.state_dict()["blocks.3.0.conv_pw.weight"],
    )


def test_randomize_parameters_without_reset_get_truncated_normal():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    model = _quiet_model("test_vit", img_size=64)
    with torch.no_grad():
        model.pos_embed.fill_(1.0)
        model.cls_token.fill_(1.0)
    torch.manual_seed(123)
    unit = randomize_unit(model, "{cls_token,pos_embed}")
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG stream is unaffected
    assert unit.parameters == ("cls_token", "pos_embed")
    assert model.pos_embed.abs().max() <= 2.0 and 0.01 < model.pos_embed.std() < 0.03
    assert model.cls_token.ne(1.0).all()


# -------------------------------------------------------------- parameter randomisation
def test_cascade_result_shapes_and_step_zero(cascade, small_images):
    units = len(cascade.units)
    assert cascade.units[0] == "classifier" and cascade.units[-1] == "conv_stem"
    assert cascade.steps[0] == "original" and len(cascade.steps) == units + 1
    for method in ("gradcam", "ig"):
        assert cascade.original[method].shape == (2, 96, 96)
        assert cascade.randomized[method].shape == (units + 1, 2, 96, 96)
        for metric in ("spearman", "spearman_abs", "ssim"):
            assert cascade.similarity[method][metric].shape == (units + 1, 2)
        # Step 0 is the unrandomised copy: the same maps as the user's model.
        assert torch.allclose(cascade.randomized[method][0], cascade.original[method], atol=1e-6)
        assert torch.allclose(cascade.mean(method, "spearman")[0], torch.tensor(1.0), atol=1e-5)
    rows = cascade.table()
    assert len(rows) == 2 * (units + 1)
    assert set(rows[0]) == {
        "method",
        "step",
        "unit",
        "spearman",
        "spearman_abs",
        "ssim",
        "undefined",
    }
    assert "gradcam" in str(cascade) and "conv_stem" in str(cascade)


def test_cascade_lowers_similarity(cascade):
    # Tiny random-init models give coarse maps whose similarity jumps from step to step;
    # what must hold is that destroying the weights moves the maps far from the original.
    for method in ("gradcam", "ig"):
        spearman, ssim = cascade.mean(method, "spearman"), cascade.mean(method, "ssim")
        assert spearman[-1] < spearman[0] - 0.4, method
        assert spearman[1] < spearman[0] - 0.4, method  # the classifier alone already does
        assert ssim[-1] < 0.5, method
        assert cascade.falls(method, "ssim")
    assert cascade.falls("gradcam")
    assert not cascade.falls("gradcam", margin=0.9)


def test_user_model_is_untouched(small_images):
    model = explainable_model("test_resnet")
    model.train()
    model.layer1.eval()
    model.fc.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    parameter_randomization_test(
        model, small_images, "gradcam", layers=["fc", "layer4"], progress=False
    )
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_independent_steps_randomise_one_unit_each(effnet, small_images, cascade):
    layers = ["classifier", "blocks.2", "conv_stem"]
    result = parameter_randomization_test(
        effnet, small_images, "gradcam", cascading=False, layers=layers, progress=False
    )
    assert result.units == tuple(layers) and not result.cascading
    # Step 1 of both modes randomises only the classifier, with the same values.
    assert torch.allclose(result.randomized["gradcam"][1], cascade.randomized["gradcam"][1])
    # Each step equals explaining a copy with only that unit randomised.
    alone = copy.deepcopy(effnet)
    randomize_unit(alone, "blocks.2", seed=0)
    maps = GradCAM(alone)(small_images, target_class=result.targets)
    assert torch.allclose(result.randomized["gradcam"][2], maps, atol=1e-6)


def test_explainer_instances_are_copied_with_the_model(effnet, small_images):
    explainer = GradCAM(effnet, target_layer="blocks.2")
    result = parameter_randomization_test(
        effnet,
        small_images,
        [explainer, "gradcam"],
        layers=["conv_head", "blocks.2"],
        method_options={"gradcam": {"target_layer": "blocks.2"}},
        progress=False,
    )
    assert result.methods == ("gradcam@blocks.2", "gradcam")
    assert explainer.model is effnet and explainer.layers[0].module is effnet.blocks[2]
    # The instance and the registry method with the same layer agree at every step.
    assert torch.allclose(
        result.randomized["gradcam@blocks.2"], result.randomized["gradcam"], atol=1e-6
    )
    # Randomising the layer above the tap changes the map, the tap's own layer more.
    spearman = result.mean("gradcam", "spearman")
    assert spearman[0] > 0.999 and spearman[2] < spearman[0]


def test_target_class_is_kept_fixed(effnet, small_images):
    result = parameter_randomization_test(
        effnet,
        small_images,
        "gradcam",
        target_class=[1, 2],
        layers=["classifier"],
        progress=False,
    )
    assert result.targets.tolist() == [1, 2]


def test_seeds_report_mean_and_spread_over_seeds(effnet, small_images):
    layers = ["classifier", "blocks.2"]
    several = parameter_randomization_test(
        effnet, small_images, "gradcam", layers=layers, seeds=(0, 3), progress=False
    )
    alone = [
        parameter_randomization_test(
            effnet, small_images, "gradcam", layers=layers, seed=s, progress=False
        )
        for s in (0, 3)
    ]
    assert several.seeds == (0, 3) and several.seed == 0
    by_seed = several.seed_similarity["gradcam"]["ssim"]
    assert by_seed.shape == (2, 3, 2)
    for index, result in enumerate(alone):
        torch.testing.assert_close(by_seed[index], result.similarity["gradcam"]["ssim"])
    # first seed's rows and maps kept as the single-seed fields
    torch.testing.assert_close(several.similarity["gradcam"]["ssim"], by_seed[0])
    torch.testing.assert_close(several.randomized["gradcam"], alone[0].randomized["gradcam"])
    seed_means = torch.stack([r.mean("gradcam", "ssim") for r in alone])
    torch.testing.assert_close(several.seed_means("gradcam", "ssim"), seed_means)
    torch.testing.assert_close(several.mean("gradcam", "ssim"), seed_means.mean(0))
    spread = several.spread("gradcam", "ssim")
    torch.testing.assert_close(spread["sd"], seed_means.std(0))
    torch.testing.assert_close(spread["min"], by_seed.transpose(0, 1).flatten(1).min(1).values)
    torch.testing.assert_close(spread["max"], by_seed.transpose(0, 1).flatten(1).max(1).values)
    assert spread["sd"][0] == 0 and spread["sd"][2] > 0  # step 0 is seed-free
    table = several.table()
    assert table[2]["ssim_sd"] == pytest.approx(float(spread["sd"][2]))
    assert "seed(s) 0, 3" in str(several) and "ssim_sd" in str(several)
    assert "ssim_sd" not in alone[0].table()[0]
    with pytest.raises(ValueError, match="repeat a seed"):
        parameter_randomization_test(effnet, small_images, "gradcam", seeds=(1, 1))
    with pytest.raises(ValueError, match=r"seeds must be int\(s\)"):
        parameter_randomization_test(effnet, small_images, "gradcam", seeds=())


def test_parameter_randomization_errors(effnet, small_images):
    with pytest.raises(ValueError, match="methods is empty"):
        parameter_randomization_test(effnet, small_images, [], progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        parameter_randomization_test(effnet, small_images, "gradcum", progress=False)
    with pytest.raises(ValueError, match="method_options given for ig"):
        parameter_randomization_test(
            effnet, small_images, "gradcam", method_options=IG_FAST, progress=False
        )
    with pytest.raises(ValueError, match="another model"):
        parameter_randomization_test(
            effnet, small_images, GradCAM(explainable_model("test_efficientnet")), progress=False
        )
    with pytest.raises(ValueError, match=r"no module or parameter named 'blocks\.9'"):
        parameter_randomization_test(effnet, small_images, "gradcam", layers=["blocks.9"])


# ------------------------------------------------------------------- data randomisation
def test_data_randomization_identity_and_other_model(effnet, small_images):
    state = {k: v.clone() for k, v in effnet.state_dict().items()}
    same = data_randomization_test(
        effnet, effnet, small_images, ("gradcam", "ig"), method_options=IG_FAST
    )
    for method in ("gradcam", "ig"):
        for metric in ("spearman", "ssim"):
            assert same.mean(method, metric) == pytest.approx(1.0, abs=1e-5)
    other = explainable_model("test_efficientnet", seed=1)
    different = data_randomization_test(
        effnet, other, small_images, ("gradcam", "ig"), method_options=IG_FAST
    )
    assert different.similarity["gradcam"]["spearman"].shape == (2,)
    for method in ("gradcam", "ig"):
        assert different.mean(method, "ssim") < 0.9
    assert different.mean("gradcam", "spearman") < 0.9
    assert all(torch.equal(v, state[k]) for k, v in effnet.state_dict().items())
    assert "gradcam" in str(different)
    with pytest.raises(TypeError, match="method names"):
        data_randomization_test(effnet, other, small_images, [GradCAM(effnet)])


# -------------------------------------------------------------------------------- plot
def test_plot_randomization(cascade, photos):
    fig = plot_randomization(cascade)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert len(fig.axes[0].get_lines()) == 2 * 2  # methods x (Spearman, SSIM)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == "original" and labels[-1] == "conv_stem"

    photo = photos["chelsea"]
    fig = plot_randomization(cascade, photo, "gradcam", metrics=("spearman",), band="std")
    assert len(fig.axes) == 1 + len(cascade.steps)  # curves, original map, one per step
    assert len(fig.axes[0].get_lines()) == 2
    with pytest.raises(ValueError, match="no method 'rollout'"):
        plot_randomization(cascade, method="rollout")


def test_chance_level_is_the_similarity_of_different_images(cascade):
    method = cascade.methods[0]
    original = cascade.original[method]
    expected = torch.nanmean(map_similarity(original, original.roll(1, dims=0))["ssim"])
    assert cascade.chance(method, "ssim") == pytest.approx(float(expected))
    assert -1 <= cascade.chance(method) <= 1
    assert "chance level" in cascade.summary()
