"""Families the adapter's rules reach with zero configuration (issue 19).

GradCAM on CaiT (class token joins after the patch blocks), TNT and CoaT (the pre-attention
norm of the last attention is not called ``norm1``) and Gemma4-ViT (``feature_info``
relative to its ``encoder``); attention rollout on BEiT (relative position bias inside the
captured probabilities) and CaiT (patch blocks, then the class-attention blocks' class row),
each against a hand-written loop. Tiny random-init variants at 32-64 px.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from timmlens.adapters import get_adapter
from timmlens.interpretation import AttentionVisualizer, GradCAM
from timmlens.interpretation.registry import create_explainer
from timmlens.testing import explainable_model

# name -> (timm name, kwargs, side, the default layer the rule picks)
FAMILIES = {
    "cait": ("cait_xxs24_224", {"img_size": 32, "depth": 2}, 32, "blocks.1"),
    "tnt": ("tnt_s_legacy_patch16_224", {"img_size": 32, "depth": 2}, 32, "blocks.1.norm_out"),
    "coat": (
        "coat_tiny",
        {"img_size": 64, "serial_depths": (1, 1, 1, 1), "parallel_depth": 1},
        64,
        "parallel_blocks.0.norm14",
    ),
    "gemma4_vit": (
        "gemma4_vit_167m",
        {"embed_dim": 64, "num_heads": 2, "depth": 2, "num_classes": 10},
        64,
        "encoder.blocks.1",
    ),
}


def _images(side: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradcam_default_layer_gives_a_live_class_dependent_map(family: str) -> None:
    name, kwargs, side, layer = FAMILIES[family]
    model = explainable_model(name, **kwargs)
    assert get_adapter(model).default_layer == layer
    cam = GradCAM(model, normalize=False, relu=False)
    x = _images(side)
    first, second = cam.explain_batch(x, [1])[0], cam.explain_batch(x, [2])[0]
    for heatmap in (first, second):
        assert heatmap.shape == (side, side) and torch.isfinite(heatmap).all()
        assert heatmap.max() - heatmap.min() > 1e-3 * heatmap.abs().max()
    assert not torch.allclose(first, second, atol=1e-6 * first.abs().max())


# ------------------------------------------------------------------ rollout
def _recorded(model: nn.Module, x: torch.Tensor, modules: list[nn.Module]) -> list:
    """Each module's input, from one forward pass (our own hooks, not the library's)."""
    inputs: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, a: inputs.append(a[0])) for m in modules]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def _mixed(attn: torch.Tensor) -> torch.Tensor:
    """Abnar & Zuidema: ``(0.5 * mean_heads(A) + 0.5 * I)`` with rows normalised."""
    fused = 0.5 * attn.mean(dim=0) + 0.5 * torch.eye(attn.shape[-1], dtype=attn.dtype)
    return fused / fused.sum(dim=-1, keepdim=True)


def test_beit_rollout_is_the_abnar_loop_with_relative_position_bias_inside() -> None:
    model = explainable_model(
        "beit_base_patch16_224", img_size=32, depth=2, embed_dim=64, num_heads=2
    )
    with torch.no_grad():
        for block in model.blocks:  # zero at init: give the bias something to show
            table = block.attn.relative_position_bias_table
            table.copy_(torch.randn(table.shape, generator=torch.Generator().manual_seed(1)))
    x = _images(32)
    attentions = []
    inputs = _recorded(model, x, [b.attn for b in model.blocks])
    for block, tokens in zip(model.blocks, inputs, strict=True):
        attn = block.attn
        bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(tokens, attn.qkv.weight, bias).reshape(1, tokens.shape[1], 3, 2, -1)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        attentions.append((logits + attn._get_rel_pos_bias()).softmax(dim=-1)[0].double())
        without = logits.softmax(dim=-1)[0].double()
        assert (attentions[-1] - without).abs().max() > 1e-3  # the bias matters

    visualizer = AttentionVisualizer(model)
    captured = visualizer.get_attention_maps(x)
    for mine, theirs in zip(attentions, captured, strict=True):
        torch.testing.assert_close(theirs[0].double(), mine, atol=1e-5, rtol=1e-4)

    rollout = torch.eye(attentions[0].shape[-1], dtype=torch.float64)
    for attn in attentions:
        rollout = _mixed(attn) @ rollout
    # BEiT averages its patch tokens: the rollout row is the patch rows' mean.
    expected = rollout[1:].mean(dim=0)
    got = visualizer.explain_full(x).attributions[0].double()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_cait_rollout_runs_the_patch_blocks_then_the_class_attention_row() -> None:
    model = explainable_model("cait_xxs24_224", img_size=32, depth=2, num_classes=10)
    x = _images(32)
    captured: list[torch.Tensor] = []
    blocks = [*model.blocks, *model.blocks_token_only]
    handles = [
        b.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(o)) for b in blocks
    ]
    flags = [b.attn.__dict__.get("fused_attn") for b in model.blocks_token_only]
    for block in model.blocks_token_only:
        block.attn.fused_attn = False
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for block, flag in zip(model.blocks_token_only, flags, strict=True):
            block.attn.fused_attn = flag
    patch_maps = [a[0].double() for a in captured[: len(model.blocks)]]
    class_rows = [a[0, :, 0].double() for a in captured[len(model.blocks) :]]  # (heads, 1+n)

    patches = torch.eye(patch_maps[0].shape[-1], dtype=torch.float64)
    for attn in patch_maps:  # the patch blocks: plain rollout over the n patches
        patches = _mixed(attn) @ patches
    # The class token after the class-attention blocks: each block mixes the class token
    # (column 0) with the (fixed) patch outputs; unroll that chain of class rows.
    on_class, on_patches = torch.tensor(1.0, dtype=torch.float64), 0.0
    for row in reversed(class_rows):
        fused = 0.5 * row.mean(dim=0)
        fused[0] += 0.5
        fused = fused / fused.sum()
        on_patches = on_patches + on_class * fused[1:]
        on_class = on_class * fused[0]
    expected = torch.cat([on_class.reshape(1), on_patches @ patches])

    got = AttentionVisualizer(model).explain_full(x).attributions[0].double()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    for method in ("chefer", "rollout"):
        explainer = create_explainer(method, model)
        first, second = explainer.explain_batch(x, [1])[0], explainer.explain_batch(x, [2])[0]
        assert first.max() == 1 and first.min() == 0 and not torch.allclose(first, second)
