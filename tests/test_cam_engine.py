"""The CAM engine's hooks: a map-level method and a gradient-free one, each its formula.

The two methods here are toys written for the test (not registered): a map-level hook
``cam(ctx)`` (the HiResCAM formula) and a gradient-free ``needs_gradients = False``
method whose weights come from :meth:`CamContext.score_masked`.
"""

from __future__ import annotations

from functools import cache
from typing import ClassVar

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from timmlens.interpretation.base import normalize_maps
from timmlens.interpretation.cam import CamContext, CAMExplainer
from timmlens.testing import make_explainable

LAYER = "layer4"


class ToyHiResCAM(CAMExplainer):
    """Map-level hook: ``ReLU(sum_k A_k * g_k)`` (the engine applies the ReLU)."""

    def cam(self, ctx: CamContext) -> torch.Tensor:
        assert ctx.gradients is not None
        return (ctx.activations * ctx.gradients).sum(dim=1)


class ToyMaskScoreCAM(CAMExplainer):
    """Gradient-free: channel ``k`` weighs the target logit of the input masked by ``A_k``."""

    needs_gradients = False
    seen_gradients: ClassVar[list[object]] = []

    def channel_weights(self, ctx: CamContext) -> torch.Tensor:
        type(self).seen_gradients.append(ctx.gradients)
        batch, channels = ctx.activations.shape[:2]
        masks = _channel_masks(ctx.activations, ctx.inputs.shape[-2:])
        masked = (ctx.inputs[:, None] * masks[:, :, None]).flatten(0, 1)
        return ctx.score_masked(masked, max_batch=64).view(batch, channels)


def _channel_masks(activations: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, C, H, W)`` per-channel maps upsampled and scaled to [0, 1]."""
    batch, channels = activations.shape[:2]
    up = F.interpolate(activations, size=tuple(size), mode="bilinear", align_corners=False)
    return normalize_maps(up.flatten(0, 1)).view(batch, channels, *size)


@cache
def _model() -> nn.Module:
    torch.manual_seed(0)
    return make_explainable(timm.create_model("test_resnet", num_classes=10))


def _inputs(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _activations_and_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    saved: list[torch.Tensor] = []
    handle = model.get_submodule(LAYER).register_forward_hook(lambda _m, _i, o: saved.append(o))
    try:
        logits = model(inputs)
    finally:
        handle.remove()
    score = logits[torch.arange(len(targets)), torch.tensor(targets)].sum()
    (grads,) = torch.autograd.grad(score, saved[0])
    return saved[0].detach(), grads


def test_map_level_hook_gives_the_hirescam_formula() -> None:
    model, inputs, targets = _model(), _inputs(), [3, 8]
    acts, grads = _activations_and_gradients(model, inputs, targets)
    expected = (acts * grads).sum(dim=1).clamp_min(0)
    assert expected.abs().max() > 0, "degenerate all-zero map: the test would prove nothing"

    result = ToyHiResCAM(model, target_layer=LAYER).explain_full(inputs, targets)
    assert torch.allclose(result.attributions, expected, rtol=1e-4, atol=1e-6 * expected.max())
    assert result.targets.tolist() == targets
    assert result.heatmap.shape == (2, 64, 64)
    assert result.heatmap.min() >= 0 and result.heatmap.max() <= 1
    with torch.no_grad():
        assert torch.allclose(result.logits, model(inputs), atol=1e-5)


def test_gradient_free_hook_runs_no_backward_and_scores_masked_inputs() -> None:
    model, inputs = _model(), _inputs()
    with torch.no_grad():
        predicted = model(inputs).argmax(1)
    acts, _ = _activations_and_gradients(model, inputs, predicted.tolist())
    masks = _channel_masks(acts, inputs.shape[-2:])
    masked = inputs[:, None] * masks[:, :, None]  # (B, C, 3, H, W)
    with torch.no_grad():
        scores = torch.stack(
            [model(masked[b])[:, int(predicted[b])] for b in range(inputs.shape[0])]
        )
    expected = torch.einsum("bc,bchw->bhw", scores, acts).clamp_min(0)
    assert expected.abs().max() > 0, "degenerate all-zero map: the test would prove nothing"

    ToyMaskScoreCAM.seen_gradients.clear()
    explainer = ToyMaskScoreCAM(model, target_layer=LAYER)
    with torch.inference_mode():  # refused for gradient methods: proves no backward runs
        result = explainer.explain_full(inputs)
    assert ToyMaskScoreCAM.seen_gradients == [None]
    assert torch.equal(result.targets, predicted)
    assert torch.allclose(result.attributions, expected, rtol=1e-4, atol=1e-5 * expected.max())


def test_score_masked_needs_targets_for_an_uneven_count() -> None:
    model, inputs = _model(), _inputs()
    ctx = CamContext(
        activations=torch.zeros(2, 1, 2, 2),
        gradients=None,
        inputs=inputs,
        targets=torch.tensor([0, 1]),
        layer_name=LAYER,
        model=model,
    )
    with pytest.raises(ValueError, match="pass targets"):
        ctx.score_masked(inputs[:1].repeat(3, 1, 1, 1))
    with torch.no_grad():
        logits = model(inputs)
    scores = ctx.score_masked(lambda lo, hi: inputs[lo:hi], targets=torch.tensor([4, 2]))
    assert torch.allclose(scores, logits[[0, 1], [4, 2]], atol=1e-5)
