"""The metric registry, the pluggable perturbation of the scoring engine, the memory probe."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from timmlens.evaluation import evaluate
from timmlens.interpretation.metrics import (
    ExplanationMetrics,
    MetricContext,
    MetricOption,
    MetricResult,
    metrics,
    register_metric,
    resolve_metric,
    scoped_metric_registry,
    unregister_metric,
)
from timmlens.interpretation.metrics.options import positive
from timmlens.interpretation.scoring import (
    BACKWARD_BUDGET_BYTES,
    FORWARD_BUDGET_BYTES,
    masked_perturbation,
    memory_budget,
    score_in_chunks,
)
from timmlens.testing import explainable_model

SIZE = 32


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return explainable_model("test_resnet", num_classes=10)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _centre_mass(context: MetricContext) -> torch.Tensor:
    """Share of each heatmap's mass in the central 16 x 16 pixels: ``(B,)``."""
    maps = context.heatmaps
    return maps[:, 8:-8, 8:-8].sum((1, 2)) / maps.sum((1, 2))


def test_builtins_listed_with_directions_and_aliases():
    faithfulness = ["road_morf", "road_lerf", "aopc", "average_drop", "increase_in_confidence"]
    assert metrics() == [
        "insertion",
        "deletion",
        "sensitivity",
        "infidelity",
        "max-sensitivity",
        *faithfulness,
    ]
    assert metrics("heatmap") == [
        "insertion",
        "deletion",
        "sensitivity",
        "infidelity",
        *faithfulness,
    ]
    assert metrics("explainer") == ["max-sensitivity"]
    assert resolve_metric(" Sensitivity-N ").name == "sensitivity"
    assert resolve_metric("max_sensitivity").name == "max-sensitivity"
    assert [resolve_metric(n).higher_is_better for n in ("insertion", "deletion")] == [True, False]
    assert resolve_metric("insertion").reference.startswith("Petsiuk")


def test_unknown_and_misplaced_names_say_what_to_use():
    with pytest.raises(ValueError, match=r"Unknown metric 'insertoin'.*Did you mean 'insertion'"):
        resolve_metric("insertoin")
    with pytest.raises(ValueError, match="needs an explainer"):
        resolve_metric("max-sensitivity", needs="heatmap")
    with pytest.raises(ValueError, match="already registered"):
        register_metric("deletion", higher_is_better=False)(_centre_mass)


def test_registered_function_runs_in_evaluate_all_and_is_removed_after_scope(model, images):
    heatmaps = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with scoped_metric_registry():
        register_metric("centre-mass", aliases=("centre",), higher_is_better=True)(_centre_mass)
        results = ExplanationMetrics(model, steps=4).evaluate_all(
            images, {"rand": heatmaps}, [1, 2], metrics=["centre", "deletion"]
        )
        assert "centre-mass" in metrics("heatmap")
    row = results["rand"]
    assert list(row) == ["centre-mass", "deletion"]
    result = row["centre-mass"]
    assert isinstance(result, MetricResult) and result.higher_is_better
    expected = heatmaps[:, 8:-8, 8:-8].sum((1, 2)) / heatmaps.sum((1, 2))
    torch.testing.assert_close(result.per_image, expected.double())
    assert result.targets.tolist() == [1, 2]
    assert "centre-mass" not in metrics()


@pytest.mark.filterwarnings("ignore::timmlens.interpretation.metrics.TiedHeatmapWarning")
def test_registered_class_metric_is_a_column_of_evaluate(model, images, tmp_path):
    with scoped_metric_registry():

        @register_metric("peak", higher_is_better=False, summary="largest heatmap value")
        class Peak:
            def compute(self, context: MetricContext) -> torch.Tensor:
                return context.heatmaps.flatten(1).amax(1)

        summary = evaluate(
            model,
            TensorDataset(images),
            metrics=["peak", "deletion"],
            out=tmp_path,
            progress=False,
            metric_options={"steps": 4},
        )
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0.0 <= row["peak"] <= 1.0 for row in rows)
    assert summary.table["gradcam"]["peak"].mean == pytest.approx(
        sum(row["peak"] for row in rows) / 2
    )
    assert "peak" not in metrics()


def test_wrong_metric_output_is_named(model, images):
    with scoped_metric_registry():
        register_metric("scalar", higher_is_better=True)(lambda context: torch.tensor(1.0))
        with pytest.raises(ValueError, match=r"metric 'scalar' returned \(\).*shape \(2,\)"):
            ExplanationMetrics(model).evaluate_all(
                images, {"m": torch.rand(2, SIZE, SIZE)}, [0, 0], metrics=["scalar"]
            )


def test_unregister_returns_the_spec_and_restores_the_name():
    with scoped_metric_registry():
        spec = unregister_metric("infidelity")
        assert spec.name == "infidelity" and "infidelity" not in metrics()
        with pytest.raises(KeyError, match="no metric 'infidelity'"):
            unregister_metric("infidelity")
    assert "infidelity" in metrics()


def test_custom_perturbation_flows_through_the_engine_in_chunks(model, images):
    """A perturbation is any ``make_inputs(lo, hi)``: here noise scaled per job."""
    calls = []
    scales = torch.linspace(0.0, 1.0, 7)
    noise = torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))

    def noisy(lo: int, hi: int) -> torch.Tensor:
        calls.append((lo, hi))
        return images[0] + scales[lo:hi, None, None, None] * noise

    targets = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    scores = score_in_chunks(model, noisy, targets, chunk=3, kind="logit")
    assert calls == [(0, 3), (3, 6), (6, 7)]
    with torch.no_grad():
        logits = model(images[0] + scales[:, None, None, None] * noise)
    torch.testing.assert_close(scores, logits[torch.arange(7), targets], rtol=1e-4, atol=1e-5)


def test_masked_perturbation_selects_exactly_and_blends_soft_masks(images):
    start, finish = images[:1], torch.zeros_like(images[:1])
    groups = torch.zeros(2, dtype=torch.long)
    pixels = SIZE * SIZE
    hard = torch.tensor([[True] * (pixels // 2) + [False] * (pixels // 2)]).repeat(2, 1)
    inputs = masked_perturbation(start, finish, groups, lambda g, lo, hi: hard[lo:hi])(0, 2)
    assert torch.equal(inputs[0, :, : SIZE // 2], torch.zeros(3, SIZE // 2, SIZE))
    assert torch.equal(inputs[0, :, SIZE // 2 :], images[0, :, SIZE // 2 :])
    soft = torch.full((2, pixels), 0.25)
    blended = masked_perturbation(start, finish, groups, lambda g, lo, hi: soft[lo:hi])(1, 2)
    torch.testing.assert_close(blended[0], 0.75 * images[0])


def test_one_memory_probe_two_defaults():
    cpu = torch.device("cpu")
    assert memory_budget(cpu) == FORWARD_BUDGET_BYTES == 512 * 2**20
    assert memory_budget(cpu, "backward") == BACKWARD_BUDGET_BYTES == 2 * 2**30
    assert memory_budget(cpu, "backward", budget_bytes=1234) == 1234
    with pytest.raises(ValueError, match="'forward' for inference-only"):
        memory_budget(cpu, "sideways")  # type: ignore[arg-type]


def test_methods_and_metrics_share_one_registry_class():
    from timmlens._registry import Registry
    from timmlens.interpretation import registry as method_registry
    from timmlens.interpretation.metrics import registry as metric_registry

    assert isinstance(method_registry._REGISTRY, Registry)
    assert isinstance(metric_registry._REGISTRY, Registry)


def test_a_metric_declares_its_options_and_the_front_checks_them(model, images):
    margin = MetricOption("margin", 8, "pixels left out at each border", positive("margin"))
    heatmaps = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with scoped_metric_registry():

        @register_metric("inner-mass", higher_is_better=True, options=(margin,))
        def inner_mass(context: MetricContext) -> torch.Tensor:
            m = context.options["margin"]
            maps = context.heatmaps
            return maps[:, m:-m, m:-m].sum((1, 2)) / maps.sum((1, 2))

        metrics = ExplanationMetrics(model, margin=4)
        result = metrics.run("inner-mass", images, heatmaps, [1, 2])
        expected = heatmaps[:, 4:-4, 4:-4].sum((1, 2)) / heatmaps.sum((1, 2))
        torch.testing.assert_close(result.per_image, expected.double())
        narrow = metrics.run("inner-mass", images, heatmaps, [1, 2], margin=12)
        assert narrow.value < result.value
        with pytest.raises(ValueError, match="margin must be a positive int"):
            ExplanationMetrics(model, margin=0)
        with pytest.raises(TypeError, match=r"unknown option 'steps'.*valid options: margin"):
            metrics.run("inner-mass", images, heatmaps, [1, 2], steps=4)
        with pytest.raises(ValueError, match="option 'seed' with default 1"):
            register_metric(
                "seeded", higher_is_better=True, options=(MetricOption("seed", 1, ""),)
            )(inner_mass)
    with pytest.raises(TypeError, match="unknown option 'margin'"):
        ExplanationMetrics(model, margin=4)


def test_the_context_does_not_import_the_front():
    import ast
    from pathlib import Path

    import timmlens.interpretation.metrics.context as context

    tree = ast.parse(Path(context.__file__).read_text(encoding="utf-8"))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any("evaluator" in name for name in imported)
