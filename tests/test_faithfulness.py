"""ROAD, Average Drop / Increase in Confidence and AOPC against pytorch-grad-cam's own
classes (the ROAD authors' imputer and metrics it vendors) and plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from timmlens.errors import MetricInputError, TimmLensError
from timmlens.interpretation.metrics import ExplanationMetrics, impute, metrics, pixel_ranks
from timmlens.interpretation.metrics.confidence import normalised_maps
from timmlens.interpretation.metrics.road import (
    nested_dissection,
    removal_masks,
    removed_counts,
)

road_module = pytest.importorskip("pytorch_grad_cam.metrics.road")
from pytorch_grad_cam.metrics.cam_mult_image import (  # noqa: E402
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
)
from pytorch_grad_cam.metrics.perturbation_confidence import (  # noqa: E402
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget  # noqa: E402

# grad-cam's helpers turn lists of tensors into numpy arrays, which numpy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = 40  # 1600 pixels: grad-cam's np.percentile threshold then removes exactly p %
TARGETS = [1, 2]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def heatmaps() -> torch.Tensor:
    return torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


# -- ROAD --------------------------------------------------------------------------------


def test_imputation_equals_the_authors_imputer(images):
    generator = torch.Generator().manual_seed(3)
    removed = torch.rand(4, SIZE * SIZE, generator=generator) < torch.tensor(
        [[0.1], [0.5], [0.9], [0.97]]
    )
    removed[0, :SIZE] = True  # a whole border row removed
    ours = impute(images[0], removed)
    imputer = road_module.NoisyLinearImputer(noise=0.0)
    for k in range(len(removed)):
        theirs = imputer(images[0], (~removed[k]).float().view(SIZE, SIZE))
        torch.testing.assert_close(ours[k], theirs, atol=1e-5, rtol=0)
        kept = ~removed[k].view(SIZE, SIZE)
        assert torch.equal(ours[k][:, kept], images[0][:, kept])  # kept pixels exactly


def test_imputation_of_blobs_equals_the_authors_imputer_on_any_thread_count(images):
    """Smooth maps remove blobs: deep dissections of large holes, the case ROAD meets."""
    side = 48
    image = torch.nn.functional.interpolate(images[:1], size=(side, side))[0]
    coarse = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(4))
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear")
    ranks = pixel_ranks(smooth[:, 0])[0]
    removed = removal_masks(ranks, removed_counts((30, 90), side * side), "morf")
    imputer = road_module.NoisyLinearImputer(noise=0.0)
    ours = impute(image, removed)
    for k in range(len(removed)):
        theirs = imputer(image, (~removed[k]).float().view(side, side))
        torch.testing.assert_close(ours[k], theirs, atol=1e-5, rtol=0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the systems are solved serially: the same values
        assert torch.equal(impute(image, removed), ours)
    finally:
        torch.set_num_threads(threads)


def test_nested_dissection_is_a_permutation_with_separators_last():
    rows, cols = np.divmod(np.arange(30 * 20), 20)
    order = nested_dissection(rows, cols)
    assert sorted(order.tolist()) == list(range(600))
    # the first split is across the longer side (30 rows) at the median row: that row
    # of 20 pixels separates the halves, so it is eliminated last
    assert sorted(order[-20:].tolist()) == list(range(15 * 20, 16 * 20))


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_equals_pytorch_grad_cam_road_at_equal_percentiles(small, images, heatmaps, order):
    """grad-cam's ROAD metric with the authors' imputer at noise 0; its percentile q is
    the share kept, so our p removed is its 100 - p."""
    percentiles = (10, 50, 90)
    ours = ExplanationMetrics(small).run(
        f"road_{order}", images, heatmaps, TARGETS, road_percentiles=percentiles, road_noise=0
    )
    remove = RemoveMostRelevantFirst if order == "morf" else RemoveLeastRelevantFirst
    targets = [ClassifierOutputSoftmaxTarget(t) for t in TARGETS]
    expected = []
    for p in percentiles:
        metric = PerturbationConfidenceMetric(
            remove(100 - p, road_module.NoisyLinearImputer(noise=0.0))
        )
        with torch.no_grad():
            scores = metric(images, heatmaps.numpy(), targets, small.eval(), return_diff=False)
        expected.append(scores)
    expected = np.stack(expected, axis=1)  # (B, P)
    x, y = ours.curve
    np.testing.assert_allclose(x.numpy(), np.array(percentiles) / 100)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.per_image.numpy(), expected.mean(1), atol=1e-5, rtol=0)
    assert ours.name == f"road_{order}" and ours.higher_is_better == (order == "lerf")


def test_road_logit_score_and_removed_count(small, images, heatmaps):
    metrics = ExplanationMetrics(small)
    options = {"road_percentiles": (25,), "road_noise": 0}
    logit = metrics.run("road_morf", images[0], heatmaps[0], 3, **options, score="logit")
    prob = metrics.run("road_morf", images[0], heatmaps[0], 3, **options, score="prob")
    removed = heatmaps[0].flatten() >= heatmaps[0].flatten().sort(descending=True).values[399]
    imputed = impute(images[0], removed[None])
    with torch.no_grad():
        logits = small(imputed)[0]
    assert logit.curve[1].shape == (1,)
    assert logit.curve[1].item() == pytest.approx(logits[3].item(), abs=1e-5)
    assert prob.curve[1].item() == pytest.approx(logits.softmax(0)[3].item(), abs=1e-6)


def test_road_noise_is_seeded_chunk_independent_and_leaves_global_rng(small, images, heatmaps):
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    metrics = ExplanationMetrics(small)
    first = metrics.run("road_lerf", images, heatmaps, TARGETS)
    again = ExplanationMetrics(small, max_batch=4).compute(
        images, heatmaps, TARGETS, metrics=["road_morf", "road_lerf"]
    )["road_lerf"]
    other = metrics.run("road_lerf", images, heatmaps, TARGETS, seed=5)
    quiet = metrics.run("road_lerf", images, heatmaps, TARGETS, road_noise=0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1])
    torch.testing.assert_close(first.y, again.y, atol=1e-6, rtol=0)
    assert not torch.equal(first.y, other.y) and not torch.equal(first.y, quiet.y)
    assert first.settings["noise"] == 0.01 and first.settings["seed"] == 0


def test_road_through_the_registry_and_evaluate_all(small, images, heatmaps):
    metrics = ExplanationMetrics(small, road_percentiles=(20, 60), road_noise=0.0)
    rows = metrics.evaluate_all(
        images, {"a": heatmaps, "b": 1 - heatmaps}, TARGETS, metrics=["road_morf", "road_lerf"]
    )
    direct = metrics.run("road_morf", images, heatmaps, TARGETS)
    torch.testing.assert_close(rows["a"]["road_morf"].y, direct.y)
    assert rows["a"]["road_lerf"].y.shape == (2, 2)
    # reversing the ranking swaps the orders (no ties in random maps)
    torch.testing.assert_close(rows["a"]["road_morf"].y, rows["b"]["road_lerf"].y)


# -- Average Drop, Increase in Confidence -----------------------------------------------


def test_confidence_metrics_equal_pytorch_grad_cam(small, images, heatmaps):
    maps = heatmaps * 3 - 1  # any range: min-max normalised to [0, 1] as grad-cam's CAMs are
    results = ExplanationMetrics(small).compute(
        images, maps, TARGETS, metrics=["average_drop", "increase_in_confidence"]
    )
    cams = normalised_maps(maps).numpy()
    targets = [ClassifierOutputSoftmaxTarget(t) for t in TARGETS]
    model = small.eval()
    with torch.no_grad():
        change = CamMultImageConfidenceChange()(images, cams, targets, model)
        drop = DropInConfidence()(images, cams, targets, model)
        increase = IncreaseInConfidence()(images, cams, targets, model)
        before = (
            CamMultImageConfidenceChange()(images, cams, targets, model, return_diff=False) - change
        )
    drop_pct = results["average_drop"]
    # grad-cam's DropInConfidence is max(0, Y - O); Chattopadhay et al. divide by Y (in %)
    np.testing.assert_allclose(drop_pct.per_image.numpy(), 100 * drop / before, rtol=1e-4)
    np.testing.assert_allclose(
        results["increase_in_confidence"].per_image.numpy(), 100 * increase, atol=0
    )
    np.testing.assert_allclose(
        drop_pct.details["original_scores"].numpy(), before, rtol=1e-5, atol=1e-7
    )
    assert not drop_pct.higher_is_better and results["increase_in_confidence"].higher_is_better


def test_confidence_of_a_constant_map_leaves_the_image(small, images):
    with pytest.warns(UserWarning, match="constant"):
        result = ExplanationMetrics(small).run("average_drop", images[0], torch.ones(SIZE, SIZE), 0)
    assert result.value == pytest.approx(0.0, abs=1e-4)


# -- AOPC ----------------------------------------------------------------------------------


def ref_aopc(model, image, heatmap, target, patch, steps):
    """Samek et al.'s MoRF loop: patches by heatmap sum (ties: first patch first), zeros."""
    columns, rows = -(-SIZE // patch), -(-SIZE // patch)
    sums = [
        (
            float(heatmap[r * patch : (r + 1) * patch, c * patch : (c + 1) * patch].double().sum()),
            r,
            c,
        )
        for r in range(rows)
        for c in range(columns)
    ]
    order = sorted(range(len(sums)), key=lambda i: (-sums[i][0], i))
    current = image.clone()
    with torch.no_grad():
        scores = [model(current[None]).softmax(1)[0, target].item()]
        for i in order[:steps]:
            _, r, c = sums[i]
            current[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = 0
            scores.append(model(current[None]).softmax(1)[0, target].item())
    return np.mean(scores[0] - np.array(scores)), scores


@pytest.mark.parametrize(("patch", "steps"), [(13, 100), (8, 6)])
def test_aopc_matches_loop(small, images, heatmaps, patch, steps):
    result = ExplanationMetrics(small, max_batch=7).run(
        "aopc", images, heatmaps, TARGETS, aopc_patch_size=patch, aopc_steps=steps
    )
    for b in range(2):
        value, scores = ref_aopc(small, images[b], heatmaps[b], TARGETS[b], patch, steps)
        assert result.per_image[b].item() == pytest.approx(value, abs=1e-6)
        np.testing.assert_allclose(result.y[b].numpy(), scores, atol=1e-6)
    # 40 px in 13 px patches: 4 x 4, the last row and column 1 px wide
    assert result.settings["steps"] == min(steps, math.ceil(SIZE / patch) ** 2)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percentiles", "match"),
    [
        ((0, 50), r"percentiles \[0\] are outside \(0, 100\)"),
        ((50, 100), r"percentiles \[100\] are outside \(0, 100\)"),
        ((-5, 150), r"outside \(0, 100\)"),
        ((30, 10, 20), r"not in increasing order; give them sorted, e.g. \(10, 20, 30\)"),
        ((10, 20, 20), r"percentiles \[20\] are given more than once"),
        ((), "non-empty sequence"),
        ("10,20", "sequence of numbers"),
        ((10, float("nan")), "finite numbers"),
    ],
)
def test_bad_percentiles(small, images, heatmaps, percentiles, match):
    metrics = ExplanationMetrics(small)
    with pytest.raises(MetricInputError, match=match):
        metrics.run("road_morf", images[0], heatmaps[0], 0, road_percentiles=percentiles)
    with pytest.raises(MetricInputError, match=match):
        ExplanationMetrics(small, road_percentiles=percentiles)


def test_bad_road_options_and_nan_heatmaps(small, images, heatmaps):
    metrics = ExplanationMetrics(small)
    with pytest.raises(ValueError, match=r"Unknown metric 'road_middle'.*Did you mean 'road_"):
        metrics.run("road_middle", images[0], heatmaps[0], 0)
    with pytest.raises(MetricInputError, match="noise must be a finite number >= 0"):
        metrics.run("road_morf", images[0], heatmaps[0], 0, road_noise=-0.1)
    with pytest.raises(TypeError, match=r"unknown option 'steps'.*valid options: .*road_noise"):
        metrics.run("road_morf", images[0], heatmaps[0], 0, steps=4)
    with pytest.raises(ValueError, match="tie_order='random' is not known"):
        ExplanationMetrics(small, tie_order="random")
    bad = heatmaps[0].clone()
    bad[3, 4] = float("nan")
    for name in ("road_morf", "average_drop", "aopc", "insertion"):
        with pytest.raises(MetricInputError, match=r"contains 1 NaN/inf value\(s\)") as info:
            metrics.compute(images[0], bad, 0, metrics=[name])
        assert isinstance(info.value, TimmLensError) and "nan_to_num" in str(info.value)


def test_new_metrics_are_registered():
    for name in ("road_morf", "road_lerf", "aopc", "average_drop", "increase_in_confidence"):
        assert name in metrics("heatmap")
