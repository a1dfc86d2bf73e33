"""The attention engine: a trace of captured attention in, token relevance out.

An attention method is a small subclass of [`AttentionExplainer`][] with one hook,
[`relevance`][timmlens.interpretation.attention.engine.AttentionExplainer.relevance]
``(trace) -> (B, N)``: how much each token matters.
The engine captures the trace (every block's attention probabilities, with their
gradients when a class is explained; see `timmlens.adapters.attention_capture`),
and turns the patch tokens' relevance into a heatmap: reshaped to the patch grid,
bilinearly upsampled to the input size and min-max normalised per image.

Without a target class no gradients are taken, so such methods also run on headless
backbones (``num_classes=0``) and under ``torch.inference_mode()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...adapters import get_adapter
from ...adapters.attention_capture import capture_attention, common_tokens, token_indices
from ...adapters.layout import token_layout
from ...errors import UnsupportedModelError
from ...models.introspect import num_outputs
from .._targets import ResolvedTargets, TargetInput, target_rows, validate_targets
from ..base import Explainer, Explanation, normalize_maps, predict
from ..scoring import target_scores


@dataclass(frozen=True, eq=False)
class AttentionTrace:
    """The attention of every block for one batch, as captured during the forward pass.

    Tokens are ordered as in the model: ``num_prefix_tokens`` prefix tokens (class, then
    distillation or registers) followed by the ``grid[0] * grid[1]`` patches, row-major.

    Attributes:
        maps: per block, ``(B, heads, N, N)`` attention probabilities (detached).
        gradients: per block, ``(B, heads, N, N)`` gradient of each image's target logit
            with respect to the probabilities (``None`` for a block it does not reach),
            or ``None`` when no class was explained.
        layer_names: the attention modules' dotted names.
        grid: the patch grid ``(h, w)``.
        num_prefix_tokens: ``N - h * w``.
        token_indices: positions of the named tokens, e.g. ``{"class": 0}``.
        targets: ``(B,)`` the explained (or, without a target, predicted) classes;
            ``None`` for a headless model.
        logits: ``(B, K)`` the forward pass's logits, detached; ``None`` when headless.
    """

    maps: tuple[torch.Tensor, ...]
    gradients: tuple[torch.Tensor | None, ...] | None
    layer_names: tuple[str, ...]
    grid: tuple[int, int]
    num_prefix_tokens: int
    token_indices: Mapping[str, int]
    targets: torch.Tensor | None
    logits: torch.Tensor | None


class AttentionExplainer(Explainer):
    """The engine of attention methods on ViT-like timm models (see the module docstring).

    Subclasses give [`relevance`][]; keyword arguments of ``explain`` reach it.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.

    Raises:
        UnsupportedModelError: the model has no global self-attention (CNNs, Swin); the
            message says why and suggests GradCAM.
    """

    #: the method needs a class: without ``target_class``, each image's predicted class
    #: is explained (taken from the same forward pass that is differentiated)
    needs_target: bool = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.adapter = get_adapter(model)
        reason = self.adapter.attention_unavailable_reason
        if reason is not None:
            raise UnsupportedModelError(f"{self.name}: {reason}")
        self.blocks = self.adapter.attention_blocks
        self.token_indices = token_indices(self.adapter.timm_model)

    # ------------------------------------------------------------- hook
    def relevance(self, trace: AttentionTrace, **options: Any) -> torch.Tensor:
        """Relevance ``(B, N)`` of every token (prefix tokens first) for the trace."""
        raise NotImplementedError(f"{type(self).__name__} defines no relevance")

    # ------------------------------------------------------------ engine
    def resolve_targets(self, target_class: TargetInput, inputs: torch.Tensor) -> list[int] | None:
        """A target needs a classifier; ``None`` (class-agnostic) does not."""
        if target_class is None:
            if self.needs_target:
                num_outputs(self.model)  # a headless model has no class to explain: say so
            return None
        return validate_targets(
            target_class, inputs.shape[0], num_outputs(self.model), self.model, self.name
        )

    def gradients_needed(self, targets: ResolvedTargets) -> bool:
        return targets is not None or self.needs_target

    def attribute(
        self, inputs: torch.Tensor, targets: list[int] | None, **options: Any
    ) -> Explanation:
        """The explanation of ``inputs`` ``(B, C, H, W)``: trace, relevance, heatmap."""
        trace = self.trace(inputs, targets)
        relevance = self.relevance(trace, **options)
        patches = relevance[:, trace.num_prefix_tokens :].reshape(-1, 1, *trace.grid)
        maps = F.interpolate(patches, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        return Explanation(
            heatmap=normalize_maps(maps[:, 0]),
            targets=trace.targets,
            logits=trace.logits,
            attributions=relevance,
        )

    def trace(self, inputs: torch.Tensor, targets: list[int] | None) -> AttentionTrace:
        """Capture every block's attention for ``inputs`` ``(B, C, H, W)``.

        ``targets=None``: one no-grad forward (unless `needs_target`: then the
        predicted classes are differentiated). A target per image: one forward and one
        backward of the target logits, taken with ``torch.autograd.grad`` on the captured
        probabilities, so no parameter ``.grad`` is touched. Runs inside the guard.
        """
        has_head = targets is not None or self._has_head()
        with capture_attention(self.blocks) as capture:
            if targets is None and not self.needs_target:
                logits = predict(self.model, inputs)
                maps = capture.maps()
                chosen = logits.argmax(dim=1) if has_head else None
                gradients = None
            else:
                with torch.enable_grad():
                    logits = self.model(inputs.detach().requires_grad_(True))
                    maps = capture.maps()
                    chosen = (
                        logits.detach().argmax(dim=1)
                        if targets is None
                        else target_rows(targets, inputs.device)
                    )
                    score = target_scores(logits, chosen, "logit").sum()
                    gradients = torch.autograd.grad(score, maps, allow_unused=True)
        names = [block.name for block in self.blocks]
        grid, prefix = self._token_geometry(inputs, max(m.shape[-1] for m in maps))
        maps = common_tokens([m.detach() for m in maps], names, prefix)
        if gradients is not None:
            gradients = tuple(common_tokens(list(gradients), names, prefix, fill="zeros"))
        return AttentionTrace(
            maps=tuple(maps),
            gradients=gradients,
            layer_names=tuple(block.name for block in self.blocks),
            grid=grid,
            num_prefix_tokens=prefix,
            token_indices=dict(self.token_indices),
            targets=chosen,
            logits=logits.detach() if has_head else None,
        )

    def readout_row(self, trace: AttentionTrace) -> torch.Tensor:
        """``(B, 1, N)``: the tokens the classifier reads, as weights that sum to 1.

        The class token's one-hot row under class-token pooling; the average of the patch
        tokens where the head averages them (BEiT, EVA, DINOv3, relpos ViTs, Qwen3 /
        DeepSeek / Gemma4 encoders); relevance rows are read through it.

        Raises:
            UnsupportedModelError: another pooling (attention pooling, no pooling).
        """
        tokens = trace.maps[0].shape[-1]
        first = trace.maps[0]
        row = torch.zeros(first.shape[0], 1, tokens, dtype=torch.float32, device=first.device)
        readout = self.adapter.readout
        if readout == "class" and "class" in trace.token_indices:
            row[:, 0, trace.token_indices["class"]] = 1.0
        elif readout == "patches":
            row[:, 0, trace.num_prefix_tokens :] = 1.0 / (tokens - trace.num_prefix_tokens)
        else:
            pool = getattr(self.adapter.timm_model, "global_pool", None)
            raise UnsupportedModelError(
                f"{self.name}: {self.adapter.architecture} pools its tokens with "
                f"global_pool={pool!r}, neither a class token nor the average of the patch "
                f"tokens, so there is no row of the relevance the classifier reads. Use "
                f"GradCAM (timmlens.interpretation.GradCAM) instead."
            )
        return row

    def _has_head(self) -> bool:
        try:
            num_outputs(self.model)
        except ValueError:
            return False
        return True

    def _token_geometry(self, inputs: torch.Tensor, num_tokens: int) -> tuple[tuple[int, int], int]:
        """Patch grid ``(h, w)`` and prefix-token count of an ``N``-token sequence."""
        block = self.blocks[0]
        hints = self.adapter.grid_hints((inputs.shape[-2], inputs.shape[-1]), block.module)
        layout = token_layout(num_tokens, hints, self.adapter.num_prefix_tokens, block.name)
        return layout.grid, layout.num_prefix_tokens
