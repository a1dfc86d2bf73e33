"""ExplanationMetrics against plain per-step loops written independently here."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import timm
import torch
from scipy import ndimage

from timmlens.interpretation.metrics import (
    ExplanationMetrics,
    MetricResult,
    TiedHeatmapWarning,
    random_subsets,
)
from timmlens.testing import make_explainable

SIZE = 32
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        net = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    return make_explainable(net, seed=0)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def heatmaps() -> torch.Tensor:
    return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


# -- references: one forward per step per image, numpy ranking, scipy blur -------------


def ref_score(model, image: torch.Tensor, target: int, score: str) -> float:
    with torch.no_grad():
        logits = model(image[None]).double()[0]
    return float(logits.softmax(0)[target] if score == "probability" else logits[target])


def ref_blur(image: torch.Tensor, kernel: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's start: scipy's Gaussian of a delta as the kernel, zero padding (scipy's
    ``correlate`` with ``mode="constant"``; the kernel is symmetric)."""
    delta = np.zeros((kernel, kernel))
    delta[kernel // 2, kernel // 2] = 1
    weights = ndimage.gaussian_filter(delta, sigma).astype(np.float32).astype(np.float64)
    out = np.stack([ndimage.correlate(c, weights, mode="constant") for c in image.double().numpy()])
    return torch.from_numpy(out).float()


def ref_blur_reflect(image: torch.Tensor, kernel: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Gaussian blur with the kernel truncated at kernel//2 and mirrored borders."""
    radius = kernel // 2
    out = ndimage.gaussian_filter(
        image.double().numpy(), sigma=(0, sigma, sigma), radius=(0, radius, radius), mode="mirror"
    )
    return torch.from_numpy(out).float()


def ref_counts(num_pixels: int, steps=None, pixels_per_step=None) -> list[int]:
    if pixels_per_step is not None:
        n = -(-num_pixels // pixels_per_step)
        return [min(t * pixels_per_step, num_pixels) for t in range(n + 1)]
    steps = steps or min(224, num_pixels)
    return [t * num_pixels // steps for t in range(steps + 1)]


def ref_curve(model, image, heatmap, target, kind, score="probability", **step_options):
    """The RISE curve by a loop: rank with numpy (ties: lower index first), one forward a step."""
    flat_heat = heatmap.double().numpy().ravel()
    order = np.lexsort((np.arange(flat_heat.size), -flat_heat))
    if kind == "deletion":
        start, finish = image.clone(), torch.zeros_like(image)
    else:
        start, finish = ref_blur(image), image.clone()
    ys = []
    for k in ref_counts(flat_heat.size, **step_options):
        current = start.clone().reshape(image.shape[0], -1)
        chosen = torch.from_numpy(order[:k].copy())
        current[:, chosen] = finish.reshape(image.shape[0], -1)[:, chosen]
        ys.append(ref_score(model, current.reshape(image.shape), target, score))
    return np.array(ys)


def ref_sensitivity(model, images, maps, targets, n, patch, n_samples, seed, score):
    """Loop sensitivity-n: same seeded subsets, one forward per subset, numpy correlation."""
    num_images, _, height, width = images.shape
    columns = -(-width // patch)
    num_features = -(-height // patch) * columns
    subsets = random_subsets(
        num_images, n_samples, num_features, n, torch.Generator().manual_seed(seed)
    )
    correlations = []
    for b in range(num_images):
        base = ref_score(model, images[b], targets[b], score)
        sums, drops = [], []
        for s in range(n_samples):
            mask = torch.zeros(height, width, dtype=torch.bool)
            for feature in subsets[b, s].nonzero().flatten().tolist():
                row, col = divmod(feature, columns)
                mask[row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = True
            sums.append(float(maps[b].double()[mask].sum()))
            drops.append(
                base - ref_score(model, torch.where(mask, 0.0, images[b]), targets[b], score)
            )
        correlations.append(np.corrcoef(sums, drops)[0, 1])
    return np.array(correlations)


class GradientTimesInput:
    """Stand-in explainer: |sum over channels of input x d target / d input|."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def explain_batch(self, inputs: torch.Tensor, target_class=None) -> torch.Tensor:
        x = inputs.detach().requires_grad_(True)
        logits = self.model(x)
        targets = torch.as_tensor(target_class, device=logits.device).view(-1)
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), x)
        return (grad * x).sum(1).abs().detach()


# -- curves against the loop ------------------------------------------------------------


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_deletion_matches_loop(model, images, heatmaps, score):
    metrics = ExplanationMetrics(model, steps=8, score=score)
    result = metrics.deletion(images[0], heatmaps[0], target_class=4)
    expected = ref_curve(model, images[0], heatmaps[0], 4, "deletion", score, steps=8)
    x, y = result.curve
    assert y.shape == (9,) and x.shape == (9,)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(x.numpy(), np.array(ref_counts(SIZE * SIZE, steps=8)) / SIZE**2)


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_insertion_matches_loop_with_pixels_per_step(model, images, heatmaps, score):
    # 1024 pixels, 100 per step: 11 steps, the last one of 24 pixels
    metrics = ExplanationMetrics(model, pixels_per_step=100, score=score)
    result = metrics.insertion(images[1], heatmaps[1], target_class=2)
    expected = ref_curve(model, images[1], heatmaps[1], 2, "insertion", score, pixels_per_step=100)
    assert result.curve[1].shape == (12,)
    np.testing.assert_allclose(result.curve[1].numpy(), expected, atol=1e-5, rtol=1e-5)
    assert result.curve[0][-2] == pytest.approx(1000 / 1024)


def test_batch_per_image_targets_chunks_split_mid_image(model, images, heatmaps):
    # 3 images x 2 curves x 5 points = 30 jobs in chunks of 4: chunks end mid-curve
    metrics = ExplanationMetrics(model, steps=4, max_batch=4)
    targets = [1, 7, 3]
    results = metrics.compute(images, heatmaps, target_class=targets)
    assert metrics.last_chunk_size == 4
    for kind in ("insertion", "deletion"):
        result = results[kind]
        _, y = result.curve
        assert y.shape == (3, 5)
        assert result.targets.tolist() == targets
        for b in range(3):
            expected = ref_curve(model, images[b], heatmaps[b], targets[b], kind, steps=4)
            np.testing.assert_allclose(y[b].numpy(), expected, atol=1e-5, rtol=1e-5)


def test_default_steps_and_predicted_target(model, images, heatmaps):
    """Default: 224 steps; target None = predicted class, same curve as giving it."""
    metrics = ExplanationMetrics(model, max_batch=75)
    predicted = model(images[:1]).argmax(1).tolist()
    auto = metrics.deletion(images[:1], heatmaps[:1])
    given = metrics.deletion(images[:1], heatmaps[:1], target_class=predicted)
    assert auto.targets.tolist() == predicted
    assert auto.curve[1].shape == (1, 225) and auto.settings["steps"] == 224
    torch.testing.assert_close(auto.curve[1], given.curve[1], atol=1e-5, rtol=1e-5)


# -- AUC, endpoints, result object -----------------------------------------------------


def test_auc_is_numpy_trapezoid(model, images, heatmaps):
    results = ExplanationMetrics(model, steps=8).compute(images[:2], heatmaps[:2], target_class=0)
    for result in results.values():
        x, y = result.curve
        expected = np.trapezoid(y.double().numpy(), x.numpy(), axis=1)
        np.testing.assert_allclose(result.per_image.numpy(), expected, rtol=1e-12, atol=1e-12)
        assert float(result) == pytest.approx(expected.mean(), abs=1e-12)


def test_curve_endpoints(model, images, heatmaps):
    metrics = ExplanationMetrics(model, steps=5)
    image, heat = images[2], heatmaps[2]
    deletion = metrics.deletion(image, heat, target_class=3).curve[1].tolist()
    insertion = metrics.insertion(image, heat, target_class=3).curve[1].tolist()
    assert deletion[0] == pytest.approx(ref_score(model, image, 3, "probability"), abs=1e-5)
    assert deletion[-1] == pytest.approx(ref_score(model, image * 0, 3, "probability"), abs=1e-5)
    blurred = ref_score(model, ref_blur(image), 3, "probability")
    assert insertion[0] == pytest.approx(blurred, abs=1e-5)
    assert insertion[-1] == pytest.approx(deletion[0], abs=1e-5)
    old = ExplanationMetrics(model, steps=5, insertion_substrate="blur_reflect")
    start = old.insertion(image, heat, target_class=3).curve[1][0].item()
    assert start == pytest.approx(ref_score(model, ref_blur_reflect(image), 3, "probability"))


def test_rise_blur_is_zero_padded_and_differs_from_blur_reflect(images):
    from timmlens.interpretation.metrics import make_substrate, rise_kernel

    rise = make_substrate("blur", images)
    torch.testing.assert_close(rise[0], ref_blur(images[0]), atol=1e-5, rtol=0)
    reflect = make_substrate("blur_reflect", images)
    torch.testing.assert_close(reflect[0], ref_blur_reflect(images[0]), atol=1e-5, rtol=0)
    # on a constant image: zero padding pulls the border towards 0 (the mean colour), the
    # interior (5 px from the edge) keeps the value; reflect padding keeps it everywhere
    ones = torch.ones(1, 3, SIZE, SIZE)
    rise, reflect = make_substrate("blur", ones), make_substrate("blur_reflect", ones)
    torch.testing.assert_close(reflect, ones)
    torch.testing.assert_close(rise[..., 5:-5, 5:-5], ones[..., 5:-5, 5:-5])
    assert rise[0, 0, 0, 0].item() == pytest.approx(float(rise_kernel()[5:, 5:].sum()), abs=1e-6)
    assert rise[0, 0, 0, 0].item() < 0.4


def test_result_behaves_like_a_float(model, images, heatmaps):
    result = ExplanationMetrics(model, steps=4).insertion(images[0], heatmaps[0], target_class=0)
    value = result.value
    assert isinstance(result, MetricResult) and result.higher_is_better
    assert f"{result:.4f}" == f"{value:.4f}"
    assert f"Insertion AUC: {result:.3e}" == f"Insertion AUC: {value:.3e}"
    assert (
        float(result) == value and str(result) == str(value) and round(result, 2) == round(value, 2)
    )
    assert result > value - 1 and result < value + 1 and result == value and result >= value
    assert result - 0.5 == pytest.approx(value - 0.5) and 1 - result == pytest.approx(1 - value)
    assert "insertion" in repr(result) and "steps=4" in repr(result)
    assert result.to_dict()["value"] == value and result.auc.shape == (1,)


def test_heatmap_resolution_and_numpy(model, images, heatmaps):
    """A low-resolution numpy heatmap equals its bilinear upsampling, given as a tensor."""
    small = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(5))
    upsampled = torch.nn.functional.interpolate(
        small[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False
    )[:, 0]
    metrics = ExplanationMetrics(model, steps=4)
    a = metrics.deletion(images[:2], small.numpy(), target_class=[0, 1])
    b = metrics.deletion(images[:2], upsampled, target_class=[0, 1])
    torch.testing.assert_close(a.curve[1], b.curve[1])


# -- sensitivity-n ---------------------------------------------------------------------


@pytest.mark.parametrize(("patch", "n"), [(1, 0.1), (4, 12)])
def test_sensitivity_matches_loop(model, images, heatmaps, patch, n):
    metrics = ExplanationMetrics(
        model, n_samples=12, patch_size=patch, sensitivity_n=n, seed=7, max_batch=7, score="logit"
    )
    result = metrics.sensitivity(images[:2], heatmaps[:2], target_class=[2, 5])
    count = result.settings["n"]
    assert count == (round(0.1 * SIZE * SIZE) if patch == 1 else 12)
    expected = ref_sensitivity(
        model, images[:2], heatmaps[:2], [2, 5], count, patch, 12, 7, "logit"
    )
    np.testing.assert_allclose(result.per_image.numpy(), expected, atol=1e-5)
    assert result.value == pytest.approx(expected.mean(), abs=1e-5)
    assert result.details["output_drops"].shape == (2, 12)


def test_seeded_and_global_rng_untouched(model, images, heatmaps):
    metrics = ExplanationMetrics(model, n_samples=8, patch_size=8, max_batch=16)
    state = torch.get_rng_state()
    first = metrics.sensitivity(images[0], heatmaps[0], target_class=1)
    second = metrics.sensitivity(images[0], heatmaps[0], target_class=1)
    other = metrics.sensitivity(images[0], heatmaps[0], target_class=1, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert first == second and not torch.equal(
        first.details["heatmap_sums"], other.details["heatmap_sums"]
    )


# -- memory bound and model hygiene -----------------------------------------------------


def test_chunk_size_is_honoured(model, images, heatmaps):
    sizes: list[int] = []
    handle = model.register_forward_hook(lambda _m, args, _o: sizes.append(args[0].shape[0]))
    try:
        ExplanationMetrics(model, steps=10, max_batch=4).compute(images, heatmaps, target_class=0)
        assert sizes and max(sizes) <= 4 and sum(sizes) == 3 * 2 * 11
        sizes.clear()
        # a tiny budget: one perturbed image per forward (the probe forward has one too)
        metrics = ExplanationMetrics(model, steps=3, memory_budget_bytes=1)
        metrics.deletion(images[:2], heatmaps[:2], target_class=0)
        assert metrics.last_chunk_size == 1 and set(sizes) == {1}
    finally:
        handle.remove()


def test_budget_gives_larger_chunks(model, images, heatmaps):
    metrics = ExplanationMetrics(model, steps=10, memory_budget_bytes=2**30)
    metrics.deletion(images, heatmaps, target_class=0)
    assert metrics.last_chunk_size == 33  # all jobs in one forward


def test_model_left_as_found(model, images, heatmaps):
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    try:
        metrics = ExplanationMetrics(model, steps=4, n_samples=4)
        metrics.compute(images[:2], heatmaps[:2])
        metrics.sensitivity(images[:2], heatmaps[:2], patch_size=8)
        metrics.run("infidelity", images[:2], GradientTimesInput(model), infidelity_samples=2)
        assert all(m.training for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
        assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    finally:
        model.eval()


# -- Captum metrics -----------------------------------------------------------------------


class SpatialLinear(torch.nn.Module):
    """logit_k = sum over pixels of w_k(h, w) * sum over channels of x: channel-tied weights."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, SIZE, SIZE))
        self.num_classes = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,khw->bk", x, self.weight)


def test_infidelity_is_zero_for_the_exact_linear_explanation(images):
    linear = SpatialLinear()
    metrics = ExplanationMetrics(linear, score="logit")
    exact = metrics.run("infidelity", images[0], linear.weight[1].detach(), target_class=1)
    wrong = metrics.run("infidelity", images[0], linear.weight[2].detach(), target_class=1)
    assert not exact.higher_is_better and exact.value < 1e-8 < wrong.value


def test_captum_metrics_with_an_explainer(model, images):
    metrics = ExplanationMetrics(model)
    explainer = GradientTimesInput(model)
    state = torch.get_rng_state()
    options = {"target_class": [1, 2], "max_sensitivity_samples": 2}
    sens = metrics.run("max-sensitivity", images[:2], explainer, **options)
    again = metrics.run("max_sensitivity", images[:2], explainer, **options)
    assert torch.equal(torch.get_rng_state(), state)
    assert sens.per_image.shape == (2,) and math.isfinite(sens.value) and sens.value > 0
    assert sens == again and not sens.higher_is_better
    infid = metrics.run("infidelity", images[:2], explainer, [1, 2], infidelity_samples=3)
    with torch.enable_grad():
        maps = explainer.explain_batch(images[:2], [1, 2])
    direct = metrics.run("infidelity", images[:2], maps, [1, 2], infidelity_samples=3)
    assert infid.value == pytest.approx(direct.value, rel=1e-5)


def test_evaluate_all_matches_single_calls(model, images, heatmaps):
    metrics = ExplanationMetrics(model, steps=4, n_samples=6, patch_size=8)
    table = metrics.evaluate_all(images[:2], {"a": heatmaps[:2], "b": heatmaps[1:3]}, [0, 1])
    assert set(table) == {"a", "b"} and set(table["a"]) == {"insertion", "deletion", "sensitivity"}
    single = metrics.insertion(images[:2], heatmaps[1:3], [0, 1])
    assert table["b"]["insertion"].value == pytest.approx(single.value, abs=1e-6)
    sens = metrics.sensitivity(images[:2], heatmaps[:2], [0, 1])
    assert table["a"]["sensitivity"].value == pytest.approx(sens.value, abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_device(model, images, heatmaps, device):
    net = model.to(device)
    try:
        metrics = ExplanationMetrics(net, steps=6, max_batch=5)
        result = metrics.compute(images.to(device), heatmaps, target_class=[1, 7, 3])
        cpu = ExplanationMetrics(net.cpu(), steps=6).compute(images, heatmaps, [1, 7, 3])
        torch.testing.assert_close(result["deletion"].y, cpu["deletion"].y, atol=1e-4, rtol=1e-4)
    finally:
        model.cpu()


# -- bad input ------------------------------------------------------------------------------


def test_bad_heatmaps(model, images, heatmaps):
    metrics = ExplanationMetrics(model, steps=4)
    bad = heatmaps[0].clone()
    bad[3, 4] = math.nan
    with pytest.raises(ValueError, match="NaN/inf"):
        metrics.deletion(images[0], bad, 0)
    with pytest.raises(ValueError, match="NaN/inf"):
        metrics.deletion(images[0], heatmaps[0].clone().fill_(math.inf), 0)
    with pytest.raises(ValueError, match=r"2 map\(s\).*for 3 image"):
        metrics.deletion(images, heatmaps[:2], 0)
    with pytest.raises(ValueError, match=r"1 map\(s\).*for 3 image"):
        metrics.deletion(images, heatmaps[0], 0)
    with pytest.raises(ValueError, match=r"expected \(H, W\)"):
        metrics.deletion(images[0], torch.rand(1, 3, SIZE, SIZE), 0)
    with pytest.raises(ValueError, match=r"expected \(H, W\)"):
        metrics.deletion(images[0], torch.rand(SIZE), 0)
    with pytest.raises(ValueError, match="tensor or numpy"):
        metrics.deletion(images[0], [[0.0, 1.0]], 0)
    with pytest.raises(ValueError, match="out of range"):
        metrics.deletion(images[0], heatmaps[0], 10)


def test_constant_heatmap_warns_and_ranks_top_left_first(model, images):
    metrics = ExplanationMetrics(model, steps=4)
    with pytest.warns(TiedHeatmapWarning, match="constant"):
        result = metrics.deletion(images[0], torch.ones(SIZE, SIZE), target_class=0)
    expected = ref_curve(model, images[0], torch.ones(SIZE, SIZE), 0, "deletion", steps=4)
    np.testing.assert_allclose(result.curve[1].numpy(), expected, atol=1e-5)
    with pytest.warns(RuntimeWarning, match="undefined"), pytest.warns(TiedHeatmapWarning):
        sens = metrics.sensitivity(images[0], torch.ones(SIZE, SIZE), 0, n_samples=4)
    assert math.isnan(sens.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "positive int"),
        ({"steps": -3}, "positive int"),
        ({"pixels_per_step": 0}, "positive int"),
        ({"steps": 2.5}, "positive int"),
        ({"steps": 4, "pixels_per_step": 10}, "not both"),
        ({"score": "softmax"}, "score must be one of"),
        ({"substrate": "noise"}, "not a known substrate"),
        ({"blur_kernel": 10}, "odd"),
        ({"blur_sigma": 0}, "blur_sigma"),
        ({"max_batch": 0}, "max_batch"),
        ({"n_samples": 2}, "n_samples"),
    ],
)
def test_bad_settings(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExplanationMetrics(model, **kwargs)


def test_too_many_steps_and_bad_sensitivity_n(model, images, heatmaps):
    with pytest.raises(ValueError, match=r"steps=2000 is more than the 1024 pixels"):
        ExplanationMetrics(model, steps=2000).deletion(images[0], heatmaps[0], 0)
    metrics = ExplanationMetrics(model, n_samples=4)
    with pytest.raises(ValueError, match=r"outside 1\.\.15"):
        metrics.sensitivity(images[0], heatmaps[0], 0, sensitivity_n=16, patch_size=8)
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\)"):
        metrics.sensitivity(images[0], heatmaps[0], 0, sensitivity_n=1.5)
    with pytest.raises(ValueError, match="explain_batch"):
        metrics.run("max-sensitivity", images[0], lambda x: x, 0)
    with pytest.raises(TypeError, match=r"unknown option 'n'.*Did you mean"):
        metrics.sensitivity(images[0], heatmaps[0], 0, n=16)
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.evaluate_all(images[0], {"a": heatmaps[0]}, 0, metrics=["auc"])


# -- options: declared by the metrics, checked by the front -----------------------------


@pytest.mark.parametrize("value", [0, -3, 1.5, 0.0, 1.0, True, "10%"])
def test_sensitivity_n_is_a_count_or_a_fraction(model, value):
    with pytest.raises(ValueError, match=r"sensitivity_n must be a positive int .* \(0, 1\)"):
        ExplanationMetrics(model, sensitivity_n=value)


def test_patch_size_must_fit_the_image(model, images, heatmaps):
    metrics = ExplanationMetrics(model, patch_size=1000, n_samples=4)
    with pytest.raises(ValueError, match=r"patch_size=1000 does not fit the 32x32 model input"):
        metrics.sensitivity(images[0], heatmaps[0], 0)
    with pytest.raises(ValueError, match=r"patch_size=40 does not fit the 32x32 model input"):
        ExplanationMetrics(model, n_samples=4).sensitivity(images[0], heatmaps[0], 0, patch_size=40)


def test_unknown_option_lists_the_options_and_the_closest(model):
    with pytest.raises(TypeError, match=r"unknown option 'stpes'.*Did you mean 'steps'") as error:
        ExplanationMetrics(model, stpes=4)
    assert "road_percentiles" in str(error.value) and "sensitivity_n" in str(error.value)
