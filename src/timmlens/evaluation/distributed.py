"""torch.distributed: shards per rank, gathering on rank 0. A no-op in one process.

A rank that raises while the others wait in a collective would leave them waiting (until
the process group's timeout, or for ever when no launcher watches the ranks). So the
work between two collectives runs inside `fail_together`: on leaving it every rank
says whether it failed, and if one did, every rank raises (the failing one its own error,
the others a [`DistributedRunError`][timmlens.errors.DistributedRunError] with its message).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import DistributedRunError

#: Environment variable: seconds a collective may wait for the other ranks before the
#: process group gives up. A backstop for a rank that dies without reaching
#: `fail_together` (killed, out of memory); it must exceed the longest work between
#: two collectives (one batch per rank), hence the generous default.
TIMEOUT_ENV = "TIMMLENS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


def _timeout() -> timedelta:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(
            f"{TIMEOUT_ENV}={text!r} is not a positive number of seconds; unset it for the "
            f"default ({DEFAULT_TIMEOUT_S:.0f} s) or give e.g. {TIMEOUT_ENV}=600."
        )
    return timedelta(seconds=seconds)


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
    dist.init_process_group(backend=backend, timeout=_timeout())
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


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}"


def raise_if_any_rank_failed(error: BaseException | None, step: str = "") -> None:
    """Tell every rank whether this one failed; raise on every rank if any did.

    A collective: every rank must call it at the same point, with the exception it caught
    (or ``None``). In one process it only re-raises ``error``.

    Args:
        error: what this rank raised in the work just done, or ``None``.
        step: what the work was, for the message (``"predict"``).

    Raises:
        The rank's own ``error`` on a rank that failed; on the others a
        [`DistributedRunError`][] naming the first failing rank and its message.
    """
    rank, world = rank_and_world()
    if world > 1:
        statuses: list[str | None] = [None] * world
        dist.all_gather_object(statuses, None if error is None else _describe(error))
        failed = [(r, status) for r, status in enumerate(statuses) if status is not None]
        if failed and error is None:
            first, message = failed[0]
            others = [str(r) for r, _ in failed[1:]]
            also = f" (rank {', '.join(others)} failed too)" if others else ""
            during = f" during {step}" if step else ""
            raise DistributedRunError(
                f"rank {first} of {world} failed{during}, so rank {rank} stops too{also}: {message}"
            )
    if error is not None:
        raise error


@contextmanager
def fail_together(step: str = "") -> Iterator[None]:
    """Run the work between two collectives so that a failure on one rank stops them all.

    ``with fail_together("predict"): rows = work()`` then ``gather_to_rank0(rows)``: on
    leaving the block every rank reports to the others (one small ``all_gather``), so a
    rank that raised never leaves the others waiting in the next collective. Put no
    collective inside the block. In one process it does nothing.

    Raises:
        The rank's own error; on the ranks that did not fail, [`DistributedRunError`][].
    """
    try:
        yield
    except Exception as error:  # every rank must hear of it, whatever it is
        raise_if_any_rank_failed(error, step)
        raise  # pragma: no cover - raise_if_any_rank_failed re-raised it
    raise_if_any_rank_failed(None, step)
