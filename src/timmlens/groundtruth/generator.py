"""A synthetic task whose evidence is known by construction: which coloured shape is there?

Every image holds one *deciding object*, a shape of one colour, and a few *distractors*
on a cluttered background. Each class is one (shape, colour) conjunction; distractors
are the other conjunctions, so every distractor shares its shape with some class or its
colour with some class but never both, and they are drawn independently of the label:
nothing but the deciding object tells the class (CLEVR-XAI, Arras et al. 2022, and
FunnyBirds, Hesse et al. 2023, in miniature). The pixel mask of the deciding object is
the known answer an explanation can be scored against.

Image ``i`` of seed ``s`` depends on ``(s, i)`` only, so ``generate(10, seed=s)`` is the
first ten images of ``generate(1000, seed=s)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Saturated colours (RGB); the background never uses them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 40),
    "green": (40, 185, 70),
    "blue": (45, 95, 235),
    "yellow": (240, 215, 40),
}
#: The classes: (shape, colour) conjunctions. Each shape and each colour occurs in some
#: class and in some distractor, so neither alone predicts the class.
CLASSES: tuple[tuple[str, str], ...] = (
    ("circle", "red"),
    ("square", "green"),
    ("triangle", "blue"),
    ("cross", "yellow"),
    ("circle", "blue"),
    ("square", "yellow"),
)
#: Every other conjunction: what a distractor may be.
DISTRACTORS: tuple[tuple[str, str], ...] = tuple(
    (shape, colour) for shape in SHAPES for colour in COLOURS if (shape, colour) not in CLASSES
)
CLASS_NAMES: tuple[str, ...] = tuple(f"{colour} {shape}" for shape, colour in CLASSES)
#: Image sides the generator is meant for (objects stay a few pixels wide at 64 px).
MIN_SIZE, MAX_SIZE = 32, 512
#: Object radius as a share of the image side, and the number of distractors per image.
RADIUS_RANGE = (0.09, 0.13)
DISTRACTOR_RANGE = (2, 4)


@dataclass(frozen=True)
class KnownAnswerSet:
    """Images with the pixel masks of their evidence.

    Attributes:
        images: ``(N, H, W, 3)`` uint8 RGB.
        labels: ``(N,)`` int64 class indices into ``class_names``.
        evidence: ``(N, H, W)`` bool, the deciding object's pixels.
        distractors: ``(N, H, W)`` bool, every distractor's pixels.
        distractor_masks: per image, a list of ``(H, W)`` bool masks, one per distractor.
        backgrounds: ``(N, H, W, 3)`` uint8, the clutter under the objects: an object is
            removed by ``np.where(mask[..., None], backgrounds, images)``.
        class_names: the K class names (``"red circle"``, ...).
        seed: the seed the set was drawn from.
    """

    images: np.ndarray
    labels: np.ndarray
    evidence: np.ndarray
    distractors: np.ndarray
    distractor_masks: tuple[tuple[np.ndarray, ...], ...]
    backgrounds: np.ndarray
    class_names: tuple[str, ...]
    seed: int

    def __len__(self) -> int:
        return len(self.labels)

    def without(self, masks: np.ndarray) -> np.ndarray:
        """The images with the pixels of ``masks`` ``(N, H, W)`` refilled with background."""
        return np.where(masks[..., None], self.backgrounds, self.images)

    def head(self, n: int) -> KnownAnswerSet:
        """The first ``n`` images: what ``generate(n, seed=self.seed)`` would return."""
        return replace(
            self,
            images=self.images[:n],
            labels=self.labels[:n],
            evidence=self.evidence[:n],
            distractors=self.distractors[:n],
            distractor_masks=self.distractor_masks[:n],
            backgrounds=self.backgrounds[:n],
        )


def _check(n: int, size: int, seed: int) -> None:
    for name, value in (("n", n), ("size", size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}.")
    if n < 1:
        raise ValueError(f"n must be at least 1 image, got {n}.")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(
            f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}; the known-"
            "answer models were trained at 64 px (see timmlens.groundtruth.MODELS)."
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(H, W, 3)`` float clutter: smooth muted colour fields, grey strokes and noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size, 3))
    for _ in range(3):  # low-frequency waves of muted, greyish tints
        angle, frequency, phase = rng.uniform(0, math.pi), rng.uniform(1, 4), rng.uniform(0, 6.3)
        along = xx * math.cos(angle) + yy * math.sin(angle)
        wave = np.sin(2 * math.pi * frequency * along + phase)
        image += wave[..., None] * rng.uniform(-18, 18, size=3)
    image += rng.uniform(95, 150)
    for _ in range(int(rng.integers(4, 9))):  # thin grey strokes, like edges of clutter
        y0, x0, y1, x1 = rng.uniform(0, size, size=4)
        length = max(abs(x1 - x0), abs(y1 - y0), 1.0)
        t = np.linspace(0, 1, int(length * 2) + 2)
        ys = np.clip((y0 + (y1 - y0) * t).astype(int), 0, size - 1)
        xs = np.clip((x0 + (x1 - x0) * t).astype(int), 0, size - 1)
        image[ys, xs] = rng.uniform(60, 190)
    image += rng.normal(0, 6, size=image.shape)
    return image


def shape_mask(
    shape: str, size: int, centre: tuple[float, float], radius: float, angle: float
) -> np.ndarray:
    """``(size, size)`` bool mask of ``shape`` (circumradius ``radius``) rotated by ``angle``."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dy, dx = yy - centre[0], xx - centre[1]
    u = math.cos(angle) * dx + math.sin(angle) * dy
    v = -math.sin(angle) * dx + math.cos(angle) * dy
    if shape == "circle":
        return u**2 + v**2 <= (0.85 * radius) ** 2
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.72 * radius
    if shape == "triangle":  # equilateral: inside all three edges at distance radius / 2
        inside = np.ones_like(u, dtype=bool)
        for normal in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            inside &= u * math.cos(normal) + v * math.sin(normal) <= radius / 2
        return inside
    if shape == "cross":
        arm = 0.3 * radius
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | (
            (np.abs(v) <= arm) & (np.abs(u) <= radius)
        )
    raise ValueError(f"unknown shape {shape!r}; the shapes are {', '.join(SHAPES)}.")


def _places(rng: np.random.Generator, size: int, radii: list[float]) -> list[tuple[float, float]]:
    """Centres for objects of ``radii`` that keep apart and inside the image."""
    for _ in range(200):
        centres: list[tuple[float, float]] = []
        for radius in radii:
            for _ in range(100):
                y, x = rng.uniform(radius + 1, size - radius - 1, size=2)
                if all(
                    math.hypot(y - cy, x - cx) > radius + other + 0.03 * size
                    for (cy, cx), other in zip(centres, radii, strict=False)
                ):
                    centres.append((float(y), float(x)))
                    break
            else:
                break
        if len(centres) == len(radii):
            return centres
    raise RuntimeError(f"could not place {len(radii)} objects on a {size} px image")


def _draw(
    rng: np.random.Generator,
    image: np.ndarray,
    shape: str,
    colour: str,
    size: int,
    centre: tuple[float, float],
    radius: float,
) -> np.ndarray:
    mask = shape_mask(shape, size, centre, radius, rng.uniform(0, 2 * math.pi))
    rgb = np.asarray(COLOURS[colour], dtype=float) + rng.uniform(-15, 15, size=3)
    image[mask] = rgb
    return mask


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _one(seed: int, index: int, size: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(CLASSES)))
    count = int(rng.integers(DISTRACTOR_RANGE[0], DISTRACTOR_RANGE[1] + 1))
    kinds = [DISTRACTORS[int(k)] for k in rng.integers(len(DISTRACTORS), size=count)]
    radii = list(rng.uniform(*RADIUS_RANGE, size=count + 1) * size)
    centres = _places(rng, size, radii)
    background = _background(rng, size)
    image = background.copy()
    evidence = _draw(rng, image, *CLASSES[label], size, centres[0], radii[0])
    others = [
        _draw(rng, image, shape, colour, size, centre, radius)
        for (shape, colour), centre, radius in zip(kinds, centres[1:], radii[1:], strict=True)
    ]
    return _to_uint8(image), label, evidence, others, _to_uint8(background)


def generate(n: int, *, size: int = 64, seed: int = 0) -> KnownAnswerSet:
    """``n`` labelled images with the masks of their evidence, deterministic by ``seed``.

    Args:
        n: number of images.
        size: image side in pixels (square images; the shipped models use 64).
        seed: image ``i`` depends on ``(seed, i)`` alone.

    Returns:
        A [`KnownAnswerSet`][timmlens.groundtruth.KnownAnswerSet].
    """
    _check(n, size, seed)
    rows = [_one(int(seed), i, int(size)) for i in range(int(n))]
    images, labels, evidence, others, backgrounds = zip(*rows, strict=True)
    empty = np.zeros((size, size), dtype=bool)
    return KnownAnswerSet(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        evidence=np.stack(evidence),
        distractors=np.stack([np.logical_or.reduce([empty, *masks]) for masks in others]),
        distractor_masks=tuple(tuple(masks) for masks in others),
        backgrounds=np.stack(backgrounds),
        class_names=CLASS_NAMES,
        seed=int(seed),
    )
