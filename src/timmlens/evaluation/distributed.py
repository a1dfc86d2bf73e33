"""torch.distributed: shards per rank, gathering on rank 0. A no-op in one process."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def init_from_environment() -> bool:
    """Join the process group ``torchrun`` describes (gloo on CPU, nccl on GPU).

    Returns whether this process is part of a group of more than one.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """Every ``world``-th index from ``rank``: each index on exactly one rank, no padding.

    (``DistributedSampler`` pads with repeats to equal lengths; an evaluation must not
    count an image twice.)
    """
    return list(indices[rank::world])


def gather_to_rank0(rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """All ranks' rows on rank 0 (``None`` elsewhere); the rows themselves in one process."""
    rank, world = rank_and_world()
    if world == 1:
        return rows
    gathered: list[list[dict[str, Any]] | None] | None = [None] * world if rank == 0 else None
    dist.gather_object(rows, gathered, dst=0)
    if rank != 0:
        return None
    return [row for part in gathered or [] for row in part or []]


def broadcast_from_rank0(value: Any) -> Any:
    rank, world = rank_and_world()
    if world == 1:
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
