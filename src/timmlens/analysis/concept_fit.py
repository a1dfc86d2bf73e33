"""The NMF of [`fit_concepts`][timmlens.analysis.concepts.fit_concepts] over activation
shards, and the pass that ranks images and measures each concept's energy.

Both read one shard at a time (`timmlens.analysis.concept_store`), so memory follows the
batch size, never the number of images. `fit_shards` factorizes the first shard exactly as
[`factorize_activations`][timmlens.analysis.dff.factorize_activations] does (pytorch-grad-cam's
``dff``) and, with more shards, refines those concepts with scikit-learn's ``MiniBatchNMF``
(``partial_fit`` per shard, pixels as rows). `rank_shards` reads the shards once more.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .concept_store import Shard, ShardStore
from .dff import factorize_activations, sklearn_decomposition


@dataclass(frozen=True, eq=False)
class ShardFit:
    """NMF's components ``(K, C)`` in the shifted space, and a function giving a shard's
    loadings ``(n*h*w, K)``; a shard's rows are ``loadings @ components (+ bias)``, ``bias``
    ``(C,)`` being a dictionary's centre (NMF has none)."""

    components: np.ndarray
    loadings: Any
    description: str
    bias: np.ndarray | None = None


def fit_shards(
    store: ShardStore,
    batches: list[int],
    offset: np.ndarray,
    n_concepts: int,
    seed: int,
    epochs: int,
    layer: str,
    bar: Any,
) -> ShardFit:
    """The exact batch fit of the first shard, refined by MiniBatchNMF over all of them.

    Args:
        store: the run's shards.
        batches: the shards holding at least one image, in order.
        offset: ``(C,)`` the dataset's per-channel minimum (`ShardStore.offset`).
        n_concepts: ``K``.
        seed: NMF's ``random_state``, and the shard order of every pass.
        epochs: ``MiniBatchNMF`` passes over the shards (with more than one shard).
        layer: the layer's name, for messages.
        bar: a progress bar, advanced by one per shard read.
    """
    first = store.read(batches[0])
    factors = factorize_activations(
        torch.from_numpy(first.activations.astype(np.float32)), n_concepts, seed=seed, layer=layer
    )
    # The batch fit's concept vectors, expressed in the dataset's shifted space: they equal
    # ``basis.T`` when the first batch holds the dataset's minimum (one shard: always).
    shifted = factors.basis.T.numpy() + (factors.offset.numpy() - offset)[None, :]
    bar.update(1)
    if len(batches) == 1:

        def loadings_of_batch(_shard: Shard) -> np.ndarray:
            # (B, K, h, w) -> (B*h*w, K), rows in the order of Shard.rows
            return factors.loadings.permute(0, 2, 3, 1).reshape(-1, n_concepts).numpy()

        return ShardFit(np.ascontiguousarray(shifted), loadings_of_batch, "exact NMF (one batch)")

    decomposition = sklearn_decomposition()
    streaming = decomposition.MiniBatchNMF(
        n_components=n_concepts, init="custom", random_state=seed
    )
    start = np.ascontiguousarray(np.maximum(shifted, 0.0), dtype=np.float32)
    rng = np.random.default_rng(seed)
    started = False
    for _ in range(epochs):
        for batch in rng.permutation(batches).tolist():
            rows = store.read(batch).rows(offset)
            if not started:
                # W is only checked for shape on the first call; MiniBatchNMF solves it.
                ones = np.ones((rows.shape[0], n_concepts), dtype=np.float32)
                streaming.partial_fit(rows, W=ones, H=start)
                started = True
            else:
                streaming.partial_fit(rows)
            bar.update(1)
    description = (
        f"MiniBatchNMF, {epochs} pass{'es' * (epochs != 1)} over {len(batches)} shards, "
        f"started from the exact NMF of the first"
    )

    def loadings_of(shard: Shard) -> np.ndarray:
        return streaming.transform(shard.rows(offset))

    return ShardFit(streaming.components_.astype(np.float32), loadings_of, description)


# ----------------------------------------------------------------- pass 3: rank
def rank_shards(
    store: ShardStore,
    batches: list[int],
    offset: np.ndarray,
    fitted: ShardFit,
    top_k: int,
    names: Callable[[int], str],
    bar: Any,
) -> dict[str, Any]:
    """Energy shares, the fit's error and every concept's top images, one shard at a time.

    Args:
        store, batches, offset: as for `fit_shards`.
        fitted: what `fit_shards` returned.
        top_k: images kept per concept (a heap of that size each).
        names: class index -> class name, for the top images' predictions.
        bar: a progress bar, advanced by one per shard read.

    Returns:
        ``{"energy_share": [K floats], "relative_error": float, "top_images": per concept
        a list of ``{"id", "index", "score", "predicted", "predicted_name", "map" (h, w),
        "input_hw"}`` best first}``.
    """
    components = fitted.components
    k_count = components.shape[0]
    norms = np.linalg.norm(components.astype(np.float64), axis=1)
    energy = np.zeros(k_count)
    residual = total = 0.0
    heaps: list[list[tuple[float, int, dict[str, Any]]]] = [[] for _ in range(k_count)]
    for batch in batches:
        shard = store.read(batch)
        if shard.activations.shape[0] == 0:
            bar.update(1)
            continue
        n, _, height, width = shard.activations.shape
        rows = shard.rows(offset).astype(np.float64)
        loadings = np.asarray(fitted.loadings(shard), dtype=np.float64)
        reconstruction = loadings @ components
        if fitted.bias is not None:
            reconstruction += fitted.bias[None, :]
        residual += float(np.sum((rows - reconstruction) ** 2))
        total += float(np.sum(rows**2))
        energy += np.sum(loadings**2, axis=0) * norms**2
        per_image = loadings.reshape(n, height * width, k_count)
        # mean norm of the concept's term u_k w_k over the image's positions
        scores = per_image.mean(axis=1) * norms[None, :]
        maps = per_image.reshape(n, height, width, k_count)
        predicted = shard.logits.argmax(axis=1) if shard.logits.shape[1] else None
        for b in range(n):
            index = int(shard.indices[b])
            for k in range(k_count):
                entry = (float(scores[b, k]), -index)
                if len(heaps[k]) == top_k and entry <= heaps[k][0][:2]:
                    continue
                item = {
                    "id": str(shard.ids[b]),
                    "index": index,
                    "score": float(scores[b, k]),
                    "predicted": None if predicted is None else int(predicted[b]),
                    "map": maps[b, :, :, k].astype(np.float32).copy(),
                    "input_hw": tuple(int(v) for v in shard.input_hw),
                }
                record = (entry[0], entry[1], item)
                if len(heaps[k]) < top_k:
                    heapq.heappush(heaps[k], record)
                else:
                    heapq.heapreplace(heaps[k], record)
        bar.update(1)
    top_images = []
    for heap in heaps:
        ranked = [item for _, _, item in sorted(heap, key=lambda r: (r[0], r[1]), reverse=True)]
        for item in ranked:
            item["predicted_name"] = None if item["predicted"] is None else names(item["predicted"])
        top_images.append(ranked)
    share = energy / energy.sum() if energy.sum() > 0 else np.zeros(k_count)
    return {
        "energy_share": [float(v) for v in share],
        "relative_error": math.sqrt(residual / total) if total > 0 else 0.0,
        "top_images": top_images,
    }
