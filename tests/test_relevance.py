"""chefer and legrad: against hand-written references (hooks + autograd), torchcam's LeGrad,
the predicted-class default, families, refusals and the model left as found."""

from __future__ import annotations

import warnings
from functools import cache

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from timmlens.errors import UnsupportedModelError
from timmlens.interpretation.registry import create_explainer, resolve_method
from timmlens.testing import explainable_model

# name -> (timm name, kwargs, side, prefix tokens)
MODELS = {
    "vit": ("test_vit", {"img_size": 64}, 64, 1),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {"img_size": 48, "depth": 3}, 48, 2),
    "vit_reg4": ("vit_tiny_patch16_224", {"img_size": 48, "depth": 2, "reg_tokens": 4}, 48, 5),
    "eva02": ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 2}, 28, 1),
}


@cache
def _model(key: str) -> nn.Module:
    name, kwargs, _, _ = MODELS[key]
    return explainable_model(name, seed=1, num_classes=10, **kwargs).eval()


def _images(key: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    side = MODELS[key][2]
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------- references
def hooked_forward(model: nn.Module, x: torch.Tensor) -> tuple[list, list, torch.Tensor]:
    """Forward with explicit attention; per block the probabilities and output tokens
    (both in the graph), and the logits."""
    attns: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []
    handles = []
    fused = [blk.attn.fused_attn for blk in model.blocks]
    for blk in model.blocks:
        blk.attn.fused_attn = False
        handles.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: attns.append(o)))
        handles.append(blk.register_forward_hook(lambda m, i, o: tokens.append(o)))
    try:
        with torch.enable_grad():
            logits = model(x.requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
        for blk, flag in zip(model.blocks, fused, strict=True):
            blk.attn.fused_attn = flag
    return attns, tokens, logits


def _heatmap(relevance: torch.Tensor, prefix: int, side: int) -> torch.Tensor:
    """Patch tokens of ``(N,)`` relevance -> normalised ``(side, side)``, as the engine does."""
    grid = int((relevance.numel() - prefix) ** 0.5)
    patches = relevance[prefix:].reshape(1, 1, grid, grid).float()
    up = F.interpolate(patches, size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    return (up - up.min()) / (up.max() - up.min())


def reference_chefer(model: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """The rule as written: R = I; R = R + mean_h((grad * A)^+) @ R; the row the head reads
    (the class token's, or the patch rows' mean for an average-pooled model). ``(B, N)``."""
    attns, _, logits = hooked_forward(model, x)
    score = logits[torch.arange(len(targets)), targets].sum()
    grads = torch.autograd.grad(score, attns)
    rows = []
    for b in range(x.shape[0]):
        tokens = attns[0].shape[-1]
        relevance = torch.eye(tokens, dtype=torch.float64)
        for attn, grad in zip(attns, grads, strict=True):
            bar = (grad[b].double() * attn[b].double()).clamp(min=0).mean(0)
            relevance = relevance + bar @ relevance
        pooled = model.global_pool == "avg"
        rows.append(relevance[model.num_prefix_tokens :].mean(0) if pooled else relevance[0])
    return torch.stack(rows)


def reference_legrad(
    model: nn.Module, x: torch.Tensor, targets: list[int], start: int = 0
) -> torch.Tensor:
    """One backward per block: s_l = head(norm(Z_l))[y];
    sum_{l >= start} mean_{h,q} (ds_l/dA_l)^+."""
    attns, tokens, _ = hooked_forward(model, x)
    total = 0.0
    for attn, z in list(zip(attns, tokens, strict=True))[start:]:
        scores = model.forward_head(model.norm(z))[torch.arange(len(targets)), targets]
        (grad,) = torch.autograd.grad(scores.sum(), attn, retain_graph=True)
        total = total + grad.double().clamp(min=0).mean(dim=(1, 2))
    return total


# ------------------------------------------------------------- agreement
@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("method", ["chefer", "legrad"])
def test_matches_the_hand_written_rule(key: str, method: str) -> None:
    model, x, targets = _model(key), _images(key), [3, 7]
    reference = {"chefer": reference_chefer, "legrad": reference_legrad}[method]
    expected = reference(model, x, targets)
    result = create_explainer(method, model).explain_full(x, target_class=targets)
    prefix, side = MODELS[key][3], MODELS[key][2]
    # Raw relevance (every token) and the heatmap the engine makes of its patch tokens.
    scale = expected.abs().max()
    torch.testing.assert_close(
        result.attributions.double() / scale, expected / scale, atol=1e-5, rtol=1e-4
    )
    heatmaps = torch.stack([_heatmap(row, prefix, side) for row in expected])
    torch.testing.assert_close(result.heatmap, heatmaps, atol=1e-4, rtol=1e-3)
    assert result.targets.tolist() == targets
    assert not torch.allclose(result.heatmap[0], result.heatmap[1], atol=1e-3)


def _torchvision_twin(model: nn.Module) -> nn.Module:
    """torchvision's VisionTransformer with the weights of a plain timm ViT."""
    from torchvision.models.vision_transformer import VisionTransformer

    dim, heads = model.embed_dim, model.blocks[0].attn.num_heads
    twin = VisionTransformer(
        image_size=model.patch_embed.img_size[0],
        patch_size=model.patch_embed.patch_size[0],
        num_layers=len(model.blocks),
        num_heads=heads,
        hidden_dim=dim,
        mlp_dim=model.blocks[0].mlp.fc1.out_features,
        num_classes=model.num_classes,
    ).eval()
    with torch.no_grad():
        twin.conv_proj.load_state_dict(model.patch_embed.proj.state_dict())
        twin.class_token.copy_(model.cls_token)
        twin.encoder.pos_embedding.copy_(model.pos_embed)
        for layer, blk in zip(twin.encoder.layers, model.blocks, strict=True):
            layer.ln_1.load_state_dict(blk.norm1.state_dict())
            layer.self_attention.in_proj_weight.copy_(blk.attn.qkv.weight)
            layer.self_attention.in_proj_bias.copy_(blk.attn.qkv.bias)
            layer.self_attention.out_proj.load_state_dict(blk.attn.proj.state_dict())
            layer.ln_2.load_state_dict(blk.norm2.state_dict())
            layer.mlp[0].load_state_dict(blk.mlp.fc1.state_dict())
            layer.mlp[3].load_state_dict(blk.mlp.fc2.state_dict())
        twin.encoder.ln.load_state_dict(model.norm.state_dict())
        twin.heads.head.load_state_dict(model.head.state_dict())
    return twin


def test_legrad_matches_torchcam_with_the_same_score_projection() -> None:
    """torchcam's LeGrad runs on torchvision ViTs only: a twin with the same weights.

    torchcam averages the blocks (we sum: the same map once normalised) and scores the
    tokens' mean by default; given the class-token projection the model's head uses, the
    maps agree. With torchcam's default (mean of tokens) they differ, as documented.
    """
    from torchcam.methods import LeGrad as TorchcamLeGrad

    model = explainable_model("vit_tiny_patch16_224", seed=2, num_classes=10, img_size=64, depth=3)
    twin, x, targets = _torchvision_twin(model.eval()), _images("vit", seed=4), [2, 8]
    torch.testing.assert_close(twin(x), model(x), atol=1e-4, rtol=1e-4)
    ours = create_explainer("legrad", model).explain_full(x, target_class=targets)
    ours_patches = ours.attributions[:, 1:].reshape(2, 4, 4) / len(model.blocks)

    def class_token_projection(tokens: torch.Tensor) -> torch.Tensor:
        return twin.heads(twin.encoder.ln(tokens[:, 0]))

    results = {}
    for name, projection in (("class token", class_token_projection), ("default", None)):
        layers = list(twin.encoder.layers)
        with TorchcamLeGrad(twin, layers, score_projection=projection) as extractor:
            scores = twin(x.clone().requires_grad_(True))
            results[name] = extractor(targets, scores, normalized=False)[0]
    scale = ours_patches.abs().max()
    torch.testing.assert_close(
        ours_patches / scale, results["class token"] / scale, atol=1e-5, rtol=1e-4
    )
    assert not torch.allclose(ours_patches / scale, results["default"] / scale, atol=1e-2)


@pytest.mark.parametrize("start", [-1, -2, 1])
def test_legrad_start_block_sums_the_later_blocks(start: int) -> None:
    """``start_block`` keeps the blocks from it on: the hand-written sum over them, and
    torchcam's LeGrad given those blocks (it averages them: ours / their count)."""
    from torchcam.methods import LeGrad as TorchcamLeGrad

    model = explainable_model("vit_tiny_patch16_224", seed=2, num_classes=10, img_size=64, depth=3)
    x, targets = _images("vit", seed=4), [2, 8]
    result = create_explainer("legrad", model, start_block=start).explain_full(x, targets)
    expected = reference_legrad(model, x, targets, start)
    scale = expected.abs().max()
    torch.testing.assert_close(
        result.attributions.double() / scale, expected / scale, atol=1e-5, rtol=1e-4
    )
    every_block = create_explainer("legrad", model).explain_full(x, targets).attributions
    assert not torch.allclose(result.attributions, every_block, atol=1e-3)

    twin = _torchvision_twin(model.eval())
    layers = list(twin.encoder.layers)[start:]
    with TorchcamLeGrad(
        twin, layers, score_projection=lambda t: twin.heads(twin.encoder.ln(t[:, 0]))
    ) as extractor:
        theirs = extractor(targets, twin(x.clone().requires_grad_(True)), normalized=False)[0]
    ours = result.attributions[:, 1:].reshape(2, 4, 4) / len(layers)
    torch.testing.assert_close(
        ours / ours.abs().max(), theirs / ours.abs().max(), atol=1e-5, rtol=1e-4
    )


def test_legrad_start_block_is_checked() -> None:
    model = _model("vit")
    blocks = len(model.blocks)
    with pytest.raises(
        ValueError, match=rf"start_block={blocks} is outside the model's {blocks} blocks"
    ):
        create_explainer("legrad", model, start_block=blocks)
    assert create_explainer("legrad", model, start_block=-blocks).start_block == 0


# ------------------------------------------------------- targets, batches
@pytest.mark.parametrize("method", ["chefer", "legrad"])
def test_without_a_target_the_predicted_class_is_explained_in_one_pass(method: str) -> None:
    model, x = _model("deit_distilled"), _images("deit_distilled", batch=3, seed=5)
    explainer = create_explainer(method, model)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        default = explainer.explain_full(x)
    finally:
        handle.remove()
    assert len(calls) == 1  # the predicted class comes from the differentiated forward
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert default.targets.tolist() == predicted.tolist()
    torch.testing.assert_close(default.logits, model(x).detach(), atol=1e-5, rtol=1e-5)
    explicit = explainer.explain_full(x, target_class=predicted.tolist())
    torch.testing.assert_close(default.heatmap, explicit.heatmap)
    # each image alone gives its row of the batch
    alone = torch.stack(
        [explainer(x[i : i + 1], target_class=int(predicted[i]))[0] for i in range(3)]
    )
    torch.testing.assert_close(default.heatmap, alone, atol=1e-5, rtol=1e-4)


# -------------------------------------------------------------- refusals
def test_cnn_and_swin_are_refused_naming_method_family_and_alternative() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cnn = timm.create_model("test_resnet")
        swin = timm.create_model(
            "swin_tiny_patch4_window7_224", depths=(1, 1), num_heads=(1, 2), embed_dim=16
        )
    for method in ("chefer", "legrad"):
        for model, family in ((cnn, "resnet"), (swin, "swin")):
            with pytest.raises(UnsupportedModelError, match=method) as info:
                create_explainer(method, model)
            assert family in str(info.value) and "GradCAM" in str(info.value)


def test_chefer_reads_the_patch_average_of_a_pooled_vit_and_refuses_other_pooling() -> None:
    model = explainable_model(
        "vit_tiny_patch16_224",
        num_classes=10,
        img_size=32,
        depth=2,
        class_token=False,
        global_pool="avg",
    )
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = create_explainer("chefer", model).explain_full(x, target_class=[1, 2])
    expected = reference_chefer(model, x, [1, 2])
    scale = expected.abs().max()
    torch.testing.assert_close(got.attributions.double() / scale, expected / scale)
    got = create_explainer("legrad", model).explain_full(x, target_class=[1, 2])
    torch.testing.assert_close(got.attributions.double(), reference_legrad(model, x, [1, 2]))
    pooled = explainable_model(
        "vit_tiny_patch16_224", num_classes=10, img_size=32, depth=1, global_pool="map"
    )
    with pytest.raises(UnsupportedModelError, match=r"chefer.*global_pool='map'.*legrad"):
        create_explainer("chefer", pooled)


def test_headless_model_is_refused_with_a_reason() -> None:
    model = explainable_model("test_vit", num_classes=0, img_size=32)
    for method in ("chefer", "legrad"):
        with pytest.raises(ValueError, match="num_classes"):
            create_explainer(method, model)(torch.randn(1, 3, 32, 32))


def test_registry_metadata() -> None:
    for name, title in (("chefer", "Chefer relevance"), ("legrad", "LeGrad")):
        spec = resolve_method(name)
        assert spec.kind == "attention" and spec.title == title
        assert spec.paper and spec.formula and "1 forward + 1 backward" in spec.cost
        assert "ViT" in spec.applies_to


def test_model_state_and_hooks_are_restored_after_an_error() -> None:
    model = _model("vit")
    explainer = create_explainer("legrad", model)

    def fail(*_args: object) -> None:
        raise RuntimeError("boom in the last block")

    handle = model.blocks[-1].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            explainer(_images("vit"), target_class=1)
    finally:
        handle.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(blk.attn.fused_attn for blk in model.blocks)
    assert all(p.grad is None for p in model.parameters())
