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
5. maps are upsampled to the input's ``H x W`` and min-max normalised per image.

Cost: parameters are frozen during the call and the input is detached, so Captum's
``requires_grad`` on the tapped activation is the only entry into the autograd graph:
the forward records nothing before the layer and the backward stops there. A batch of
``B`` images with one target each is one forward and one (short) backward, with no
Python loop over images.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
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

InterpolationMode = Literal["bilinear", "bicubic", "nearest", "area"]
_INTERPOLATION_MODES = ("bilinear", "bicubic", "nearest", "area")


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

    With several layers each layer's upsampled map is min-max normalised (layers differ in
    scale) and the maps are averaged; ``normalize`` then applies to the average. All
    layers are taken from the same forward (and backward) pass. The full result
    (`explain_full`) keeps every layer's raw map in ``extras["layer_maps"]``.
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
    ) -> None:
        super().__init__(model)
        if interpolate not in _INTERPOLATION_MODES:
            raise ValueError(
                f"interpolate={interpolate!r} is not supported; use one of "
                f"{', '.join(_INTERPOLATION_MODES)}."
            )
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
        return (
            f"{type(self).__name__}(layers=[{layers}], relu={self.relu}, "
            f"normalize={self.normalize}, interpolate={self.interpolate!r})"
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

    # -------------------------------------------------------------- engine
    def attribute(
        self, inputs: torch.Tensor, targets: ResolvedTargets, **kwargs: Any
    ) -> Explanation:
        """The explanation of ``inputs`` ``(B, C, H, W)`` (see the module docstring)."""
        if kwargs:
            raise TypeError(f"unexpected arguments for {type(self).__name__}: {sorted(kwargs)}")
        with self.adapter.layer_errors_of(self.name):
            layer_maps, (chosen, logits) = self._layer_maps(inputs, targets)
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        maps = [upsample_maps(m, size, self.interpolate) for m in layer_maps]
        if len(maps) == 1:
            heatmap = maps[0]
        else:
            heatmap = torch.stack([normalize_maps(m) for m in maps]).mean(dim=0)
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
            cam = self.cam(ctx)
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
        return [
            CamContext(acts, grads, inputs, chosen, view.layer_name, self.model, logits)
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
