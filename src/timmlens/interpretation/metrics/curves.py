"""Insertion and deletion curves (RISE, Petsiuk et al., BMVC 2018) from rank masks.

Pixels are ranked once per image, most salient first. Step ``t`` of a curve changes the
``k_t`` top-ranked pixels: ``x_t = where(rank < k_t, finish, start)``.

* **Deletion** starts from the image and puts the deletion substrate (default: zeros of
  the model input, as in RISE) in place of the most salient pixels; a faithful heatmap
  makes the target score fall fast: lower AUC is better.
* **Insertion** starts from a blurred copy (default: RISE's own, ``gkern(11, 5)`` with zero
  padding, see `rise_blur`) and puts the original pixels back, most
  salient first; higher AUC is better.

With the defaults, at 224 x 224 and ``pixels_per_step=224`` (or the default 224 steps),
both curves equal RISE's ``evaluation.py`` (``CausalMetric``) up to float rounding; ties
in the heatmap follow ``tie_order`` (see `pixel_ranks`).

Curves have ``n_steps + 1`` points, from 0 pixels changed to all of them; ``x`` is the
fraction changed, in [0, 1], and the AUC is the trapezoid rule over ``(x, y)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..scoring import masked_perturbation
from .context import MetricContext
from .options import MetricOption
from .registry import register_metric
from .results import MetricResult
from .substrates import (  # noqa: F401 - re-exported: they lived here before
    BLUR_KERNEL,
    BLUR_SIGMA,
    INSERTION_SUBSTRATE,
    SUBSTRATE_NAMES,
    SUBSTRATE_OPTIONS,
    SubstrateSpec,
    check_substrate,
    describe,
    make_substrate,
)

#: Default number of steps: 224, i.e. RISE's 224 pixels per step at 224 x 224.
DEFAULT_STEPS = 224
#: The curve metrics, computed together in one stream of chunks when asked together.
CURVE_METRICS: tuple[str, ...] = ("insertion", "deletion")
#: How equal heatmap values are ordered (`pixel_ranks`).
TIE_ORDERS: tuple[str, ...] = ("row_major", "rise")


def check_tie_order(tie_order: object) -> None:
    """Raise unless ``tie_order`` is one of `TIE_ORDERS`."""
    if tie_order not in TIE_ORDERS:
        raise ValueError(
            f"tie_order={tie_order!r} is not known; use 'row_major' (among equal values the "
            f"top-left pixel first, the default) or 'rise' (the bottom-right pixel first, as "
            f"RISE's reversed argsort)."
        )


def pixel_ranks(heatmaps: torch.Tensor, tie_order: str = "row_major") -> torch.Tensor:
    """Position of every pixel in its image's saliency order: ``(B, H, W)`` -> ``(B, H*W)``.

    Rank 0 is the most salient pixel. Equal values (GradCAM's zeros, upsampled plateaus)
    are ordered by ``tie_order``:

    * ``"row_major"`` (default): the pixel with the lower row-major index (top-left)
      first, a stable descending sort;
    * ``"rise"``: the pixel with the higher row-major index first, as RISE's
      ``np.flip(np.argsort(saliency))``. numpy's default sort is unstable, so RISE's
      own order among ties depends on numpy's build; this is the order it gives with a
      stable sort, and equals RISE's exactly wherever the values are distinct.

    Returns int32 ranks on the heatmaps' device.
    """
    check_tie_order(tie_order)
    flat = heatmaps.flatten(1)
    if tie_order == "rise":
        order = torch.argsort(flat, dim=1, stable=True).flip(1)
    else:
        order = torch.argsort(flat, dim=1, descending=True, stable=True)
    positions = torch.arange(flat.shape[1], device=flat.device, dtype=torch.int32)
    ranks = torch.empty(flat.shape, device=flat.device, dtype=torch.int32)
    ranks.scatter_(1, order, positions.expand_as(flat).contiguous())
    return ranks


def check_step_options(steps: int | None = None, pixels_per_step: int | None = None) -> None:
    """Validate ``steps`` / ``pixels_per_step`` before any image is seen."""
    if steps is not None and pixels_per_step is not None:
        raise ValueError(
            f"give either steps={steps} or pixels_per_step={pixels_per_step}, not both: steps "
            f"spaces the curve evenly, pixels_per_step changes a fixed number of pixels per step."
        )
    for name, value in (("steps", steps), ("pixels_per_step", pixels_per_step)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if value <= 0:
            raise ValueError(
                f"{name} must be a positive int, got {value}; try steps=224 (RISE's setting at "
                f"224x224) or pixels_per_step=224."
            )


def _step_option(name: str) -> Any:
    def check(value: Any) -> Any:
        check_step_options(**{name: value})
        return value

    return check


def check_curve_options(options: Mapping[str, Any]) -> None:
    """``steps`` and ``pixels_per_step`` exclude each other."""
    check_step_options(options["steps"], options["pixels_per_step"])


def _tie_order(value: Any) -> str:
    check_tie_order(value)
    return value


STEPS = MetricOption(
    "steps",
    None,
    "curve steps, evenly spaced (k_t = floor(t * H * W / steps) pixels at step t); None: 224 "
    "(RISE's 224 pixels per step at 224x224), or one pixel per step below 224 pixels",
    _step_option("steps"),
)
PIXELS_PER_STEP = MetricOption(
    "pixels_per_step",
    None,
    "instead of steps, change this many pixels per step (RISE's parameterisation; the last "
    "step may be smaller)",
    _step_option("pixels_per_step"),
)
#: How equal heatmap values are ranked (insertion, deletion, ROAD, AOPC).
TIE_ORDER = MetricOption(
    "tie_order",
    "row_major",
    "how equal heatmap values are ranked: 'row_major' (top-left first) or 'rise' (RISE's "
    "reversed argsort, bottom-right first); see pixel_ranks",
    _tie_order,
)
CURVE_OPTIONS: tuple[MetricOption, ...] = (STEPS, PIXELS_PER_STEP, TIE_ORDER)


def step_counts(
    num_pixels: int, steps: int | None = None, pixels_per_step: int | None = None
) -> torch.Tensor:
    """How many pixels are changed at each curve point: ``(n_steps + 1,)`` CPU long.

    * ``pixels_per_step=p`` (RISE): ``k_t = min(t * p, num_pixels)`` for
      ``t = 0 .. ceil(num_pixels / p)``; the last step may change fewer pixels.
    * ``steps=n``: ``n`` even steps, ``k_t = floor(t * num_pixels / n)``; ``n`` may not exceed
      ``num_pixels``.
    * neither: ``steps = min(224, num_pixels)``, which at 224x224 is exactly RISE's
      224 pixels per step.

    Raises:
        ValueError: both given, a non-positive value, or more steps than pixels.
    """
    check_step_options(steps, pixels_per_step)
    if pixels_per_step is not None:
        n_steps = math.ceil(num_pixels / pixels_per_step)
        return (torch.arange(n_steps + 1) * pixels_per_step).clamp_max(num_pixels)
    if steps is None:
        steps = min(DEFAULT_STEPS, num_pixels)
    elif steps > num_pixels:
        raise ValueError(
            f"steps={steps} is more than the {num_pixels} pixels of the model input; each step "
            f"must change at least one pixel. Use steps <= {num_pixels} or pixels_per_step=1."
        )
    return torch.arange(steps + 1) * num_pixels // steps


def trapezoid_auc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Area under each curve: x ``(T,)``, y ``(B, T)`` -> ``(B,)`` float64 (trapezoid rule)."""
    return torch.trapezoid(y.double(), x.double(), dim=-1)


def curve_results(context: MetricContext, kinds: tuple[str, ...]) -> dict[str, MetricResult]:
    """Curves of ``kinds`` for the context's inputs ``(B, C, H, W)`` and heatmaps ``(B, H, W)``.

    Image pair ``g = k * B + b`` is curve ``kinds[k]`` of image ``b``. Points equal to
    the unperturbed image (deletion's first, insertion's last) reuse the unperturbed
    scores when resolving the targets computed them (``context.known_scores``).
    """
    options, inputs, maps = context.options, context.inputs, context.heatmaps
    size, _, height, width = inputs.shape
    counts = step_counts(height * width, options["steps"], options["pixels_per_step"])
    points = counts.numel()
    ranks = pixel_ranks(maps, options["tie_order"])
    starts, finishes, known = [], [], []
    for kind in kinds:
        if kind == "deletion":
            starts.append(inputs)
            finishes.append(context.substrate(options["substrate"]))
            known.append(0)
        else:
            starts.append(context.substrate(options["insertion_substrate"]))
            finishes.append(inputs)
            known.append(points - 1)
    groups = len(kinds) * size
    job_group = torch.arange(groups).repeat_interleave(points)
    job_step = torch.arange(points).repeat(groups)
    known_step = torch.tensor(known).repeat_interleave(size)
    original = context.known_scores
    if original is not None:
        keep = job_step != known_step[job_group]
        job_group, job_step = job_group[keep], job_step[keep]
    job_count = counts.to(device=inputs.device, dtype=torch.int32)[job_step.to(inputs.device)]

    def mask_fn(group: int, lo: int, hi: int) -> torch.Tensor:
        return ranks[group % size][None, :] < job_count[lo:hi, None]

    make_inputs = masked_perturbation(torch.cat(starts), torch.cat(finishes), job_group, mask_fn)
    targets = context.targets[(job_group % size).to(inputs.device)]
    scores, chunk = context.score_jobs(make_inputs, targets)
    curves = torch.empty(groups, points, dtype=torch.float32)
    curves[job_group, job_step] = scores.cpu()
    if original is not None:
        curves[torch.arange(groups), known_step] = original.cpu().repeat(len(kinds))
    x = counts.double() / (height * width)
    results = {}
    for k, kind in enumerate(kinds):
        y = curves[k * size : (k + 1) * size]
        results[kind] = context.result(
            kind,
            trapezoid_auc(x, y),
            kind == "insertion",
            _settings(options, kind, points, chunk, (height, width)),
            x=x,
            y=y,
        )
    return results


def _settings(
    options: Mapping[str, Any], kind: str, points: int, chunk: int, size: tuple[int, int]
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "steps": points - 1,
        "pixels_per_step": options["pixels_per_step"],
        "input_size": size,
        "score": options["score"],
        "tie_order": options["tie_order"],
        "chunk_size": chunk,
    }
    if kind == "deletion":
        settings["substrate"] = describe(options["substrate"])
    else:
        start = options["insertion_substrate"]
        settings["start"] = describe(start)
        if isinstance(start, str) and start in ("blur", "blur_reflect"):
            settings["blur"] = (options["blur_kernel"], options["blur_sigma"])
    return settings


class _Curve:
    """Insertion or deletion; the curve metrics asked of one batch share one stream of chunks."""

    name: str

    def forwards_per_image(self, options: Mapping[str, Any], height: int, width: int) -> int:
        """Forwards per heatmap when the unperturbed score is not known: every curve point."""
        return step_counts(height * width, options["steps"], options["pixels_per_step"]).numel()

    def compute(self, context: MetricContext) -> MetricResult:
        kinds = tuple(name for name in context.requested if name in CURVE_METRICS)
        if self.name not in kinds:
            kinds = (self.name,)
        return context.cached(f"curves{kinds}", lambda: curve_results(context, kinds))[self.name]


@register_metric(
    "insertion",
    higher_is_better=True,
    summary="AUC of the target score as pixels are restored, most salient first",
    reference="Petsiuk et al., RISE, BMVC 2018",
    options=(*CURVE_OPTIONS, INSERTION_SUBSTRATE, BLUR_KERNEL, BLUR_SIGMA),
    check=check_curve_options,
)
class Insertion(_Curve):
    """Insertion AUC: a blurred image (RISE's), the original pixels put back most salient
    first."""


@register_metric(
    "deletion",
    higher_is_better=False,
    summary="AUC of the target score as pixels are removed, most salient first",
    reference="Petsiuk et al., RISE, BMVC 2018",
    options=(*CURVE_OPTIONS, *SUBSTRATE_OPTIONS),
    check=check_curve_options,
)
class Deletion(_Curve):
    """Deletion AUC: the image, its most salient pixels replaced by the substrate first."""
