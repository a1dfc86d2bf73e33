"""AttentionVisualizer: capture, rollout against a loop reference, class-specific rollout,
hygiene, errors and shapes."""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from timmlens import ImageClassifier
from timmlens.errors import UnsupportedModelError
from timmlens.interpretation import AttentionMaps, AttentionVisualizer

# name -> (timm name, kwargs): a plain ViT, a distilled DeiT, a register-token ViT.
MODELS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 48, "depth": 3}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {"img_size": 48, "depth": 3}),
    "vit_reg4": ("vit_tiny_patch16_224", {"img_size": 48, "depth": 3, "reg_tokens": 4}),
}
PREFIX = {"vit": 1, "deit_distilled": 2, "vit_reg4": 5}
SIDE = 48
GRID = (3, 3)


@torch.no_grad()
def _sharpen(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw qkv and head weights so attentions are far from uniform and classes differ."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("qkv.weight"):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.25)
        elif name.endswith(("head.weight", "head_dist.weight")):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval()


@cache
def _model(key: str) -> nn.Module:
    name, kwargs = MODELS[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kwargs)
    return _sharpen(model, seed=1)


def _images(batch: int = 2, seed: int = 0, side: int = SIDE) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------- references
def manual_forward(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Recompute a timm ViT by hand: attention from each block's qkv, and the logits.

    Returns per block ``(B, heads, N, N)`` probabilities (part of the graph) and logits.
    """
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    attns = []
    for blk in model.blocks:
        a = blk.attn
        h = blk.norm1(x)
        batch, tokens, _ = h.shape
        qkv = a.qkv(h).reshape(batch, tokens, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        attn = ((q * a.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        attns.append(attn)
        out = a.proj(a.norm((attn @ v).transpose(1, 2).reshape(batch, tokens, -1)))
        x = x + blk.ls1(out)
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return attns, model.forward_head(model.norm(x))


def reference_rollout(
    attns: list[torch.Tensor],
    prefix: int,
    token: int = 0,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
) -> torch.Tensor:
    """Abnar & Zuidema rollout with plain loops, float64, image by image: ``(B, H, W)``."""
    batch, _, tokens, _ = attns[0].shape
    out = []
    for b in range(batch):
        rollout = torch.eye(tokens, dtype=torch.float64)
        for attn in attns[start_layer:]:
            heads = attn[b].double()
            fused = {"mean": heads.mean(0), "max": heads.max(0).values, "min": heads.min(0).values}[
                head_fusion
            ].clone()
            if discard_ratio > 0:
                entries = sorted(
                    (fused[i, j].item(), i, j)
                    for i in range(tokens)
                    for j in range(tokens)
                    if not (i == j and i < prefix)
                )
                for _, i, j in entries[: int(discard_ratio * len(entries))]:
                    fused[i, j] = 0.0
            mixed = 0.5 * fused + 0.5 * torch.eye(tokens, dtype=torch.float64)
            for i in range(tokens):
                mixed[i] = mixed[i] / mixed[i].sum()
            rollout = mixed @ rollout
        patches = rollout[token, prefix:].reshape(1, 1, *GRID).float()
        up = F.interpolate(patches, size=(SIDE, SIDE), mode="bilinear", align_corners=False)[0, 0]
        out.append((up - up.min()) / (up.max() - up.min()))
    return torch.stack(out)


# ---------------------------------------------------------------- capture
@pytest.mark.parametrize("key", list(MODELS))
def test_captured_maps_are_softmax_rows_and_match_manual_recomputation(key: str) -> None:
    model = _model(key)
    x = _images()
    maps = AttentionVisualizer(model).get_attention_maps(x)
    with torch.no_grad():
        manual, logits = manual_forward(model, x)
        torch.testing.assert_close(logits, model(x), atol=1e-4, rtol=1e-4)
    assert isinstance(maps, AttentionMaps)
    assert len(maps) == len(model.blocks)
    assert maps.grid == GRID and maps.num_prefix_tokens == PREFIX[key]
    tokens = PREFIX[key] + GRID[0] * GRID[1]
    for captured, expected in zip(maps, manual, strict=True):
        assert captured.shape == (2, 3, tokens, tokens)
        torch.testing.assert_close(captured.sum(-1), torch.ones(2, 3, tokens))
        torch.testing.assert_close(captured, expected, atol=1e-5, rtol=1e-4)
    # The maps are far from uniform (the test models are sharpened).
    assert maps[0].max() > 3.0 / tokens


# ---------------------------------------------------------------- rollout
@pytest.mark.parametrize(
    ("key", "head_fusion", "discard_ratio", "start_layer"),
    [
        ("vit", "mean", 0.0, 0),
        ("vit", "max", 0.3, 0),
        ("vit", "min", 0.8, 1),
        ("deit_distilled", "mean", 0.6, 0),
        ("vit_reg4", "mean", 0.9, 0),
        ("vit_reg4", "max", 0.2, -2),
    ],
)
def test_rollout_matches_loop_reference_for_every_image(
    key: str, head_fusion: str, discard_ratio: float, start_layer: int
) -> None:
    model = _model(key)
    x = _images()
    assert not torch.allclose(x[0], x[1])
    got = AttentionVisualizer(model).attention_rollout(
        x, head_fusion=head_fusion, discard_ratio=discard_ratio, start_layer=start_layer
    )
    with torch.no_grad():
        attns, _ = manual_forward(model, x)
    start = start_layer % len(attns)
    expected = reference_rollout(attns, PREFIX[key], 0, head_fusion, discard_ratio, start)
    assert got.shape == (2, SIDE, SIDE)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-3)
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # image 2 got its own rollout


def test_distillation_token_rollout_reads_row_one() -> None:
    model = _model("deit_distilled")
    x = _images()
    visualizer = AttentionVisualizer(model)
    got = visualizer.attention_rollout(x, token="distillation", discard_ratio=0.5)
    with torch.no_grad():
        attns, _ = manual_forward(model, x)
    torch.testing.assert_close(
        got, reference_rollout(attns, 2, token=1, discard_ratio=0.5), atol=2e-4, rtol=1e-3
    )
    assert not torch.allclose(got, visualizer.attention_rollout(x, discard_ratio=0.5), atol=1e-3)
    with pytest.raises(UnsupportedModelError, match="distillation"):
        AttentionVisualizer(_model("vit")).attention_rollout(x, token="distillation")


def test_class_specific_rollout_matches_gradient_weighted_reference() -> None:
    model = _model("vit")
    x = _images()
    visualizer = AttentionVisualizer(model)
    maps = {c: visualizer.attention_rollout(x, target_class=c) for c in (3, 7)}
    assert visualizer.explain_full(x, target_class=7).targets.tolist() == [7, 7]
    assert not torch.allclose(maps[3], maps[7], atol=1e-2)
    for c in (3, 7):
        with torch.enable_grad():
            attns, logits = manual_forward(model, x)
            grads = torch.autograd.grad(logits[:, c].sum(), attns)
        weighted = [(a * g).clamp(min=0).detach() for a, g in zip(attns, grads, strict=True)]
        torch.testing.assert_close(maps[c], reference_rollout(weighted, 1), atol=2e-4, rtol=1e-3)
    # per-image targets: each image gets its own class
    mixed = visualizer.attention_rollout(x, target_class=[3, 7])
    torch.testing.assert_close(mixed[0], maps[3][0])
    torch.testing.assert_close(mixed[1], maps[7][1])
    # The Explainer convention: a target gives the class-specific rollout, None the plain one.
    torch.testing.assert_close(visualizer(x, target_class=3), maps[3])
    plain = visualizer.explain_full(x)
    torch.testing.assert_close(plain.heatmap, visualizer.attention_rollout(x))
    with torch.no_grad():
        assert plain.targets.tolist() == model(x).argmax(1).tolist()
    with pytest.raises(ValueError, match="out of range"):
        visualizer(x, target_class=1000)


class _Ones(nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(q)


class _KeyAt(nn.Module):
    """Keys that are zero except a large one at token ``index``: all queries attend there."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        keys = torch.zeros_like(k)
        keys[..., self.index, :] = 10.0
        return keys


def test_rollout_peaks_on_the_patch_the_class_token_attends_to() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2).eval()
    patch = 6  # row 1, column 2 of the 4 x 4 grid
    for blk in model.blocks:
        blk.attn.q_norm, blk.attn.k_norm = _Ones(), _KeyAt(1 + patch)
    visualizer = AttentionVisualizer(model)
    x = _images(1, seed=3, side=64)
    maps = visualizer.get_attention_maps(x)
    assert maps.cls_to_patches(layer=0, head=0)[0].flatten().argmax().item() == patch
    assert maps[0][0, 0, 0, 1 + patch] > 0.99
    heatmap = visualizer.attention_rollout(x)[0]
    row, col = divmod(heatmap.argmax().item(), 64)
    assert (row // 16, col // 16) == divmod(patch, 4)
    assert heatmap[16:32, 32:48].mean() > 3 * heatmap.mean()


# ---------------------------------------------------------------- hygiene
def test_fused_flags_hooks_and_model_state_restored_even_after_an_error() -> None:
    model = _model("vit")
    model.train()
    blocks = [blk.attn for blk in model.blocks]
    assert all(attn.fused_attn for attn in blocks)
    visualizer = AttentionVisualizer(model)

    def fail(*_args: object) -> None:
        assert not blocks[1].fused_attn  # capture is active during the forward
        raise RuntimeError("boom inside the forward")

    handle = model.blocks[1].register_forward_hook(fail)
    try:
        for call in (
            lambda: visualizer.attention_rollout(_images()),
            lambda: visualizer.attention_rollout(_images(), target_class=1),
            lambda: visualizer.get_attention_maps(_images()),
        ):
            with pytest.raises(RuntimeError, match="boom"):
                call()
            assert all(attn.fused_attn for attn in blocks)
            assert all(not attn.attn_drop._forward_hooks for attn in blocks)
            assert model.training and all(p.requires_grad for p in model.parameters())
    finally:
        handle.remove()
    visualizer.attention_rollout(_images(), target_class=2)
    visualizer.get_attention_maps(_images())
    assert all(attn.fused_attn for attn in blocks)
    assert all("fused_attn" in attn.__dict__ for attn in blocks)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    model.eval()


def test_unsupported_families_raise_a_clear_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cnn = timm.create_model("test_resnet")
        swin = timm.create_model(
            "swin_tiny_patch4_window7_224", depths=(1, 1), num_heads=(1, 2), embed_dim=16
        )
    for model, kind in ((cnn, "no attention"), (swin, "windowed attention")):
        with pytest.raises(UnsupportedModelError, match=kind) as info:
            AttentionVisualizer(model)
        assert "GradCAM" in str(info.value)


def test_bad_arguments() -> None:
    visualizer = AttentionVisualizer(_model("vit"))
    x = _images(1)
    for kwargs, match in (
        ({"head_fusion": "median"}, "head_fusion"),
        ({"discard_ratio": 1.0}, "discard_ratio"),
        ({"start_layer": 3}, "start_layer"),
        ({"token": "register"}, "token"),
    ):
        with pytest.raises(ValueError, match=match):
            visualizer.attention_rollout(x, **kwargs)


# ----------------------------------------------------------------- shapes
def test_single_image_and_batch_shapes_through_image_classifier() -> None:
    classifier = ImageClassifier(backbone=_model.__wrapped__("deit_distilled"))
    visualizer = AttentionVisualizer(classifier)
    assert visualizer.blocks[0].name == "backbone.blocks.0.attn"
    photo = np.random.default_rng(0).integers(0, 255, (80, 60, 3), dtype=np.uint8)
    tokens, heads, layers = 2 + 9, 3, 3

    single = visualizer.get_attention_maps(photo)
    assert single[0].shape == (heads, tokens, tokens)
    assert single.stack().shape == (layers, heads, tokens, tokens)
    assert single.cls_to_patches().shape == (layers, heads, *GRID)
    assert single.cls_to_patches(layer=-1).shape == (heads, *GRID)
    assert single.cls_to_patches(layer=0, head="mean", token="distillation").shape == GRID
    assert visualizer.attention_rollout(photo).shape == (SIDE, SIDE)
    assert visualizer(photo, target_class=0).shape == (SIDE, SIDE)

    batch = visualizer.get_attention_maps([photo, photo[::-1]])
    assert batch[0].shape == (2, heads, tokens, tokens)
    assert batch.cls_to_patches(head=1).shape == (2, layers, *GRID)
    torch.testing.assert_close(batch[1][0], single[1], atol=1e-4, rtol=1e-3)
    rollout = visualizer.attention_rollout([photo, photo[::-1]])
    assert rollout.shape == (2, SIDE, SIDE)
    assert rollout.min() == 0 and rollout.max() == 1


# -------------------------------------------------------------- families
@pytest.mark.parametrize(
    ("name", "kwargs", "side", "prefix"),
    [
        (
            "beit_base_patch16_224",
            {"img_size": 32, "depth": 2, "embed_dim": 64, "num_heads": 2},
            32,
            1,
        ),
        ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 2}, 28, 1),
        ("deit3_small_patch16_224", {"img_size": 32, "depth": 2}, 32, 1),
        ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "depth": 2}, 28, 5),  # headless
    ],
)
def test_other_vit_families(name: str, kwargs: dict, side: int, prefix: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
    visualizer = AttentionVisualizer(model)
    x = _images(side=side)
    maps = visualizer.get_attention_maps(x)
    assert len(maps) == 2 and maps.num_prefix_tokens == prefix and maps.grid == (2, 2)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(maps[1].shape[:-1]))
    assert visualizer.attention_rollout(x).shape == (2, side, side)


def test_channel_attention_models_are_refused_with_a_reason() -> None:
    model = timm.create_model("xcit_nano_12_p16_224", img_size=32, depth=1).eval()
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    with pytest.raises(UnsupportedModelError, match="between channels"):
        AttentionVisualizer(model).get_attention_maps(_images(side=32))
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == flags
