"""The quality figures of a concept dictionary: held-out R^2, dead codes, cross-seed stability.

The figures the sparse-dictionary literature reports (Gao et al. 2024, "Scaling and
evaluating sparse autoencoders"; Fel et al. 2025, "Archetypal SAE"):

* **R^2** of the reconstruction on rows not used for training:
  ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` with the mean taken *per channel*
  over the held-out rows (the fraction of variance explained; scikit-learn's
  ``r2_score(..., multioutput="variance_weighted")``). overcomplete's ``metrics.r2_score``
  subtracts one scalar mean over all channels instead, which counts the spread between
  channel means as explained and reads higher; the per-channel form is the stricter one.
  It is unchanged by a per-channel shift of the rows, so the shifted rows of the shards
  give the R^2 of the activations themselves.
* **dead codes**: codes that are zero on every row (overcomplete's ``metrics.dead_codes``).
* **active codes**: the mean number of non-zero codes per row (the L0 the sparse-dictionary
  papers trade against R^2): ``sparsity`` for TopK, learned by JumpReLU.
* **stability**: two fits that differ only in their seed, their dictionaries ``(K, C)``
  matched one to one by the Hungarian assignment on cosine similarity
  (``scipy.optimize.linear_sum_assignment``); the mean cosine of the matched pairs
  (``1 - cosine_hungarian_loss / K`` in overcomplete's terms). 1 means the same concepts.

The R^2 streams: `R2Accumulator` takes the rows shard by shard and keeps per-channel sums,
so memory does not grow with the dataset.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

#: every HELD_OUT_EVERY-th image (by dataset index) is held out of a dictionary's training
HELD_OUT_EVERY = 5


class R2Accumulator:
    """Per-channel sums for the R^2 of a reconstruction, fed one block of rows at a time.

    ``SS_tot = sum_c (sum x_c^2 - (sum x_c)^2 / n)`` is the per-channel variance times ``n``,
    accumulated in float64 so large datasets do not lose precision.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.residual = 0.0
        self.total: np.ndarray | None = None
        self.squares: np.ndarray | None = None

    def update(self, x: ArrayLike, x_hat: ArrayLike) -> None:
        """Add rows ``x`` ``(n, C)`` and their reconstruction ``x_hat`` ``(n, C)``."""
        x = np.asarray(x, dtype=np.float64)
        x_hat = np.asarray(x_hat, dtype=np.float64)
        if x.shape != x_hat.shape or x.ndim != 2:
            raise ValueError(
                f"R^2 needs rows and reconstruction of one shape (n, C), got {x.shape} and "
                f"{x_hat.shape}."
            )
        if self.total is None:
            self.total = np.zeros(x.shape[1])
            self.squares = np.zeros(x.shape[1])
        assert self.squares is not None
        self.rows += x.shape[0]
        self.residual += float(np.sum((x - x_hat) ** 2))
        self.total += x.sum(axis=0)
        self.squares += np.sum(x**2, axis=0)

    def value(self) -> float:
        """``1 - SS_res / SS_tot``; NaN with no rows or constant rows (R^2 undefined)."""
        if self.rows == 0 or self.total is None or self.squares is None:
            return float("nan")
        spread = float(np.sum(self.squares - self.total**2 / self.rows))
        if spread <= 0.0:
            return float("nan")
        return 1.0 - self.residual / spread


def r2_score(x: ArrayLike, x_hat: ArrayLike) -> float:
    """R^2 of ``x_hat`` ``(n, C)`` as a reconstruction of ``x`` ``(n, C)`` (per-channel means).

    Equals ``sklearn.metrics.r2_score(x, x_hat, multioutput="variance_weighted")``.
    """
    accumulator = R2Accumulator()
    accumulator.update(x, x_hat)
    return accumulator.value()


def dead_code_mask(fired: ArrayLike) -> np.ndarray:
    """``(K,)`` True where a code never fired, from ``fired`` ``(K,)`` (how often or how much
    each code was non-zero, summed over all rows seen)."""
    return np.asarray(fired) == 0


def matched_cosine(first: ArrayLike, second: ArrayLike) -> tuple[float, np.ndarray, np.ndarray]:
    """Match the atoms of two dictionaries one to one and measure how alike they are.

    Args:
        first: a ``(K, C)`` dictionary (rows are atoms); zero rows have cosine 0.
        second: the other ``(K, C)`` dictionary, matched to ``first``.

    Returns:
        ``(mean matched cosine, match (K,) the row of second matched to each row of first,
        cosines (K,) of the matched pairs)``. The matching maximises the summed cosine
        (Hungarian assignment, ``scipy.optimize.linear_sum_assignment``).
    """
    from scipy.optimize import linear_sum_assignment

    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"stability matches two dictionaries of one shape (K, C), got {a.shape} and {b.shape}."
        )
    a_norm = np.linalg.norm(a, axis=1, keepdims=True)
    b_norm = np.linalg.norm(b, axis=1, keepdims=True)
    # a zero atom (never trained) matches nothing: its cosine is 0, not NaN
    cosine = (a / np.where(a_norm > 0, a_norm, 1.0)) @ (b / np.where(b_norm > 0, b_norm, 1.0)).T
    rows, columns = linear_sum_assignment(cosine, maximize=True)
    match = np.empty(a.shape[0], dtype=np.int64)
    match[rows] = columns
    cosines = cosine[rows, columns]
    return float(cosines.mean()), match, cosines


def held_out(indices: np.ndarray, n_images: int) -> np.ndarray:
    """``(n,)`` True for images kept out of the training: dataset index ``4 mod 5``, when
    the dataset has at least ``HELD_OUT_EVERY`` images (else none: the R^2 is in-sample)."""
    indices = np.asarray(indices)
    if n_images < HELD_OUT_EVERY:
        return np.zeros(indices.shape, dtype=bool)
    return indices % HELD_OUT_EVERY == HELD_OUT_EVERY - 1


def row_mask(shard: Any, image_mask: np.ndarray) -> np.ndarray:
    """``(n*h*w,)`` the image mask ``(n,)`` repeated over each image's positions (rows)."""
    _, _, height, width = shard.activations.shape
    return np.repeat(np.asarray(image_mask, dtype=bool), height * width)


def measure_fit(
    store: Any, batches: list[int], offset: np.ndarray, fitted: Any, n_images: int
) -> dict[str, Any]:
    """R^2 on the held-out images and the dead codes over all images, in one read of the
    shards.

    Args:
        store, batches, offset: the run's shards (`timmlens.analysis.concept_store`).
        fitted: a `ShardFit` (``components (K, C)``, ``loadings(shard) -> (n*h*w, K)``).
        n_images: readable images (which decides the held-out ones).

    Returns:
        ``{"r2": float, "r2_rows": int, "r2_on": "held-out images" | "training images",
        "dead_codes": int, "dead_fraction": float, "dead": [indices], "active_codes":
        float}`` (active codes: the mean count of non-zero codes per row, all images).
    """
    components = np.asarray(fitted.components, dtype=np.float64)
    held = R2Accumulator()
    seen = R2Accumulator()
    fired = np.zeros(components.shape[0])
    active = 0
    for batch in batches:
        shard = store.read(batch)
        rows = shard.rows(offset)
        codes = np.asarray(fitted.loadings(shard), dtype=np.float64)
        fired += np.count_nonzero(codes > 0, axis=0)
        active += int(np.count_nonzero(codes > 0))
        mask = row_mask(shard, held_out(shard.indices, n_images))
        reconstruction = codes @ components
        if getattr(fitted, "bias", None) is not None:
            reconstruction += fitted.bias[None, :]
        if mask.any():
            held.update(rows[mask], reconstruction[mask])
        seen.update(rows, reconstruction)
    on_held = held.rows > 0
    dead = dead_code_mask(fired)
    r2 = (held if on_held else seen).value()
    return {
        "r2": r2 if math.isfinite(r2) else None,  # JSON has no NaN
        "r2_rows": (held if on_held else seen).rows,
        "r2_on": "held-out images" if on_held else "training images",
        "dead_codes": int(dead.sum()),
        "dead_fraction": float(dead.mean()),
        "dead": [int(k) for k in np.flatnonzero(dead)],
        "active_codes": active / max(1, seen.rows),
    }


def quality_line(quality: dict[str, Any]) -> str:
    """One line of a fit's quality figures, as `DatasetConcepts` prints them."""
    r2 = quality.get("r2")
    r2_text = "n/a" if r2 is None else f"{r2:.3f}"
    where = quality.get("r2_on", "held-out images")
    if quality.get("in_sample"):
        where += ", in-sample: NMF is fitted on every image"
    stability = quality.get("stability")
    stable = "not measured" if stability is None else f"{stability:.3f}"
    return (
        f"{quality.get('method', 'nmf')}: R^2 {r2_text} ({where}); dead codes "
        f"{quality.get('dead_codes', 0)} ({quality.get('dead_fraction', 0.0):.1%}); "
        f"{quality.get('active_codes', float('nan')):.1f} active codes per position; "
        f"stability across seeds {stable} (mean matched cosine)"
    )
