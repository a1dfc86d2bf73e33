"""Perturbation CAMs on the CAM engine: ScoreCAM and AblationCAM (no gradients).

Both weight the layer's channels ``A_k`` by how the target score reacts when the input,
or the layer output, is perturbed channel by channel; the map is ``ReLU(sum_k w_k A_k)``.
Each of the ``B x C`` perturbed copies (one per image and channel) is built on the fly, a
chunk at a time, in memory-budgeted no-grad forwards (`scoring`);
never all at once.

* ScoreCAM masks the *input* with each channel's upsampled, min-max normalised map, so
  every copy runs the whole network.
* AblationCAM zeroes one channel of the *layer output*, so only what follows the layer
  needs to run. The part after the layer is found by replaying, in call order, the modules
  that ran after it (for a last stage: the final norm/conv head, the pooling, the
  classifier); the replay is accepted only if it reproduces the model's own logits for the
  batch. Otherwise (a layer inside a residual block, a layout other than NCHW, operations
  between modules) every chunk reruns the whole network, with the layer's output replaced
  by the ablated copies: the same weights, at the cost of full forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...adapters import LayerSpec, SpatialView
from .._targets import TargetScore
from ..registry import register_method
from ..scoring import chunk_size_for, score_in_chunks, target_scores
from .engine import CamContext, CAMExplainer, InterpolationMode

__all__ = ["AblationCAM", "ScoreCAM", "ablation_weights", "layer_suffix", "score_cam_masks"]


def _job_index(lo: int, hi: int, channels: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Jobs ``lo:hi`` in image-major order -> ``(image, channel)`` indices, each ``(n,)``."""
    jobs = torch.arange(lo, hi, device=device)
    return jobs // channels, jobs % channels


def score_cam_masks(
    activations: torch.Tensor,
    size: tuple[int, int],
    mode: InterpolationMode = "bilinear",
    align_corners: bool = False,
) -> torch.Tensor:
    """ScoreCAM's masks: upsampled, per-mask min-max normalised channels.

    Args:
        activations: ``(n, h, w)`` one channel map per mask.
        size: the input's ``(H, W)``.
        mode: upsampling mode; ``align_corners`` applies to bilinear and bicubic.

    Returns:
        ``(n, 1, H, W)`` in ``[0, 1]``; a constant channel gives an all-zero mask (as
        pytorch-grad-cam's ``+ 1e-8`` does), not ``0 / 0``.
    """
    align = {"align_corners": align_corners} if mode in ("bilinear", "bicubic") else {}
    masks = F.interpolate(activations[:, None], size=size, mode=mode, **align)
    flat = masks.flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1, 1)
    span = flat.amax(dim=1).view(-1, 1, 1, 1) - low
    return (masks - low) / torch.where(span > 0, span, 1)


def ablation_weights(original: torch.Tensor, ablated: torch.Tensor) -> torch.Tensor:
    """AblationCAM's weights ``w_k = (y - y_k) / y``: ``(B,)``, ``(B, C)`` -> ``(B, C)``.

    ``y`` is the target score of the image, ``y_k`` with channel ``k`` zeroed. Where
    ``y = 0`` exactly the drop ``y - y_k`` itself is used (the ratio is undefined there).
    """
    original = original.view(-1, 1)
    return (original - ablated) / torch.where(original == 0, 1, original)


class _ScoredCAM(CAMExplainer):
    """Shared by the CAMs that weight channels by scoring modified copies (no gradients):
    the copies run in chunks of ``max_batch`` (``None``: sized from free memory)."""

    needs_gradients = False
    #: one scored copy per channel of the tapped layer: known only once the layer ran
    forwards_per_image: int | None = None
    constant_map_causes = (
        "masking or ablating the layer's channels does not change the target's score, or "
        "every weighted channel is negative and the ReLU clipped the map: random weights "
        "(timm zero-initialises the last norm of each residual block, so a random "
        "ResNet's blocks add nothing), or a target whose score does not depend on this layer"
    )

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        relu: bool = True,
        normalize: bool = True,
        interpolate: InterpolationMode = "bilinear",
        max_batch: int | None = None,
    ) -> None:
        super().__init__(model, target_layer, relu, normalize, interpolate)
        self.max_batch = max_batch


@register_method(
    "scorecam",
    title="ScoreCAM",
    kind="cam",
    compared_by_default=False,
    aliases=("score_cam",),
    summary="channels weighted by the target score of the input masked by each (no gradients)",
    paper="Wang et al., Score-CAM, CVPR Workshops 2020 (Algorithm 1)",
    formula="ReLU(sum_k w_k A_k), w = softmax_k(y(X * norm(up(A_k))))",
    cost="1 forward + C forwards of masked images per image (C channels), in chunks",
)
class ScoreCAM(_ScoredCAM):
    """ScoreCAM (Wang et al. 2020): each channel, as a mask on the input, votes by score.

    For every channel ``k``, ``M_k = minmax(upsample(A_k))`` masks the preprocessed input
    (``X * M_k``); ``s_k`` is the target *logit* of the masked image, ``w = softmax_k(s)``
    over the channels and ``map = ReLU(sum_k w_k A_k)``. This is the paper's Algorithm 1
    (its baseline term ``f(X_b)`` is the same for every channel, so the softmax drops
    it) and pytorch-grad-cam's ScoreCAM. A constant channel gives an all-zero mask.

    The ``B x C`` masked images are built a chunk at a time, one no-grad forward per
    chunk (chunks sized from free memory, or ``max_batch``).

    Args:
        model: as `GradCAM`.
        target_layer: as `GradCAM`.
        relu: as `GradCAM`.
        normalize: as `GradCAM`.
        interpolate: as `GradCAM`; it also upsamples the masks.
        max_batch: masked images per forward; ``None`` sizes chunks from free memory.
        align_corners: for bilinear/bicubic mask upsampling. ``False`` (default) as the
            authors' code and torchcam; ``True`` is pytorch-grad-cam's
            ``UpsamplingBilinear2d`` (then the maps equal theirs).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        relu: bool = True,
        normalize: bool = True,
        interpolate: InterpolationMode = "bilinear",
        max_batch: int | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__(model, target_layer, relu, normalize, interpolate, max_batch)
        self.align_corners = align_corners

    def channel_weights(self, ctx: CamContext) -> torch.Tensor:
        batch, channels = ctx.activations.shape[:2]
        size = (int(ctx.inputs.shape[-2]), int(ctx.inputs.shape[-1]))
        flat = ctx.activations.flatten(0, 1)  # (B*C, h, w), job j = image j // C, channel j % C

        def masked(lo: int, hi: int) -> torch.Tensor:
            image, _ = _job_index(lo, hi, channels, flat.device)
            masks = score_cam_masks(flat[lo:hi], size, self.interpolate, self.align_corners)
            return ctx.inputs[image] * masks.to(ctx.inputs.dtype)

        scores = ctx.score_masked(
            masked, ctx.targets.repeat_interleave(channels), "logit", self.max_batch
        )
        return scores.view(batch, channels).softmax(dim=1).to(ctx.activations.dtype)


@register_method(
    "ablationcam",
    title="AblationCAM",
    kind="cam",
    compared_by_default=False,
    aliases=("ablation_cam",),
    summary="channels weighted by the score drop when each is zeroed at the layer",
    paper="Desai & Ramaswamy, Ablation-CAM, WACV 2020",
    formula="ReLU(sum_k w_k A_k), w_k = (y - y_k) / y, y_k: channel k zeroed",
    cost="1 forward + C ablated copies per image through the part after the layer "
    "(the head for a last stage; the whole network otherwise), in chunks",
)
class AblationCAM(_ScoredCAM):
    """AblationCAM (Desai & Ramaswamy 2020): the score drop when a channel is zeroed.

    ``y`` is the target logit, ``y_k`` the logit with channel ``k`` of the layer output
    set to zero, ``w_k = (y - y_k) / y`` and ``map = ReLU(sum_k w_k A_k)``. The network
    up to the layer runs once; the ``B x C`` ablated copies of the layer output run,
    a chunk at a time, through the modules after the layer (`layer_suffix`), or
    through the whole network with the layer's output replaced where no such replay
    reproduces the model's logits.

    pytorch-grad-cam gives the same maps on layers whose output contains a zero (any
    layer ending in a ReLU, e.g. ResNet stages). On other layers it ablates with
    ``min - 1e7`` instead of zero (its own comment: "deviating from the paper"); this
    class follows the paper.

    Args:
        model: as `GradCAM`.
        target_layer: as `GradCAM`.
        relu: as `GradCAM`.
        normalize: as `GradCAM`.
        interpolate: as `GradCAM`.
        max_batch: ablated copies per forward; ``None`` sizes chunks from free memory.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        relu: bool = True,
        normalize: bool = True,
        interpolate: InterpolationMode = "bilinear",
        max_batch: int | None = None,
    ) -> None:
        super().__init__(model, target_layer, relu, normalize, interpolate, max_batch)
        #: ``"suffix"`` or ``"full"``: how the last call ran its ablated copies, per layer.
        self.last_paths: list[str] = []

    def maps_from_views(
        self,
        score: TargetScore,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        views: Sequence[SpatialView],
    ) -> list[torch.Tensor]:
        with _CallOrder(self.model, [layer.name for layer in self.layers]) as order:
            contexts = self.contexts(score, inputs, targets, views)
        assert score.seen is not None
        logits = score.seen[1]
        original = target_scores(logits, score.seen[0], "logit")  # a class or a callable
        maps, self.last_paths = [], []
        for index, (ctx, view) in enumerate(zip(contexts, views, strict=True)):
            suffix = None
            if view.layout is not None and view.layout.kind == "NCHW":
                suffix = layer_suffix(order.after(index), ctx.activations, logits)
            self.last_paths.append("full" if suffix is None else "suffix")
            ablated = self._ablated_scores(ctx, view, suffix)
            weights = ablation_weights(original, ablated)  # float32 scores
            # a float16 model's activations meet the float32 weights in the wider dtype
            wide = torch.promote_types(weights.dtype, ctx.activations.dtype)
            wide_ctx = replace(ctx, activations=ctx.activations.to(wide))
            cam = self.channel_map(weights.to(wide), wide_ctx)  # eigen_smooth too
            maps.append(cam.clamp_min(0) if self.relu else cam)
        return maps

    def _ablated_scores(
        self, ctx: CamContext, view: SpatialView, suffix: nn.Module | None
    ) -> torch.Tensor:
        """``(B, C)`` target logits with each channel zeroed at the layer."""
        acts = ctx.activations
        batch, channels = acts.shape[:2]
        targets = ctx.targets.repeat_interleave(channels)

        def ablated(lo: int, hi: int) -> torch.Tensor:
            image, channel = _job_index(lo, hi, channels, acts.device)
            copies = acts[image]  # advanced indexing: a fresh copy
            copies[torch.arange(hi - lo, device=acts.device), channel] = 0
            return copies

        if suffix is not None:
            chunk = chunk_size_for(suffix, ablated(0, 1), targets.numel(), self.max_batch)
            scores = score_in_chunks(suffix, ablated, targets, chunk, "logit")
            return scores.view(batch, channels)

        # No replayable suffix: rerun the network, the tap's output replaced per chunk.
        current: list[torch.Tensor] = []

        def images(lo: int, hi: int) -> torch.Tensor:
            current[:] = [ablated(lo, hi)]
            return ctx.inputs[_job_index(lo, hi, channels, acts.device)[0]]

        handle = view.register_forward_hook(lambda _m, _a, _out: current[0])
        try:
            scores = ctx.score_masked(images, targets, "logit", self.max_batch)
        finally:
            handle.remove()
        return scores.view(batch, channels)


class _Replay(nn.Module):
    """The modules that ran after a layer, called in order: layer output -> logits."""

    def __init__(self, steps: Sequence[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


def layer_suffix(
    steps: Sequence[nn.Module], layer_output: torch.Tensor, logits: torch.Tensor
) -> nn.Module | None:
    """The part of the network after a layer, as a module, or ``None`` if it can't be replayed.

    Args:
        steps: the modules that started after the layer finished, in call order (the
            siblings of the layer and of each of its ancestors, e.g. ``global_pool, fc``
            after a ResNet's ``layer4``).
        layer_output: ``(B, C, h, w)`` the layer's output in that forward.
        logits: ``(B, K)`` the model's output in that forward.

    Returns:
        A module mapping layer outputs to logits, accepted only if it reproduces
        ``logits`` from ``layer_output`` (so a skip connection around the layer, or
        functional code between modules, sends the caller to the full rerun).
    """
    if not steps:
        return None
    replay = _Replay(steps)
    try:
        with torch.no_grad():
            replayed = replay(layer_output.clone())  # a step may work in place
    except Exception:  # any failure means "not a plain chain of modules"
        return None
    if not isinstance(replayed, torch.Tensor) or replayed.shape != logits.shape:
        return None
    scale = float(logits.detach().abs().max()) + 1e-6
    return replay if torch.allclose(replayed.float(), logits.float(), atol=1e-4 * scale) else None


class _CallOrder:
    """Records which modules start after each layer finishes, during one forward.

    Watches the direct children of every ancestor of the layers (one level each, not
    their insides); `after` gives those that started after layer ``index`` ended.
    """

    def __init__(self, root: nn.Module, layer_names: Sequence[str]) -> None:
        self.root = root
        self.layer_names = list(layer_names)
        self.events: list[tuple[str, Any]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> _CallOrder:
        watched: dict[int, nn.Module] = {}
        for name in self.layer_names:
            parts = name.split(".") if name else []
            for depth in range(len(parts)):
                parent = self.root.get_submodule(".".join(parts[:depth]))
                on_path = parts[depth]
                for child_name, child in parent.named_children():
                    if child_name != on_path:
                        watched[id(child)] = child
        for module in watched.values():
            self._handles.append(module.register_forward_pre_hook(self._started))
        for index, name in enumerate(self.layer_names):
            layer = self.root.get_submodule(name)
            self._handles.append(layer.register_forward_hook(self._ended(index)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _started(self, module: nn.Module, _args: Any) -> None:
        self.events.append(("start", module))

    def _ended(self, index: int) -> Callable[..., None]:
        def record(_module: nn.Module, _args: Any, _output: Any) -> None:
            self.events.append(("end", index))

        return record

    def after(self, index: int) -> list[nn.Module]:
        """Modules that started after layer ``index`` last finished, in call order."""
        ends = [i for i, (kind, value) in enumerate(self.events) if (kind, value) == ("end", index)]
        if not ends:
            return []
        return [value for kind, value in self.events[ends[-1] + 1 :] if kind == "start"]
