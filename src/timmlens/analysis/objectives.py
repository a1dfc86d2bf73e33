"""What a feature visualisation maximises: composable objectives.

An objective scores each image of a batch from the activations of the layers it reads
(each seen as ``(B, C, h, w)`` through the adapter's spatial tap, so ViT tokens and NHWC
maps look like CNN maps) and the model's logits. Objectives add, subtract and scale::

    from timmlens.analysis import objectives as obj
    objective = obj.channel("bn2", 12) + 0.5 * obj.class_logit(281) - obj.neuron("bn2", 3)

* ``channel``: the channel's mean over the grid (lucent's ``channel``);
* ``neuron``: one position of a channel, the grid's centre by default (lucent's ``neuron``);
* ``class_logit``: one logit of the head;
* ``direction``: a direction ``v`` in the layer's channel space (a DFF concept, an SAE
  atom): at each position ``<a, v/|v|> * max(cos(a, v), 0.1)^p``, averaged over the grid.
  This is horama's ``dot_cossim`` (Fel et al. 2023, after lucid issue 116) per position; with
  ``cossim_pow=0`` it is the plain projection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ChannelIndexError, TargetError

__all__ = [
    "Objective",
    "channel",
    "class_logit",
    "direction",
    "neuron",
]

#: ``{layer spec: (C, h, w)}``, the shapes of the tapped layers at the visualised size
Shapes = Mapping[str, tuple[int, int, int]]


class Objective:
    """Base class: a score per image, to be maximised; ``+``, ``-`` and ``*`` compose them."""

    description: str = "objective"

    @property
    def layers(self) -> tuple[str, ...]:
        """The layer names this objective reads (empty for logits only)."""
        return ()

    @property
    def needs_logits(self) -> bool:
        return False

    def check(self, shapes: Shapes, num_classes: int | None) -> None:
        """Raise a clear error when a channel, position or class is out of range."""

    def score(
        self, activations: Mapping[str, torch.Tensor], logits: torch.Tensor | None
    ) -> torch.Tensor:
        """``{layer: (B, C, h, w)}``, logits ``(B, K)`` -> scores ``(B,)``."""
        raise NotImplementedError

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, (int, float)) and other == 0:
            return self  # lets sum() start from 0
        if not isinstance(other, Objective):
            return NotImplemented
        return _Sum(((1.0, self), (1.0, other)))

    __radd__ = __add__

    def __mul__(self, weight: float) -> Objective:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return NotImplemented
        return _Sum(((float(weight), self),))

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return self * -1.0

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-other)

    def __repr__(self) -> str:
        return self.description


@dataclass(frozen=True, eq=False, repr=False)
class _Sum(Objective):
    terms: tuple[tuple[float, Objective], ...]

    @property
    def description(self) -> str:  # type: ignore[override]
        parts = [d if w == 1.0 else f"{w:g} * {d}" for w, d in self._flat()]
        return " + ".join(parts)

    def _flat(self) -> list[tuple[float, str]]:
        return [(weight, term.description) for weight, term in self.terms]

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for _, term in self.terms for name in term.layers))

    @property
    def needs_logits(self) -> bool:
        return any(term.needs_logits for _, term in self.terms)

    def check(self, shapes: Shapes, num_classes: int | None) -> None:
        for _, term in self.terms:
            term.check(shapes, num_classes)

    def score(
        self, activations: Mapping[str, torch.Tensor], logits: torch.Tensor | None
    ) -> torch.Tensor:
        return sum(weight * term.score(activations, logits) for weight, term in self.terms)  # type: ignore[return-value]


def _check_channel(index: int, layer: str, shapes: Shapes) -> tuple[int, int, int]:
    shape = shapes[layer]
    if not 0 <= index < shape[0]:
        raise ChannelIndexError(
            f"channel {index} is not a channel of layer {layer!r}, which has {shape[0]} "
            f"channels (valid: 0 to {shape[0] - 1})."
        )
    return shape


@dataclass(frozen=True, eq=False, repr=False)
class _Channel(Objective):
    layer: str
    index: int

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"channel({self.layer!r}, {self.index})"

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    def check(self, shapes: Shapes, num_classes: int | None) -> None:
        _check_channel(self.index, self.layer, shapes)

    def score(
        self, activations: Mapping[str, torch.Tensor], logits: torch.Tensor | None
    ) -> torch.Tensor:
        return activations[self.layer][:, self.index].mean(dim=(1, 2))


@dataclass(frozen=True, eq=False, repr=False)
class _Neuron(Objective):
    layer: str
    index: int
    position: tuple[int, int] | None

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"neuron({self.layer!r}, {self.index}, position={self.position})"

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    def check(self, shapes: Shapes, num_classes: int | None) -> None:
        _, height, width = _check_channel(self.index, self.layer, shapes)
        if self.position is None:
            return
        row, column = self.position
        if not (0 <= row < height and 0 <= column < width):
            raise ChannelIndexError(
                f"position {self.position} is not on the {height}x{width} grid of layer "
                f"{self.layer!r} at this image size; give (row, column) with 0 <= row < "
                f"{height} and 0 <= column < {width}, or None for the centre."
            )

    def score(
        self, activations: Mapping[str, torch.Tensor], logits: torch.Tensor | None
    ) -> torch.Tensor:
        maps = activations[self.layer]
        row, column = self.position or (maps.shape[-2] // 2, maps.shape[-1] // 2)
        return maps[:, self.index, row, column]


@dataclass(frozen=True, eq=False, repr=False)
class _ClassLogit(Objective):
    index: int

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"class_logit({self.index})"

    @property
    def needs_logits(self) -> bool:
        return True

    def check(self, shapes: Shapes, num_classes: int | None) -> None:
        if num_classes is None:
            raise TargetError(
                "class_logit needs a model with a classifier head; this one returns no class "
                "scores. Visualise a channel or a direction of a layer instead."
            )
        if not 0 <= self.index < num_classes:
            raise TargetError(
                f"class {self.index} is not a class of this model, which has {num_classes} "
                f"classes (valid: 0 to {num_classes - 1})."
            )

    def score(
        self, activations: Mapping[str, torch.Tensor], logits: torch.Tensor | None
    ) -> torch.Tensor:
        assert logits is not None  # check() refused a headless model
        return logits[:, self.index]


@dataclass(frozen=True, eq=False, repr=False)
class _Direction(Objective):
    layer: str
    vector: torch.Tensor
    cossim_pow: float
    _cache: dict[torch.device, torch.Tensor] = field(default_factory=dict)

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"direction({self.layer!r}, <{self.vector.numel()} values>)"

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    def check(self, shapes: Shapes, num_classes: int | None) -> None:
        channels = shapes[self.layer][0]
        if self.vector.numel() != channels:
            raise ChannelIndexError(
                f"the direction has {self.vector.numel()} values but layer {self.layer!r} has "
                f"{channels} channels; give a vector of length {channels} (a concept of "
                f"this layer, e.g. a row of ConceptFactorization.concepts)."
            )

    def score(
        self, activations: Mapping[str, torch.Tensor], logits: torch.Tensor | None
    ) -> torch.Tensor:
        maps = activations[self.layer]
        unit = self._cache.get(maps.device)
        if unit is None:
            vector = self.vector.detach().to(device=maps.device, dtype=torch.float32).flatten()
            unit = self._cache[maps.device] = vector / vector.norm()
        flat = maps.float().flatten(2)  # (B, C, h*w)
        dot = torch.einsum("bcp,c->bp", flat, unit)
        cosine = dot / flat.norm(dim=1).clamp_min(1e-8)
        return (dot * cosine.clamp_min(0.1) ** self.cossim_pow).mean(dim=1)


def _index(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChannelIndexError(f"{what} must be an int, got {type(value).__name__} {value!r}.")
    return value


def _layer_name(layer: object) -> str:
    if not isinstance(layer, str) or not layer:
        raise ChannelIndexError(
            f"layer must be a dotted module name such as 'bn2' or 'blocks.5', got {layer!r}."
        )
    return layer


def channel(layer: str, index: int) -> Objective:
    """The mean over the grid of channel ``index`` of ``layer``."""
    return _Channel(_layer_name(layer), _index(index, "channel"))


def neuron(layer: str, index: int, position: Sequence[int] | None = None) -> Objective:
    """Channel ``index`` of ``layer`` at ``position=(row, column)`` (default: grid centre)."""
    if position is not None:
        if len(position) != 2:
            raise ChannelIndexError(f"position must be (row, column), got {position!r}.")
        position = (_index(position[0], "row"), _index(position[1], "column"))
    return _Neuron(_layer_name(layer), _index(index, "channel"), position)  # type: ignore[arg-type]


def class_logit(index: int) -> Objective:
    """The logit of class ``index``."""
    return _ClassLogit(_index(index, "class"))


def direction(
    layer: str, vector: torch.Tensor | Sequence[float], cossim_pow: float = 1.0
) -> Objective:
    """A direction ``vector`` ``(C,)`` in the channel space of ``layer`` (dot x cosine^p)."""
    tensor = torch.as_tensor(vector, dtype=torch.float32).detach().flatten()
    if tensor.numel() == 0 or not torch.isfinite(tensor).all() or tensor.norm() == 0:
        raise ChannelIndexError("the direction must be a finite, non-zero vector.")
    return _Direction(_layer_name(layer), tensor, float(cossim_pow))
