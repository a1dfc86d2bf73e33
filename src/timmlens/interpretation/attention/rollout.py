"""Attention maps, attention rollout and class-specific rollout for ViT-like models.

The attention probabilities are captured from timm's own attention modules (see
`timmlens.adapters.attention_capture`): fused attention is switched off for the
call, ``attn_drop`` is hooked, and everything is restored afterwards.

**Attention rollout** (Abnar & Zuidema, 2020, "Quantifying Attention Flow in
Transformers"): for each block ``l`` from ``start_layer`` on,

1. fuse the heads of ``A_l`` ``(B, heads, N, N)`` -> ``(B, N, N)`` (mean, max or min);
2. optionally discard the lowest ``discard_ratio`` fraction of the fused matrix of
   *each image* (set to 0), never the prefix tokens' attention to themselves;
3. ``Ã_l = 0.5 A_l + 0.5 I`` (the residual connection), rows renormalised to sum to 1;

then ``R = Ã_L ... Ã_start`` and the heatmap is the class token's row of ``R`` over the
patch tokens (class, distillation and register tokens removed), reshaped to the patch
grid, bilinearly upsampled to the input size and min-max normalised to [0, 1]. Only the
one row is needed, so it is computed as ``e_cls Ã_L ... Ã_start`` with vector-matrix
products: ``O(L N^2)`` per image instead of ``O(L N^3)``.

**Class-specific rollout** (gradient-weighted, after Chefer et al., 2021, "Transformer
Interpretability Beyond Attention Visualization", and vit-explain's ``grad_rollout``):
with a ``target_class``, each block's attention is replaced by ``(dy_c/dA_l ⊙ A_l)^+``,
the elementwise product with the gradient of the target logit, negatives clamped *per
head* (Chefer's order; vit-explain averages heads before clamping), heads then fused
with ``head_fusion`` (mean by default), before steps 2-3 above. One forward and one
backward pass; the gradients are taken with ``torch.autograd.grad`` on the captured
probabilities, so no parameter ``.grad`` is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import torch

from ...data import ImagesInput, picture_of
from ...errors import UnsupportedModelError
from ...models.introspect import class_name_of
from ...saving import FigureDisplay
from .._targets import TargetInput
from ..base import explanation_call
from ..registry import register_method
from .engine import AttentionExplainer, AttentionTrace

HeadFusion = Literal["mean", "max", "min"]
TokenName = Literal["class", "distillation"]
HeadSelect = int | Literal["mean", "max", "min"] | None

_HEAD_FUSIONS = ("mean", "max", "min")


# ------------------------------------------------------------------ maths
def fuse_heads(attn: torch.Tensor, head_fusion: HeadFusion = "mean", dim: int = 1) -> torch.Tensor:
    """Fuse the heads dimension ``dim``: ``(B, heads, N, N)`` -> ``(B, N, N)`` by default."""
    if head_fusion == "mean":
        return attn.mean(dim=dim)
    if head_fusion == "max":
        return attn.amax(dim=dim)
    if head_fusion == "min":
        return attn.amin(dim=dim)
    raise ValueError(f"head_fusion must be one of {_HEAD_FUSIONS}, got {head_fusion!r}.")


def discard_lowest(attn: torch.Tensor, ratio: float, num_prefix_tokens: int) -> torch.Tensor:
    """Zero the lowest ``ratio`` fraction of each image's fused attention matrix.

    Per matrix, as in Abnar & Zuidema and vit-explain, but for every image of the batch.
    The prefix tokens' self-attention entries (``A[i, i]`` for ``i < num_prefix_tokens``:
    class -> class, distillation -> distillation, register -> register) are protected:
    ``k = int(ratio * (N * N - num_prefix_tokens))`` of the other entries are dropped.

    Args:
        attn: ``(B, N, N)`` fused attention.
        ratio: fraction in ``[0, 1)``.
        num_prefix_tokens: how many leading tokens have their diagonal entry protected.

    Returns:
        ``(B, N, N)``, a new tensor.
    """
    batch, tokens, _ = attn.shape
    protected = torch.zeros(tokens, tokens, dtype=torch.bool, device=attn.device)
    diagonal = torch.arange(min(num_prefix_tokens, tokens), device=attn.device)
    protected[diagonal, diagonal] = True
    protected = protected.flatten()
    free = tokens * tokens - diagonal.numel()
    count = int(ratio * free)
    flat = attn.reshape(batch, -1)
    if count <= 0:
        return flat.clone().view_as(attn)
    # topk is cheapest for small k: select whichever side of the split is smaller.
    if count <= free - count:
        lowest = flat.masked_fill(protected, float("inf")).topk(count, dim=1, largest=False)
        return flat.scatter(1, lowest.indices, 0.0).view_as(attn)
    kept = flat.masked_fill(protected, float("-inf")).topk(free - count, dim=1).indices
    keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, kept, True) | protected
    return (flat * keep).view_as(attn)


def rollout_rows(fused: Sequence[torch.Tensor], token_index: int | torch.Tensor) -> torch.Tensor:
    """Row ``token_index`` of the rollout ``Ã_L ... Ã_1`` of fused attentions.

    Args:
        fused: per block, in forward order, ``(B, N, N)`` non-negative fused attention.
        token_index: the row to read (0 for the class token), or ``(B, 1, N)`` weights of
            the rows (the patch average for a globally pooled model).

    Returns:
        ``(B, N)``: how much of each input token flows into ``token_index`` at the top.
    """
    first = fused[0]
    batch, tokens, _ = first.shape
    eye = torch.eye(tokens, dtype=first.dtype, device=first.device)
    if isinstance(token_index, torch.Tensor):
        row = token_index.to(first.dtype).expand(batch, 1, tokens).clone()
    else:
        row = torch.zeros(batch, 1, tokens, dtype=first.dtype, device=first.device)
        row[:, 0, token_index] = 1.0
    for attn in reversed(fused):
        mixed = 0.5 * attn + 0.5 * eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        row = torch.bmm(row, mixed)
    return row[:, 0]


# ----------------------------------------------------------- maps result
@dataclass(frozen=True, eq=False)
class AttentionMaps(FigureDisplay, Sequence[torch.Tensor]):
    """The attention probabilities of every block for a batch (or one image).

    Indexing gives one block's probabilities: ``(B, heads, N, N)`` for a batch,
    ``(heads, N, N)`` for a single image; ``len()`` is the number of blocks. Tokens are
    ordered as in the model: ``num_prefix_tokens`` prefix tokens (class, then
    distillation or registers) followed by the ``grid[0] * grid[1]`` patches, row-major.

    Attributes:
        batched_maps: per block, ``(B, heads, N, N)`` (always with the batch dimension).
        layer_names: the attention modules' dotted names.
        grid: the patch grid ``(h, w)``.
        num_prefix_tokens: ``N - h * w``.
        token_indices: positions of the named tokens, e.g. ``{"class": 0}``.
        batched: ``False`` when one image was passed (results drop the batch dimension).
        pictures: per image, its photo (or for a tensor input the model's view of it), for
            the notebook display; ``None`` when built by hand.
        predicted_names: per image, the predicted class as the model names it; ``None``
            for a headless model or when built by hand.
    """

    batched_maps: tuple[torch.Tensor, ...]
    layer_names: tuple[str, ...]
    grid: tuple[int, int]
    num_prefix_tokens: int
    token_indices: Mapping[str, int]
    batched: bool = True
    pictures: tuple[Any, ...] | None = field(default=None, repr=False)
    predicted_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.batched_maps)

    @overload
    def __getitem__(self, index: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[torch.Tensor]: ...

    def __getitem__(self, index: int | slice) -> torch.Tensor | Sequence[torch.Tensor]:
        if isinstance(index, slice):
            return tuple(self._unbatch(m) for m in self.batched_maps[index])
        return self._unbatch(self.batched_maps[index])

    def _unbatch(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.batched else tensor[0]

    def __repr__(self) -> str:
        # the fields are tensors of every block: a summary, not their values
        batch, heads, tokens, _ = self.batched_maps[0].shape if self.batched_maps else (0,) * 4
        images = f"batch of {batch}" if self.batched else "one image"
        return (
            f"AttentionMaps({len(self)} blocks, {images}, {heads} heads, {tokens} tokens = "
            f"{self.num_prefix_tokens} prefix + {self.grid[0]}x{self.grid[1]} patches)"
        )

    def figure(self, **options: Any) -> Any:
        """The class token's attention to the patches per block and head, of the first
        image (`timmlens.viz.static.plot_attention_maps`; ``options`` are its own)."""
        from ...viz.static import plot_attention_maps

        return plot_attention_maps(self, **options)

    def _repr_html_(self) -> str:
        """The notebook display: the first image's photo beside its attention per block and
        head, and every image's predicted class as text."""
        from ...viz.notebook import picture_img, result_html

        count = self.batched_maps[0].shape[0] if self.batched_maps else 0
        names = self.predicted_names or ()
        captions = [f"image {i}: predicted {name}" for i, name in enumerate(names)]
        beside = ""
        if self.pictures:
            alt = f"image 0{f', predicted {names[0]}' if names else ''}"
            beside = picture_img(self.pictures[0], alt)
        shown = "the first image's" if count > 1 else "its"
        return result_html(
            self._figure_png,
            "Attention maps",
            captions,
            details=f"{self!r}; {shown} class token attention per block and head shown",
            beside=beside,
        )

    def stack(self) -> torch.Tensor:
        """All blocks at once: ``(B, L, heads, N, N)`` (``(L, heads, N, N)`` unbatched)."""
        return self._unbatch(torch.stack(self.batched_maps, dim=1))

    def cls_to_patches(
        self, layer: int | None = None, head: HeadSelect = None, token: TokenName = "class"
    ) -> torch.Tensor:
        """The class token's attention to the patches, on the patch grid.

        Args:
            layer: one block (negative counts from the end), or ``None`` for all.
            head: one head's index, ``"mean"``/``"max"``/``"min"`` over heads, or
                ``None`` to keep every head.
            token: ``"class"``, or ``"distillation"`` for a distilled DeiT's second token.

        Returns:
            ``(B, L, heads, h, w)``; the ``L`` dimension is absent when ``layer`` is given,
            ``heads`` when ``head`` is given, ``B`` for a single image. Prefix tokens are
            removed, so values do not sum to 1.
        """
        if token not in self.token_indices:
            raise ValueError(
                f"token {token!r} is not in this model; available: "
                f"{', '.join(self.token_indices) or 'none (no class token)'}."
            )
        maps = self.batched_maps[layer] if layer is not None else torch.stack(self.batched_maps, 1)
        rows = maps[..., self.token_indices[token], self.num_prefix_tokens :]
        patches = rows.reshape(*rows.shape[:-1], *self.grid)
        head_dim = patches.ndim - 3
        if isinstance(head, int):
            patches = patches.select(head_dim, head)
        elif head is not None:
            patches = fuse_heads(patches, head, dim=head_dim)
        return self._unbatch(patches)


# -------------------------------------------------------------- explainer
@register_method(
    "rollout",
    title="Attention rollout",
    kind="attention",
    aliases=("attention", "attention_rollout"),
    summary="attention flow through the blocks, class-specific with a target (ViTs)",
    paper="Abnar & Zuidema, ACL 2020; class-specific: Chefer et al., CVPR 2021",
    formula="class-token row of prod_l (I + fuse_heads(A_l)) / 2; "
    "with a target A_l -> (dy/dA_l * A_l)^+ per head",
    cost="1 forward (plain); 1 forward + 1 backward with a target",
)
class AttentionVisualizer(AttentionExplainer):
    """Attention maps and (class-specific) attention rollout of a ViT-like timm model.

    Works for every family whose blocks use global token self-attention through timm's
    attention modules: ViT, DeiT (also distilled), DeiT-III, BEiT, EVA, register-token
    ViTs. As an `Explainer`, ``visualizer(images, target_class=None)`` returns the
    plain rollout (class-agnostic;
    [`explain_full`][timmlens.interpretation.base.Explainer.explain_full] gives the
    predicted classes) and
    ``visualizer(images, target_class=c)`` the class-specific rollout for ``c``; extra
    keyword arguments are those of [`attention_rollout`][].

    Args:
        model: an ``ImageClassifier`` or a bare timm model.

    Raises:
        UnsupportedModelError: the model has no global self-attention (CNNs, Swin); the
            message says why and suggests GradCAM.
    """

    # ------------------------------------------------------------ public
    def get_attention_maps(self, images: ImagesInput) -> AttentionMaps:
        """Every block's attention probabilities for ``images``.

        Returns:
            `AttentionMaps`: ``maps[l]`` is ``(B, heads, N, N)`` for a batch and
            ``(heads, N, N)`` for one image; each row sums to 1.
        """
        batch = self.prepare(images)
        with explanation_call(self.model, batch.tensor, "attention maps", needs_gradients=False):
            trace = self.trace(batch.tensor, None)
        predicted = None
        if trace.logits is not None:  # the capture's forward pass gave the predictions
            classes = trace.logits.argmax(-1).tolist()
            predicted = tuple(class_name_of(self.model, int(k)) for k in classes)
        return AttentionMaps(
            batched_maps=trace.maps,
            layer_names=trace.layer_names,
            grid=trace.grid,
            num_prefix_tokens=trace.num_prefix_tokens,
            token_indices=trace.token_indices,
            batched=not batch.single,
            pictures=tuple(picture_of(batch, i, self.model) for i in range(len(batch))),
            predicted_names=predicted,
        )

    def attention_rollout(
        self,
        images: ImagesInput,
        head_fusion: HeadFusion = "mean",
        discard_ratio: float = 0.0,
        start_layer: int = 0,
        target_class: TargetInput = None,
        token: TokenName | None = None,
    ) -> torch.Tensor:
        """Attention rollout heatmap(s) in [0, 1] at input resolution.

        Args:
            images: anything [`timmlens.data.prepare_images`][] accepts.
            head_fusion: how heads are fused per block: ``"mean"``, ``"max"``, ``"min"``.
            discard_ratio: fraction in ``[0, 1)`` of each image's lowest fused attentions
                set to zero per block (the prefix tokens' self-attention is kept).
            start_layer: first block rolled out (negative counts from the end).
            target_class: ``None`` for the plain, class-agnostic rollout; a class (one
                int, or one per image) for the gradient-weighted class-specific rollout.
            token: whose row is read: ``None`` for the tokens the classifier reads (the
                class token, or the patch average of a globally pooled ViT), ``"class"``,
                or ``"distillation"`` (distilled DeiT).

        Returns:
            ``(H, W)`` for one image, ``(B, H, W)`` for a batch, on the model's device.
        """
        return self.explain(
            images,
            target_class=target_class,
            head_fusion=head_fusion,
            discard_ratio=discard_ratio,
            start_layer=start_layer,
            token=token,
        )

    def describe(self, targets: list[int] | None) -> str:
        return "class-specific attention rollout" if targets else "attention rollout"

    def relevance(
        self,
        trace: AttentionTrace,
        head_fusion: HeadFusion = "mean",
        discard_ratio: float = 0.0,
        start_layer: int = 0,
        token: TokenName | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The rollout row ``(B, N)`` of ``token`` (``None``: the tokens the classifier
        reads): plain, or class-specific with gradients."""
        if kwargs:
            raise TypeError(
                f"unexpected argument(s) {', '.join(kwargs)}; AttentionVisualizer accepts "
                f"head_fusion, discard_ratio, start_layer and token."
            )
        if head_fusion not in _HEAD_FUSIONS:
            raise ValueError(f"head_fusion must be one of {_HEAD_FUSIONS}, got {head_fusion!r}.")
        if not 0.0 <= float(discard_ratio) < 1.0:
            raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}.")
        token_index = self.readout_row(trace) if token is None else self._token_index(token)
        start = self._start_index(start_layer)
        maps = trace.maps[start:]
        if trace.gradients is None:
            weighted = [fuse_heads(m.float(), head_fusion) for m in maps]
        else:
            weighted = [
                fuse_heads(
                    (m.float() * (g.float() if g is not None else 0.0)).clamp_min(0), head_fusion
                )
                for m, g in zip(maps, trace.gradients[start:], strict=True)
            ]
        prefix, tokens = trace.num_prefix_tokens, weighted[0].shape[-1]
        if isinstance(token_index, int) and token_index >= prefix:
            raise UnsupportedModelError(
                f"{self.adapter.architecture}: the {token} token (position {token_index}) is not "
                f"among the {prefix} prefix tokens of its {tokens}-token "
                f"sequence, so there is no {token} row to read."
            )
        if discard_ratio > 0:
            weighted = [discard_lowest(w, float(discard_ratio), prefix) for w in weighted]
        return rollout_rows(weighted, token_index)

    # ----------------------------------------------------------- helpers
    def _token_index(self, token: str) -> int:
        if token not in ("class", "distillation"):
            raise ValueError(f"token must be 'class' or 'distillation', got {token!r}.")
        if token not in self.token_indices:
            what = "distillation token (only distilled DeiT has one)"
            if token == "class":
                what = "class token (global-average-pooled ViT?)"
            raise UnsupportedModelError(
                f"{self.adapter.architecture} has no {what}, so its {token}-token rollout is "
                f"undefined. Use token='class' where available, or GradCAM "
                f"(timmlens.interpretation.GradCAM)."
            )
        return self.token_indices[token]

    def _start_index(self, start_layer: int) -> int:
        count = len(self.blocks)
        if isinstance(start_layer, bool) or not isinstance(start_layer, int):
            raise ValueError(f"start_layer must be an int, got {type(start_layer).__name__}.")
        if not -count <= start_layer < count:
            raise ValueError(
                f"start_layer {start_layer} is out of range for {count} attention blocks "
                f"(valid: {-count}..{count - 1})."
            )
        return start_layer % count
