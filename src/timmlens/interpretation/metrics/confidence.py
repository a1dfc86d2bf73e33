"""Confidence metrics: Average Drop, Increase in Confidence (Chattopadhay et al., "Grad-CAM++",
WACV 2018) and AOPC (Samek et al., "Evaluating the visualization of what a deep neural
network has learned", IEEE TNNLS 2017).

* **Average Drop** and **Increase in Confidence** score the image multiplied by its
  explanation map, ``x * E`` with ``E`` min-max normalised to [0, 1] per image (as
  pytorch-grad-cam's CAMs are), on the normalised model input (so a zero of the map
  gives the dataset's mean colour). With ``Y`` the target's score on the image and
  ``O`` on ``x * E``: Average Drop is ``100 * max(0, Y - O) / Y`` per image (percent,
  lower is better); Increase in Confidence is ``100`` where ``O > Y`` else ``0`` (its
  mean is the percentage of images, higher is better). One forward per image.
* **AOPC** (area over the MoRF perturbation curve): the image is cut into
  ``patch_size x patch_size`` patches (a grid anchored at the top left), ranked by their
  heatmap sum, most relevant first; the first ``k`` are replaced by the deletion
  substrate for ``k = 0 .. L``, and ``AOPC = mean_k (f(x) - f(x_k))`` over the ``L + 1``
  points (Samek et al., Eq. 12). Higher is better. Samek et al. used 9 x 9 regions and
  ``L = 100``, the defaults here; they filled regions with uniform noise, here the
  ``substrate`` of `ExplanationMetrics` (zeros: the mean colour) fills them,
  pass ``substrate=`` for another. Ties between patch sums follow ``tie_order``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..scoring import masked_perturbation
from .context import MetricContext
from .curves import TIE_ORDER, pixel_ranks
from .options import MetricOption, positive
from .registry import register_metric
from .results import MetricResult
from .sensitivity import check_patch_fits, patch_features
from .substrates import SUBSTRATE_OPTIONS, describe

#: Samek et al.'s settings: 9 x 9 regions, 100 perturbation steps.
DEFAULT_AOPC_PATCH = 9
DEFAULT_AOPC_STEPS = 100
CONFIDENCE_METRICS: tuple[str, ...] = ("average_drop", "increase_in_confidence")


def normalised_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map ``(B, H, W)`` to [0, 1]; a constant map becomes ones.

    A constant map explains nothing: multiplying by ones leaves the image as it is
    (drop 0, no increase), and `TiedHeatmapWarning` has said so.
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    normal = torch.where(span > 0, (flat - low) / span.clamp_min(1e-30), torch.ones_like(flat))
    return normal.view_as(maps)


def confidence_results(context: MetricContext) -> dict[str, MetricResult]:
    """Average Drop and Increase in Confidence of the context's batch (one forward each)."""
    inputs = context.inputs
    maps = normalised_maps(context.heatmaps)
    original = context.original_scores().float()

    def make_inputs(lo: int, hi: int) -> torch.Tensor:
        return inputs[lo:hi] * maps[lo:hi, None]

    scores, chunk = context.score_jobs(make_inputs, context.targets)
    drop = 100 * (original - scores).clamp_min(0) / original
    increase = 100 * (scores > original).double()
    settings = {"score": context.score, "normalise": "min-max", "chunk_size": chunk}
    details = {"original_scores": original.double().cpu(), "masked_scores": scores.double().cpu()}
    return {
        "average_drop": context.result("average_drop", drop, False, settings, details=details),
        "increase_in_confidence": context.result(
            "increase_in_confidence", increase, True, settings, details=details
        ),
    }


class _Confidence:
    name: str

    def compute(self, context: MetricContext) -> MetricResult:
        return context.cached("confidence", lambda: confidence_results(context))[self.name]


@register_metric(
    "average_drop",
    aliases=("average-drop", "avg_drop"),
    higher_is_better=False,
    summary="mean % drop of the target score on image x normalised map",
    reference="Chattopadhay et al., Grad-CAM++, WACV 2018",
)
class AverageDrop(_Confidence):
    """Average Drop (%), lower is better."""


@register_metric(
    "increase_in_confidence",
    aliases=("increase-in-confidence", "increase"),
    higher_is_better=True,
    summary="% of images whose target score rises on image x normalised map",
    reference="Chattopadhay et al., Grad-CAM++, WACV 2018",
)
class IncreaseInConfidence(_Confidence):
    """Increase in Confidence (% of images), higher is better."""


def patch_ranks(maps: torch.Tensor, patch_size: int, tie_order: str) -> tuple[torch.Tensor, int]:
    """Rank of each pixel's patch by the patch's heatmap sum: ``(B, H, W)`` -> ``(B, H*W)``.

    Returns the int32 patch rank of every pixel (0: the most relevant patch) on the
    maps' device, and the number of patches.
    """
    size, height, width = maps.shape
    features, count = patch_features(height, width, patch_size)
    features = features.to(maps.device)
    sums = torch.zeros(size, count, dtype=torch.float64, device=maps.device)
    sums.index_add_(1, features, maps.flatten(1).double())
    ranks = pixel_ranks(sums[:, None, :], tie_order)  # (B, patches)
    return ranks[:, features], count


AOPC_OPTIONS: tuple[MetricOption, ...] = (
    MetricOption(
        "aopc_patch_size",
        DEFAULT_AOPC_PATCH,
        "side of AOPC's square regions in pixels (Samek et al.'s 9)",
        positive("aopc_patch_size"),
    ),
    MetricOption(
        "aopc_steps",
        DEFAULT_AOPC_STEPS,
        "AOPC's perturbation steps L (Samek et al.'s 100; at most the number of patches)",
        positive("aopc_steps"),
    ),
)


@register_metric(
    "aopc",
    higher_is_better=True,
    summary="mean drop of the target score as patches are removed, most relevant first",
    reference="Samek et al., IEEE TNNLS 2017",
    options=(*AOPC_OPTIONS, TIE_ORDER, *SUBSTRATE_OPTIONS),
)
class AOPC:
    """AOPC over MoRF patch removal. Options: ``aopc_patch_size``, ``aopc_steps``,
    ``tie_order``, ``substrate``."""

    def compute(self, context: MetricContext) -> MetricResult:
        options = context.options
        patch_size, steps = options["aopc_patch_size"], options["aopc_steps"]
        inputs = context.inputs
        size, _, height, width = inputs.shape
        check_patch_fits("aopc_patch_size", patch_size, height, width)
        ranks, count = patch_ranks(context.heatmaps, patch_size, options["tie_order"])
        steps = min(steps, count)
        points = steps + 1
        original = context.original_scores().float()
        # point 0 is the image itself: its score is known, so only points 1..L are scored
        job_group = torch.arange(size).repeat_interleave(steps)
        job_count = torch.arange(1, points, device=inputs.device).repeat(size)

        def mask_fn(group: int, lo: int, hi: int) -> torch.Tensor:
            return ranks[group][None, :] < job_count[lo:hi, None]

        substrate = context.substrate(options["substrate"])
        make_inputs = masked_perturbation(inputs, substrate, job_group, mask_fn)
        scores, chunk = context.score_jobs(
            make_inputs, context.targets[job_group.to(inputs.device)]
        )
        y = torch.cat([original[:, None], scores.view(size, steps)], dim=1).cpu()
        aopc = (y[:, :1].double() - y.double()).mean(dim=1)
        settings: dict[str, Any] = {
            "patch_size": patch_size,
            "steps": steps,
            "substrate": describe(options["substrate"]),
            "score": context.score,
            "tie_order": options["tie_order"],
            "chunk_size": chunk,
        }
        x = torch.arange(points, dtype=torch.float64)
        return context.result("aopc", aopc, True, settings, x=x, y=y)
