"""Which module of a timm transformer gets which relevance rule (AttnLRP, CP-LRP).

The rules themselves live with the methods (`timmlens.interpretation.attention.lrp_rules`);
this module only knows timm's layers: which modules are softmax attention with timm's
explicit path (``fused_attn`` off: ``softmax -> attn_drop -> @ v``), which MLPs multiply
two branches (SwiGLU, GLU), which normalisations and element-wise activations there are,
and which layers no rule covers, so that such a model is refused up front with the
reason instead of giving a silently wrong map.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import UnsupportedModelError
from ..models.introspect import timm_model_of

#: softmax attention modules whose explicit path is ``attn = softmax(q k^T * scale [+ bias])``,
#: then ``attn_drop(attn) @ v``, with ``q, k, v`` linear in the module's first input
#: (by ``module.qualname``). Others (cross-covariance, cosine or gated attention) are refused.
SOFTMAX_ATTENTION = frozenset(
    {
        "timm.layers.attention.Attention",
        "timm.models.vision_transformer.Attention",
        "timm.models.beit.Attention",
        "timm.models.eva.EvaAttention",
        "timm.models.cait.ClassAttn",
        "timm.models.cait.TalkingHeadAttn",
        "timm.models.swin_transformer.WindowAttention",
    }
)

#: MLPs computing ``fc2(norm(a(x) * b(x)))``: an element-wise product of two branches
GATED_MLPS = frozenset({"timm.layers.mlp.SwiGLU", "timm.layers.mlp.GluMlp"})

#: element-wise activations: the identity rule (AttnLRP eq. 9)
ACTIVATIONS = frozenset(
    {
        "torch.nn.modules.activation.GELU",
        "torch.nn.modules.activation.SiLU",
        "torch.nn.modules.activation.ReLU",
        "timm.layers.activations.GELU",
        "timm.layers.activations.GELUTanh",
        "timm.layers.activations.QuickGELU",
        "timm.layers.activations.SiLU",
    }
)

#: normalisations over the last dimension: identity rule on the division by the std
LAYER_NORMS = frozenset(
    {
        "torch.nn.modules.normalization.LayerNorm",
        "timm.layers.norm.LayerNorm",
        "timm.layers.norm.LayerNormFp32",
    }
)
RMS_NORMS = frozenset({"timm.layers.norm.RmsNorm", "timm.layers.norm.RmsNormFp32"})

#: linear maps whose weights get the linear rule (epsilon / gamma / zero)
LINEAR = frozenset({"torch.nn.modules.linear.Linear", "torch.nn.modules.conv.Conv2d"})

#: modules that are linear or constant in their input at inference, so gradient x input
#: propagates relevance through them as LRP does (dropout is off in eval mode)
PASS_THROUGH = frozenset(
    {
        "torch.nn.modules.linear.Identity",
        "torch.nn.modules.dropout.Dropout",
        "torch.nn.modules.flatten.Flatten",
        "torch.nn.modules.activation.Softmax",  # inside attention: AttnLRP's softmax rule
        "torch.nn.modules.pooling.AdaptiveAvgPool2d",
        "torch.nn.modules.pooling.AdaptiveAvgPool1d",
        # in eval mode a per-channel affine map (the conv stem of a hybrid ViT): LRP-0
        # on it is gradient x input, as on LayerScale
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "timm.layers.drop.DropPath",
        "timm.layers.patch_dropout.PatchDropout",
        "timm.layers.layer_scale.LayerScale",
        "timm.layers.adaptive_avgmax_pool.FastAdaptiveAvgPool",
        "timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d",
        "timm.layers.pos_embed_sincos.RotaryEmbeddingCat",
        "timm.layers.pos_embed_sincos.RotaryEmbedding",
    }
)

_KNOWN = ACTIVATIONS | LAYER_NORMS | RMS_NORMS | LINEAR | PASS_THROUGH


def qualname(module: nn.Module) -> str:
    """``module.qualname`` of the module's class (how the tables above name it)."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


@dataclass(frozen=True)
class RelevanceLayout:
    """The modules of one model by the relevance rule they get (names are dotted paths).

    Attributes:
        attention: softmax attention modules (own ``attn_drop``, ``fused_attn`` flag).
        gated: MLPs whose ``fc2`` reads the product of two branches (``act`` gates).
        layer_norms / rms_norms: normalisations over the last dimension.
        activations: element-wise activations.
        linears: ``nn.Linear`` and ``nn.Conv2d`` modules (their weights are matched in
            ``F.linear`` / ``F.conv2d`` calls, also where an attention calls
            ``F.linear(x, self.qkv.weight, bias)`` itself, as BEiT and EVA do).
    """

    attention: tuple[tuple[str, nn.Module], ...]
    gated: tuple[tuple[str, nn.Module], ...]
    layer_norms: tuple[tuple[str, nn.Module], ...]
    rms_norms: tuple[tuple[str, nn.Module], ...]
    activations: tuple[tuple[str, nn.Module], ...]
    linears: tuple[tuple[str, nn.Module], ...]


def _refuse(model: nn.Module, method: str, problem: str) -> UnsupportedModelError:
    architecture = type(timm_model_of(model)).__name__  # the network, not our wrapper
    return UnsupportedModelError(
        f"{method}: {architecture} {problem}. {method} covers softmax-attention "
        f"transformers (ViT, DeiT incl. distilled, EVA, BEiT, CaiT, Swin, register ViTs); "
        f"use 'lrp' for CNNs, or 'chefer' / 'gradcam' for other models."
    )


def relevance_layout(model: nn.Module, method: str = "attnlrp") -> RelevanceLayout:
    """Sort ``model``'s modules by the AttnLRP / CP-LRP rule each one gets.

    Raises:
        UnsupportedModelError: no softmax attention (a CNN), an attention module whose
            arithmetic no rule covers (gated, cosine, cross-covariance attention), or a
            leaf module of a kind no rule covers (GroupNorm in a hybrid ViT, ...); the
            message names the modules.
    """
    attention, gated, unknown = [], [], []
    groups: dict[frozenset[str], list[tuple[str, nn.Module]]] = {
        LAYER_NORMS: [],
        RMS_NORMS: [],
        ACTIVATIONS: [],
        LINEAR: [],
    }
    for name, module in model.named_modules():
        kind = qualname(module)
        if isinstance(getattr(module, "attn_drop", None), nn.Module):
            if kind not in SOFTMAX_ATTENTION or getattr(module, "gate", None) is not None:
                unknown.append(f"{name} ({type(module).__name__}: attention no rule covers)")
            attention.append((name, module))
        if kind in GATED_MLPS:
            gated.append((name, module))
        if list(module.children()):
            continue
        for kinds, found in groups.items():
            if kind in kinds:
                found.append((name, module))
        if kind not in _KNOWN:
            unknown.append(f"{name} ({type(module).__name__})")
    if not attention:
        raise _refuse(model, method, "has no softmax attention")
    if unknown:
        shown = ", ".join(unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise _refuse(model, method, f"has layers no relevance rule here covers: {shown}")
    return RelevanceLayout(
        attention=tuple(attention),
        gated=tuple(gated),
        layer_norms=tuple(groups[LAYER_NORMS]),
        rms_norms=tuple(groups[RMS_NORMS]),
        activations=tuple(groups[ACTIVATIONS]),
        linears=tuple(groups[LINEAR]),
    )
