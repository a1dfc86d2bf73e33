"""The known-answer task: the generator, the scores against the evidence, the paired statistics."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy import stats

from timmlens.evaluation.paired import (
    paired_difference,
    rank_methods,
    ranking_agreement,
)
from timmlens.groundtruth import CLASSES, DISTRACTORS, generate
from timmlens.groundtruth.scores import (
    bounding_boxes,
    energy_pointing_game,
    pointing_hits,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)


@pytest.fixture(scope="module")
def sample():
    return generate(24, size=64, seed=3)


def test_generator_shapes_and_types(sample):
    assert sample.images.shape == (24, 64, 64, 3) and sample.images.dtype == np.uint8
    assert sample.labels.shape == (24,) and sample.labels.dtype == np.int64
    assert sample.evidence.shape == sample.distractors.shape == (24, 64, 64)
    assert sample.evidence.dtype == sample.distractors.dtype == bool
    assert len(sample.class_names) == len(CLASSES) >= 6
    assert set(sample.labels.tolist()) <= set(range(len(CLASSES)))


def test_generator_is_deterministic_and_prefix_stable(sample):
    again = generate(24, size=64, seed=3)
    first = generate(5, size=64, seed=3)
    other = generate(5, size=64, seed=4)
    assert np.array_equal(again.images, sample.images)
    assert np.array_equal(first.images, sample.images[:5])
    assert np.array_equal(first.evidence, sample.evidence[:5])
    assert not np.array_equal(other.images, first.images)


def test_objects_are_apart_and_visible(sample):
    assert sample.evidence.sum((1, 2)).min() > 20  # a few dozen pixels at 64 px
    assert not (sample.evidence & sample.distractors).any()
    for masks, union in zip(sample.distractor_masks, sample.distractors, strict=True):
        assert 2 <= len(masks) <= 4
        assert np.array_equal(np.logical_or.reduce(masks), union)


def test_distractors_share_shape_or_colour_but_are_never_a_class():
    assert not set(DISTRACTORS) & set(CLASSES)
    class_shapes = {shape for shape, _ in CLASSES}
    class_colours = {colour for _, colour in CLASSES}
    for shape, colour in DISTRACTORS:
        assert shape in class_shapes and colour in class_colours


def test_removing_an_object_restores_the_background(sample):
    removed = sample.without(sample.evidence)
    assert np.array_equal(removed[sample.evidence], sample.backgrounds[sample.evidence])
    assert np.array_equal(removed[~sample.evidence], sample.images[~sample.evidence])


def test_labels_are_balanced_over_a_large_draw():
    labels = generate(600, size=32, seed=0).labels
    counts = np.bincount(labels, minlength=len(CLASSES))
    assert stats.chisquare(counts).pvalue > 0.01


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "at least 1"),
        ({"n": 4, "size": 16}, "between 32 and 512"),
        ({"n": 4, "seed": -1}, "seed must be >= 0"),
        ({"n": 2.5}, "n must be an int"),
    ],
)
def test_bad_arguments_say_what_to_do(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        generate(**kwargs)


# -- scores against the evidence, checked against Quantus's formulas (numpy, one image at a
# time; quantus/metrics/localisation/relevance_{mass,rank}_accuracy.py, v0.6.0) --------------


def _quantus_mass(a: np.ndarray, s: np.ndarray) -> float:
    a, s = a.reshape(-1), s.reshape(-1).astype(bool)
    return float((a * s).sum() / a.sum())


def _quantus_rank(a: np.ndarray, s: np.ndarray) -> float:
    a, s = a.reshape(-1), s.reshape(-1).astype(bool)
    k = int(s.sum())
    top = np.argsort(-a)[:k]
    return len(np.intersect1d(top, np.nonzero(s)[0])) / k


def _random_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(6, 20, 20, generator=generator)
    masks = torch.zeros(6, 20, 20, dtype=torch.bool)
    for i in range(6):
        y, x = torch.randint(0, 14, (2,), generator=generator).tolist()
        masks[i, y : y + 6, x : x + 5] = True
    return maps, masks


@pytest.mark.parametrize("seed", range(3))
def test_mass_and_rank_accuracy_equal_quantus(seed):
    maps, masks = _random_case(seed)
    mass = relevance_mass_accuracy(maps, masks)
    rank = relevance_rank_accuracy(maps, masks)
    for i in range(len(maps)):
        assert mass[i].item() == pytest.approx(_quantus_mass(maps[i].numpy(), masks[i].numpy()))
        assert rank[i].item() == pytest.approx(_quantus_rank(maps[i].numpy(), masks[i].numpy()))


def test_scores_on_maps_whose_answer_is_known():
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    perfect = masks.double()
    outside = (~masks).double()
    half = perfect + outside * (9 / 91)  # as much mass outside as inside
    maps = torch.stack([perfect[0], outside[1], half[2]])
    assert relevance_mass_accuracy(maps, masks).tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert relevance_rank_accuracy(maps, masks).tolist() == pytest.approx([1.0, 0.0, 1.0])
    assert pointing_hits(maps, masks).tolist() == [1.0, 0.0, 1.0]
    empty = torch.zeros(1, 10, 10)
    assert torch.isnan(relevance_mass_accuracy(empty, masks[:1])).all()


def test_energy_pointing_game_uses_the_bounding_box():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 1, 1] = masks[0, 4, 5] = True  # box rows 1-4, cols 1-5
    box = bounding_boxes(masks)
    assert box.sum() == 4 * 5 and box[0, 2, 3]
    maps = torch.zeros(1, 8, 8)
    maps[0, 3, 3] = 1.0  # in the box, not in the mask
    assert energy_pointing_game(maps, masks).item() == 1.0
    assert relevance_mass_accuracy(maps, masks).item() == 0.0


def test_non_finite_maps_are_refused():
    maps, masks = _random_case(0)
    maps[2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"images \[2\]"):
        relevance_mass_accuracy(maps, masks)


# -- paired statistics -------------------------------------------------------------------


def test_paired_difference_is_the_wilcoxon_test_of_the_differences():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=80)
    b = a - 0.05 + rng.normal(0, 0.05, size=80)
    result = paired_difference(a, b)
    assert result.p_value == pytest.approx(stats.wilcoxon(a - b, zero_method="zsplit").pvalue)
    assert result.low < result.mean < result.high and result.mean == pytest.approx((a - b).mean())
    assert result.distinguishable
    same = paired_difference(a, a)
    assert same.p_value == 1.0 and not same.distinguishable


def test_nan_pairs_are_left_out():
    a = np.array([0.1, 0.5, np.nan, 0.7, 0.2, 0.9])
    b = np.array([0.0, 0.4, 0.3, np.nan, 0.1, 0.8])
    assert paired_difference(a, b).n == 4


def test_ranking_marks_neighbours_it_cannot_tell_apart():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.6, size=60)
    scores = {
        "strong": base + 0.3,
        "twin": base + 0.3 + rng.normal(0, 1e-3, size=60),
        "weak": base,
    }
    rows = rank_methods(scores)
    assert [row.name for row in rows][2] == "weak"
    assert rows[0].tied_with_next  # strong vs twin: noise only
    assert not rows[1].tied_with_next  # twin vs weak: 0.3 apart on every image
    assert rows[-1].versus_next is None
    assert all(0.0 <= row.estimate.low <= row.estimate.high <= 1.0 for row in rows)


def test_methods_without_values_rank_last_in_either_direction():
    scores = {"empty": np.full(5, np.nan), "low": np.full(5, 0.2), "high": np.full(5, 0.8)}
    assert [r.name for r in rank_methods(scores)] == ["high", "low", "empty"]
    lower_first = rank_methods(scores, higher_is_better=False)
    assert [r.name for r in lower_first] == ["low", "high", "empty"]


def test_ranking_agreement_is_kendalls_tau():
    rng = np.random.default_rng(2)
    truth = {name: rng.uniform(size=40) + shift for shift, name in enumerate("abcde")}
    same = ranking_agreement(truth, {k: v * 2 for k, v in truth.items()})
    reverse = ranking_agreement(truth, {k: -v for k, v in truth.items()})
    flipped = ranking_agreement(
        truth, {k: -v for k, v in truth.items()}, other_higher_is_better=False
    )
    assert same.tau == pytest.approx(1.0) and reverse.tau == pytest.approx(-1.0)
    assert flipped.tau == pytest.approx(1.0)
    assert same.low <= same.tau <= same.high


def test_head_is_the_smaller_draw(sample):
    head = sample.head(5)
    small = generate(5, size=64, seed=3)
    assert len(head) == 5 and np.array_equal(head.images, small.images)
    assert np.array_equal(head.evidence, small.evidence)
    assert len(head.distractor_masks) == 5


def _fake_results(order: list[str], images: int = 40, seed: int = 0):
    """MethodScores whose mass accuracy decreases along ``order``, with two metrics."""
    from timmlens.groundtruth.benchmark import MethodScores

    rng = np.random.default_rng(seed)
    results = {}
    for position, name in enumerate(order):
        mass = np.clip(0.8 - 0.2 * position + 0.02 * rng.standard_normal(images), 0, 1)
        scores = {k: mass for k in ("mass accuracy", "rank accuracy", "pointing game")}
        scores["energy pointing game"] = mass
        metrics = {"insertion": mass + 0.01 * rng.standard_normal(images)}
        metrics["deletion"] = 1 - metrics["insertion"]
        results[name] = MethodScores(name, scores, metrics, images=images)
    return results


def test_the_page_is_rebuilt_from_every_models_raw_file(tmp_path):
    from timmlens.groundtruth.report import page_from_raw, raw_path, write_raw

    first = _fake_results(["gradcam", "saliency", "randomcam"])
    second = _fake_results(["saliency", "randomcam", "gradcam"], seed=1)
    write_raw(raw_path("bundled:gt-resnet", tmp_path), first, "note one")
    page = tmp_path / "page.md"
    assert page_from_raw(tmp_path, page) == ["bundled:gt-resnet"]
    write_raw(raw_path("bundled:gt-vit", tmp_path), second, "note two")
    assert page_from_raw(tmp_path, page) == ["bundled:gt-resnet", "bundled:gt-vit"]
    text = page.read_text()
    assert "note one" in text and "note two" in text
    # the overview: each method's rank on each model, best mean rank first
    overview = text.split("at a glance")[1].split("\n\n")[1].splitlines()
    assert re.fullmatch(r"\| `saliency` \| 0\.[56]\d\d \(2\) \| 0\.[78]\d\d \(1\) \|", overview[2])
    assert re.fullmatch(r"\| `gradcam` \| 0\.[78]\d\d \(1\) \| 0\.[34]\d\d \(3\) \|", overview[3])
    assert "`randomcam` (reference)" in overview[4]
    # the metric agreement: insertion follows the ranking, deletion is turned round
    agreement = text.split("## Which metric to believe")[1]
    assert "| insertion | +1.00" in agreement and "| deletion | +1.00" in agreement
    assert not list(tmp_path.glob("*.partial"))


def test_a_page_without_results_says_what_to_run(tmp_path):
    from timmlens.groundtruth.report import page_from_raw

    with pytest.raises(FileNotFoundError, match=r"no known-answer results.*--model"):
        page_from_raw(tmp_path, tmp_path / "page.md")
