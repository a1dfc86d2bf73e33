"""CAMs that change what is differentiated: ShapleyCAM (a second-order term) and FinerCAM
(a score that contrasts the target with its nearest classes).

Both reuse the engine's map rules: ShapleyCAM is GradCAM's weighted sum with weights
``mean_ij(g - H A / 2)`` (`shapleycam_weights`), FinerCAM is any gradient CAM
(GradCAM by default) run on `finer_scores` instead of the target logit. Each follows
pytorch-grad-cam 1.5.7's class of the same name; ``tests/test_cam_pgc_more.py`` compares
them side by side.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...adapters import LayerSpec, SpatialView
from ...adapters.tap import _first_spatial_index
from ...errors import TargetError, UnsupportedModelError
from .._targets import CallableTargets, TargetScore
from ..registry import register_method, resolve_method
from .engine import CamContext, CAMExplainer, InterpolationMode

__all__ = [
    "FINER_BASES",
    "FinerCAM",
    "FinerScore",
    "SecondOrderContext",
    "ShapleyCAM",
    "finer_scores",
    "shapleycam_weights",
    "unfused_attention",
]

_MISSING = object()


# ------------------------------------------------------------------------- ShapleyCAM
def shapleycam_weights(gradients: torch.Tensor, hessian_activations: torch.Tensor) -> torch.Tensor:
    """ShapleyCAM channel weights (Cai 2025, eq. 9): ``(B, C, h, w)`` twice -> ``(B, C)``.

    ``w_k = mean_ij (g - H A / 2)_kij``: the gradient ``g`` of the score at the layer's
    output ``A`` and the Hessian-vector product ``H A`` (``d (g . A) / dA`` with ``A``
    fixed), i.e. the second-order Taylor estimate of each channel's Shapley value
    averaged over positions. Where nothing after the layer is curved (a ReLU network's
    last layer before a linear head) ``H A = 0`` and the weights are GradCAM's.
    """
    return (gradients - 0.5 * hessian_activations).mean(dim=(2, 3))


@contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Every timm attention block of ``model`` in its unfused (explicit softmax) form.

    PyTorch's fused ``scaled_dot_product_attention`` kernels (flash, memory-efficient)
    have no double backward, which a Hessian-vector product needs. The ``fused_attn``
    flag of each instance is set to ``False`` and restored exactly on exit (an attribute
    that lived on the class only is deleted again); other instances are not touched.
    """
    blocks = [m for m in model.modules() if hasattr(m, "fused_attn")]
    flags = [m.__dict__.get("fused_attn", _MISSING) for m in blocks]
    try:
        for block in blocks:
            block.fused_attn = False
        yield
    finally:
        for block, flag in zip(blocks, flags, strict=True):
            if flag is _MISSING:
                block.__dict__.pop("fused_attn", None)
            else:
                block.fused_attn = flag


@dataclass(frozen=True, eq=False)
class SecondOrderContext(CamContext):
    """A [`CamContext`][timmlens.interpretation.cam.engine.CamContext] with ``H A``.

    Attributes:
        hessian_activations: ``(B, C, h, w)`` the Hessian-vector product ``H A`` of each
            image's target score at the layer's output.
    """

    hessian_activations: torch.Tensor | None = None


def _leaf_hook(leaves: dict[int, torch.Tensor], index: int) -> Any:
    """A forward hook that keeps the layer's output ``A`` to differentiate by."""

    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        position = _first_spatial_index(output)
        if position is None:
            return None  # the tap refuses such a layer with its own message
        tensor = output if position < 0 else output[position]
        # Below the first tapped layer nothing takes gradients (frozen parameters, detached
        # input): that output becomes a leaf. A later tapped layer already depends on it and
        # is kept in the graph (detaching it would cut the earlier layer's gradient).
        leaf = tensor if tensor.requires_grad else tensor.detach().requires_grad_(True)
        leaves[index] = leaf
        # what follows may work in place (a residual ``x += ...``): on a copy, not the leaf
        replaced = leaf.clone()
        if position < 0:
            return replaced
        items = list(output)
        items[position] = replaced
        return type(output)(items)

    return hook


@register_method(
    "shapleycam",
    title="ShapleyCAM",
    kind="cam",
    aliases=("shapley_cam",),
    compared_by_default=False,
    summary="GradCAM weights with a second-order (Hessian-vector) correction: each "
    "channel's Shapley value to second order",
    paper="Cai, CAMs as Shapley Value-based Explainers, arXiv 2501.06261, 2025",
    formula="ReLU(sum_k w_k A_k), w_k = mean_ij (g - H A / 2)_kij",
    cost="1 forward + 1 backward with its graph + 1 Hessian-vector product (a double "
    "backward, down to the layer)",
)
class ShapleyCAM(CAMExplainer):
    """ShapleyCAM (Cai 2025): GradCAM's weights less half the Hessian-vector product ``H A``.

    The layer's output ``A`` (as the layer returns it: with a ViT's class token, as
    pytorch-grad-cam's hook sees it) is kept to differentiate by; ``g = d score / dA``
    is taken with its graph, then ``H A = d (g . A) / dA`` in a second backward. Both are
    then seen as ``(B, C, h, w)`` and `shapleycam_weights` gives the weights. timm's fused
    attention is switched to its explicit form for the call (`unfused_attention`),
    since the fused kernels have no double backward.

    Args: as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM].
    """

    def channel_weights(self, ctx: CamContext) -> torch.Tensor:
        assert isinstance(ctx, SecondOrderContext) and ctx.gradients is not None
        assert ctx.hessian_activations is not None
        return shapleycam_weights(ctx.gradients, ctx.hessian_activations)

    def contexts(
        self,
        score: TargetScore,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        views: Sequence[SpatialView],
    ) -> list[CamContext]:
        """One forward, the gradient with its graph, and one ``H A`` per layer."""
        leaves: dict[int, torch.Tensor] = {}
        handles = [
            layer.module.register_forward_hook(_leaf_hook(leaves, i))
            for i, layer in enumerate(self.layers)
        ]
        try:
            with unfused_attention(self.model), torch.enable_grad():
                scores = score(inputs, *(() if targets is None else (targets,)))
                missing = [view.layer_name for i, view in enumerate(views) if i not in leaves]
                if missing:
                    raise AssertionError(f"layer(s) did not run: {', '.join(missing)}")
                ordered = [leaves[i] for i in range(len(views))]
                return self._second_order_contexts(score, scores, inputs, ordered, views)
        finally:
            for handle in handles:
                handle.remove()

    def _second_order_contexts(
        self,
        score: TargetScore,
        scores: torch.Tensor,
        inputs: torch.Tensor,
        leaves: list[torch.Tensor],
        views: Sequence[SpatialView],
    ) -> list[CamContext]:
        grads = torch.autograd.grad(scores.sum(), leaves, create_graph=True, allow_unused=True)
        if any(grad is None for grad in grads):
            # the engine turns this into its "pick an earlier layer" error
            raise RuntimeError("the class score does not require grad through the layer")
        assert score.seen is not None
        chosen, logits = score.seen
        result: list[CamContext] = []
        for index, (leaf, grad, view) in enumerate(zip(leaves, grads, views, strict=True)):
            if grad.requires_grad:  # else nothing after the layer is curved: H A = 0
                hvp = _hessian_times(grad, leaf, retain_graph=index < len(leaves) - 1)
            else:
                hvp = None
            hvp = torch.zeros_like(leaf) if hvp is None else hvp
            assert view.layout is not None  # set by the tap in this forward
            nchw = view.layout.to_nchw
            result.append(
                SecondOrderContext(
                    nchw(leaf.detach()),
                    nchw(grad.detach()),
                    inputs,
                    chosen,
                    view.layer_name,
                    self.model,
                    logits,
                    hessian_activations=nchw(hvp.detach()),
                )
            )
        return result


# --------------------------------------------------------------------------- FinerCAM
#: the gradient CAMs FinerCAM can run on: map rules of the engine's one forward/backward
FINER_BASES = (
    "gradcam",
    "gradcampp",
    "hirescam",
    "xgradcam",
    "layercam",
    "eigengradcam",
    "gradcamelementwise",
)


def _hessian_times(
    grad: torch.Tensor, leaf: torch.Tensor, retain_graph: bool
) -> torch.Tensor | None:
    """``H A``: the gradient ``grad`` of the score w.r.t. ``leaf`` differentiated again along
    ``leaf`` (a double backward), or a refusal naming the operation torch cannot twice
    differentiate (e.g. GhostNet's hard sigmoid gates)."""
    try:
        (hvp,) = torch.autograd.grad(
            grad, leaf, leaf.detach(), retain_graph=retain_graph, allow_unused=True
        )
    except RuntimeError as error:
        if "not implemented" not in str(error):
            raise
        raise UnsupportedModelError(
            "ShapleyCAM needs the second derivative of every operation after the layer (a "
            f"Hessian-vector product), and torch has none for one of them here ({error}). "
            "Use 'gradcam' (ShapleyCAM's first-order part) or 'hirescam' instead."
        ) from None
    return hvp


def finer_scores(
    logits: torch.Tensor, main: torch.Tensor, compared: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """FinerCAM's score (Zhang et al. 2025): ``(B, K)``, ``(B,)``, ``(B, m)`` -> ``(B,)``.

    ``sum_j p_j (z_main - alpha z_j) / (sum_j p_j + 1e-9)`` over the compared classes
    ``j``, with ``p = softmax(z)``: the target's logit less those of the classes it is
    most easily confused with, weighted by their probabilities. As pytorch-grad-cam's
    ``FinerWeightedTarget`` the weights ``p_j`` are not detached, so the gradient also
    runs through them; ``1e-9`` is theirs.
    """
    probabilities = logits.softmax(dim=1)
    weights = probabilities.gather(1, compared)
    gap = logits.gather(1, main[:, None]) - alpha * logits.gather(1, compared)
    return (weights * gap).sum(dim=1) / (weights.sum(dim=1) + 1e-9)


class FinerScore(TargetScore):
    """`TargetScore` with FinerCAM's score: ``(N, C, H, W), (N,)`` -> ``(N,)``.

    The compared classes of each row are picked inside the forward from its detached
    logits: the classes at ``ranks`` when all classes are sorted by ``|z_k - z_target|``
    (rank 0 is the target itself), or the fixed ``classes``.
    """

    def __init__(
        self,
        model: nn.Module,
        ranks: Sequence[int],
        classes: Sequence[int] | None,
        alpha: float,
    ) -> None:
        super().__init__(model)
        self.ranks = tuple(ranks)
        self.classes = None if classes is None else tuple(classes)
        self.alpha = alpha

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor | CallableTargets | None = None
    ) -> torch.Tensor:
        if isinstance(targets, CallableTargets):
            raise TargetError(
                "FinerCAM contrasts one target class with its nearest classes, so it needs "
                "a class, not a callable target; pass a class index (or None for the "
                "predicted class)."
            )
        logits = self.model(inputs)
        values = logits.detach()
        count = values.shape[1]
        chosen = values.argmax(dim=1) if targets is None else targets.to(values.device).view(-1)
        if self.classes is not None:
            if not all(0 <= c < count for c in self.classes):
                raise TargetError(
                    f"FinerCAM's comparison_classes={self.classes} has classes outside "
                    f"0..{count - 1} (the model has {count} outputs)."
                )
            compared = torch.tensor(self.classes, device=values.device).expand(len(values), -1)
        else:
            ranks = [rank for rank in self.ranks if rank < count]  # as pytorch-grad-cam clamps
            gap = (values - values.gather(1, chosen[:, None])).abs()
            compared = gap.argsort(dim=1, stable=True)[:, ranks]
        if compared.shape[1] == 0:
            raise TargetError(
                f"FinerCAM has no class to compare the target with: the model has {count} "
                f"output(s) and comparison_ranks={self.ranks}; give ranks below {count}."
            )
        self.seen = (chosen, values)
        return finer_scores(logits, chosen, compared, self.alpha)


@register_method(
    "finercam",
    title="FinerCAM",
    kind="cam",
    aliases=("finer_cam",),
    compared_by_default=False,
    summary="GradCAM of the target against its most similar classes (what tells them apart)",
    paper="Zhang et al., Finer-CAM: Spotting the Difference Reveals Finer Details for "
    "Visual Explanation, CVPR 2025",
    formula="base CAM (GradCAM) of sum_j p_j (z_c - alpha z_j) / sum_j p_j, j = the classes "
    "ranked 1-3 by |z_j - z_c|",
    cost="1 forward + 1 backward (down to the layer)",
)
class FinerCAM(CAMExplainer):
    """FinerCAM (Zhang et al. 2025): a gradient CAM of the target *against* similar classes.

    The differentiated score is `finer_scores`: the target's logit less those of the
    classes whose logits are nearest to it (ranks 1, 2, 3 of ``|z_j - z_target|``,
    pytorch-grad-cam's default), weighted by their probabilities. ``alpha=0`` gives the
    base CAM of the target logit (up to the score's scale).

    Other arguments: as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM].

    Args:
        base: the CAM whose map rule runs on that score: ``"gradcam"`` (pytorch-grad-cam's
            default ``base_method``) or another of `FINER_BASES`.
        alpha: how strongly the compared classes are subtracted (pytorch-grad-cam's ``1``).
        comparison_ranks: which classes to compare with, as ranks in the order of logit
            distance to the target (``(1, 2, 3)``: the three nearest; ranks past the class
            count are dropped, as pytorch-grad-cam does).
        comparison_classes: fixed class indices to compare with instead, for every image.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        relu: bool = True,
        normalize: bool = True,
        interpolate: InterpolationMode = "bilinear",
        base: str = "gradcam",
        alpha: float = 1.0,
        comparison_ranks: Sequence[int] = (1, 2, 3),
        comparison_classes: Sequence[int] | None = None,
    ) -> None:
        super().__init__(model, target_layer, relu, normalize, interpolate)
        spec = resolve_method(base)
        if spec.name not in FINER_BASES:
            raise ValueError(
                f"FinerCAM's base={base!r} is not a gradient CAM it can run on a score; use "
                f"one of {', '.join(FINER_BASES)}."
            )
        ranks = tuple(comparison_ranks)
        if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
            raise ValueError(
                f"FinerCAM's comparison_ranks must be ranks >= 1 (0 is the target itself), "
                f"got {comparison_ranks!r}; e.g. (1, 2, 3)."
            )
        if comparison_classes is not None and not list(comparison_classes):
            raise ValueError("FinerCAM's comparison_classes is empty; give class indices or None.")
        # only its map rule is used (cam(ctx)); it resolves the same layer(s)
        self.base: CAMExplainer = spec.cls(model, target_layer=target_layer)  # type: ignore[assignment]
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, (int, float))
            or not math.isfinite(alpha)
        ):
            raise ValueError(
                f"FinerCAM's alpha must be a finite number (how much of the compared classes' "
                f"logits to subtract), got {alpha!r}; e.g. 1.0."
            )
        self.alpha = float(alpha)
        self.comparison_ranks = ranks
        self.comparison_classes = None if comparison_classes is None else tuple(comparison_classes)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, base={self.base.name!r}, alpha={self.alpha})"

    def cam(self, ctx: CamContext) -> torch.Tensor:
        return self.base.cam(ctx)

    def weighted_activations(self, ctx: CamContext) -> torch.Tensor:
        """The base's terms ``(B, C, h, w)``: ``eigen_smooth`` projects them, as
        pytorch-grad-cam's FinerCAM hands ``eigen_smooth`` to its base."""
        return self.base.weighted_activations(ctx)

    def _checked_eigen_smooth(self, value: object) -> bool:
        base = getattr(self, "base", None)  # None while the engine's __init__ runs
        return (
            super()._checked_eigen_smooth(value)
            if base is None
            else base._checked_eigen_smooth(value)
        )

    def maps_from_views(
        self,
        score: TargetScore,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        views: Sequence[SpatialView],
    ) -> list[torch.Tensor]:
        finer = FinerScore(self.model, self.comparison_ranks, self.comparison_classes, self.alpha)
        maps = super().maps_from_views(finer, inputs, targets, views)
        score.seen = finer.seen  # the engine reports the classes and logits it saw
        return maps
