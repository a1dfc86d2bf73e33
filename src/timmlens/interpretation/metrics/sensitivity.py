"""Sensitivity-n (Ancona et al., ICLR 2018): does the heatmap predict the output drops?

For ``n_samples`` random subsets ``S`` of ``n`` features (pixels, or ``p x p`` patches),
sensitivity-n is the Pearson correlation, over the subsets, between the sum of the
heatmap over ``S`` and the drop of the target score ``f(x) - f(x with S set to the
substrate)``. An explanation whose values add up to the effect of removing the
pixels scores 1; higher is better. Subsets are drawn from a seeded ``torch.Generator``
(the global RNG is never touched).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..._warnings import warn_caller
from ..scoring import masked_perturbation
from ._inputs import check_n_samples
from .context import MetricContext
from .options import MetricOption, positive
from .registry import register_metric
from .results import MetricResult
from .substrates import SUBSTRATE_OPTIONS, describe


def patch_features(height: int, width: int, patch_size: int) -> tuple[torch.Tensor, int]:
    """Feature index of every pixel for a ``patch_size`` grid anchored at the top left.

    Returns:
        ``(H*W,)`` CPU long, row-major pixel -> row-major patch index, and the number of
        patches. Border patches are smaller when ``patch_size`` does not divide H or W.
    """
    columns = math.ceil(width / patch_size)
    rows = torch.arange(height) // patch_size
    cols = torch.arange(width) // patch_size
    features = (rows[:, None] * columns + cols[None, :]).flatten()
    return features, math.ceil(height / patch_size) * columns


def subset_size(n: int | float, num_features: int) -> int:
    """Features per subset: an int ``n`` as given, a float in (0, 1) as that fraction.

    Raises:
        ValueError: outside ``1 .. num_features - 1`` (a subset of all features has the
            same heatmap sum every time, so the correlation is undefined).
    """
    if num_features < 2:
        raise ValueError(
            f"sensitivity-n needs at least 2 features, the input has {num_features}; use a "
            f"smaller patch_size."
        )
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise ValueError(f"n must be an int count or a float fraction in (0, 1), got {n!r}.")
    if isinstance(n, float):
        if not 0.0 < n < 1.0:
            raise ValueError(
                f"a float n is a fraction of the {num_features} features and must lie in (0, 1), "
                f"got {n}; pass an int for a count."
            )
        n = min(max(1, round(n * num_features)), num_features - 1)
    if not 1 <= n < num_features:
        raise ValueError(
            f"n={n} features per subset is outside 1..{num_features - 1} (the input has "
            f"{num_features} features of the chosen patch size)."
        )
    return n


def check_sensitivity_n(n: object) -> int | float:
    """Features per subset before the image is seen: a positive int, or a float in (0, 1).

    A fraction of 1 (every feature) is refused too: a subset of all features has the
    same heatmap sum every time, so the correlation is undefined.
    """
    count = isinstance(n, int) and not isinstance(n, bool) and n >= 1
    fraction = isinstance(n, float) and 0.0 < n < 1.0
    if not (count or fraction):
        raise ValueError(
            f"sensitivity_n must be a positive int (a number of features) or a float fraction "
            f"in (0, 1) of the features, got {n!r}; e.g. sensitivity_n=0.1 (10% of them)."
        )
    return n  # type: ignore[return-value]


def _n_samples(value: object) -> int:
    check_n_samples(value)
    return value  # type: ignore[return-value]


def check_patch_fits(name: str, patch_size: int, height: int, width: int) -> None:
    """Raise unless ``patch_size x patch_size`` patches fit an ``height x width`` input and
    leave at least 2 of them."""
    if patch_size > min(height, width) or patch_size >= max(height, width):
        raise ValueError(
            f"{name}={patch_size} does not fit the {height}x{width} model input: features are "
            f"{name} x {name} patches and at least 2 are needed; use {name} <= "
            f"{max(min(height, width, max(height, width) - 1), 1)}."
        )


SENSITIVITY_OPTIONS: tuple[MetricOption, ...] = (
    MetricOption(
        "sensitivity_n",
        0.1,
        "features per subset: an int count, or a float fraction in (0, 1) of them (10%)",
        check_sensitivity_n,
    ),
    MetricOption(
        "patch_size",
        1,
        "features are patch_size x patch_size patches (1: single pixels, as Ancona et al.)",
        positive("patch_size"),
    ),
    MetricOption(
        "n_samples", 64, "random subsets per image, at least 3 for a correlation", _n_samples
    ),
)


def random_subsets(
    num_images: int, n_samples: int, num_features: int, n: int, generator: torch.Generator
) -> torch.Tensor:
    """Random subsets of exactly ``n`` of ``num_features`` features, drawn image by image.

    For each image in turn, ``torch.rand(n_samples, num_features, generator=generator)``
    is drawn on the CPU and each row's ``n`` largest entries form its subset, so the
    subsets depend only on the generator's seed, never on the device or chunking.

    Returns:
        ``(num_images, n_samples, num_features)`` CPU bool.
    """
    masks = torch.zeros(num_images, n_samples, num_features, dtype=torch.bool)
    for image in range(num_images):
        noise = torch.rand(n_samples, num_features, generator=generator)
        masks[image].scatter_(1, noise.topk(n, dim=1).indices, True)
    return masks


def pearson(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-9) -> torch.Tensor:
    """Row-wise Pearson correlation: ``(B, S)``, ``(B, S)`` -> ``(B,)`` float64.

    NaN where either row is constant up to rounding (spread below ``rtol`` of its
    magnitude): the correlation is then undefined.
    """
    a, b = a.double(), b.double()
    a_centred = a - a.mean(dim=1, keepdim=True)
    b_centred = b - b.mean(dim=1, keepdim=True)
    a_norm, b_norm = a_centred.norm(dim=1), b_centred.norm(dim=1)
    corr = (a_centred * b_centred).sum(dim=1) / (a_norm * b_norm).clamp_min(1e-300)
    undefined = (a_norm <= rtol * a.norm(dim=1)) | (b_norm <= rtol * b.norm(dim=1))
    return torch.where(undefined, torch.full_like(corr, math.nan), corr.clamp(-1.0, 1.0))


@register_metric(
    "sensitivity",
    aliases=("sensitivity-n", "sensitivity_n"),
    higher_is_better=True,
    summary="correlation of heatmap sums with output drops over random pixel subsets",
    reference="Ancona et al., ICLR 2018",
    options=(*SENSITIVITY_OPTIONS, *SUBSTRATE_OPTIONS),
)
class SensitivityN:
    """Sensitivity-n per image. Options: ``sensitivity_n``, ``patch_size``, ``n_samples``,
    ``substrate`` (and the engine's ``seed``, ``score``)."""

    def forwards_per_image(self, options: Mapping[str, Any], height: int, width: int) -> int:
        """Forwards per heatmap: one per subset, and the unperturbed image once."""
        del height, width
        return options["n_samples"] + 1

    def compute(self, context: MetricContext) -> MetricResult:
        options = context.options
        n, patch_size = options["sensitivity_n"], options["patch_size"]
        n_samples, seed = options["n_samples"], options["seed"]
        inputs, maps = context.inputs, context.heatmaps
        size, _, height, width = inputs.shape
        check_patch_fits("patch_size", patch_size, height, width)
        features, num_features = patch_features(height, width, patch_size)
        count = subset_size(n, num_features)
        subsets = random_subsets(
            size, n_samples, num_features, count, torch.Generator().manual_seed(seed)
        )
        feature_maps = torch.zeros(size, num_features, dtype=torch.float64).index_add_(
            1, features, maps.flatten(1).double().cpu()
        )
        sums = torch.bmm(subsets.double(), feature_maps[:, :, None])[..., 0]
        original = context.original_scores()

        device = inputs.device
        flat_subsets = subsets.flatten(0, 1).to(device)
        pixel_features = features.to(device)

        def mask_fn(_group: int, lo: int, hi: int) -> torch.Tensor:
            chunk_subsets = flat_subsets[lo:hi]
            return chunk_subsets if patch_size == 1 else chunk_subsets[:, pixel_features]

        job_group = torch.arange(size).repeat_interleave(n_samples)
        substrate = context.substrate(options["substrate"])
        make_inputs = masked_perturbation(inputs, substrate, job_group, mask_fn)
        scores, chunk = context.score_jobs(make_inputs, context.targets[job_group.to(device)])
        drops = (original[:, None] - scores.view(size, n_samples)).double().cpu()
        correlation = pearson(sums, drops)
        _warn_undefined(correlation)
        settings = {
            "n": count,
            "patch_size": patch_size,
            "n_samples": n_samples,
            "seed": seed,
            "substrate": describe(options["substrate"]),
            "score": options["score"],
            "chunk_size": chunk,
        }
        details = {"heatmap_sums": sums, "output_drops": drops}
        return context.result("sensitivity-n", correlation, True, settings, details=details)


def _warn_undefined(correlation: torch.Tensor) -> None:
    undefined = torch.isnan(correlation).nonzero().flatten().tolist()
    if undefined:
        warn_caller(
            f"sensitivity-n is undefined (NaN) for image(s) {undefined}: the heatmap sums or "
            f"the output drops do not vary across subsets. Such images are left out of the "
            f"mean.",
            RuntimeWarning,
        )
