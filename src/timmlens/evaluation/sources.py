"""Where evaluation images come from: an image folder, a Dataset or a DataLoader.

Every source becomes a list-like of :class:`Sample` (id, image, label) so the
evaluator can shard it across ranks and resume by id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class Sample:
    """One image to evaluate.

    Attributes:
        id: stable identifier (relative path or dataset index), the resume key.
        image: anything ``prepare_images`` accepts.
        label: the true class, or ``None`` (then the prediction is explained).
    """

    id: str
    image: Any
    label: int | None


class ImageFolderSource(Sequence[Sample]):
    """Image files under ``root`` (recursively, sorted).

    Labels: a file in a sub-folder named by an integer (``root/281/cat.jpg``) gets that
    class index; other files get no label and are explained for their prediction.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Image folder '{self.root}' does not exist.")
        self.files = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.files:
            raise ValueError(
                f"No image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under '{self.root}'."
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        path = self.files[index]
        parent = path.parent.name
        label = int(parent) if path.parent != self.root and parent.isdigit() else None
        return Sample(path.relative_to(self.root).as_posix(), path, label)


class DatasetSource(Sequence[Sample]):
    """A map-style torch ``Dataset`` yielding ``image`` or ``(image, label)``."""

    def __init__(self, dataset: Dataset) -> None:
        if not hasattr(dataset, "__len__"):
            raise TypeError("evaluate needs a map-style Dataset with __len__ (or a folder).")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        item = self.dataset[index]
        image, label = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        if isinstance(label, torch.Tensor):
            label = int(label.item())
        return Sample(str(index), image, None if label is None else int(label))


def as_source(data: Any) -> Sequence[Sample]:
    """An image folder path, a ``Dataset`` or a ``DataLoader`` (its dataset) as samples."""
    if isinstance(data, (str, os.PathLike)):
        return ImageFolderSource(data)
    if isinstance(data, DataLoader):
        return DatasetSource(data.dataset)
    if isinstance(data, Dataset):
        return DatasetSource(data)
    raise TypeError(
        f"data must be an image folder path, a torch Dataset or a DataLoader, "
        f"got {type(data).__name__}."
    )


def batches(samples: Sequence[Sample], indices: Sequence[int], size: int) -> Iterator[list[Sample]]:
    for start in range(0, len(indices), size):
        yield [samples[i] for i in indices[start : start + size]]
