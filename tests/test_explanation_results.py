"""Results are returned: ``explain_full`` of every engine, and the generic Captum wrapper."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Saliency

from timmlens.interpretation import AttentionVisualizer, GradCAM, IntegratedGradients, SmoothGrad
from timmlens.interpretation.base import Explanation
from timmlens.interpretation.input import CaptumInputExplainer
from timmlens.testing import explainable_model


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    return explainable_model("test_vit", img_size=32, num_classes=10)


def _inputs(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_captum_wrapper_returns_captums_raw_attributions_in_memory_chunks(vit) -> None:
    x, targets = _inputs(), [2, 7, 4]
    tracked = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(vit(tracked)[[0, 1, 2], targets].sum(), tracked)
    for budget in (None, 1):  # 1 byte: one image per Captum call
        explainer = CaptumInputExplainer(vit, Saliency, memory_budget_bytes=budget, abs=False)
        result = explainer.explain_full(x, targets)
        assert torch.allclose(result.attributions, expected, atol=1e-6)
        assert result.targets.tolist() == targets
        assert result.heatmap.shape == (3, 32, 32)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: GradCAM(m, target_layer="blocks.1.norm1"),
        lambda m: IntegratedGradients(m, n_steps=4),
        lambda m: SmoothGrad(m, n_samples=2),
        AttentionVisualizer,
    ],
    ids=["gradcam", "ig", "smoothgrad", "rollout"],
)
def test_explain_full_is_the_heatmap_plus_what_was_computed(vit, make) -> None:
    explainer, x = make(vit), _inputs(2)
    with torch.no_grad():
        predicted = vit(x).argmax(1)
    result = explainer.explain_full(x)
    assert isinstance(result, Explanation)
    assert torch.equal(result.heatmap, explainer.explain(x))
    assert torch.equal(result.targets, predicted)
    assert result.attributions is not None and result.attributions.shape[0] == 2
    single = explainer.explain_full(x[0], target_class=3)  # always batched
    assert single.heatmap.shape == (1, 32, 32) and single.targets.tolist() == [3]
