"""Capture the attention probabilities of timm's self-attention modules.

timm's attention modules (``vision_transformer.Attention``, ``eva.EvaAttention``,
``beit.Attention``, ...) compute ``F.scaled_dot_product_attention`` when their
``fused_attn`` flag is set, which never materialises the probabilities. With the flag
off they take the explicit path::

    attn = (q * scale) @ k.transpose(-2, -1)   # + bias / mask
    attn = attn.softmax(dim=-1)
    attn = self.attn_drop(attn)                # identity in eval mode
    x = attn @ v

so a forward hook on ``attn_drop`` sees exactly the ``(B, heads, N, N)`` probabilities
that multiply the values. Its *output* is recorded (the tensor the model goes on to
use), so gradients taken with respect to it are gradients of the attention the model
really applied.

`capture_attention` switches the flags off and installs the hooks for the
duration of a ``with`` block; hooks are removed and flags restored on exit, also after
an exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .adapter import AttentionBlock

_MISSING = object()


class AttentionCapture:
    """Attention probabilities recorded during one forward pass, one entry per block."""

    def __init__(self, blocks: Sequence[AttentionBlock]) -> None:
        self.blocks = list(blocks)
        self._records: list[list[torch.Tensor]] = [[] for _ in self.blocks]

    def _hook(self, index: int) -> Any:
        def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self._records[index].append(output)

        return record

    def clear(self) -> None:
        """Forget what was recorded (before another forward pass)."""
        for record in self._records:
            record.clear()

    def maps(self) -> list[torch.Tensor]:
        """The probabilities of every block, ``L x (B, heads, q, k)``, in block order.

        ``q == k == N`` for global self-attention; patch blocks that run before the class
        token joins (CaiT, ConViT) have ``q == k`` patches; class-attention blocks (CaiT)
        have ``q`` class queries over all ``k`` tokens. :func:`common_tokens` puts them on
        one token axis.

        Raises:
            UnsupportedModelError: a block recorded nothing (its forward ignores
                ``fused_attn``) or more than once, or something that is not attention
                over the tokens of each image (windowed attention).
        """
        maps = []
        for block, record in zip(self.blocks, self._records, strict=True):
            if len(record) != 1:
                raise UnsupportedModelError(
                    f"Attention block '{block.name}' produced {len(record)} attention maps in "
                    f"one forward pass (expected exactly 1): its forward does not follow timm's "
                    f"explicit-attention path, so its probabilities cannot be captured. Use "
                    f"GradCAM (timmlens.interpretation.GradCAM) instead."
                )
            maps.append(record[0])
        batch = maps[0].shape[0]
        for block, attn in zip(self.blocks, maps, strict=True):
            if attn.ndim != 4 or attn.shape[0] != batch:
                raise UnsupportedModelError(
                    f"Attention block '{block.name}' gives probabilities of shape "
                    f"{tuple(attn.shape)}, not (B, heads, queries, tokens) for the same B "
                    f"images as the first block (attention within windows?). Attention maps "
                    f"and rollout need global token self-attention; use GradCAM "
                    f"(timmlens.interpretation.GradCAM) instead."
                )
        return maps


def common_tokens(
    tensors: Sequence[torch.Tensor | None],
    names: Sequence[str],
    num_prefix_tokens: int,
    fill: str = "identity",
) -> list[torch.Tensor | None]:
    """Every block's ``(B, heads, q, k)`` on the model's final ``N`` tokens: ``(B, heads, N, N)``.

    Tokens that do not take part in a block pass through it unchanged, so their rows are
    the identity (``fill="identity"``, for probabilities; ``"zeros"`` for gradients):

    - global self-attention (``q == k == N``) is kept as it is;
    - patch blocks that run before the ``N - k`` class tokens join (CaiT's patch blocks,
      ConViT's GPSA blocks; ``q == k``) fill the bottom-right ``k x k``;
    - class attention (CaiT's ``blocks_token_only``: ``q`` class queries over all
      ``k == N`` tokens) fills the first ``q`` rows: the patches are not updated there.

    ``N`` is the largest ``k``; ``None`` entries (no gradient) stay ``None``.

    Raises:
        UnsupportedModelError: a block whose token set fits none of these (token pooling
            between blocks, as in hierarchical models).
    """
    tokens = max(t.shape[-1] for t in tensors if t is not None)
    out: list[torch.Tensor | None] = []
    for name, attn in zip(names, tensors, strict=True):
        if attn is None or attn.shape[-2:] == (tokens, tokens):
            out.append(attn)
            continue
        batch, heads, queries, keys = attn.shape
        late = tokens - keys
        if queries == keys and 0 < late <= num_prefix_tokens:
            rows, cols = slice(late, None), slice(late, None)
        elif keys == tokens and queries < tokens:
            rows, cols = slice(0, queries), slice(None)
        else:
            raise UnsupportedModelError(
                f"Attention block '{name}' attends {queries} queries over {keys} tokens, "
                f"which does not fit the model's {tokens} tokens ({num_prefix_tokens} prefix "
                f"tokens): the token set changes between blocks, so attention cannot be "
                f"rolled out. Use GradCAM (timmlens.interpretation.GradCAM) instead."
            )
        full = attn.new_zeros(batch, heads, tokens, tokens)
        if fill == "identity":
            full = full + torch.eye(tokens, dtype=attn.dtype, device=attn.device)
        full[:, :, rows, cols] = attn
        out.append(full)
    return out


@contextmanager
def capture_attention(blocks: Sequence[AttentionBlock]) -> Iterator[AttentionCapture]:
    """Record the attention probabilities of ``blocks`` while the ``with`` block runs.

    Every block's ``fused_attn`` is set to ``False`` and a forward hook is put on its
    ``attn_drop``. On exit (also after an exception) the hooks are removed and every
    flag is restored exactly (an attribute that was not set on the instance is deleted
    again).

    Yields:
        An `AttentionCapture`; call `AttentionCapture.maps` after the forward.
    """
    capture = AttentionCapture(blocks)
    flags = [block.module.__dict__.get("fused_attn", _MISSING) for block in capture.blocks]
    handles = []
    try:
        for index, block in enumerate(capture.blocks):
            block.module.fused_attn = False
            handles.append(block.module.attn_drop.register_forward_hook(capture._hook(index)))
        yield capture
    finally:
        for handle in handles:
            handle.remove()
        for block, flag in zip(capture.blocks, flags, strict=True):
            if flag is _MISSING:
                block.module.__dict__.pop("fused_attn", None)
            else:
                block.module.fused_attn = flag


def token_indices(timm_model: nn.Module) -> dict[str, int]:
    """Positions of the class and distillation tokens in a ViT-like model's sequence.

    timm puts prefix tokens first: class token, then the distillation token (DeiT
    distilled) or the register tokens. Returns e.g. ``{"class": 0}`` or
    ``{"class": 0, "distillation": 1}``; ``{}`` for a model without a class token.
    """
    indices: dict[str, int] = {}
    has_class = getattr(timm_model, "cls_token", None) is not None or (
        getattr(timm_model, "has_class_token", False) is True
    )
    if has_class:
        indices["class"] = 0
        if getattr(timm_model, "dist_token", None) is not None:
            indices["distillation"] = 1
    return indices
