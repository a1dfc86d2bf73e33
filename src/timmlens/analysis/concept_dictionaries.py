"""Sparse dictionaries for [`fit_concepts`][timmlens.analysis.concepts.fit_concepts]:
sparse autoencoders and archetypal dictionaries over a layer's activation shards.

Every method but ``"nmf"`` is an ``overcomplete`` (MIT) model trained by overcomplete's
own ``train_sae`` loop; timmlens only streams the rows to it and reads the codes back:

=================  ==========================================  ==============================
method             overcomplete model                           loss (overcomplete.sae.losses)
=================  ==========================================  ==============================
``sae-topk``       ``TopKSAE`` (Gao et al. 2024)                ``top_k_auxiliary_loss``
``sae-batchtopk``  ``BatchTopKSAE`` (Bussmann et al. 2024)      ``top_k_auxiliary_loss``
``sae-jumprelu``   ``JumpSAE`` (Rajamanoharan et al. 2024)      `jump_l0_loss` (the paper's L0)
``archetypal``     ``RATopKSAE`` (Fel et al. 2025)              ``top_k_auxiliary_loss``
=================  ==========================================  ==============================

Rows are the layer's positions, shifted by the dataset's per-channel minimum as for NMF
(`ShardStore.offset`), so every method sees the same matrix ``X (N*h*w, C)``. The
minibatches (`ShardRows`) come from the shards in a seeded order, one shard in memory at
a time. Images whose dataset index is ``4 mod 5`` are held out of the training and give
the R^2 (`timmlens.analysis.concept_quality`).

**JumpReLU** follows the paper (Rajamanoharan et al. 2024), not overcomplete's defaults,
which do not train on this data (held-out R^2 -0.02 on the real Lite0, every code crushed):

* overcomplete's ``mse_l1`` adds ``penalty * sum |z|`` summed over the *whole minibatch*
  (``B x K`` codes) to an MSE averaged over its ``B x C`` entries, so at 1,024 rows its
  ``1e-3`` weighs about 1,000 times what it reads and zero codes win. `jump_l0_loss` is the
  paper's objective instead: the MSE plus ``JUMP_L0_PENALTY`` times the mean number of
  codes a row fires (L0, no shrinkage), trained through overcomplete's ``heaviside``
  pseudo-gradient on the thresholds.
* the thresholds start where the K budget is (`init_thresholds`: each code fires on
  ``sparsity / K`` of the sampled rows, ``sparsity`` defaulting to ``K // 10`` as for
  TopK) rather than at overcomplete's 0.05 for every code; they are stored as logs and
  Adam moves a log by about the learning rate per step, so in 1,000 steps they cannot
  travel from 0.05 to where the penalty balances (L0 stayed at 36 of 64 codes).
* the kernel bandwidth is ``JUMP_BANDWIDTH`` (0.05, not 1e-3): the rows have unit mean
  square, the codes are of order 1, and in a 1e-3 window around a threshold hardly any
  code of a minibatch falls, so the L0 gradient was almost always zero; the thresholds
  learn ``THRESHOLD_LR_FACTOR`` times faster than the weights, for the same reason.

``import overcomplete`` fails with matplotlib >= 3.9 (its ``visualization/cmaps.py`` calls
``matplotlib.cm.get_cmap``, removed there) and the package ``__init__`` imports it, so any
``overcomplete.*`` import runs it. `overcomplete_modules` puts ``get_cmap`` back on
``matplotlib.cm`` for the duration of that one import (under a lock) and removes it after,
so nothing outlives the import; overcomplete's colormaps are built then and never used here.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConceptInputError, OptionalDependencyError
from .concept_fit import ShardFit, fit_shards
from .concept_quality import held_out, matched_cosine, measure_fit, row_mask
from .concept_store import Shard, ShardStore

#: the dictionary methods (overcomplete); ``"nmf"`` is `concept_fit.fit_shards`
DICTIONARY_METHODS = ("sae-topk", "sae-batchtopk", "sae-jumprelu", "archetypal")
CONCEPT_METHODS = ("nmf", *DICTIONARY_METHODS)
#: rows per optimizer step, Adam's learning rate, the steps ``epochs=None`` aims at
BATCH_ROWS = 1024
LEARNING_RATE = 1e-3
TARGET_STEPS = 1000
#: overcomplete's default auxiliary top-k penalty
AUX_PENALTY = 0.1
#: JumpReLU (see the module notes): the L0 penalty (per code fired, in units of the mean
#: squared error per entry), the kernel bandwidth, the thresholds' learning-rate factor
JUMP_L0_PENALTY = 0.01
JUMP_BANDWIDTH = 0.05
THRESHOLD_LR_FACTOR = 10.0
#: archetypal candidates: a seeded sample of this many training rows (at least K)
ARCHETYPAL_CANDIDATES = 2048
#: training rows kept in memory between passes when they take at most this many bytes
CACHE_BYTES = 256 * 2**20

_IMPORT_LOCK = threading.Lock()


def overcomplete_modules() -> dict[str, Any]:
    """overcomplete's SAE classes, losses and training loop (the package imported once).

    Raises:
        OptionalDependencyError: overcomplete is not installed.
    """
    import sys

    with _IMPORT_LOCK:
        if sys.modules.get("overcomplete") is None:
            _import_with_cmap_shim()
        from overcomplete.sae import BatchTopKSAE, JumpSAE, RATopKSAE, TopKSAE, train_sae
        from overcomplete.sae.jump_sae import heaviside
        from overcomplete.sae.losses import top_k_auxiliary_loss
    return {
        "sae-topk": TopKSAE,
        "sae-batchtopk": BatchTopKSAE,
        "sae-jumprelu": JumpSAE,
        "archetypal": RATopKSAE,
        "train_sae": train_sae,
        "heaviside": heaviside,
        "top_k_auxiliary_loss": top_k_auxiliary_loss,
    }


def _import_with_cmap_shim() -> None:
    """``import overcomplete`` with ``matplotlib.cm.get_cmap`` present for that import only."""
    try:
        import matplotlib
        import matplotlib.cm as cm
    except ImportError:  # overcomplete imports matplotlib: its own error says so
        cm = None
    added = cm is not None and not hasattr(cm, "get_cmap")
    if added:
        cm.get_cmap = matplotlib.colormaps.get_cmap  # type: ignore[attr-defined]
    try:
        import overcomplete  # noqa: F401
    except ImportError as exc:
        raise OptionalDependencyError(
            "Sparse dictionaries (method='sae-topk', 'sae-batchtopk', 'sae-jumprelu', "
            "'archetypal') are trained by the overcomplete package, which is not installed. "
            'Install it with: pip install "timmlens[dictionaries]" (or: pip install overcomplete), '
            "or use method='nmf'."
        ) from exc
    finally:
        if added:
            del cm.get_cmap  # type: ignore[union-attr]


# ----------------------------------------------------------------- checks
def check_method(method: Any) -> str:
    """``method`` if it names a concept method, else a `ConceptInputError` listing them."""
    if method not in CONCEPT_METHODS:
        raise ConceptInputError(
            f"unknown concept method {method!r}; valid methods: {', '.join(CONCEPT_METHODS)}."
        )
    return str(method)


def resolve_sparsity(method: str, n_concepts: int, sparsity: int | None) -> int | None:
    """Codes kept per row for the top-k methods, and the codes per row JumpReLU's thresholds
    start at (`init_thresholds`; it then learns its own): default ``max(1, K // 10)``,
    overcomplete's; ``None`` for ``nmf``.

    Raises:
        ConceptInputError: ``sparsity`` outside ``1..n_concepts``, or given to NMF.
    """
    if method == "nmf":
        if sparsity is not None:
            raise ConceptInputError(
                f"sparsity={sparsity} applies to the sparse dictionaries (sae-topk, "
                f"sae-batchtopk, sae-jumprelu, archetypal); method 'nmf' has none. Leave "
                f"sparsity=None."
            )
        return None
    if sparsity is None:
        return max(1, n_concepts // 10)
    if (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, int)
        or not (1 <= sparsity <= n_concepts)
    ):
        raise ConceptInputError(
            f"sparsity={sparsity!r}: the codes kept per position must be an integer from 1 "
            f"to n_concepts={n_concepts}. Try sparsity={max(1, n_concepts // 10)}."
        )
    return sparsity


def check_dictionary_size(n_concepts: Any, rows: int, layer: str) -> None:
    """A dictionary may be overcomplete (``K`` above the channels) but needs as many rows
    (image positions) as atoms.

    Raises:
        ConceptInputError: ``n_concepts`` not an integer >= 1, or above ``rows``.
    """
    if isinstance(n_concepts, bool) or not isinstance(n_concepts, int) or n_concepts < 1:
        raise ConceptInputError(
            f"n_concepts must be an integer >= 1 (the number of dictionary atoms), got "
            f"{n_concepts!r}. Try n_concepts=64."
        )
    if n_concepts > rows:
        raise ConceptInputError(
            f"n_concepts={n_concepts} is more than the {rows} positions the dataset gives at "
            f"layer '{layer}' (images x height x width); a dictionary needs at least one "
            f"position per atom. Use n_concepts <= {rows}, or more images."
        )


# ----------------------------------------------------------------- streaming rows
class ShardRows:
    """Training minibatches ``(BATCH_ROWS, C)`` from the shards, reshuffled every pass.

    Re-iterable (overcomplete's ``train_sae`` iterates it once per epoch). Each pass visits
    the shards in a seeded order, shuffles the training rows of each and yields full
    minibatches; the rows left over at the end of a pass are dropped (at most
    ``batch_rows - 1``), because BatchTopK's threshold counts codes per minibatch and a short
    one would be denser.

    Args:
        store, batches, offset: the shards with images, and the dataset's minimum ``(C,)``.
        n_images: readable images (for `held_out`).
        seed: the shuffles' seed.
        device: where the minibatches go.
        batch_rows: rows per minibatch (cut to the training rows when fewer).
    """

    def __init__(
        self,
        store: ShardStore,
        batches: list[int],
        offset: np.ndarray,
        n_images: int,
        seed: int,
        device: torch.device,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self.store, self.batches, self.offset = store, batches, offset
        self.n_images, self.device = n_images, device
        self.rng = np.random.default_rng(seed)
        # counted from the indices alone: the activations are not read for it
        _, _, height, width = store.read(batches[0]).activations.shape
        self.train_rows = (
            height
            * width
            * sum(
                int(np.sum(~held_out(store.read_fields(b, "indices")["indices"], n_images)))
                for b in batches
            )
        )
        self.batch_rows = max(1, min(batch_rows, self.train_rows))
        #: rows are centred on ``mean`` ``(C,)`` and divided by ``scale`` before training
        #: (`fit_dictionary_shards` sets both)
        self.mean = np.zeros(offset.shape[0], dtype=np.float32)
        self.scale = 1.0
        # a small dataset is read once, not once per pass
        fits = self.train_rows * offset.shape[0] * 4 <= CACHE_BYTES
        self._cache: dict[int, np.ndarray] | None = {} if fits else None

    def training_rows(self, batch: int) -> np.ndarray:
        """``(n_train, C)`` float32, the rows of batch ``batch`` not held out (unscaled)."""
        if self._cache is not None and batch in self._cache:
            return self._cache[batch]
        shard = self.store.read(batch)
        keep = ~row_mask(shard, held_out(shard.indices, self.n_images))
        rows = shard.rows(self.offset)[keep]
        if self._cache is not None:
            self._cache[batch] = rows
        return rows

    def __len__(self) -> int:
        return self.train_rows // self.batch_rows

    def __iter__(self) -> Iterator[torch.Tensor]:
        pending = np.zeros((0, self.offset.shape[0]), dtype=np.float32)
        for batch in self.rng.permutation(self.batches).tolist():
            rows = self.training_rows(batch)
            pending = np.concatenate([pending, rows[self.rng.permutation(rows.shape[0])]])
            while pending.shape[0] >= self.batch_rows:
                block, pending = pending[: self.batch_rows], pending[self.batch_rows :]
                centred = (block - self.mean[None, :]) / self.scale
                yield torch.from_numpy(np.ascontiguousarray(centred)).to(self.device)

    def sample(self, count: int) -> torch.Tensor:
        """``(min(count, train_rows), C)`` training rows drawn uniformly without replacement
        (random keys, the ``count`` smallest kept shard by shard: one shard in memory)."""
        kept = np.zeros((0, self.offset.shape[0]), dtype=np.float32)
        keys = np.zeros((0,))
        for batch in self.batches:
            rows = self.training_rows(batch)
            keys = np.concatenate([keys, self.rng.random(rows.shape[0])])
            kept = np.concatenate([kept, rows])
            order = np.argsort(keys, kind="stable")[:count]
            keys, kept = keys[order], kept[order]
        return torch.from_numpy(np.ascontiguousarray(kept)).to(self.device)


# ----------------------------------------------------------------- training
def jump_l0_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    pre_codes: torch.Tensor,
    codes: torch.Tensor,
    dictionary: torch.Tensor,
    *,
    model: nn.Module,
    penalty: float = JUMP_L0_PENALTY,
) -> torch.Tensor:
    """JumpReLU's objective (Rajamanoharan et al. 2024, eq. 10), with overcomplete's loss
    signature: ``mean((x - x_hat)^2) + penalty * mean_rows(sum_k H(relu(pre_k) - theta_k))``.

    The L0 term counts the codes each row ``(B, C)`` fires; its gradient reaches only the
    thresholds ``theta = exp(model.thresholds)`` ``(K,)``, through overcomplete's
    ``heaviside`` pseudo-gradient (the model's kernel and bandwidth), as in the paper. The
    MSE is per entry (overcomplete's), so ``penalty`` is the error per entry one code must
    remove to be worth firing.
    """
    heaviside = overcomplete_modules()["heaviside"]
    thresholds = torch.exp(model.thresholds)
    fired = heaviside(torch.relu(pre_codes), thresholds, model.kernel_fn, model.bandwidth)
    return (x - x_hat).square().mean() + penalty * fired.sum(dim=1).mean()


def init_thresholds(model: nn.Module, points: torch.Tensor, sparsity: int) -> None:
    """Set a JumpSAE's thresholds so each code fires on ``sparsity / K`` of ``points``.

    ``theta_k`` is the ``m``-th largest ``relu(pre_code_k)`` over the ``(P, C)`` points,
    ``m = max(1, round(P * sparsity / K))`` (a zero quantile is raised to 1e-6, the
    thresholds being stored as logs), so training starts at the K budget of a top-k SAE
    with the same ``sparsity``.
    """
    count = points.shape[0]
    fired = max(1, min(count, round(count * sparsity / model.nb_concepts)))
    with torch.no_grad():
        pre_codes = torch.relu(model.encoder(points)[0])
        theta = pre_codes.kthvalue(count - fired + 1, dim=0).values.clamp_min(1e-6)
        model.thresholds.copy_(theta.log())


def build_dictionary(
    method: str,
    channels: int,
    n_concepts: int,
    sparsity: int | None,
    batch_rows: int,
    points: torch.Tensor | None,
    device: torch.device,
) -> tuple[nn.Module, Any]:
    """overcomplete's model for ``method`` and its loss ``(x, x_hat, pre, codes, D) -> loss``.

    BatchTopK keeps the ``sparsity * batch_rows`` largest codes of a minibatch (overcomplete
    counts its ``top_k`` over the whole batch), so on average ``sparsity`` per row.
    ``points`` ``(P, C)``: the archetypal candidates, and the rows JumpReLU's thresholds
    start from (`init_thresholds`).
    """
    from functools import partial

    oc = overcomplete_modules()
    aux = partial(oc["top_k_auxiliary_loss"], penalty=AUX_PENALTY)
    dev = str(device)
    if method == "sae-topk":
        return oc[method](channels, n_concepts, top_k=sparsity, device=dev), aux
    if method == "sae-batchtopk":
        model = oc[method](channels, n_concepts, top_k=int(sparsity or 1) * batch_rows, device=dev)
        return model, aux
    assert points is not None
    if method == "sae-jumprelu":
        model = oc[method](channels, n_concepts, bandwidth=JUMP_BANDWIDTH, device=dev)
        init_thresholds(model, points, int(sparsity or 1))
        return model, partial(jump_l0_loss, model=model, penalty=JUMP_L0_PENALTY)
    return oc[method](channels, n_concepts, points=points, top_k=sparsity, device=dev), aux


def train_dictionary(
    method: str,
    minibatches: Any,
    channels: int,
    n_concepts: int,
    sparsity: int | None,
    seed: int,
    epochs: int,
    device: torch.device,
    points: torch.Tensor | None = None,
) -> nn.Module:
    """Train ``method``'s overcomplete model on ``minibatches`` with overcomplete's
    ``train_sae`` (Adam, ``LEARNING_RATE``, gradient clipping 1.0, silent), seeded;
    JumpReLU's thresholds learn at ``THRESHOLD_LR_FACTOR`` times the rate.

    The global RNG is seeded inside ``torch.random.fork_rng``, so the caller's random state
    is left as found.

    Args:
        minibatches: re-iterable of ``(B, C)`` tensors on ``device`` (one pass per epoch).
        points: ``(P, C)`` rows: the archetypal candidates, JumpReLU's threshold sample
            (needed by those two).

    Returns:
        the trained model, in eval mode (its dictionary fused), on ``device``.
    """
    oc = overcomplete_modules()
    batch_rows = int(getattr(minibatches, "batch_rows", 0)) or int(next(iter(minibatches)).shape[0])
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model, loss = build_dictionary(
            method, channels, n_concepts, sparsity, batch_rows, points, device
        )
        optimizer = torch.optim.Adam(parameter_groups(model), lr=LEARNING_RATE)
        oc["train_sae"](
            model, minibatches, loss, optimizer, nb_epochs=epochs, monitoring=0, device=device
        )
    model.eval()
    return model


def parameter_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Adam's groups: JumpReLU's (log) thresholds at ``THRESHOLD_LR_FACTOR`` times the rate,
    every other parameter at ``LEARNING_RATE`` (one group for the other methods)."""
    named = dict(model.named_parameters())
    thresholds = named.pop("thresholds", None)
    groups: list[dict[str, Any]] = [{"params": list(named.values())}]
    if thresholds is not None:
        groups.append({"params": [thresholds], "lr": LEARNING_RATE * THRESHOLD_LR_FACTOR})
    return groups


def encode_rows(model: nn.Module, rows: np.ndarray, device: torch.device) -> np.ndarray:
    """``(n, K)`` float32 codes of ``rows`` ``(n, C)`` (eval mode, no gradient)."""
    with torch.no_grad():
        _, codes = model.encode(torch.from_numpy(np.ascontiguousarray(rows)).to(device))
    return codes.float().cpu().numpy()


@dataclass(frozen=True, eq=False)
class DictionaryFit(ShardFit):
    """A `ShardFit` whose loadings are an overcomplete model's codes.

    ``model`` (eval mode) encodes rows centred on ``bias`` and divided by ``scale``; its
    codes times ``scale`` are the loadings, so ``loadings @ components + bias`` reconstructs
    the shifted rows."""

    model: nn.Module | None = None
    scale: float = 1.0


def auto_epochs(train_rows: int, batch_rows: int) -> int:
    """Passes giving about ``TARGET_STEPS`` optimizer steps (at least 1)."""
    steps_per_pass = max(1, train_rows // max(1, batch_rows))
    return max(1, math.ceil(TARGET_STEPS / steps_per_pass))


def fit_dictionary_shards(
    store: ShardStore,
    batches: list[int],
    offset: np.ndarray,
    n_images: int,
    method: str,
    n_concepts: int,
    sparsity: int | None,
    seed: int,
    epochs: int | None,
    device: torch.device,
) -> DictionaryFit:
    """Train ``method`` over the shards' training rows; the fit `rank_shards` reads.

    Args:
        epochs: passes over the training rows; ``None``: `auto_epochs`.

    Raises:
        ConceptInputError: fewer training rows than ``n_concepts``.
    """
    rows = ShardRows(store, batches, offset, n_images, seed, device)
    check_dictionary_size(n_concepts, rows.train_rows, "the layer (training rows)")
    passes = epochs if epochs is not None else auto_epochs(rows.train_rows, rows.batch_rows)
    points = rows.sample(max(n_concepts, ARCHETYPAL_CANDIDATES))
    # overcomplete's SAEs have no decoder bias: without centring, codes must rebuild the
    # rows' mean and a few top-k codes cannot (most die). One scalar then brings the rows to
    # a mean squared entry of 1, the scale overcomplete's defaults assume (its learning
    # rate; JumpReLU's bandwidth and L0 penalty here); R^2 and atoms do not change with it.
    mean = points.mean(dim=0)
    rows.mean = mean.cpu().numpy().astype(np.float32)
    rows.scale = float(torch.sqrt((points - mean).square().mean()).clamp_min(1e-12))
    points = (points - mean) / rows.scale
    model = train_dictionary(
        method,
        rows,
        offset.shape[0],
        n_concepts,
        sparsity,
        seed,
        passes,
        device,
        points if method in ("archetypal", "sae-jumprelu") else None,
    )
    components = model.get_dictionary().detach().float().cpu().numpy()
    centre, scale = rows.mean, rows.scale
    # the centring travels with the model (and its saved state_dict), for new images
    model.register_buffer("timmlens_row_mean", torch.from_numpy(centre).to(device))
    model.register_buffer("timmlens_row_scale", torch.tensor(scale, device=device))

    def loadings_of(shard: Shard) -> np.ndarray:
        # codes in activation units, so codes @ components reconstructs the shifted rows
        return encode_rows(model, (shard.rows(offset) - centre) / scale, device) * scale

    steps = passes * len(rows)
    description = (
        f"overcomplete {type(model).__name__}, {passes} pass{'es' * (passes != 1)} "
        f"({steps} steps of {rows.batch_rows} rows) over {rows.train_rows} training rows"
    )
    return DictionaryFit(
        np.ascontiguousarray(components), loadings_of, description, centre, model, scale
    )


# ----------------------------------------------------------------- any method, with quality
#: NMF's passes over the shards when ``epochs=None``
NMF_EPOCHS = 3


def fit_steps(method: str, epochs: int | None, n_batches: int, stability: bool) -> int:
    """Progress-bar units of `fit_with_quality` (shard reads for NMF, one per trained
    dictionary), plus one for the quality pass."""
    passes = (epochs or NMF_EPOCHS) if method == "nmf" and n_batches > 1 else 0
    one = 1 + passes * n_batches
    return one * (2 if stability else 1) + 1


def fit_with_quality(
    store: ShardStore,
    batches: list[int],
    offset: np.ndarray,
    n_images: int,
    options: dict[str, Any],
    device: torch.device,
    bar: Any,
) -> tuple[ShardFit, dict[str, Any]]:
    """Fit ``options["method"]`` (default ``"nmf"``) and measure its quality figures.

    Args:
        options: the run's options: ``layer``, ``n_concepts``, ``seed``, ``epochs`` and,
            for dictionaries, ``method``, ``sparsity``, ``stability``.
        device: where a dictionary trains (the model's device).

    Returns:
        ``(fit, quality)``: the fit of ``seed``, and `measure_fit`'s figures plus
        ``"stability"`` (mean matched cosine to the fit of ``seed + 1``, or ``None`` when
        not asked) and ``"in_sample"`` (NMF is fitted on every image, held-out ones too).
    """
    method = options.get("method", "nmf")
    k_count, epochs, layer = options["n_concepts"], options["epochs"], options["layer"]

    def fit(seed: int) -> ShardFit:
        if method == "nmf":
            return fit_shards(
                store, batches, offset, k_count, seed, epochs or NMF_EPOCHS, layer, bar
            )
        fitted = fit_dictionary_shards(
            store, batches, offset, n_images, method, k_count,
            options.get("sparsity"), seed, epochs, device,
        )  # fmt: skip
        bar.update(1)
        return fitted

    fitted = fit(options["seed"])
    quality: dict[str, Any] = {"method": method, "in_sample": method == "nmf"}
    quality.update(measure_fit(store, batches, offset, fitted, n_images))
    bar.update(1)
    quality["stability"] = None
    if options.get("stability", method != "nmf"):
        other = fit(options["seed"] + 1)
        mean, _, cosines = matched_cosine(fitted.components, other.components)
        quality["stability"] = mean
        quality["stability_min"] = float(cosines.min())
        quality["stability_seeds"] = [options["seed"], options["seed"] + 1]
    return fitted, quality
