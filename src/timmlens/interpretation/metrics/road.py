"""ROAD: RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022).

Pixel deletion rewards scattered masks: the holes it punches are out of distribution,
and the model reacts to the holes, not to what was removed. ROAD fills removed pixels
by **noisy linear imputation**: each removed pixel becomes the weighted mean of its 8
neighbours (weight 1/6 for the 4 direct ones, 1/12 for the diagonals, out-of-image
neighbours left out), solved jointly for all removed pixels of an image as one sparse
linear system, plus Gaussian noise of ``noise`` (0.01 in normalised input units, the
authors' default) on the imputed pixels. Without noise the imputation equals the
authors' ``NoisyLinearImputer`` (vendored by pytorch-grad-cam in ``metrics/road.py``).

For each percentile ``p`` (default 10, 20, ..., 90), ``p`` % of the pixels are removed:

* **MoRF** (most relevant first): the top-ranked ``p`` %; a faithful heatmap makes the
  target score fall fast, lower is better;
* **LeRF** (least relevant first): the bottom-ranked ``p`` %; the score should stay up,
  higher is better.

``p`` is the share *removed* (the paper's x-axis); pytorch-grad-cam's ``percentile`` is
the share kept. ``round(p / 100 * H * W)`` pixels are removed, ranked as insertion and
deletion rank them (`pixel_ranks`, ``tie_order``). The curve is the
target's score at each percentile, the value its mean over percentiles.

**The solver.** The systems differ by mask, so each (image, order, percentile) gets its
own factorisation. They are built without Python loops over pixels: the neighbour
matrix of an ``H x W`` grid is built once per size (cached), each system is a row/column
selection of it, and the right-hand sides of all masks of an image come from one sparse
product, the channels solved together. The solves use scipy's SuperLU (``splu``):
torch has no sparse direct solver off CUDA, and iterative solvers (conjugate gradients in
torch) need
hundreds to thousands of iterations on the large holes of high percentiles to reach the
authors' values to 1e-5. The factorisation is most of the cost, and its fill depends on
the elimination order: the unknowns are ordered by a geometric nested dissection of the
removed pixels (`nested_dissection`; a row or column of pixels separates the 8-neighbour
grid), which on these grid systems factorises about 1.5x faster than SuperLU's own
minimum-degree ordering of ``A + A^T``; the matrix is symmetric positive definite, so
no pivoting is needed and any order gives the same solution up to rounding. The
imputation runs on the CPU in float64; the imputed images
go to the model's device a chunk at a time, one forward per chunk
([`score_in_chunks`][timmlens.interpretation.scoring.score_in_chunks]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...errors import MetricInputError
from ..scoring import score_in_chunks
from .curves import TIE_ORDER, pixel_ranks
from .options import MetricOption
from .registry import register_metric

if TYPE_CHECKING:
    import scipy.sparse

    from .context import MetricContext
    from .results import MetricResult

#: The paper's removal levels, in percent of the pixels removed.
DEFAULT_PERCENTILES: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
#: Standard deviation of the imputation noise, in normalised input units (the authors').
DEFAULT_NOISE = 0.01
ROAD_ORDERS: tuple[str, ...] = ("morf", "lerf")
#: The authors' neighbour weights ``((d_row, d_col), weight)``, in their order.
NEIGHBOUR_WEIGHTS: tuple[tuple[tuple[int, int], float], ...] = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def check_percentiles(percentiles: object) -> tuple[float, ...]:
    """``percentiles`` as a tuple of floats, each in (0, 100), strictly increasing.

    Raises:
        MetricInputError: not a non-empty sequence of numbers, a value outside (0, 100),
            unsorted or duplicated.
    """
    if isinstance(percentiles, (str, bytes)) or not isinstance(percentiles, Sequence):
        raise MetricInputError(
            f"percentiles must be a sequence of numbers in (0, 100), got {percentiles!r}; "
            f"e.g. percentiles=(10, 20, 30, 40, 50, 60, 70, 80, 90)."
        )
    values = list(percentiles)
    if not values or any(
        isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p)
        for p in values
    ):
        raise MetricInputError(
            f"percentiles must be a non-empty sequence of finite numbers, got {percentiles!r}."
        )
    outside = [p for p in values if not 0 < p < 100]
    if outside:
        raise MetricInputError(
            f"percentiles {outside} are outside (0, 100): a percentile is the share of "
            f"pixels removed, in percent, and removing none or all says nothing. Use values "
            f"such as (10, 20, ..., 90)."
        )
    duplicated = sorted({p for p in values if values.count(p) > 1})
    if duplicated:
        raise MetricInputError(
            f"percentiles {duplicated} are given more than once in {tuple(values)}; give each "
            f"removal level once, in increasing order."
        )
    if values != sorted(values):
        raise MetricInputError(
            f"percentiles {tuple(values)} are not in increasing order; give them sorted, "
            f"e.g. {tuple(sorted(values))}."
        )
    return tuple(float(p) for p in values)


def check_noise(noise: object) -> None:
    """Raise unless ``noise`` is a finite number >= 0."""
    if (
        isinstance(noise, bool)
        or not isinstance(noise, (int, float))
        or not math.isfinite(noise)
        or noise < 0
    ):
        raise MetricInputError(
            f"noise must be a finite number >= 0 (the imputation noise's standard deviation "
            f"in normalised input units), got {noise!r}; the authors use 0.01."
        )


def _noise(value: object) -> float:
    check_noise(value)
    return float(value)  # type: ignore[arg-type]


ROAD_OPTIONS: tuple[MetricOption, ...] = (
    MetricOption(
        "road_percentiles",
        DEFAULT_PERCENTILES,
        "ROAD's removal levels in percent of the pixels, strictly increasing in (0, 100)",
        check_percentiles,
    ),
    MetricOption(
        "road_noise",
        DEFAULT_NOISE,
        "std of ROAD's imputation noise in normalised input units (the authors' 0.01)",
        _noise,
    ),
    TIE_ORDER,
)


def removed_counts(percentiles: Sequence[float], num_pixels: int) -> list[int]:
    """Pixels removed at each percentile: ``round(p / 100 * num_pixels)``, within 1..N-1."""
    return [min(max(round(p * num_pixels / 100), 1), num_pixels - 1) for p in percentiles]


@lru_cache(maxsize=8)
def neighbour_matrix(height: int, width: int) -> scipy.sparse.csr_matrix:
    """The authors' 8-neighbour weights on an ``H x W`` grid: ``(H*W, H*W)`` CSR float64.

    Entry ``(i, j)`` is the weight of pixel ``j`` in the mean that imputes pixel ``i``
    (row-major indices); neighbours outside the image are absent, so a row sums to less
    than 1 at the border (the authors reduce the diagonal by the missing weight).
    """
    import scipy.sparse

    rows, cols = np.divmod(np.arange(height * width), width)
    entries, neighbours, weights = [], [], []
    for (d_row, d_col), weight in NEIGHBOUR_WEIGHTS:
        r, c = rows + d_row, cols + d_col
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        entries.append(np.flatnonzero(inside))
        neighbours.append((r * width + c)[inside])
        weights.append(np.full(int(inside.sum()), weight))
    size = height * width
    return scipy.sparse.csr_matrix(
        (np.concatenate(weights), (np.concatenate(entries), np.concatenate(neighbours))),
        shape=(size, size),
    )


#: Pixel sets at most this large are not split further by `nested_dissection` (smaller
#: leaves cost more Python calls than the fill they save; 32-64 measured best at 224 px).
DISSECTION_LEAF = 48


def nested_dissection(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A fill-reducing elimination order of pixels ``(rows, cols)`` (each ``(n,)`` int).

    Geometric nested dissection: the set is split at the median row (or column, across
    the longer side of its bounding box); with 8 neighbours the pixels on that line
    separate the two sides, so they are ordered after both halves, each ordered the same
    way down to `DISSECTION_LEAF` pixels (kept in their given order).

    Returns:
        ``(n,)`` int: a permutation of ``range(n)``, positions into ``rows``/``cols``.
    """
    order: list[np.ndarray] = []

    def split(ids: np.ndarray) -> None:
        if ids.size <= DISSECTION_LEAF:
            order.append(ids)
            return
        r, c = rows[ids], cols[ids]
        coord = r if r.max() - r.min() >= c.max() - c.min() else c
        middle = np.partition(coord, coord.size // 2)[coord.size // 2]
        below, above = coord < middle, coord > middle
        split(ids[below])
        split(ids[above])
        order.append(ids[~(below | above)])  # the separator, after both sides

    split(np.arange(rows.size))
    return np.concatenate(order)


def impute(
    image: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.0,
    generators: Sequence[np.random.Generator] | None = None,
) -> torch.Tensor:
    """Noisy linear imputation of one image under ``K`` masks.

    Each removed pixel ``i`` solves ``s_i x_i - sum_j w_ij x_j = 0`` over its in-image
    neighbours ``j`` (``s_i = sum_j w_ij``), known neighbours moved to the right-hand
    side: one sparse symmetric system per mask, its unknowns in `nested_dissection`
    order, factorised by SuperLU, the channels solved together. Then ``noise * N(0, 1)``
    is added to the imputed pixels. The masks' systems are independent and SuperLU
    releases the GIL, so they are solved on ``torch.get_num_threads()`` threads.

    Args:
        image: ``(C, H, W)`` (normalised model input; any device).
        removed: ``(K, H*W)`` bool, ``True`` where a pixel is removed (imputed).
        noise: noise standard deviation; 0 for the plain linear imputation.
        generators: one numpy ``Generator`` per mask for the noise (needed when
            ``noise > 0``); the global random state is never used.

    Returns:
        ``(K, C, H, W)`` float32 on the CPU: the kept pixels exactly, the removed imputed.
    """
    import scipy.sparse
    from scipy.sparse.linalg import splu

    if noise > 0 and generators is None:
        raise ValueError("impute() with noise > 0 needs one generator per mask.")
    rngs = list(generators or ())
    channels, height, width = image.shape
    pixels = image.detach().to("cpu", torch.float64).reshape(channels, -1).numpy()
    masks = removed.detach().cpu().numpy().astype(bool)
    neighbours = neighbour_matrix(height, width)
    totals = np.asarray(neighbours.sum(axis=1)).ravel()
    # every mask's known-neighbour sums in one sparse product: (H*W, K*C)
    known_values = pixels.T[:, None, :] * ~masks.T[:, :, None]
    sums = (neighbours @ known_values.reshape(height * width, -1)).reshape(known_values.shape)

    def solve(k: int) -> tuple[np.ndarray, np.ndarray]:
        """Mask ``k``'s removed pixels in solving order and their values ``(n, C)``."""
        index = np.flatnonzero(masks[k])
        ordered = index[nested_dissection(*np.divmod(index, width))]
        # -A of the authors' system: diag(s) - W restricted to the removed pixels (SPD),
        # rows and columns in the dissection order, which SuperLU then keeps (NATURAL)
        system = scipy.sparse.diags(totals[ordered]) - neighbours[ordered][:, ordered]
        solver = splu(
            system.tocsc(),
            permc_spec="NATURAL",
            diag_pivot_thresh=0.0,
            options={"SymmetricMode": True, "Equil": False},
        )
        return ordered, solver.solve(np.ascontiguousarray(sums[ordered, k, :]))

    out = np.repeat(pixels[None], len(masks), axis=0)
    jobs = [k for k in range(len(masks)) if masks[k].any()]
    workers = min(torch.get_num_threads(), len(jobs))
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        for k, (ordered, values) in zip(jobs, pool.map(solve, jobs), strict=True):
            out[k][:, ordered] = values.T
            if noise > 0:  # drawn in row-major pixel order: the same whatever the solver
                index = np.flatnonzero(masks[k])
                noisy = rngs[k].standard_normal((index.size, channels))
                out[k][:, index] += noise * noisy.T
    return torch.from_numpy(out.astype(np.float32)).view(len(masks), channels, height, width)


def noise_generators(seed: int, image: int, order: str, count: int) -> list[np.random.Generator]:
    """One numpy generator per percentile, from ``(seed, image position, order, percentile
    index)``: the noise does not depend on chunking or on which metrics run together."""
    key = ROAD_ORDERS.index(order)
    return [
        np.random.default_rng(np.random.SeedSequence([seed, image, key, level]))
        for level in range(count)
    ]


def removal_masks(ranks: torch.Tensor, counts: Sequence[int], order: str) -> torch.Tensor:
    """Removed pixels of one image at each count: ranks ``(H*W,)`` -> ``(P, H*W)`` bool.

    MoRF removes the ``k`` top-ranked pixels (``rank < k``), LeRF the ``k`` bottom-ranked
    (``rank >= H*W - k``).
    """
    k = torch.tensor(counts, device=ranks.device)[:, None]
    if order == "morf":
        return ranks[None] < k
    return ranks[None] >= ranks.numel() - k


def road_results(context: MetricContext, orders: tuple[str, ...]) -> dict[str, MetricResult]:
    """ROAD curves of ``orders`` for the context's inputs ``(B, C, H, W)`` and heatmaps.

    Job ``j`` is ``(image b, order o, percentile t)`` in that nesting; the imputation
    of a chunk's jobs happens when the chunk is built (one image's masks solved
    together), so memory holds one chunk of imputed images at a time.
    """
    options = context.options
    percentiles, noise = options["road_percentiles"], options["road_noise"]
    seed, score, tie_order = options["seed"], options["score"], options["tie_order"]
    inputs, maps = context.inputs, context.heatmaps
    size, _, height, width = inputs.shape
    counts = removed_counts(percentiles, height * width)
    ranks = pixel_ranks(maps, tie_order)
    levels = len(percentiles)
    per_image = len(orders) * levels
    n_jobs = size * per_image

    def make_inputs(lo: int, hi: int) -> torch.Tensor:
        pieces = []
        for group in range(lo // levels, (hi - 1) // levels + 1):  # one (image, order) at a time
            image, order = divmod(group, len(orders))
            first, last = max(lo, group * levels), min(hi, (group + 1) * levels)
            chosen = range(first - group * levels, last - group * levels)
            masks = removal_masks(ranks[image], [counts[t] for t in chosen], orders[order])
            generators = noise_generators(seed, image, orders[order], levels)
            pieces.append(impute(inputs[image], masks, noise, [generators[t] for t in chosen]))
        return torch.cat(pieces).to(inputs.device, inputs.dtype)

    job_image = torch.arange(size).repeat_interleave(per_image).to(inputs.device)
    chunk = context.chunk_size(n_jobs)
    scores = score_in_chunks(context.model, make_inputs, context.targets[job_image], chunk, score)
    curves = scores.view(size, len(orders), levels).float().cpu()
    x = torch.tensor(percentiles, dtype=torch.float64) / 100
    results = {}
    for o, order in enumerate(orders):
        y = curves[:, o]
        settings: dict[str, Any] = {
            "order": order,
            "percentiles": percentiles,
            "noise": noise,
            "seed": seed,
            "score": score,
            "tie_order": tie_order,
            "input_size": (height, width),
            "chunk_size": chunk,
        }
        name = f"road_{order}"
        results[name] = context.result(
            name, y.double().mean(dim=1), order == "lerf", settings, x=x, y=y
        )
    return results


class _Road:
    """ROAD MoRF or LeRF; both asked of one batch share one stream of chunks."""

    name: str

    def compute(self, context: MetricContext) -> MetricResult:
        orders = tuple(o for o in ROAD_ORDERS if f"road_{o}" in context.requested)
        if self.name not in {f"road_{o}" for o in orders}:
            orders = (self.name.removeprefix("road_"),)
        return context.cached(f"road{orders}", lambda: road_results(context, orders))[self.name]


@register_metric(
    "road_morf",
    aliases=("road-morf",),
    higher_is_better=False,
    summary="mean target score with the top p% pixels imputed (ROAD, most relevant first)",
    reference="Rong et al., ROAD, ICML 2022",
    options=ROAD_OPTIONS,
)
class RoadMoRF(_Road):
    """ROAD, most relevant first: lower is better."""


@register_metric(
    "road_lerf",
    aliases=("road-lerf",),
    higher_is_better=True,
    summary="mean target score with the bottom p% pixels imputed (ROAD, least relevant first)",
    reference="Rong et al., ROAD, ICML 2022",
    options=ROAD_OPTIONS,
)
class RoadLeRF(_Road):
    """ROAD, least relevant first: higher is better."""
