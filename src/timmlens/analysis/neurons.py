"""Neuron and layer attributions through the adapter: which channels, which pixels.

Two questions about the family's CAM layer (the adapter's default layer, seen as
``(B, C, h, w)`` through the spatial tap, so CNNs, channels-last models and ViTs all
work without naming a layer):

* [`channel_conductance`][]: *which channels carry the evidence for a class?* Captum's
  ``LayerConductance`` (Dhamdhere et al., ICLR 2019) of the target logit ``F``,
  ``Cond_j = sum_s (A_j(x_{s+1}) - A_j(x_s)) * dF/dA_j(x_s)`` along the straight path
  ``x_s = x' + a_s (x - x')``, for every neuron ``j = (c, u, v)`` of the layer; summed
  over positions it ranks the channels.
* [`channel_attribution`][]: *which pixels drive channel ``c``?* One of

  - ``"conductance"`` (Captum's ``NeuronConductance``): the conductance of the target
    logit through channel ``c``, spread over the input pixels:
    ``(x_i - x'_i) * sum_s w_s sum_{u,v} dF/dA_{c,u,v}(x_s) * dA_{c,u,v}/dx_i(x_s)``.
    This is Captum's ``NeuronConductance`` summed over the channel's ``h * w`` neurons
    (computed in one pass, two backward passes per path point, not ``h * w`` Captum
    calls). Captum's own channel selectors cannot give it: a slice selector
    ``(c, :, :)`` multiplies the *summed* gradient ``sum_uv dF/dA`` by the gradient of
    the *summed* activation, which is not the sum of per-neuron conductances (Captum's
    docstring warns that conductance selectors must not aggregate). Summing per neuron
    keeps conductance's completeness: the pixels' attributions add up to the channel's
    total layer conductance ``sum_{u,v} Cond_{c,u,v}``.
  - ``"gradient"`` (Captum's ``NeuronGradient``): ``d sum_{u,v} A_{c,u,v} / dx``, one
    backward pass, no class involved: the fast look at what excites the channel.
  - ``"integrated_gradients"`` (Captum's ``NeuronIntegratedGradients``): integrated
    gradients of the channel's total activation ``sum_{u,v} A_{c,u,v}``; its pixels add
    up to that total's change from baseline to input. No class involved.

  ``position=(u, v)`` selects one neuron of the channel instead of the whole channel (the
  Captum selector ``(c, u, v)``; all three methods are then Captum called directly).

Both run inside the explanation guard (model left as found, one explanation of a model
at a time), keep tensors on the model's device, and size chunks of path points by the
input engine's memory probe. Baselines are the input engine's (``"black"`` by default,
see the input engine's ``make_baseline``).

Completeness of ``channel_conductance`` (``sum`` over the layer ``= F(x) - F(x')``, up
to the quadrature error reported as ``convergence_delta``) holds where every path from
the input to the logit passes through the layer (EfficientNet's ``conv_head``, a
ResNet's last stage). It does not hold for a ViT's ``norm1`` (the residual stream
bypasses it, and the class token is not in the spatial view).

Check the delta before trusting a ranking: conductance takes the gradient at the start
of each path step, so a logit that rises within a step or two is missed. On the real
EfficientNet-Lite0 and chelsea the tiger-cat logit rises from -0.7 to 9.5 between 1.6%
and 4% of the way from the black baseline: the conductance summed over ``conv_head`` is
1.2 of the 10.0 logit change with 32 steps, 5.0 with 128, 7.0 with 256, and the top
channels change on the way. From the ``"noise"`` baseline the rise is spread over a
third of the path (7.3 of 9.4 with 64 steps). Raise ``n_steps`` (or change the
baseline) until the delta is small next to the change and the top channels settle.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from ..adapters import LayerSpec, SpatialView, get_adapter
from ..data import ImagesInput, prepare_images
from ..errors import ChannelIndexError, LayerResolutionError, TargetError
from ..interpretation._targets import TargetInput, TargetScore, validate_targets
from ..interpretation.base import explanation_call, normalize_maps
from ..interpretation.cam.engine import upsample_maps
from ..interpretation.input.baselines import BaselineSpec, make_baseline, validate_baseline
from ..interpretation.input.checks import check_budget, check_positive_int
from ..interpretation.input.engine import attribution_heatmap
from ..interpretation.input.integrated_gradients import IG_METHODS, IGMethod
from ..interpretation.scoring import (
    forward_with_activation_bytes,
    memory_budget,
    samples_per_chunk,
)
from ..models.introspect import num_outputs, unwrap_model
from .activations import tap_one_layer

__all__ = [
    "NEURON_METHODS",
    "ChannelAttribution",
    "ChannelConductance",
    "channel_attribution",
    "channel_conductance",
]

NeuronMethod = Literal["conductance", "gradient", "integrated_gradients"]
NEURON_METHODS: tuple[str, ...] = get_args(NeuronMethod)
#: methods whose attribution flows toward a class (the others explain the channel alone)
_CLASS_METHODS = ("conductance",)


@dataclass(frozen=True, eq=False)
class ChannelAttribution:
    """Which input pixels drive one channel (or one neuron) of a layer; always batched.

    Attributes:
        attributions: ``(B, C_in, H, W)`` the method's raw attributions in model-input
            space, on the model's device.
        heatmap: ``(B, H, W)`` the attributions reduced as the input methods reduce
            them: ``|.|`` summed over colour channels, min-max scaled to [0, 1]; or, with
            ``signed=True``, the plain sum scaled to [-1, 1].
        channel: the explained channel of the layer.
        position: ``(u, v)`` on the layer's grid for one neuron; ``None`` for the whole
            channel (all its positions summed).
        method: ``"conductance"``, ``"gradient"`` or ``"integrated_gradients"``.
        layer: the layer's dotted name.
        num_channels: ``C``, the layer's channel count.
        grid: ``(h, w)`` the layer's spatial grid.
        targets: ``(B,)`` the class the conductance flows toward; ``None`` for the
            methods that explain the channel's activation alone.
        logits: ``(B, K)`` the model's logits of the inputs.
    """

    attributions: torch.Tensor
    heatmap: torch.Tensor
    channel: int
    position: tuple[int, int] | None
    method: str
    layer: str
    num_channels: int
    grid: tuple[int, int]
    targets: torch.Tensor | None
    logits: torch.Tensor


@dataclass(frozen=True, eq=False)
class ChannelConductance:
    """The conductance of every neuron of a layer toward each image's class; always batched.

    Attributes:
        conductance: ``(B, C, h, w)`` Captum's ``LayerConductance`` on the spatial view.
        channel_totals: ``(B, C)`` conductance summed over each channel's positions.
        top_channels: ``(B, k)`` long, the channels with the largest totals, best first.
        top_scores: ``(B, k)`` their totals.
        heatmap: ``(B, H, W)`` where the class evidence sits: the positive part of the
            conductance summed over channels, upsampled (bilinear) to the input and
            min-max scaled to [0, 1], like a CAM.
        targets: ``(B,)`` the explained classes.
        logits: ``(B, K)`` the model's logits of the inputs.
        convergence_delta: ``(B,)`` Captum's ``sum(conductance) - (F(x) - F(x'))``; near
            zero only where the layer is a cut of the network (see the module docstring).
        layer: the layer's dotted name.
    """

    conductance: torch.Tensor
    channel_totals: torch.Tensor
    top_channels: torch.Tensor
    top_scores: torch.Tensor
    heatmap: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    convergence_delta: torch.Tensor
    layer: str


@dataclass(frozen=True)
class _Probe:
    """What one no-grad forward through the tapped layer tells."""

    logits: torch.Tensor  # (B, K)
    bytes_per_sample: int
    shape: tuple[int, int, int]  # the view's (C, h, w)


@contextmanager
def _tapped(model: nn.Module, layer: LayerSpec, what: str) -> Iterator[tuple[SpatialView, str]]:
    """The one layer (default: the adapter's CAM layer) behind a spatial tap; layer errors
    name the calling function."""
    with get_adapter(model).layer_errors_of(what), tap_one_layer(model, layer, what) as tapped:
        yield tapped


@torch.no_grad()
def _probe(model: nn.Module, view: SpatialView, inputs: torch.Tensor) -> _Probe:
    """Logits, activation bytes per sample and the view's ``(C, h, w)`` from one forward."""
    shapes: list[tuple[int, ...]] = []
    handle = view.register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.shape)))
    try:
        logits, per_sample = forward_with_activation_bytes(model, inputs)
    finally:
        handle.remove()
    if not shapes:
        raise LayerResolutionError(
            f"Layer {view.layer_name} did not run in the model's forward pass; pick a layer "
            f"on the forward path (timmlens.describe(model) lists them)."
        )
    _, channels, height, width = shapes[0]
    return _Probe(logits, per_sample, (channels, height, width))


def _check_selection(
    channel: Any, position: Any, probe: _Probe, layer: str
) -> tuple[int, tuple[int, int] | None]:
    channels, height, width = probe.shape
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < channels:
        raise ChannelIndexError(
            f"channel {channel!r} is not a channel of layer {layer}, which has {channels} "
            f"channels (valid: 0 to {channels - 1}). Rank them with channel_conductance() "
            f"and pick one of its top_channels."
        )
    if position is None:
        return channel, None
    ok = (
        isinstance(position, (tuple, list))
        and len(position) == 2
        and all(isinstance(p, int) and not isinstance(p, bool) for p in position)
        and 0 <= position[0] < height
        and 0 <= position[1] < width
    )
    if not ok:
        raise ChannelIndexError(
            f"position {position!r} is not on the {height}x{width} grid of layer {layer}; "
            f"give (row, column) with 0 <= row < {height} and 0 <= column < {width}, or "
            f"None for the whole channel."
        )
    return channel, (int(position[0]), int(position[1]))


def _image_groups(
    probe: _Probe, inputs: torch.Tensor, steps: int, budget: int | None
) -> Iterator[tuple[int, int, int | None]]:
    """``(lo, hi, internal_batch_size)`` chunks of images whose path points fit memory.

    ``steps`` forward+backward samples per image; a group that cannot hold all of one
    image's steps is one image, and ``internal_batch_size`` (Captum's) splits its steps.
    """
    capacity = samples_per_chunk(
        probe.bytes_per_sample, memory_budget(inputs.device, "backward", budget)
    )
    per_group = max(1, capacity // steps)
    for lo in range(0, inputs.shape[0], per_group):
        hi = min(lo + per_group, inputs.shape[0])
        yield lo, hi, (None if capacity >= steps else max(2, capacity))


def _targets_of(
    model: nn.Module, target_class: TargetInput, inputs: torch.Tensor, probe: _Probe
) -> torch.Tensor:
    """``(B,)`` classes: the given ones (validated) or the predicted ones (before the path,
    whose argmax changes along the way)."""
    targets = validate_targets(
        target_class, inputs.shape[0], num_outputs(model), model, "channel attribution"
    )
    if targets is None:
        return probe.logits.argmax(dim=1)
    if not isinstance(targets, list):
        raise TargetError(
            "channel attributions take a class index or name (one for all images or one "
            "per image) or None for the predicted class; a callable target is not "
            "supported here. Pass the class whose evidence you want to trace."
        )
    return torch.as_tensor(targets, device=inputs.device, dtype=torch.long)


def _channel_conductance_pixels(
    score: TargetScore,
    view: SpatialView,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
    channel: int,
    n_steps: int,
    quadrature: str,
    chunk: int | None,
) -> torch.Tensor:
    """Conductance of ``score`` through the whole channel, per input pixel: ``(B, C_in, H, W)``.

    ``sum_{u,v}`` of Captum's ``NeuronConductance`` of neuron ``(channel, u, v)``: at each
    path point one backward pass gives ``g = dF/dA`` at the layer, a second gives the
    input gradient of ``sum_{u,v} g_{c,u,v} A_{c,u,v}`` (``g`` held constant), i.e.
    ``sum_{u,v} dF/dA_{c,u,v} * dA_{c,u,v}/dx``. Captum's step sizes and points.
    """
    from ..interpretation._captum import approximation_parameters

    step_sizes_of, alphas_of = approximation_parameters(quadrature)
    step_sizes, alphas = step_sizes_of(n_steps), alphas_of(n_steps)
    batch = inputs.shape[0]
    # jobs are (step, image) pairs, step-major; chunk them as Captum's internal batching would
    jobs = n_steps * batch
    size = jobs if chunk is None else max(1, chunk)
    total = torch.zeros_like(inputs)
    captured: list[torch.Tensor] = []
    handle = view.register_forward_hook(lambda _m, _a, out: captured.append(out))
    try:
        for lo in range(0, jobs, size):
            index = torch.arange(lo, min(lo + size, jobs), device=inputs.device)
            step, image = index // batch, index % batch
            alpha = torch.tensor(alphas, dtype=inputs.dtype, device=inputs.device)[step]
            weight = torch.tensor(step_sizes, dtype=inputs.dtype, device=inputs.device)[step]
            start = baselines[image]
            points = (start + alpha.view(-1, 1, 1, 1) * (inputs[image] - start)).requires_grad_()
            captured.clear()
            with torch.enable_grad():
                out = score(points, targets[image])
                (activation,) = captured
                (layer_grad,) = torch.autograd.grad(out.sum(), activation, retain_graph=True)
                through = (layer_grad.detach()[:, channel] * activation[:, channel]).sum()
                (input_grad,) = torch.autograd.grad(through, points)
            total.index_add_(0, image, input_grad * weight.view(-1, 1, 1, 1))
    finally:
        handle.remove()
    return (inputs - baselines) * total


def channel_attribution(
    model: nn.Module,
    images: ImagesInput,
    channel: int,
    *,
    method: NeuronMethod = "conductance",
    position: tuple[int, int] | None = None,
    layer: LayerSpec = None,
    target_class: TargetInput = None,
    baseline: BaselineSpec = "black",
    n_steps: int = 32,
    quadrature: IGMethod = "riemann_trapezoid",
    signed: bool = False,
    memory_budget_bytes: int | None = None,
) -> ChannelAttribution:
    """Which pixels drive channel ``channel`` of the family's CAM layer (or of ``layer``).

    Args:
        model: an ``ImageClassifier`` or a bare timm model (any family the adapters know).
        images: PIL image, path, array, CHW/BCHW tensor, or a list of them.
        channel: the channel index on the layer's ``(B, C, h, w)`` spatial view.
        method: ``"conductance"`` (toward ``target_class``; ``n_steps`` x two backward
            passes), ``"gradient"`` (one backward pass) or ``"integrated_gradients"`` (of
            the channel's activation; ``n_steps`` backward passes); see the module
            docstring for the formulas.
        position: ``(u, v)`` on the layer's grid for one neuron (Captum's selector
            ``(channel, u, v)``); ``None``: the whole channel, all positions summed.
        layer: dotted name or module; ``None``: the adapter's default CAM layer.
        target_class: the class conductance flows toward (index, name, one per image);
            ``None``: each image's predicted class. Ignored by the class-free methods.
        baseline: path start for ``"conductance"`` and ``"integrated_gradients"``:
            ``"black"``, ``"blur"``, ``"noise"``, ``"uniform"`` or a tensor in normalised
            input space (see the input engine's ``make_baseline``).
        n_steps: path points of the path methods.
        quadrature: Captum's rule for the path integral: ``"riemann_trapezoid"``
            (Captum's ``NeuronConductance`` default), ``"gausslegendre"``, ...
        signed: heatmaps keep polarity (sum over colour channels, in [-1, 1]).
        memory_budget_bytes: budget for chunking path points; ``None``: half the free
            CUDA memory, 2 GiB elsewhere.

    Returns:
        A [`ChannelAttribution`][] with ``(B, C_in, H, W)`` attributions and ``(B, H, W)``
        heatmaps (batched also for one image).

    Raises:
        ChannelIndexError: ``channel`` (or ``position``) outside the layer's output; the
            message names the layer's channel count.
        ValueError: an unknown ``method``, ``quadrature`` or ``baseline``.
        LayerResolutionError: a layer without a spatial map, or not on the forward path.
    """
    if method not in NEURON_METHODS:
        raise ValueError(
            f"unknown neuron attribution method {method!r}; expected one of "
            f"{', '.join(NEURON_METHODS)}. 'conductance' explains a class through the "
            f"channel; 'gradient' is the fast look at what excites it."
        )
    _check_path_options(n_steps, quadrature)
    baseline = validate_baseline(baseline)
    budget = check_budget(memory_budget_bytes)
    what = f"channel_attribution ({method})"
    model = unwrap_model(model)  # torch.compile, DataParallel, DDP: the module inside
    inputs = prepare_images(images, model).tensor.detach()
    with explanation_call(model, inputs, what), _tapped(model, layer, what) as (view, name):
        probe = _probe(model, view, inputs)
        channel, position = _check_selection(channel, position, probe, name)
        uses_class = method in _CLASS_METHODS
        targets = _targets_of(model, target_class, inputs, probe) if uses_class else None
        attributions = _attribute_channel(
            model,
            view,
            inputs,
            targets,
            channel,
            position,
            method,
            probe,
            baseline=baseline,
            n_steps=n_steps,
            quadrature=quadrature,
            budget=budget,
        )
    return ChannelAttribution(
        attributions=attributions,
        heatmap=attribution_heatmap(attributions, signed),
        channel=channel,
        position=position,
        method=method,
        layer=name,
        num_channels=probe.shape[0],
        grid=(probe.shape[1], probe.shape[2]),
        targets=targets,
        logits=probe.logits,
    )


def _check_path_options(n_steps: Any, quadrature: Any) -> None:
    check_positive_int(n_steps, "n_steps", "Use 32 (more for a smaller convergence delta).")
    if quadrature not in IG_METHODS:
        raise ValueError(
            f"unknown quadrature {quadrature!r}; expected one of {', '.join(IG_METHODS)}. "
            f"Try 'riemann_trapezoid'."
        )


def _attribute_channel(
    model: nn.Module,
    view: SpatialView,
    inputs: torch.Tensor,
    targets: torch.Tensor | None,
    channel: int,
    position: tuple[int, int] | None,
    method: str,
    probe: _Probe,
    *,
    baseline: BaselineSpec,
    n_steps: int,
    quadrature: str,
    budget: int | None,
) -> torch.Tensor:
    """Raw ``(B, C_in, H, W)`` attributions of one channel (or neuron), chunked by memory."""
    from captum.attr import NeuronConductance, NeuronGradient, NeuronIntegratedGradients

    # a slice selector makes Captum sum the channel's positions
    selector = (channel, *(position if position is not None else (slice(None), slice(None))))
    baselines = None if method == "gradient" else make_baseline(baseline, inputs, model)
    steps = 1 if method == "gradient" else n_steps
    parts = []
    for lo, hi, internal in _image_groups(probe, inputs, steps, budget):
        x = inputs[lo:hi].detach().requires_grad_(True)
        if method == "gradient":
            part = NeuronGradient(model, view).attribute(x, selector)
        elif method == "integrated_gradients":
            part = NeuronIntegratedGradients(model, view).attribute(
                x,
                selector,
                baselines=baselines[lo:hi],
                n_steps=n_steps,
                method=quadrature,
                internal_batch_size=internal,
            )
        else:
            assert targets is not None and baselines is not None
            score = TargetScore(model)
            if position is not None:
                part = NeuronConductance(score, view).attribute(
                    x,
                    selector,
                    baselines=baselines[lo:hi],
                    additional_forward_args=(targets[lo:hi],),
                    n_steps=n_steps,
                    method=quadrature,
                    internal_batch_size=internal,
                )
            else:
                part = _channel_conductance_pixels(
                    score,
                    view,
                    x.detach(),
                    baselines[lo:hi],
                    targets[lo:hi],
                    channel,
                    n_steps,
                    quadrature,
                    internal,
                )
        parts.append(part.detach())
    return torch.cat(parts)


def channel_conductance(
    model: nn.Module,
    images: ImagesInput,
    target_class: TargetInput = None,
    *,
    layer: LayerSpec = None,
    top_k: int = 5,
    baseline: BaselineSpec = "black",
    n_steps: int = 32,
    quadrature: IGMethod = "riemann_trapezoid",
    memory_budget_bytes: int | None = None,
) -> ChannelConductance:
    """Rank the channels of the family's CAM layer (or ``layer``) by conductance to a class.

    Captum's ``LayerConductance`` of the target logit on the layer's ``(B, C, h, w)``
    spatial view, summed over positions per channel. Follow up with
    [`channel_attribution`][] on a top channel to see its pixels.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        images: PIL image, path, array, CHW/BCHW tensor, or a list of them.
        target_class: class index or name (one for all, one per image); ``None``: each
            image's predicted class.
        layer: dotted name or module; ``None``: the adapter's default CAM layer.
        top_k: how many channels ``top_channels`` lists (capped at the channel count).
        baseline: path start: ``"black"``, ``"blur"``, ``"noise"``, ``"uniform"`` or a
            tensor in normalised input space.
        n_steps: path points (Captum evaluates ``n_steps + 1`` and takes differences).
        quadrature: Captum's rule; ``"riemann_trapezoid"`` (default) runs the path from
            the baseline exactly to the input, so the finite differences telescope and
            ``convergence_delta`` measures only what bypasses the layer; Gauss-Legendre
            points miss both ends.
        memory_budget_bytes: budget for chunking path points; ``None``: automatic.

    Returns:
        A [`ChannelConductance`][] (batched also for one image).
    """
    from captum.attr import LayerConductance

    _check_path_options(n_steps, quadrature)
    check_positive_int(top_k, "top_k", "Use 5.")
    baseline = validate_baseline(baseline)
    budget = check_budget(memory_budget_bytes)
    what = "channel_conductance"
    model = unwrap_model(model)  # torch.compile, DataParallel, DDP: the module inside
    inputs = prepare_images(images, model).tensor.detach()
    with explanation_call(model, inputs, what), _tapped(model, layer, what) as (view, name):
        probe = _probe(model, view, inputs)
        targets = _targets_of(model, target_class, inputs, probe)
        baselines = make_baseline(baseline, inputs, model)
        conductance, deltas = [], []
        for lo, hi, internal in _image_groups(probe, inputs, n_steps + 1, budget):
            part, delta = LayerConductance(TargetScore(model), view).attribute(
                inputs[lo:hi].detach().requires_grad_(True),
                baselines=baselines[lo:hi],
                additional_forward_args=(targets[lo:hi],),
                n_steps=n_steps,
                method=quadrature,
                internal_batch_size=internal,
                return_convergence_delta=True,
            )
            conductance.append(part.detach())
            deltas.append(delta.detach())
    cond = torch.cat(conductance)
    totals = cond.sum(dim=(2, 3))
    top = totals.topk(min(top_k, totals.shape[1]), dim=1)
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    evidence = upsample_maps(cond.sum(dim=1).clamp_min(0), size)
    return ChannelConductance(
        conductance=cond,
        channel_totals=totals,
        top_channels=top.indices,
        top_scores=top.values,
        heatmap=normalize_maps(evidence),
        targets=targets,
        logits=probe.logits,
        convergence_delta=torch.cat(deltas),
        layer=name,
    )
