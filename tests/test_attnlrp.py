"""AttnLRP and CP-LRP (issue 29): LXT as reference, the paper's equations, conservation,
the model left as found, every softmax-attention family zero-config."""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from timmlens.adapters.relevance_rules import (
    LAYER_NORMS,
    RelevanceLayout,
    qualname,
    relevance_layout,
)
from timmlens.errors import ImageInputError, UnsupportedModelError
from timmlens.interpretation import CPLRP, AttnLRP
from timmlens.interpretation.attention.lrp_rules import relevance_rules, stabilize
from timmlens.interpretation.registry import as_explainer, supports
from timmlens.testing import explainable_model

FAMILIES = {
    "vit": ("test_vit", {"img_size": 32}),
    "deit_distilled": (
        "deit_tiny_distilled_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    ),
    "vit_registers": ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "depth": 2}),
    "eva02": ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 2}),
    "beit": (
        "beit_base_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    ),
    "cait": (
        "cait_xxs24_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 32, "window_size": 2, "depths": (1, 1), "num_heads": (1, 2), "embed_dim": 16},
    ),
}


def _model(key: str, seed: int = 0) -> nn.Module:
    name, kwargs = FAMILIES[key]
    return explainable_model(name, seed=seed, num_classes=10, **kwargs).eval()


def _inputs(key: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    side = FAMILIES[key][1]["img_size"]
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1].item()


# ------------------------------------------------------------- (a) LXT's ViT path
def _torchvision_state(timm_vit: nn.Module) -> dict[str, torch.Tensor]:
    """The timm ViT's weights under torchvision ``VisionTransformer``'s names."""
    s = timm_vit.state_dict()
    out = {
        "class_token": s["cls_token"],
        "conv_proj.weight": s["patch_embed.proj.weight"],
        "conv_proj.bias": s["patch_embed.proj.bias"],
        "encoder.pos_embedding": s["pos_embed"],
        "encoder.ln.weight": s["norm.weight"],
        "encoder.ln.bias": s["norm.bias"],
        "heads.head.weight": s["head.weight"],
        "heads.head.bias": s["head.bias"],
    }
    names = {
        "norm1": "ln_1",
        "attn.qkv": "self_attention.in_proj",
        "attn.proj": "self_attention.out_proj",
        "norm2": "ln_2",
        "mlp.fc1": "mlp.0",
        "mlp.fc2": "mlp.3",
    }
    for index in range(len(timm_vit.blocks)):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                target = f"encoder.layers.encoder_layer_{index}.{theirs}"
                target = f"{target}_{kind}" if theirs.endswith("in_proj") else f"{target}.{kind}"
                out[target] = s[f"blocks.{index}.{ours}.{kind}"]
    return out


def test_cplrp_zero_rule_equals_lxt_on_torchvision_vit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = explainable_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        num_classes=10,
    ).eval()
    config = {
        "image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2,
        "hidden_dim": 32, "mlp_dim": 128, "num_classes": 10,
    }  # fmt: skip
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 4, 7])
    torch.save(
        {"state": _torchvision_state(vit), "config": config, "inputs": x, "targets": targets},
        tmp_path / "in.pt",
    )
    script = Path(__file__).with_name("lxt_reference.py")
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
        check=True,
        capture_output=True,
    )
    reference = torch.load(tmp_path / "out.pt")
    ours = CPLRP(vit, linear_rule="zero").explain_batch_full(x, targets.tolist())
    torch.testing.assert_close(ours.logits, reference["logits"], atol=1e-5, rtol=1e-5)
    for row in range(3):
        assert _corr(ours.attributions[row], reference["relevance"][row]) >= 0.999
    torch.testing.assert_close(ours.attributions, reference["relevance"], atol=1e-5, rtol=1e-3)


# ------------------------------------------------------------- (b) the paper's equations
def test_softmax_rule_is_the_papers_equation() -> None:
    """AttnLRP eq. 13: R_x = x * (R_s - s * sum(R_s)), from the relevance R_s = s * g."""
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 7, dtype=torch.float64)
    s = x.softmax(dim=-1)
    (grad,) = torch.autograd.grad(s, x, upstream)
    relevance_out = (s * upstream).detach()
    paper = x.detach() * (relevance_out - s.detach() * relevance_out.sum(-1, keepdim=True))
    torch.testing.assert_close(x.detach() * grad, paper)


def test_matmul_rule_splits_the_relevance_uniformly() -> None:
    """AttnLRP eq. 7 on ``softmax(q k^T) @ v``: each factor of a bilinear product gets half
    of its output's relevance; written out with LXT's own ``divide_gradient`` on q (4),
    k (4) and v (2), as its attention wrapper does, the gradients agree."""
    from lxt.efficient.rules import divide_gradient

    attn = explainable_model("test_vit", img_size=32).blocks[0].attn.eval()
    x = torch.randn(2, 5, attn.qkv.in_features, requires_grad=True)
    upstream = torch.randn(2, 5, attn.proj.out_features)
    with relevance_rules(relevance_layout(nn.Sequential(attn)), "attnlrp", linear_rule="zero"):
        (ours,) = torch.autograd.grad(attn(x), x, upstream)
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(2, 5, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = divide_gradient(qkv[0], 4), divide_gradient(qkv[1], 4), divide_gradient(qkv[2], 2)
    probabilities = (q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)
    out = attn.proj((probabilities @ v).transpose(1, 2).reshape(2, 5, -1))
    (reference,) = torch.autograd.grad(out, x, upstream, retain_graph=True)
    torch.testing.assert_close(ours, reference)
    # CP-LRP: the probabilities are constants, v takes the whole relevance
    with relevance_rules(relevance_layout(nn.Sequential(attn)), "cplrp", linear_rule="zero"):
        (cp,) = torch.autograd.grad(attn(x), x, upstream)
    out = attn.proj((probabilities.detach() @ qkv[2]).transpose(1, 2).reshape(2, 5, -1))
    (reference,) = torch.autograd.grad(out, x, upstream)
    torch.testing.assert_close(cp, reference)


@pytest.mark.parametrize("variant", ["attnlrp", "cplrp"])
def test_matmul_rule_on_the_explicit_path(variant: str) -> None:
    """The same rules where q and k have no module of their own (CaiT's class attention):
    there they act on the probabilities after ``attn_drop``, with ``fused_attn`` off."""
    from lxt.efficient.rules import divide_gradient

    attn = _model("cait").blocks_token_only[0].attn
    assert not hasattr(attn, "q_norm")
    x = torch.randn(2, 5, attn.q.in_features, requires_grad=True)
    upstream = torch.randn(2, 1, attn.proj.out_features)
    fused = attn.fused_attn
    with relevance_rules(relevance_layout(nn.Sequential(attn)), variant, linear_rule="zero"):
        assert attn.fused_attn is False
        (ours,) = torch.autograd.grad(attn(x), x, upstream)
    assert attn.fused_attn == fused
    heads, width = attn.num_heads, attn.q.out_features // attn.num_heads
    q = attn.q(x[:, 0]).reshape(2, 1, heads, width).transpose(1, 2)
    k = attn.k(x).reshape(2, 5, heads, width).transpose(1, 2)
    v = attn.v(x).reshape(2, 5, heads, width).transpose(1, 2)
    if variant == "attnlrp":
        q, k, v = divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)
    else:
        q, k = q.detach(), k.detach()
    probabilities = (q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)
    out = attn.proj((probabilities @ v).transpose(1, 2).reshape(2, 1, -1))
    (reference,) = torch.autograd.grad(out, x, upstream)
    torch.testing.assert_close(ours, reference)


def test_layer_norm_rule_treats_the_std_as_constant() -> None:
    """Identity rule on the normalisation (AttnLRP Sec. 3.3.2): the gradient is that of
    ``(x - mean) / stop_grad(std) * w + b``, and with zero bias relevance is conserved."""
    norm = nn.LayerNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    model = nn.Sequential(norm)
    layout = relevance_layout_free(model)
    x = torch.randn(3, 6, dtype=torch.float32, requires_grad=True)
    upstream = torch.randn(3, 6)
    with relevance_rules(layout, "attnlrp", linear_rule="zero"):
        out = model(x)
        (grad,) = torch.autograd.grad(out, x, upstream)
    std = (x.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt().detach()
    y = (x - x.mean(-1, keepdim=True)) / std * norm.weight
    (expected,) = torch.autograd.grad(y, x, upstream)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(out, norm(x))  # the forward is unchanged
    relevance_out = (out - norm.bias) * upstream
    torch.testing.assert_close((x * grad).sum(-1), relevance_out.sum(-1), atol=1e-5, rtol=1e-5)


def relevance_layout_free(model: nn.Module):
    """A layout for a bare module stack without attention (the rules' unit tests)."""
    norms = tuple((n, m) for n, m in model.named_modules() if qualname(m) in LAYER_NORMS)
    return RelevanceLayout((), (), norms, (), (), ())


def test_epsilon_rule_is_the_papers_equation() -> None:
    """LRP-epsilon on a linear layer: R_i = sum_j x_i w_ji R_j / (z_j + eps sign z_j)."""
    linear = nn.Linear(5, 4)
    model = nn.Sequential(linear, nn.LayerNorm(4))
    layout = relevance_layout_free(model)
    layout = type(layout)((), (), (), (), (), (("0", linear),))
    x = torch.randn(2, 5, requires_grad=True)
    upstream = torch.randn(2, 4)
    with relevance_rules(layout, "attnlrp", linear_rule="epsilon", epsilon=0.1):
        z = linear(x)
        (grad,) = torch.autograd.grad(z, x, upstream)
    z = z.detach()
    relevance_out = z * upstream
    paper = x.detach() * ((relevance_out / stabilize(z, 0.1)) @ linear.weight.detach())
    torch.testing.assert_close(x.detach() * grad, paper)


# ------------------------------------------------------------- (c) conservation
#: parameters added to the computation: each absorbs the relevance of its share of a sum
_ABSORBING = (
    "bias", "q_bias", "v_bias", "pos_embed", "relative_position_bias_table",
    "cls_token", "dist_token", "reg_token",
)  # fmt: skip


def _without_biases(model: nn.Module) -> nn.Module:
    """Biases, position embeddings and prefix tokens at zero: nothing absorbs relevance."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            leaf = name.rpartition(".")[2]
            if leaf in _ABSORBING:
                parameter.zero_()
        # a logit far from zero, so the tolerance below is a real bound
        heads = model.get_classifier()
        for head in heads if isinstance(heads, tuple) else (heads,):  # distilled DeiT: two
            head.weight.mul_(100.0)
    return model


@pytest.mark.parametrize("key", list(FAMILIES))
def test_cplrp_conserves_the_logit_without_biases(key: str) -> None:
    """With attention held constant, every rule left is conservative: the input
    relevance sums to the target logit once no bias absorbs any."""
    model = _without_biases(_model(key))
    result = CPLRP(model, linear_rule="zero").explain_batch_full(_inputs(key), [1, 2])
    total = result.attributions.sum(dim=(1, 2, 3))
    scores = result.extras["target_scores"]
    assert scores.abs().min() > 1e-4, "a test on a zero logit would check nothing"
    torch.testing.assert_close(total, scores, atol=1e-4, rtol=2e-3)


def test_a_hybrid_vit_with_a_batchnorm_stem_is_ruled_and_conserves() -> None:
    """The known-answer ViTs' conv stem (conv, BatchNorm, ReLU): BatchNorm in eval mode is
    a per-channel affine map, so with biases and running means at zero CP-LRP with LRP-0
    still conserves the logit, and AttnLRP runs zero-config through the registry."""
    from timmlens.models.known_answer import known_answer_recipe

    torch.manual_seed(0)
    model = known_answer_recipe("bundled:gt-vit").create().eval()
    assert supports(model, "attnlrp") and supports(model, "cplrp")
    inputs = torch.randn(2, 3, 64, 64)
    assert as_explainer("attnlrp", model)(inputs, target_class=[1, 2]).shape == (2, 64, 64)
    model = _without_biases(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
                module.running_var.uniform_(0.5, 2.0)  # a scale that is not 1
    result = CPLRP(model, linear_rule="zero").explain_batch_full(inputs, [1, 2])
    total = result.attributions.sum(dim=(1, 2, 3))
    scores = result.extras["target_scores"]
    assert scores.abs().min() > 1e-4, "a test on a zero logit would check nothing"
    torch.testing.assert_close(total, scores, atol=1e-4, rtol=2e-3)


def test_the_heatmap_is_the_positive_relevance_and_signed_keeps_polarity() -> None:
    """Unsigned: the evidence for the class (positive relevance over channels) divided by
    its maximum, so a pixel without relevance stays 0; signed: the sum scaled to [-1, 1]."""
    model, inputs = _model("vit"), _inputs("vit")
    result = AttnLRP(model).explain_batch_full(inputs, [1, 2])
    total = result.attributions.sum(dim=1)
    assert (total < 0).any(), "a test without negative relevance would check nothing"
    positive = total.clamp_min(0)
    expected = positive / positive.flatten(1).amax(dim=1).view(-1, 1, 1)
    torch.testing.assert_close(result.heatmap, expected)
    signed = AttnLRP(model, signed=True).explain_batch_full(inputs, [1, 2]).heatmap
    torch.testing.assert_close(signed, total / total.flatten(1).abs().amax(dim=1).view(-1, 1, 1))


# ------------------------------------------------------------- (d) the model as found
def test_model_left_as_found_and_the_forward_unchanged() -> None:
    model = _model("eva02")
    x = _inputs("eva02")
    flags = {name: m.__dict__.get("fused_attn") for name, m in model.named_modules()}
    with torch.no_grad():
        before = model(x)
    explainer = AttnLRP(model, linear_rule="gamma")
    result = explainer.explain_batch_full(x, [3, 3])
    torch.testing.assert_close(result.logits, before)  # the rules leave the forward exact
    assert all(p.grad is None for p in model.parameters())
    assert {name: m.__dict__.get("fused_attn") for name, m in model.named_modules()} == flags
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


def test_a_failing_call_leaves_nothing_behind_and_bfloat16_agrees() -> None:
    model = _model("cait")  # the explicit path: fused_attn is switched for the call
    flags = {name: m.__dict__.get("fused_attn") for name, m in model.named_modules()}
    with pytest.raises(ImageInputError, match="33x33"):
        CPLRP(model).explain_batch_full(torch.randn(1, 3, 33, 33), [1])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert {name: m.__dict__.get("fused_attn") for name, m in model.named_modules()} == flags
    x = _inputs("cait")
    full = AttnLRP(model).explain_batch_full(x, [1, 2]).attributions
    half = AttnLRP(_model("cait").to(torch.bfloat16)).explain_batch_full(x.bfloat16(), [1, 2])
    assert half.attributions.dtype == torch.bfloat16
    assert _corr(full, half.attributions.float()) > 0.99


def test_two_threads_on_two_models_of_one_class() -> None:
    models = [_model("vit", seed=0), _model("vit", seed=1)]
    x = _inputs("vit")
    alone = [AttnLRP(m).explain_batch_full(x, [1, 2]).attributions for m in models]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for _ in range(4):
                results[index].append(
                    AttnLRP(models[index]).explain_batch_full(x, [1, 2]).attributions
                )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index in (0, 1):
        for got in results[index]:
            torch.testing.assert_close(got, alone[index])


# ------------------------------------------------------------- (e) zero-config families
@pytest.mark.parametrize("key", list(FAMILIES))
@pytest.mark.parametrize("method", ["attnlrp", "cplrp"])
def test_every_family_zero_config_through_the_registry(key: str, method: str) -> None:
    model = _model(key)
    assert supports(model, method)
    x = _inputs(key)
    result = as_explainer(method, model).explain_batch_full(x, [1, 2])
    side = x.shape[-1]
    assert result.heatmap.shape == (2, side, side)
    assert result.attributions.shape == x.shape
    assert torch.isfinite(result.attributions).all() and result.attributions.abs().sum() > 0
    patches = result.extras["patch_relevance"]
    torch.testing.assert_close(patches.sum(dim=(1, 2)), result.attributions.sum(dim=(1, 2, 3)))


def test_cnns_and_unknown_layers_are_refused_with_the_reason() -> None:
    cnn = explainable_model("test_resnet")
    assert not supports(cnn, "attnlrp")
    with pytest.raises(UnsupportedModelError, match=r"no softmax attention.*'lrp' for CNNs"):
        AttnLRP(cnn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xcit = timm.create_model("xcit_nano_12_p16_224", img_size=32, depth=1)
    with pytest.raises(UnsupportedModelError, match="XCA: attention no rule covers"):
        CPLRP(xcit)


def test_bad_options_and_half_precision_are_refused() -> None:
    model = _model("vit")
    with pytest.raises(ValueError, match="linear_rule must be one of epsilon, gamma, zero"):
        AttnLRP(model, linear_rule="alpha")
    with pytest.raises(ValueError, match="epsilon must be a number > 0"):
        AttnLRP(model, epsilon=0)
    half = _model("vit").half()
    with pytest.raises(UnsupportedModelError, match="float16"):
        AttnLRP(half).explain_batch_full(_inputs("vit").half(), [1, 1])


def test_the_refusal_names_the_method_once_and_the_network_not_our_wrapper():
    from timmlens import ImageClassifier

    lite0 = ImageClassifier(explainable_model("test_efficientnet", num_classes=4))
    with pytest.raises(UnsupportedModelError) as refused:
        as_explainer("attnlrp", lite0)
    message = str(refused.value)
    assert message.startswith("attnlrp: EfficientNet has no softmax attention.")
    assert "attnlrp: attnlrp" not in message and "ImageClassifier" not in message
