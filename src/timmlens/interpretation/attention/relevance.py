"""Gradient-based transformer relevance: Chefer et al.'s generic rule and LeGrad.

Both differentiate the captured attention probabilities ``A_l`` ``(B, heads, N, N)`` of
every global self-attention block (see `engine`) and explain a class: the given
one, or each image's predicted class.

**chefer** (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", rule (5)-(6)): ``R = I``; for
every block ``l`` in forward order, ``Ā_l = mean_heads((dy/dA_l * A_l)^+)`` and
``R = R + Ā_l R``. The relevance is the row of ``R`` the classifier reads: the class
token's, or the patch tokens' average for a globally pooled model; the engine keeps the
patch tokens (distillation and register tokens are dropped). Blocks that do not attend
over every token are put on the model's tokens by the engine first (CaiT: the patch
blocks, then the class-attention blocks' class row, as Chefer et al. treat attention
between two token sets). Only the one row is needed,
so it is computed as ``e_cls (I + Ā_L) ... (I + Ā_1)`` with vector-matrix products. One
forward and one backward pass.

**legrad** (Bousselham et al., 2024, "LeGrad: An Explainability Method for Vision
Transformers via Feature Formation Sensitivity"): every block's output tokens ``Z_l`` go
through the model's own final norm and head, ``s_l = head(norm(Z_l))[y]``, and the map is
``sum_l mean_{heads, queries} (ds_l/dA_l)^+``, read at the patch tokens (keys). The
attention values are not multiplied in.

``ds_l/dA_l`` only involves block ``l`` and the head, so all of them come from *one*
backward pass: during the forward, each block after the first gets a detached copy of
its input (same value, so the forward is unchanged), which cuts the paths from ``A_l``
through later blocks; the logits are then replaced by ``s_L + sum_{l<L} (s_l -
stop_grad(s_l))``, which has the logits' value and the gradient ``sum_l ds_l``. Each
block is back-propagated once: one forward, ``L`` cheap head evaluations, one backward.

**Which blocks are aggregated** (``LeGrad(model, start_block=...)``): the paper's map
sums over all layers ``l = 1..L`` (``start_block=0``, the default here). The authors'
released code (``LeWrapper(model, layer_index=-2)``) starts at the second-to-last block by
default (``start_block=-2`` reproduces it), and torchcam's ``LeGrad`` has no default: its
caller names the blocks (its example takes the last four, ``start_block=-4``). Blocks
before ``start_block`` get no head evaluation and add nothing.

Differences from torchcam's ``LeGrad`` (tested side by side in ``tests/test_relevance.py``):
torchcam averages the blocks instead of summing them (the same map after min-max
normalisation) and, by default, scores the *mean* of the tokens, as in the authors' CLIP
code; here the intermediate tokens are pooled by the model's own head (the class token
for ViT and DeiT, the average where the model averages), which is the paper's
"classifier applied to the intermediate tokens". With the same projection both agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from ...errors import UnsupportedModelError
from ..registry import register_method
from .engine import AttentionExplainer, AttentionTrace

_APPLIES_TO = (
    "global-attention ViTs (ViT, DeiT incl. distilled, DeiT-III, BEiT, EVA, register ViTs, "
    "CaiT, ConViT, TNT, NaFlexViT, ViTamin, Qwen3 / DeepSeek / Gemma4 encoders)"
)


def _no_options(method: str, options: dict[str, Any]) -> None:
    if options:
        raise TypeError(f"unexpected argument(s) {', '.join(options)}; {method} takes none.")


@register_method(
    "chefer",
    title="Chefer relevance",
    kind="attention",
    compared_by_default=False,
    aliases=("chefer2021", "generic_attention"),
    summary="gradient-weighted attention relevance accumulated over the blocks (ViTs)",
    paper="Chefer, Gur & Wolf, ICCV 2021 (Generic Attention-model Explainability)",
    formula="class-token row of R, R = I; R += mean_heads((dy/dA_l * A_l)^+) R for each block",
    cost="1 forward + 1 backward",
    applies_to=_APPLIES_TO + " that read a class token or the patch average",
)
class CheferRelevance(AttentionExplainer):
    """Chefer et al.'s relevance rule for ViT-like timm models (see the module docstring).

    Args:
        model: an ``ImageClassifier`` or a bare timm model with a classification head.

    Raises:
        UnsupportedModelError: no global self-attention (CNNs, Swin), or no class token.
    """

    needs_target = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if self.adapter.readout is None:
            pool = getattr(self.adapter.timm_model, "global_pool", None)
            raise UnsupportedModelError(
                f"chefer: {self.adapter.architecture} ({self.adapter.family}) pools with "
                f"global_pool={pool!r}, neither a class token nor the patch average, so "
                f"there is no row of the relevance the classifier reads. Use legrad, which "
                f"reads the model's own head, or GradCAM."
            )

    def describe(self, targets: list[int] | None) -> str:
        return "Chefer relevance"

    def relevance(self, trace: AttentionTrace, **options: Any) -> torch.Tensor:
        """The readout row ``(B, N)`` of ``R = prod_l (I + Ā_l)``: the class token's, or
        the patch tokens' average where the head averages them (``R`` is linear in its
        rows, so that is the relevance of the pooled token)."""
        _no_options("chefer", options)
        assert trace.gradients is not None  # needs_target: the engine always differentiates
        row = self.readout_row(trace)
        for attn, grad in zip(reversed(trace.maps), reversed(trace.gradients), strict=True):
            if grad is None:  # a block the target does not reach adds nothing
                continue
            weighted = (grad.float() * attn.float()).clamp_min(0).mean(dim=1)
            row = row + torch.bmm(row, weighted)
        return row[:, 0]


@register_method(
    "legrad",
    title="LeGrad",
    kind="attention",
    compared_by_default=False,
    summary="positive gradients of each block's own class score w.r.t. its attention (ViTs)",
    paper="Bousselham et al., 2024 (LeGrad, arXiv:2404.03214)",
    formula="sum_{l >= start_block} mean_{heads, queries} (ds_l/dA_l)^+, "
    "s_l = head(norm(Z_l))[y] (start_block=0: every block, as the paper)",
    cost="1 forward + 1 backward (+ the head on every block's tokens)",
    applies_to=_APPLIES_TO + " whose blocks are one top-level `blocks` sequence",
)
class LeGrad(AttentionExplainer):
    """LeGrad for ViT-like timm models (see the module docstring).

    Args:
        model: an ``ImageClassifier`` or a bare timm model with a classification head.
        start_block: the first block whose map is added (negative counts from the end):
            ``0`` (default) sums every block, as the paper's formula; ``-2`` is the
            authors' code's default (``layer_index=-2``: the last two blocks); ``-1``
            only the last block.

    Raises:
        UnsupportedModelError: no global self-attention (CNNs, Swin), or attention modules
            that are not one per block of ``blocks`` followed by ``norm`` and the head.
        ValueError: ``start_block`` outside ``[-L, L)`` for ``L`` blocks.
    """

    needs_target = True

    def __init__(self, model: nn.Module, start_block: int = 0) -> None:
        super().__init__(model)
        self.residual_blocks = self._residual_blocks()
        count = len(self.residual_blocks)
        if isinstance(start_block, bool) or not isinstance(start_block, int):
            raise ValueError(f"legrad: start_block must be an int, got {start_block!r}.")
        if not -count <= start_block < count:
            raise ValueError(
                f"legrad: start_block={start_block} is outside the model's {count} blocks; "
                f"use 0..{count - 1}, or -1..-{count} from the end (0: every block, as the "
                f"paper; -2: the authors' code's default)."
            )
        #: the first aggregated block, as a non-negative index
        self.start_block = start_block % count

    def __repr__(self) -> str:
        return f"LeGrad(start_block={self.start_block} of {len(self.residual_blocks)} blocks)"

    def describe(self, targets: list[int] | None) -> str:
        return "LeGrad"

    def relevance(self, trace: AttentionTrace, **options: Any) -> torch.Tensor:
        """``(B, N)``: positive gradients averaged over heads and queries, summed over blocks."""
        _no_options("legrad", options)
        assert trace.gradients is not None  # needs_target: the engine always differentiates
        first = trace.maps[0]
        total = torch.zeros(first.shape[0], first.shape[-1], device=first.device)
        for grad in trace.gradients[self.start_block :]:
            if grad is not None:
                total = total + grad.float().clamp_min(0).mean(dim=(1, 2))
        return total

    def trace(self, inputs: torch.Tensor, targets: list[int] | None) -> AttentionTrace:
        """The engine's trace, with each block's own score folded into the logits."""
        with self._block_scores():
            return super().trace(inputs, targets)

    # ----------------------------------------------------------- helpers
    def _residual_blocks(self) -> list[nn.Module]:
        """The block around each attention module: ``timm_model.blocks``, in order."""
        timm_model = self.adapter.timm_model
        blocks = getattr(timm_model, "blocks", None)
        parents = [self.model.get_submodule(b.name.rpartition(".")[0]) for b in self.blocks]
        usable = (
            isinstance(blocks, (nn.Sequential, nn.ModuleList))
            and [id(m) for m in blocks] == [id(m) for m in parents]
            and isinstance(getattr(timm_model, "norm", None), nn.Module)
            and callable(getattr(timm_model, "forward_head", None))
        )
        if not usable:
            raise UnsupportedModelError(
                f"legrad: {self.adapter.architecture} ({self.adapter.family}) does not run its "
                f"attention modules as one per block of its `blocks` followed by `norm` "
                f"and `forward_head`, so the per-block class scores LeGrad differentiates cannot "
                f"be formed. Use chefer or rollout, or GradCAM."
            )
        return parents

    @contextmanager
    def _block_scores(self) -> Iterator[None]:
        """Hooks for one forward: cut the paths between blocks, add ``s_l - sg(s_l)``."""
        timm_model = self.adapter.timm_model
        outputs: list[torch.Tensor] = []

        def cut(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            # Same value; a fresh leaf, so ds_l/dA_l stays inside block l and the head.
            if args:
                return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
            return args, {**kwargs, "x": kwargs["x"].detach().requires_grad_(True)}

        def record(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                raise UnsupportedModelError(
                    f"legrad: the blocks of {self.adapter.architecture} return "
                    f"{type(output).__name__}, not their tokens (TNT's blocks carry a pixel "
                    f"and a patch stream), so no block's own class score can be formed. Use "
                    f"chefer or rollout, or GradCAM."
                )
            outputs.append(output)

        def add_scores(_module: nn.Module, _args: Any, logits: torch.Tensor) -> torch.Tensor:
            if not torch.is_grad_enabled():
                return logits
            for tokens in outputs:
                scores = timm_model.forward_head(timm_model.norm(tokens))
                logits = logits + (scores - scores.detach())
            return logits

        with ExitStack() as stack:
            for index, block in enumerate(self.residual_blocks):
                if index > 0:
                    stack.callback(block.register_forward_pre_hook(cut, with_kwargs=True).remove)
                if self.start_block <= index < len(self.residual_blocks) - 1:
                    stack.callback(block.register_forward_hook(record).remove)
            stack.callback(timm_model.register_forward_hook(add_scores).remove)
            yield
