"""Feature visualisation: the image that drives a channel, a neuron, a class or a concept.

``visualize_feature`` optimises an image (through the MACO or Fourier
parameterisation of `feature_params`) so that an objective
(`timmlens.analysis.objectives`) is as large as possible, under random shifts, zooms and
rotations. The layers the objective reads are tapped through the adapter's spatial tap,
so a ViT's tokens, a Swin stage's NHWC map and a CNN's NCHW map are all ``(B, C, h, w)``
and any timm family works without naming it.

The image is optimised in the model's *input* space before normalisation (RGB in [0, 1]);
the model's own mean and std are applied on the way in, so ``.image`` is what you would
show, and what ``prepare_images`` would turn back into the model's input.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import get_adapter, spatial_tap
from ..errors import ImageInputError, LayerResolutionError
from ..interpretation.base import explanation_call, raised_by_the_model
from ..models.introspect import data_config, model_device, model_dtype
from . import objectives as obj
from .activations import _has_head, default_activation_layer
from .feature_params import (
    Robustness,
    fourier_image,
    fourier_scale,
    maco_image,
    maco_magnitude,
    transformed_copies,
)

__all__ = ["FV_METHODS", "FeatureVisualization", "visualize_feature"]

FVMethod = Literal["maco", "fourier"]
FV_METHODS: tuple[str, ...] = get_args(FVMethod)
#: the smallest image side accepted (below it, CNN grids vanish and ViTs have no patches)
MIN_SIZE = 16


@dataclass(frozen=True, eq=False)
class FeatureVisualization:
    """The result of ``visualize_feature``.

    Attributes:
        image: ``(3, H, W)`` float RGB in [0, 1] before the model's normalisation, on the
            model's device.
        objective_trace: ``(steps,)`` float, the objective's mean over each step's
            transformed copies, before that step's update (on the model's device).
        final_score: the objective on ``image`` itself (no transformation).
        objective: the objective that was maximised.
        layers: ``{spec: full dotted name}`` of the layers it read.
        method: ``"maco"`` or ``"fourier"``.
        seed: the seed of the initialisation and of the transformations.
    """

    image: torch.Tensor
    objective_trace: torch.Tensor
    final_score: float
    objective: obj.Objective
    layers: dict[str, str]
    method: str
    seed: int

    def to_pil(self):  # type: ignore[no-untyped-def]
        """The image as an 8-bit PIL image (for saving or showing)."""
        from PIL import Image

        array = (self.image.detach().float().clamp(0, 1) * 255).round().byte()
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())


def _objective_from(
    model: nn.Module, layer: str | None, channel: int | None, objective: obj.Objective | None
) -> obj.Objective:
    if objective is not None:
        if not isinstance(objective, obj.Objective):
            raise TypeError(
                f"objective must be built with timmlens.analysis.objectives (channel, neuron, "
                f"class_logit, direction and their sums), got {type(objective).__name__}."
            )
        if layer is not None or channel is not None:
            raise ValueError(
                "give either objective= or layer=/channel=, not both: "
                "objectives.channel(layer, channel) is what layer=/channel= build."
            )
        return objective
    if channel is None:
        raise ValueError(
            "nothing to visualise: give channel= (with layer=, default the family's feature "
            "layer) or objective= (e.g. objectives.class_logit(281))."
        )
    return obj.channel(layer if layer is not None else default_activation_layer(model), channel)


def _check_options(method: str, steps: int, size: int, seed: int) -> None:
    if method not in FV_METHODS:
        raise ValueError(f"method must be one of {', '.join(FV_METHODS)}, got {method!r}.")
    for name, value, low in (("steps", steps, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise ImageInputError(
            f"size must be an int >= {MIN_SIZE} (pixels per side), got {size!r}; the model's "
            f"data config size is the usual choice."
        )


@contextmanager
def _tapped(
    model: nn.Module, specs: tuple[str, ...], captured: dict[str, torch.Tensor]
) -> Iterator[dict[str, str]]:
    """Tap each layer of ``specs``; every forward fills ``captured[spec]`` with ``(B, C, h, w)``."""
    adapter = get_adapter(model)
    names: dict[str, str] = {}
    with ExitStack() as stack:
        for spec in specs:
            resolved = adapter.resolve_layers(spec)
            if len(resolved) != 1:
                raise LayerResolutionError(
                    f"layer {spec!r} resolves to {len(resolved)} layers; name one, e.g. "
                    f"{', '.join(adapter.recommended_layers[:3])}."
                )
            layer = resolved[0]
            names[spec] = layer.name
            view = stack.enter_context(
                spatial_tap(model, layer.module, layer.name, adapter.layout_for)
            )

            def keep(_m: nn.Module, _a: object, out: torch.Tensor, spec: str = spec) -> None:
                captured[spec] = out

            handle = view.register_forward_hook(keep)
            stack.callback(handle.remove)
        yield names


def _probe(
    model: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    captured: dict[str, torch.Tensor],
    objective: obj.Objective,
    names: Mapping[str, str],
) -> None:
    """One no-grad forward at the visualised size: refuse sizes, layers and indices early."""
    size = image.shape[-1]
    try:
        with torch.no_grad():
            output = forward(image.unsqueeze(0))
    except (RuntimeError, AssertionError) as exc:
        if isinstance(exc, AssertionError) and not raised_by_the_model(exc):
            raise
        expected = data_config(model)["input_size"]
        raise ImageInputError(
            f"The model cannot take a {size}x{size} image: {exc} Pass size={expected[1]} (its "
            f"data config size) or another size it accepts."
        ) from exc
    missing = [spec for spec in objective.layers if spec not in captured]
    if missing:
        raise LayerResolutionError(
            f"Layer {names[missing[0]]!r} did not run in the model's forward; pick a layer on "
            f"the forward path (timmlens.describe(model) lists them)."
        )
    shapes = {spec: tuple(int(v) for v in captured[spec].shape[1:]) for spec in objective.layers}
    classes = None
    if _has_head(model) and isinstance(output, torch.Tensor) and output.ndim == 2:
        classes = int(output.shape[1])
    objective.check(shapes, classes)  # type: ignore[arg-type]


def _parameterisation(
    method: str, size: int, device: torch.device, generator: torch.Generator, decay_power: float
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The free tensor (drawn on the CPU, moved to ``device``) and its map to the image."""
    shape = (3, size, size // 2 + 1)
    if method == "maco":
        magnitude = maco_magnitude(size, device)
        # horama's init: a standard normal phase (its std_deviation=1.0)
        phase = torch.randn(shape, generator=generator).to(device)
        return phase, lambda p: maco_image(magnitude, p)
    scale = fourier_scale(size, decay_power, device)
    spectrum = torch.complex(
        torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    ).to(device)
    return spectrum, lambda s: fourier_image(s, scale)


def visualize_feature(
    model: nn.Module,
    *,
    layer: str | None = None,
    channel: int | None = None,
    objective: obj.Objective | None = None,
    steps: int = 256,
    size: int = 224,
    method: FVMethod = "maco",
    seed: int = 0,
    lr: float = 1.0,
    robustness: Robustness | None = None,
    decay_power: float = 1.0,
    progress: bool = True,
) -> FeatureVisualization:
    """Optimise an image that maximises a channel (or any objective) of ``model``.

    Args:
        model: an ``ImageClassifier``, a timm model (also headless) or any image classifier.
        layer: the layer of ``channel`` (dotted name); default: the family's feature layer
            (`default_activation_layer`).
        channel: the channel to maximise (its mean over the grid).
        objective: instead of ``layer``/``channel``: any objective of
            `timmlens.analysis.objectives` (neuron, class logit, direction, sums).
        steps: optimisation steps (NAdam, as horama).
        size: image side in pixels; the model must accept ``size`` x ``size`` inputs.
        method: ``"maco"`` (phase only, natural magnitude) or ``"fourier"`` (1/f spectrum).
        seed: seeds the initial image and every random transformation (a CPU generator,
            so results do not depend on the global RNG and agree across devices up to
            floating point).
        lr: NAdam's learning rate (horama's default, 1.0, suits both parameterisations).
        robustness: the random transformations; default `Robustness()`.
        decay_power: the Fourier parameterisation's ``1/f`` exponent.
        progress: show a tqdm progress bar.

    Returns:
        ``FeatureVisualization`` with ``.image`` ``(3, size, size)`` in [0, 1].

    Raises:
        LayerResolutionError: an unknown layer (the closest names are listed).
        ChannelIndexError: a channel or position out of range (the valid range is named).
        TargetError: a class out of range, or a class objective on a headless model.
        ImageInputError: a size the model cannot take.
    """
    objective = _objective_from(model, layer, channel, objective)
    _check_options(method, steps, size, seed)
    robustness = robustness or Robustness()
    config = data_config(model)
    if int(config["input_size"][0]) != 3:
        raise ImageInputError(
            f"feature visualisation makes RGB images; this model takes "
            f"{config['input_size'][0]} channels."
        )
    device, dtype = model_device(model), model_dtype(model)
    mean = torch.tensor(config["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], device=device).view(1, 3, 1, 1)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return model(((images - mean) / std).to(dtype))

    generator = torch.Generator().manual_seed(seed)
    captured: dict[str, torch.Tensor] = {}
    grey = torch.full((3, size, size), 0.5, device=device)
    with (
        explanation_call(model, grey.unsqueeze(0), "visualize_feature"),
        _tapped(model, objective.layers, captured) as names,
    ):
        _probe(model, forward, grey, captured, objective, names)
        free, to_image = _parameterisation(method, size, device, generator, decay_power)
        free.requires_grad_(True)
        optimizer = torch.optim.NAdam([free], lr=lr)
        trace, moved = [], False
        with torch.enable_grad():
            for _ in tqdm(range(steps), desc="visualize_feature", disable=not progress):
                optimizer.zero_grad(set_to_none=True)
                copies = transformed_copies(to_image(free), robustness, generator)
                output = forward(copies)
                scores = objective.score(captured, output).float()
                (-scores.mean()).backward()
                moved = moved or bool(free.grad is not None and free.grad.abs().sum() > 0)
                optimizer.step()
                trace.append(scores.mean().detach())
                captured.clear()  # drop the graph's activations before the next step
        with torch.no_grad():
            image = to_image(free).detach()
            final = float(objective.score(captured, forward(image.unsqueeze(0)))[0])
            captured.clear()
    if not moved:
        warnings.warn(
            f"{objective} had zero gradient at every step, so the image is its random start: "
            f"the unit is switched off (e.g. clipped by a ReLU) on every image tried. Try "
            f"another seed, method='fourier', or a layer before the activation.",
            RuntimeWarning,
            stacklevel=2,
        )
    return FeatureVisualization(
        image=image,
        objective_trace=torch.stack(trace),
        final_score=final,
        objective=objective,
        layers=names,
        method=method,
        seed=seed,
    )
