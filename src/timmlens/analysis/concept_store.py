"""Activation shards on disk: the resume unit of
[`fit_concepts`][timmlens.analysis.concepts.fit_concepts].

Batch ``j`` of a dataset (its images ``j*batch_size .. (j+1)*batch_size - 1``) becomes one
file, ``<out>/shards/<j>.npz``: the layer's activations ``(n, C, h, w)`` of its readable
images, their logits, ids and dataset indices, the images that could not be read, and the
batch's per-channel minimum (the offset `shift_nonnegative` would subtract). A shard is
named by its batch, not by the rank that computed it, so a run resumes with any number
of ranks.

A shard is written to a temporary file and renamed, so a kill leaves the old file or the
new one. A file cut or damaged some other way (a full disk, a copy stopped half-way) fails
the zip checksums of `ShardStore.valid`, and is computed again.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._warnings import warn_caller

SHARDS_DIR = "shards"
#: the dtypes a shard may store activations in (float16 halves the disk, rounds to ~1e-3)
SHARD_DTYPES = ("float32", "float16")


@dataclass(frozen=True, eq=False)
class Shard:
    """One batch's activations, as read back from disk (numpy arrays, on the CPU).

    Attributes:
        activations: ``(n, C, h, w)`` the layer's output for the readable images.
        logits: ``(n, num_classes)`` float32 from the same forward (``(n, 0)`` headless).
        ids: ``(n,)`` the readable images' ids (folder-relative path or dataset index).
        indices: ``(n,)`` their positions in the dataset.
        offset: ``(C,)`` the per-channel minimum over this batch (``shift_nonnegative``).
        batch: ``(m,)`` every dataset position of the batch, readable or not.
        skipped_ids, skipped_reasons: the images that could not be read, and why.
        input_hw: ``(H, W)`` of the model input.
    """

    activations: np.ndarray
    logits: np.ndarray
    ids: np.ndarray
    indices: np.ndarray
    offset: np.ndarray
    batch: np.ndarray
    skipped_ids: np.ndarray
    skipped_reasons: np.ndarray
    input_hw: np.ndarray

    def rows(self, offset: np.ndarray) -> np.ndarray:
        """The shifted activations as NMF rows: ``(n*h*w, C)`` float32, one row per position.

        Row ``b*h*w + i*w + j`` is position ``(i, j)`` of image ``b``; ``offset`` ``(C,)`` is
        subtracted (the dataset's per-channel minimum, so every entry is >= 0).
        """
        channels = self.activations.shape[1]
        rows = self.activations.astype(np.float32).transpose(0, 2, 3, 1).reshape(-1, channels)
        return np.maximum(rows - offset[None, :].astype(np.float32), 0.0)


class ShardStore:
    """The shards of one output folder: where they go, which are done, reading and writing.

    Args:
        out_dir: the run's output folder (shards go in ``out_dir/shards``).
        batch_size: images per shard (part of the run identity: shards depend on it).
        count: images in the dataset.
    """

    def __init__(self, out_dir: Path, batch_size: int, count: int) -> None:
        self.dir = Path(out_dir) / SHARDS_DIR
        self.batch_size = batch_size
        self.count = count

    @property
    def n_batches(self) -> int:
        return -(-self.count // self.batch_size)

    def batch_indices(self, batch: int) -> list[int]:
        """Dataset positions of batch ``batch``."""
        start = batch * self.batch_size
        return list(range(start, min(start + self.batch_size, self.count)))

    def path(self, batch: int) -> Path:
        return self.dir / f"{batch:06d}.npz"

    def holds_any(self) -> bool:
        return self.dir.is_dir() and any(self.dir.glob("*.npz"))

    def discard(self) -> None:
        """Remove every shard (and temporary file) of this folder."""
        if self.dir.is_dir():
            for path in [*self.dir.glob("*.npz"), *self.dir.glob("*.tmp")]:
                path.unlink(missing_ok=True)

    def valid(self, batch: int) -> bool:
        """Whether batch ``batch``'s shard exists, is whole (zip checksums) and is of this batch.

        A damaged file is removed with a warning, so it is computed again.
        """
        path = self.path(batch)
        if not path.is_file():
            return False
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            if damaged is None:
                with np.load(path, allow_pickle=False) as data:
                    positions = data["batch"].tolist()
                if positions == self.batch_indices(batch):
                    return True
                damaged = f"other images ({len(positions)} positions from another batch size)"
        except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
            damaged = f"{type(exc).__name__}: {exc}"
        warn_caller(
            f"concepts: activation shard '{path}' is damaged ({damaged}); computing it again",
            RuntimeWarning,
        )
        path.unlink(missing_ok=True)
        return False

    def pending(self) -> list[int]:
        """Batches whose shard is missing or damaged, in order (leftover temp files removed)."""
        if self.dir.is_dir():
            for path in self.dir.glob("*.tmp"):
                path.unlink(missing_ok=True)
        return [batch for batch in range(self.n_batches) if not self.valid(batch)]

    def write(self, batch: int, arrays: dict[str, np.ndarray]) -> Path:
        """Write batch ``batch``'s arrays (the fields of [`Shard`][]) atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(batch)
        temporary = path.with_suffix(".npz.tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(temporary, path)
        return path

    def read(self, batch: int) -> Shard:
        with np.load(self.path(batch), allow_pickle=False) as data:
            return Shard(**{name: data[name] for name in Shard.__dataclass_fields__})

    def read_fields(self, batch: int, *names: str) -> dict[str, np.ndarray]:
        """Only ``names`` of batch ``batch``'s shard (an ``.npz`` member is read on access)."""
        with np.load(self.path(batch), allow_pickle=False) as data:
            return {name: data[name] for name in names}

    def offset(self) -> np.ndarray:
        """``(C,)`` the dataset's per-channel minimum: the minimum of the shards' minima, so
        the same offset `shift_nonnegative` takes over all activations at once."""
        result = None
        for batch in range(self.n_batches):
            offset = self.read_fields(batch, "offset")["offset"]
            if offset.size == 0:  # a batch with no readable image
                continue
            result = offset if result is None else np.minimum(result, offset)
        if result is None:
            raise ValueError("no image of the dataset could be read; nothing to factorize.")
        return result.astype(np.float32)
