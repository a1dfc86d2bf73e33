"""The CAM engine: one layer's activations (and gradients) in, a class activation map out.

Every CAM method is a small subclass of [`CAMExplainer`][] with one hook:

* [`CAMExplainer.channel_weights`][] ``(ctx) -> (B, C)``: the map is
  ``ReLU(sum_k w_k A_k)`` (GradCAM, GradCAM++), or
* [`CAMExplainer.cam`][] ``(ctx) -> (B, h, w)``: the map itself, before the ReLU
  (HiResCAM, LayerCAM, EigenCAM),

and ``needs_gradients = False`` for methods that use none (then no backward runs). The
[`CamContext`][] a hook gets carries activations, gradients, inputs, targets and
[`CamContext.score_masked`][] for perturbation CAMs (ScoreCAM, AblationCAM).

How a call runs:

1. the target layer(s) are resolved by the model's adapter when the explainer is built
   (a bad name fails there, with the closest names);
2. during a call each layer is seen through a *spatial tap*, a pass-through module that
   presents its output as ``(B, C, h, w)`` whatever the family's layout (NCHW for CNNs,
   NHWC for Swin, tokens with class/distillation tokens for ViT and DeiT);
3. one forward of `TargetScore` (the target
   logit per image; the predicted class is picked inside the same forward) and, for
   gradient methods, one backward give every layer's activations ``A`` and gradients
   ``g = d score / d A``, through Captum;
4. the method's hook gives the map ``(B, h, w)`` at the layer's resolution;
5. maps are upsampled to the input's ``H x W``, several layers fused (``layer_fusion``),
   and min-max normalised per image.

Every CAM method also takes pytorch-grad-cam's map options, in the constructor or the
call: ``aug_smooth`` (six flipped/scaled copies of each image in the same batch, maps
flipped back and averaged), ``eigen_smooth`` (the first principal component of the
weighted activations instead of their sum) and ``layer_fusion`` (see
`timmlens.interpretation.cam.smoothing`).

Cost: parameters are frozen during the call and the input is detached, so Captum's
``requires_grad`` on the tapped activation is the only entry into the autograd graph:
the forward records nothing before the layer and the backward stops there. A batch of
``B`` images with one target each is one forward and one (short) backward, with no
Python loop over images.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..._model_state import model_lock
from ...adapters import LayerSpec, ResolvedLayer, SpatialView, get_adapter, spatial_tap
from ...data import ImagesInput
from ...errors import LayerResolutionError
from .. import _captum
from .._targets import ResolvedTargets, TargetInput, TargetScore, target_rows
from ..base import Explainer, Explanation, normalize_maps, raised_by_the_model
from ..scoring import JobInputs, ScoreKind, chunk_size_for, score_in_chunks
from .smoothing import (
    AUGMENTATIONS,
    LayerFusion,
    augment,
    average_augmentations,
    check_flag,
    check_fusion,
    first_principal_component,
    fuse_layer_maps,
    repeat_targets,
    with_engine_options,
)

InterpolationMode = Literal["bilinear", "bicubic", "nearest", "area"]
_INTERPOLATION_MODES = ("bilinear", "bicubic", "nearest", "area")


def check_interpolation(interpolate: str) -> None:
    """Refuse an upsampling mode the CAM maps cannot use (one message for every method)."""
    if interpolate not in _INTERPOLATION_MODES:
        raise ValueError(
            f"interpolate={interpolate!r} is not supported; use one of "
            f"{', '.join(_INTERPOLATION_MODES)}."
        )


#: ``eigen_smooth`` of the call running in this thread (a call option, so not kept on the
#: explainer, which serves threads side by side); read by `CamContext` and `eigen_smoothing`.
_EIGEN_SMOOTH: ContextVar[bool] = ContextVar("timmlens_cam_eigen_smooth", default=False)


def eigen_smoothing() -> bool:
    """Whether the CAM call running in this thread has ``eigen_smooth`` on.

    For methods that compute maps outside [`CAMExplainer.layer_map`][] (GradCAM's Captum
    path) to step aside when it is.
    """
    return _EIGEN_SMOOTH.get()


def upsample_maps(
    maps: torch.Tensor, size: tuple[int, int], mode: InterpolationMode = "bilinear"
) -> torch.Tensor:
    """Resize layer-resolution maps to the input size: ``(B, h, w)`` -> ``(B, H, W)``.

    A one-cell map is repeated exactly (interpolation would add rounding noise).
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if maps.shape[-2:].numel() == 1:
        return maps.expand(*maps.shape[:-2], *size).clone()
    align = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps[:, None], size=size, mode=mode, **align)[:, 0]


def weighted_sum(weights: torch.Tensor, activations: torch.Tensor, relu: bool) -> torch.Tensor:
    """The CAM of channel weights: ``(B, C)``, ``(B, C, h, w)`` -> ``(B, h, w)``.

    ``ReLU(sum_k w_k A_k)`` (without the ReLU when ``relu=False``).
    """
    cam = torch.einsum("bc,bchw->bhw", weights, activations)
    return cam.clamp_min(0) if relu else cam


@dataclass(frozen=True, eq=False)
class CamContext:
    """What a CAM method sees of one layer for one batch.

    Attributes:
        activations: ``(B, C, h, w)`` the layer's output ``A`` (detached).
        gradients: ``(B, C, h, w)`` ``d score / d A`` of each image's target score, or
            ``None`` for methods with ``needs_gradients = False``.
        inputs: ``(B, C_in, H, W)`` the preprocessed inputs.
        targets: ``(B,)`` long, the explained classes, or the callable target
            (`CallableTargets`, sliced and
            repeated as the class tensor; [`score_masked`][] applies it to each logit row).
        layer_name: the layer's dotted name.
        model: the classifier (in eval mode, parameters frozen, for the call).
        logits: ``(B, K)`` the model's logits for ``inputs`` (detached), from the same
            forward pass.
    """

    activations: torch.Tensor
    gradients: torch.Tensor | None
    inputs: torch.Tensor
    targets: torch.Tensor
    layer_name: str
    model: nn.Module
    logits: torch.Tensor | None = None
    #: the call's ``eigen_smooth``: the map is the principal component of the weighted
    #: activations (see [`CAMExplainer.layer_map`][], [`CAMExplainer.channel_map`][])
    eigen_smooth: bool = False

    def score_masked(
        self,
        inputs: torch.Tensor | JobInputs,
        targets: torch.Tensor | None = None,
        kind: ScoreKind = "logit",
        max_batch: int | None = None,
    ) -> torch.Tensor:
        """Target scores of many (masked) inputs in memory-bounded, no-grad chunks.

        Args:
            inputs: ``(N, C_in, H, W)``, or ``make(lo, hi)`` building inputs ``lo:hi``
                on the fly (then ``targets`` gives ``N``).
            targets: ``(N,)`` class per input; ``None``: each image's target repeated
                for ``N / B`` consecutive inputs (image-major order).
            kind: ``"logit"`` or ``"probability"`` (softmax).
            max_batch: inputs per forward; ``None`` sizes chunks from free memory.

        Returns:
            ``(N,)`` float32 scores.
        """
        if targets is None:
            if not isinstance(inputs, torch.Tensor) or inputs.shape[0] % self.targets.numel():
                count = inputs.shape[0] if isinstance(inputs, torch.Tensor) else "a function of"
                raise ValueError(
                    f"score_masked got {count} inputs for {self.targets.numel()} images; pass "
                    f"targets (N,), or inputs whose count is a multiple of the batch, "
                    f"image-major."
                )
            targets = self.targets.repeat_interleave(inputs.shape[0] // self.targets.numel())
        make = inputs if callable(inputs) else lambda lo, hi: inputs[lo:hi]
        sample = make(0, 1)
        chunk = chunk_size_for(self.model, sample, targets.numel(), max_batch=max_batch)
        return score_in_chunks(self.model, make, targets.to(sample.device), chunk, kind)


class CAMExplainer(Explainer):
    """The engine of CAM methods on one or several layers (see the module docstring).

    Subclasses give [`channel_weights`][] or [`cam`][], and set
    `needs_gradients` to ``False`` if they use no gradients.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        target_layer: dotted name (``"backbone.layer4"``; ``"layer4"`` works too), module,
            or a list of them; ``None`` takes the adapter's default layer for the family
            (for methods without gradients, ``needs_gradients = False``, its
            post-activation ``activation_layer``: EfficientNet's ``bn2``, not ``conv_head``).
            Resolved here, so a bad name fails at construction.
        relu: keep only the positive evidence, ``ReLU(map)``.
        normalize: min-max normalise each heatmap to ``[0, 1]``; ``False`` gives raw maps
            (upsampled, with the model's gradient scale).
        interpolate: upsampling mode to the input size: ``"bilinear"`` (default),
            ``"bicubic"``, ``"nearest"`` or ``"area"``.
        aug_smooth: pytorch-grad-cam's test-time augmentation: each image also flipped
            left-right, each times ``0.9``, ``1`` and ``1.1``, all six in one batch; the
            six heatmaps (each min-max normalised, as theirs, if ``normalize``) are flipped
            back and averaged. Six times the cost of a call. Also a call option.
        eigen_smooth: the map is the first principal component of the method's weighted
            activations (pytorch-grad-cam's ``get_2d_projection``, with the sign of
            `first_principal_component`) instead of their channel sum; refused by
            methods whose map has no such terms. Also a call option.
        layer_fusion: how several target layers combine: ``"mean"`` (default,
            pytorch-grad-cam's multi-layer mean), ``"max"`` or ``"sum"``.

    With several layers each layer's upsampled map is min-max normalised (layers differ in
    scale) and the maps are combined by ``layer_fusion``; ``normalize`` then applies to
    the result. All layers are taken from the same forward (and backward) pass. The full
    result (`explain_full`) keeps every layer's raw map in ``extras["layer_maps"]``.

    The engine options (``aug_smooth``, ``eigen_smooth``, ``layer_fusion``) are
    keyword-only and every subclass takes them, also one with its own ``__init__``
    (see `with_engine_options`). A method that forms its maps in its own
    ``maps_from_views`` honours ``eigen_smooth`` through [`channel_map`][] (AblationCAM)
    or by deferring to the engine when `eigen_smoothing` is on (GradCAM's Captum path).
    """

    #: one forward (with the layer tapped) per image; the backward is not a forward
    forwards_per_image: int | None = 1
    constant_map_causes = (
        "every weighted channel of the layer is zero or negative, so the ReLU clipped the "
        "whole map: random weights (timm zero-initialises the last norm of each residual "
        "block, so a random ResNet's blocks add nothing), ReLUs that are off everywhere "
        "and pass no gradient, or a target whose score does not depend on this layer"
    )

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        relu: bool = True,
        normalize: bool = True,
        interpolate: InterpolationMode = "bilinear",
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        layer_fusion: LayerFusion = "mean",
    ) -> None:
        super().__init__(model)
        self.set_engine_options(aug_smooth, eigen_smooth, layer_fusion)
        check_interpolation(interpolate)
        self.adapter = get_adapter(model)
        with self.adapter.layer_errors_of(self.name):
            if target_layer is None and not self.needs_gradients:
                # activations used as evidence must be post-activation (adapter.activation_layer)
                target_layer = self.adapter.activation_layer
            self.layers: list[ResolvedLayer] = self.adapter.resolve_layers(target_layer)
        self.relu = relu
        self.normalize = normalize
        self.interpolate: InterpolationMode = interpolate
        # The taps a ``with`` block keeps installed (see __enter__), and its nesting depth.
        self._kept_taps: ExitStack | None = None
        self._kept_views: list[SpatialView] = []
        self._depth = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A method's own __init__ (seed=, max_batch=) gets the engine options too.
        if "__init__" in cls.__dict__:
            cls.__init__ = with_engine_options(cls.__dict__["__init__"])  # type: ignore[method-assign]

    def set_engine_options(
        self, aug_smooth: bool = False, eigen_smooth: bool = False, layer_fusion: str = "mean"
    ) -> None:
        """Check and set ``aug_smooth``, ``eigen_smooth`` and ``layer_fusion``."""
        name = type(self).__name__
        self.aug_smooth = check_flag("aug_smooth", aug_smooth, name)
        self.eigen_smooth = self._checked_eigen_smooth(eigen_smooth)
        self.layer_fusion: LayerFusion = check_fusion(layer_fusion, name)
        per_image = type(self).forwards_per_image
        # aug_smooth explains every image as six: the evaluators' progress counts them
        self.forwards_per_image = (
            per_image * len(AUGMENTATIONS) if per_image and self.aug_smooth else per_image
        )

    @classmethod
    def supports_eigen_smooth(cls) -> bool:
        """Whether the map is a channel sum of weighted activations (``eigen_smooth``).

        True for methods with `channel_weights` or `weighted_activations`; a method that
        computes its map otherwise (only `cam`) has no terms to project.
        """
        own_cam = cls.cam is not CAMExplainer.cam
        return not own_cam or cls.weighted_activations is not CAMExplainer.weighted_activations

    def _checked_eigen_smooth(self, value: object) -> bool:
        flag = check_flag("eigen_smooth", value, type(self).__name__)
        if flag and not self.supports_eigen_smooth():
            raise ValueError(
                f"{type(self).__name__} does not take eigen_smooth=True: its map is not a "
                f"sum of weighted activations over channels, so there is no principal "
                f"component to take. Use eigen_smooth=False, or EigenCAM / EigenGradCAM."
            )
        return flag

    def constant_map_causes_of(self, result: Explanation) -> str:
        """A layer map of one cell is constant once upsampled, whatever the method."""
        maps = result.extras.get("layer_maps", ())
        small = [
            name
            for name, cam in zip(self.layer_names, maps, strict=False)
            if cam.shape[-2:].numel() == 1
        ]
        if small:
            return (
                f"the map of {', '.join(small)} is 1x1 at this input size, and one cell "
                f"upsampled is constant: give larger images (the model's own size) or an "
                f"earlier layer (target_layer=)"
            )
        return self.constant_map_causes

    def __enter__(self) -> CAMExplainer:
        """Install the layer taps now and keep them until the block ends.

        Calls inside the block reuse them (as pytorch-grad-cam's and torchcam's context
        managers do); the model's own forward passes through them unchanged. Nested
        blocks share one set of taps.
        """
        with model_lock(self.model):  # not while another thread's forward runs
            if self._depth == 0:
                stack = ExitStack()
                try:
                    self._kept_views = [self._tap(stack, layer) for layer in self.layers]
                except BaseException:
                    stack.close()
                    raise
                self._kept_taps = stack
            self._depth += 1
        return self

    def close(self) -> None:
        """Remove the taps of the ``with`` block (at its end; safe to call twice)."""
        with model_lock(self.model):
            self._depth = max(0, self._depth - 1)
            if self._depth == 0 and self._kept_taps is not None:
                taps, self._kept_taps, self._kept_views = self._kept_taps, None, []
                taps.close()

    def _tap(self, stack: ExitStack, layer: ResolvedLayer) -> SpatialView:
        return stack.enter_context(
            spatial_tap(self.model, layer.module, layer.name, self.adapter.layout_for)
        )

    def __repr__(self) -> str:
        layers = ", ".join(layer.name for layer in self.layers)
        options = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("aug_smooth", self.aug_smooth, False),
                ("eigen_smooth", self.eigen_smooth, False),
                ("layer_fusion", self.layer_fusion, "mean"),
            )
            if value != default
        )
        return (
            f"{type(self).__name__}(layers=[{layers}], relu={self.relu}, "
            f"normalize={self.normalize}, interpolate={self.interpolate!r}{options})"
        )

    @property
    def layer_names(self) -> list[str]:
        """Full dotted names of the explained layers."""
        return [layer.name for layer in self.layers]

    # ------------------------------------------------------------- hooks
    def channel_weights(self, ctx: CamContext) -> torch.Tensor:
        """Channel weights ``(B, C)``; the map is ``sum_k w_k A_k``."""
        raise NotImplementedError(
            f"{type(self).__name__} defines neither channel_weights nor cam; a CAM method "
            f"gives channel_weights(ctx) -> (B, C) or cam(ctx) -> (B, h, w)."
        )

    def cam(self, ctx: CamContext) -> torch.Tensor:
        """The map ``(B, h, w)`` at the layer's resolution, before the ReLU."""
        return weighted_sum(self.channel_weights(ctx), ctx.activations, relu=False)

    def weighted_activations(self, ctx: CamContext) -> torch.Tensor:
        """The terms ``(B, C, h, w)`` whose channel sum is the map (``eigen_smooth`` projects them).

        ``w_k A_k`` for channel-weight methods; a method with its own `cam` that is such a
        sum (HiResCAM's ``g * A``) gives them here.
        """
        return self.channel_weights(ctx)[:, :, None, None] * ctx.activations

    def layer_map(self, ctx: CamContext) -> torch.Tensor:
        """The map ``(B, h, w)`` before the ReLU: `cam`, or with ``eigen_smooth`` the first
        principal component of `weighted_activations` (pytorch-grad-cam's ``get_cam_image``)."""
        if ctx.eigen_smooth:
            return first_principal_component(self.weighted_activations(ctx))
        return self.cam(ctx)

    @staticmethod
    def channel_map(weights: torch.Tensor, ctx: CamContext) -> torch.Tensor:
        """The map of channel weights ``(B, C)`` before the ReLU: ``sum_k w_k A_k``, or the
        principal component of ``w_k A_k`` with ``eigen_smooth`` (for methods that find
        their weights outside `channel_weights`, such as AblationCAM)."""
        if ctx.eigen_smooth:
            return first_principal_component(weights[:, :, None, None] * ctx.activations)
        return weighted_sum(weights, ctx.activations, relu=False)

    # -------------------------------------------------------------- engine
    def attribute(
        self,
        inputs: torch.Tensor,
        targets: ResolvedTargets,
        *,
        aug_smooth: bool | None = None,
        eigen_smooth: bool | None = None,
        **kwargs: Any,
    ) -> Explanation:
        """The explanation of ``inputs`` ``(B, C, H, W)`` (see the module docstring).

        ``aug_smooth`` / ``eigen_smooth`` (``None``: the constructor's) apply to this call.
        """
        if kwargs:
            raise TypeError(
                f"unexpected arguments for {type(self).__name__}: {sorted(kwargs)}; a CAM "
                f"call takes target_class, aug_smooth and eigen_smooth."
            )
        name = type(self).__name__
        aug = self.aug_smooth if aug_smooth is None else check_flag("aug_smooth", aug_smooth, name)
        eigen = (
            self.eigen_smooth if eigen_smooth is None else self._checked_eigen_smooth(eigen_smooth)
        )
        token = _EIGEN_SMOOTH.set(eigen)
        try:  # aug_smooth: every augmentation of every image in one batch
            run = (augment(inputs), repeat_targets(targets)) if aug else (inputs, targets)
            with self.adapter.layer_errors_of(self.name):
                layer_maps, (chosen, logits) = self._layer_maps(*run)
        finally:
            _EIGEN_SMOOTH.reset(token)
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        maps = [upsample_maps(m, size, self.interpolate) for m in layer_maps]
        heatmap = fuse_layer_maps(maps, self.layer_fusion, normalize_maps)
        if aug:
            scale = normalize_maps if self.normalize else None
            heatmap, layer_maps, chosen, logits = average_augmentations(
                heatmap, layer_maps, chosen, logits, scale
            )
        return Explanation(
            heatmap=normalize_maps(heatmap) if self.normalize else heatmap,
            targets=chosen,
            logits=logits,
            attributions=layer_maps[0] if len(layer_maps) == 1 else None,
            extras={"layer_maps": layer_maps},
        )

    def attribute_layers(
        self, images: ImagesInput, target_class: TargetInput = None
    ) -> list[torch.Tensor]:
        """Raw maps at each layer's own resolution: one ``(B, h_l, w_l)`` per layer.

        No upsampling, no normalisation (``relu`` still applies); always batched, also for
        one image. Same inputs and targets as `explain`; `explain_full` gives
        them with the targets and logits (``extras["layer_maps"]``).
        """
        return list(self.explain_full(images, target_class).extras["layer_maps"])

    def attribute_layer(
        self, images: ImagesInput, target_class: TargetInput = None
    ) -> torch.Tensor:
        """Raw map ``(B, h, w)`` at the layer's resolution (single-layer explainers).

        See [`attribute_layers`][]; this is its only entry for one layer.
        """
        if len(self.layers) != 1:
            raise ValueError(
                f"{type(self).__name__} explains {len(self.layers)} layers "
                f"({', '.join(self.layer_names)}); use attribute_layers() for one map per layer."
            )
        return self.attribute_layers(images, target_class)[0]

    def _layer_maps(
        self, inputs: torch.Tensor, targets: ResolvedTargets
    ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Taps every layer, runs the method once, removes the taps.

        Returns one ``(B, h, w)`` map per layer and the ``(B,)`` classes and ``(B, K)``
        logits of the forward pass. Runs inside the explanation guard (frozen parameters).
        """
        # A detached, non-inference input keeps the autograd graph to what follows the layer.
        inputs = inputs.detach()
        if inputs.is_inference():
            inputs = inputs.clone()
        score = TargetScore(self.model)
        chosen = target_rows(targets, inputs.device)
        with ExitStack() as taps, torch.no_grad():  # Captum re-enables grad for its pass
            if self._kept_views:  # inside ``with explainer:``: the block's taps
                views = self._kept_views
                for view in views:
                    view.layout = None  # set again by this call's forward
            else:
                views = [self._tap(taps, layer) for layer in self.layers]
            try:
                maps = self.maps_from_views(score, inputs, chosen, views)
            except AssertionError as exc:
                silent = [view.layer_name for view in views if view.layout is None]
                if not silent or raised_by_the_model(exc):
                    raise  # the model's own input checks: explanation_call reports them
                raise LayerResolutionError(
                    f"Layer(s) {', '.join(silent)} did not run in the model's forward pass, so "
                    f"they cannot be explained. Pick layers on the forward path, e.g. "
                    f"{', '.join(self.adapter.recommended_layers[:3])}."
                ) from exc
            except RuntimeError as exc:
                if "does not require grad" not in str(exc):
                    raise
                raise LayerResolutionError(
                    f"The class score does not depend on the output of "
                    f"{', '.join(self.layer_names)} (the classifier reads other tokens or "
                    f"features, e.g. a class token pooled after this layer), so it has no "
                    f"gradient to weight. Pick an earlier layer, e.g. the input of the last "
                    f"block (its norm1) or {', '.join(self.adapter.recommended_layers[1:3])}."
                ) from exc
        assert score.seen is not None  # the forward above ran
        return [m.detach() for m in maps], score.seen

    def maps_from_views(
        self,
        score: TargetScore,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        views: Sequence[SpatialView],
    ) -> list[torch.Tensor]:
        """One ``(B, h, w)`` map per tapped layer: contexts from one pass, then the hook."""
        maps = []
        for ctx in self.contexts(score, inputs, targets, views):
            cam = self.layer_map(ctx)
            maps.append(cam.clamp_min(0) if self.relu else cam)
        return maps

    def contexts(
        self,
        score: TargetScore,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        views: Sequence[SpatialView],
    ) -> list[CamContext]:
        """A [`CamContext`][] per view from one forward (and one backward if needed)."""
        forward_args = None if targets is None else (targets,)
        if self.needs_gradients:
            grads, acts = _captum.layer_gradients_and_eval(
                score, list(views), inputs, additional_forward_args=forward_args
            )
            pairs = [(a.detach(), g) for (g,), (a,) in zip(grads, acts, strict=True)]
        else:
            pairs = [(a, None) for a in _forward_outputs(score, inputs, forward_args, views)]
        assert score.seen is not None
        chosen, logits = score.seen
        smooth = _EIGEN_SMOOTH.get()
        return [
            CamContext(acts, grads, inputs, chosen, view.layer_name, self.model, logits, smooth)
            for (acts, grads), view in zip(pairs, views, strict=True)
        ]


def _forward_outputs(
    score: TargetScore,
    inputs: torch.Tensor,
    forward_args: tuple[torch.Tensor, ...] | None,
    views: Sequence[SpatialView],
) -> list[torch.Tensor]:
    """Every view's output ``(B, C, h, w)`` from one no-grad forward (no backward)."""
    outputs: dict[int, torch.Tensor] = {}

    def keeper(index: int) -> Any:
        def keep(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            # a copy: what follows may work in place on it (a residual block's ``x += ...``)
            outputs[index] = output.detach().clone()

        return keep

    handles = [view.register_forward_hook(keeper(i)) for i, view in enumerate(views)]
    try:
        with torch.no_grad():
            score(inputs, *(forward_args or ()))
    finally:
        for handle in handles:
            handle.remove()
    missing = [view.layer_name for i, view in enumerate(views) if i not in outputs]
    if missing:
        raise AssertionError(f"layer(s) did not run: {', '.join(missing)}")
    return [outputs[i] for i in range(len(views))]
