"""Callable targets: ``lambda z: z[:, 7]`` gives exactly what ``7`` gives, for every method.

Parametrised over the method registry (a new method is checked with no edit), through
explainers, metrics and the one-call helpers; plus linearity in the target (Captum's
linearity: IG of a sum of logits is the sum of their IGs) and the errors a bad callable
gets.
"""

from __future__ import annotations

from typing import Any

import matplotlib
import pytest
import torch
from torch import nn

from timmlens import TargetError
from timmlens.interpretation import compare_methods, create_explainer, quick_explain
from timmlens.interpretation.metrics import ExplanationMetrics
from timmlens.interpretation.registry import as_explainer, methods, resolve_method, supports
from timmlens.testing import explainable_model

matplotlib.use("Agg")

SIDE, CLASSES, TARGET = 64, 10, 7
#: Beyond each method's quick_options: ScoreCAM's masked copies in chunks of 64 (its
#: default chunk is sized by a memory probe, a forward more per call).
CHUNKING: dict[str, dict[str, Any]] = {"scorecam": {"max_batch": 64}}
#: FEM's threshold mean + k std can't be passed on the CNN's 2x2 cells at k=2 (the map would be
#: all zero, as pytorch-grad-cam's): k=1 gives a real map to compare.
THRESHOLDS: dict[str, dict[str, Any]] = {"fem": {"k": 1}}
#: methods defined against one class (FinerCAM contrasts it with its nearest classes): a
#: callable target is refused with the reason instead
NEEDS_A_CLASS = {"finercam"}
MODELS = {"cnn": ("test_resnet", {}), "vit": ("test_vit", {"img_size": SIDE})}


def select(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, TARGET]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {
        key: explainable_model(name, num_classes=CLASSES, **kw)
        for key, (name, kw) in MODELS.items()
    }


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def image(inputs) -> torch.Tensor:
    """One image (``(1, C, H, W)``) for the sweep over methods; batches are checked below."""
    return inputs[:1]


@pytest.mark.parametrize(
    ("family", "method"), [(family, method) for method in methods() for family in MODELS]
)
def test_callable_equals_class_index(models, image, family, method):
    inputs = image
    model = models[family]
    if not supports(model, method):
        pytest.skip(f"{method} does not apply to {MODELS[family][0]}")
    options = {**resolve_method(method).quick_options, **CHUNKING.get(method, {})}
    explainer = as_explainer(method, model, **options, **THRESHOLDS.get(method, {}))
    by_index = explainer.explain_full(inputs, target_class=TARGET)
    if method in NEEDS_A_CLASS:
        with pytest.raises(TargetError, match="needs a class, not a callable target"):
            explainer.explain_full(inputs, target_class=select)
        return
    by_callable = explainer.explain_full(inputs, target_class=lambda z: z[:, TARGET])
    predicted = model(inputs).argmax(dim=1)
    assert by_index.heatmap.std() > 0  # a real map, not a constant that equals anything
    assert by_callable.target_label == "custom target (lambda)"
    assert by_index.target_label is None
    assert torch.equal(by_callable.targets, predicted)  # a callable has no class: the prediction
    # randomcam too, whose random weights are keyed by class: the callable reads class 7
    assert torch.equal(by_callable.heatmap, by_index.heatmap)
    if by_index.attributions is not None:
        assert torch.equal(by_callable.attributions, by_index.attributions)


def test_a_named_function_and_a_column_are_accepted(models, inputs):
    explainer = create_explainer("gradcam", models["cnn"])
    expected = explainer.explain(inputs, TARGET)
    assert torch.equal(explainer.explain(inputs, select), expected)
    assert explainer.explain_full(inputs, select).target_label == "custom target (select)"
    column = explainer.explain(inputs, lambda z: z[:, TARGET : TARGET + 1])  # (B, 1) squeezed
    assert torch.equal(column, expected)
    single = explainer.explain(inputs[0], lambda z: z[:, TARGET])  # one image: (H, W)
    assert torch.equal(single, explainer.explain(inputs[0], TARGET))


# ------------------------------------------------------------------ linearity
def _pair_sum(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 1] + logits[:, TARGET]


@pytest.mark.parametrize(
    ("method", "options"),
    [("ig", {"n_steps": 8}), ("saliency", {}), ("inputxgradient", {}), ("deeplift", {})],
)
def test_input_attributions_are_linear_in_the_target(models, inputs, method, options):
    """Captum's linearity: the attributions of ``z_1 + z_7`` are those of 1 plus those of 7."""
    explainer = create_explainer(method, models["cnn"], **options)
    pair = explainer.attributions(inputs, _pair_sum)
    one, seven = explainer.attributions(inputs, 1), explainer.attributions(inputs, TARGET)
    torch.testing.assert_close(pair, one + seven, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "xgradcam"])
def test_raw_cams_are_linear_in_the_target(models, inputs, method):
    """Before the ReLU, a CAM whose weights are linear in the gradient is linear in the score."""
    explainer = create_explainer(method, models["cnn"], relu=False, normalize=False)
    pair = explainer.attribute_layer(inputs, _pair_sum)
    one, seven = explainer.attribute_layer(inputs, 1), explainer.attribute_layer(inputs, TARGET)
    torch.testing.assert_close(pair, one + seven, rtol=1e-4, atol=1e-6)


# -------------------------------------------------------------------- metrics
@pytest.mark.parametrize("score", ["probability", "logit"])
def test_metrics_of_a_callable_equal_those_of_its_class(models, inputs, score):
    model = models["cnn"]
    metrics = ExplanationMetrics(model, steps=4, n_samples=4, score=score)
    heatmap = torch.rand(2, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    by_index = metrics.compute(inputs, heatmap, TARGET)
    by_callable = metrics.compute(inputs, heatmap, select)
    for target, results in ((TARGET, by_index), (select, by_callable)):
        results["sensitivity"] = metrics.sensitivity(inputs, heatmap, target)
        results["infidelity"] = metrics.run(
            "infidelity", inputs, heatmap, target, infidelity_samples=4
        )
    for name, result in by_callable.items():
        assert torch.equal(result.per_image, by_index[name].per_image), name
        assert result.settings["target"] == "custom target (select)"
        assert torch.equal(result.targets, model(inputs).argmax(dim=1))
    gradcam = create_explainer("gradcam", model)
    options = {"max_sensitivity_samples": 2}
    index_max = metrics.run("max-sensitivity", inputs, gradcam, TARGET, **options)
    callable_max = metrics.run("max-sensitivity", inputs, gradcam, select, **options)
    assert torch.equal(callable_max.per_image, index_max.per_image)


def test_probability_score_hands_the_callable_probabilities(models, inputs):
    """Under ``score="probability"`` a group's sum is the group's probability: the deletion
    curve starts at it (the first point is the unperturbed image)."""
    model = models["cnn"]
    heatmap = torch.rand(2, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    group = [1, 3, TARGET]
    result = ExplanationMetrics(model, steps=4).deletion(
        inputs, heatmap, lambda p: p[:, group].sum(1)
    )
    expected = model(inputs).softmax(dim=1)[:, group].sum(1)
    torch.testing.assert_close(result.y[:, 0], expected)


# -------------------------------------------------------------- one-call helpers
def test_quick_explain_and_compare_methods_name_the_callable(models, inputs):
    model = models["cnn"]
    image = inputs[0]
    by_index = quick_explain(model, image, save_path=None, target_class=TARGET)
    result = quick_explain(model, image, save_path=None, target_class=select)
    assert torch.equal(result.heatmap, by_index.heatmap)
    assert (result.target_class, result.target_name) == (None, "custom target (select)")
    title = result.figure.axes[1].get_title()
    assert title.replace("\n", " ").startswith("custom target (select), predicted class ")
    comparison = compare_methods(
        model,
        image,
        ["gradcam", "saliency"],
        target_class=select,
        with_metrics=True,
        metric_steps=4,
    )
    reference = compare_methods(
        model,
        image,
        ["gradcam", "saliency"],
        target_class=TARGET,
        with_metrics=True,
        metric_steps=4,
    )
    for name in ("gradcam", "saliency"):
        assert torch.equal(comparison.heatmaps[name], reference.heatmaps[name])
        assert float(comparison.metrics[name]["deletion"]) == float(
            reference.metrics[name]["deletion"]
        )
    assert "custom target (select)" in comparison.figure._suptitle.get_text()


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            lambda z: z,
            "gradcam: the callable target lambda returned shape (2, 10) for logits of shape "
            "(2, 10); expected one score per image: shape (2,) (or (2, 1))",
        ),
        (lambda z: z[:, 7].sum(), "returned shape () for logits of shape (2, 10)"),
        (lambda z: z[:, 7].tolist(), "gradcam: the callable target lambda returned list, not a "),
        (lambda z: z[:, 7].detach(), "returned a tensor not connected to the logits"),
        (lambda z: z[:, 7] * float("nan"), "returned NaN for 2 of 2 rows"),
    ],
)
def test_a_bad_callable_gets_a_clear_error(models, inputs, target, message):
    explainer = create_explainer("gradcam", models["cnn"])
    with pytest.raises(TargetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        explainer.explain(inputs, target)


def test_errors_name_the_method_and_metric(models, inputs):
    with pytest.raises(TargetError, match=r"^scorecam: .* returned shape \(\d+, 10\)"):
        create_explainer("scorecam", models["cnn"]).explain(inputs, lambda z: z)
    with pytest.raises(TargetError, match=r"^ExplanationMetrics: .* returned shape \(\d+, 10\)"):
        ExplanationMetrics(models["cnn"], steps=4).deletion(
            inputs, torch.rand(2, SIDE, SIDE), lambda z: z
        )


def test_a_detached_callable_is_fine_without_gradients(models, inputs):
    """Methods that take no gradients (ScoreCAM) need no graph from the callable."""
    explainer = create_explainer("scorecam", models["cnn"], max_batch=64)
    detached = explainer.explain(inputs, lambda z: z[:, TARGET].detach())
    assert torch.equal(detached, explainer.explain(inputs, TARGET))
