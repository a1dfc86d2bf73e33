"""Pass 1 of [`fit_concepts`][timmlens.analysis.concepts.fit_concepts]: every batch still
missing through the model, its activations into a shard.

One no-grad forward per batch at the layer
([`layer_activations`][timmlens.analysis.activations.layer_activations]); each batch's
activations, logits and per-channel minimum become one shard
(`timmlens.analysis.concept_store`). Under ``torchrun`` rank ``r`` extracts every
``world``-th pending batch and rank 0 writes the shards it gathers, so the ranks need no
shared disk.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import LayerSpec
from ..data import data_config, picture_of, prepare_images
from ..evaluation.cost import ForwardCounter
from ..evaluation.distributed import fail_together, gather_to_rank0, rank_and_world
from ..evaluation.evaluator import _load_batch, _sample_id
from ..evaluation.sources import Sample
from .activations import layer_activations
from .concept_store import ShardStore
from .dff import check_finite, shift_nonnegative


def probe_layer(model: nn.Module, layer: LayerSpec) -> tuple[str, int, int, int]:
    """``(full name, C, h, w)`` of the layer's activations, from one blank image (no
    dataset image read)."""
    _, height, width = data_config(model)["input_size"]
    probe = torch.zeros(1, 3, height, width)
    tapped = layer_activations(model, prepare_images(probe, model).tensor, layer)
    _, channels, h, w = tapped.activations.shape
    return tapped.layer, int(channels), int(h), int(w)


def extraction_cost(
    count: int, pending_images: int, shape: tuple[int, int, int], dtype: str, shards: int
) -> str:
    """The line printed before the extraction: forwards to run, disk the shards will take
    (``shape`` ``(C, h, w)`` of one image's activations), shards the fit will read."""
    channels, h, w = shape
    size = count * channels * h * w * np.dtype(dtype).itemsize
    return (
        f"concepts: {count} images, {pending_images:,} to extract: {pending_images:,} forwards "
        f"(+1 probe); activations {channels}x{h}x{w} {dtype}, {size / 2**20:,.1f} MiB of "
        f"shards on disk; then the fit on rank 0 over {shards} shard{'s' * (shards != 1)}"
    )


def extract_batch(
    model: nn.Module,
    samples: Any,
    indices: list[int],
    layer: LayerSpec,
    dtype: str,
    on_error: str,
) -> dict[str, np.ndarray]:
    """One batch's shard arrays (see [`Shard`][timmlens.analysis.concept_store.Shard]):
    ``activations (N, C, h, w)`` in ``dtype``, ``logits (N, K)``, ``offset (C,)`` and the
    ids, indices and skipped images of the batch's ``N`` readable images."""
    good, inputs, unreadable, _ = _load_batch(model, samples, indices, on_error, "concepts")
    ids = [_sample_id(samples, i) for i in indices]
    position = {image_id: index for image_id, index in zip(ids, indices, strict=True)}
    arrays: dict[str, np.ndarray] = {
        "batch": np.asarray(indices, dtype=np.int64),
        "skipped_ids": np.asarray(list(unreadable), dtype=str),
        "skipped_reasons": np.asarray(list(unreadable.values()), dtype=str),
    }
    if inputs is None:  # nothing readable in this batch
        empty = np.zeros((0,), dtype=np.float32)
        return {
            **arrays,
            "activations": np.zeros((0, 0, 0, 0), dtype=dtype),
            "logits": np.zeros((0, 0), dtype=np.float32),
            "ids": np.asarray([], dtype=str),
            "indices": np.zeros((0,), dtype=np.int64),
            "offset": empty,
            "input_hw": np.zeros((2,), dtype=np.int64),
        }
    tapped = layer_activations(model, inputs, layer)
    check_finite(tapped.activations, tapped.layer)
    stored = tapped.activations.to(getattr(torch, dtype))
    # the offset of what is stored (float16 rounds), so stored - offset >= 0 holds exactly
    _, offset = shift_nonnegative(stored.float())
    logits = tapped.logits
    return {
        **arrays,
        "activations": stored.cpu().numpy(),
        "logits": (
            logits.float().cpu().numpy()
            if logits is not None
            else np.zeros((len(good), 0), dtype=np.float32)
        ),
        "ids": np.asarray([s.id for s in good], dtype=str),
        "indices": np.asarray([position[s.id] for s in good], dtype=np.int64),
        "offset": offset.cpu().numpy(),
        "input_hw": np.asarray(tapped.input_hw, dtype=np.int64),
    }


def _extract_rounds(
    model: nn.Module,
    samples: Any,
    store: ShardStore,
    pending: list[int],
    layer: LayerSpec,
    dtype: str,
    on_error: str,
    bar: Any,
) -> None:
    """Every pending batch through the model; rank 0 writes each round's shards."""
    rank, world = rank_and_world()
    rounds = math.ceil(len(pending) / world)
    for round_index in range(rounds):
        mine = pending[round_index * world : (round_index + 1) * world]
        payload: list[dict[str, Any]] = []
        with fail_together("extracting activations"):
            if rank < len(mine):
                batch = mine[rank]
                arrays = extract_batch(
                    model, samples, store.batch_indices(batch), layer, dtype, on_error
                )
                payload = [{"batch": batch, "arrays": arrays}]
        gathered = gather_to_rank0(payload)
        with fail_together("writing activation shards"):
            if gathered is not None:
                for item in gathered:
                    store.write(item["batch"], item["arrays"])
        done = min(len(pending), (round_index + 1) * world)
        bar.set_postfix_str(f"{done}/{len(pending)} shards")


def extract_shards(
    model: nn.Module,
    samples: Any,
    store: ShardStore,
    pending: list[int],
    layer: str,
    shape: tuple[int, int, int],
    dtype: str,
    on_error: str,
    show: bool,
) -> None:
    """Write the shards of the ``pending`` batches (every rank calls it; rank 0 writes).

    Args:
        shape: ``(C, h, w)`` of the layer's activations (for the cost line).
        show: print the cost and count the forwards with a bar (rank 0 with progress).
    """
    pending_images = sum(len(store.batch_indices(b)) for b in pending)
    if show:
        cost = extraction_cost(len(samples), pending_images, shape, dtype, store.n_batches)
        tqdm.write(cost, file=sys.stderr)
    bar = tqdm(total=pending_images, desc="extract", unit="fwd", disable=not show)
    with bar, ForwardCounter(model, bar.update):
        _extract_rounds(model, samples, store, pending, layer, dtype, on_error, bar)


def top_pictures(
    model: nn.Module,
    samples: Any,
    top_images: list[list[dict[str, Any]]],
    maps: list[list[np.ndarray]],
    sizes: list[list[tuple[int, int]]],
) -> list[list[dict[str, Any]]]:
    """Each top image's thumbnail, its geometry and the concept's map at input resolution."""
    from ..interpretation.cam.engine import upsample_maps
    from ..viz.concept_gallery import THUMBNAIL_SIDE
    from ..viz.report_html import display_picture

    cache: dict[int, Any] = {}
    out = []
    for images, low_maps, input_sizes in zip(top_images, maps, sizes, strict=True):
        row = []
        for item, low, size in zip(images, low_maps, input_sizes, strict=True):
            index = item["index"]
            if index not in cache:
                sample: Sample = samples[index]
                batch = prepare_images([sample.image], model)
                # thumbnails at once: memory grows with K * top_k, never with the photos' size
                cache[index] = display_picture(
                    picture_of(batch, 0, model), batch.geometries[0], THUMBNAIL_SIDE
                )
            picture, geometry = cache[index]
            full = upsample_maps(torch.from_numpy(low)[None], tuple(size))[0]
            row.append({"picture": picture, "geometry": geometry, "map": full})
        out.append(row)
    return out
