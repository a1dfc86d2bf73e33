"""Where evaluation images come from: an image folder, a Dataset or a DataLoader.

Every source becomes a list-like of `Sample` (id, image, label) so the
evaluator can shard it across ranks and resume by id.

Folder labels come from the name of the folder that holds each image. Without a
`LabelResolver` only integer names are labels (``root/281/cat.jpg`` -> 281) and
any other name means "no label". With one (``label_resolver_for(model)`` of
`timmlens.models.introspect`, the one class-name matcher), folders may also be named by
class name: the user's ``class_names``, the model's own ``label_names``, or for
1000-class ImageNet models an ImageNet description, any of its comma-separated
synonyms, or its WordNet id; an unknown name is an error that lists the closest class
names. `source_for` is the one convention every command uses (``evaluate``,
``benchmark``, ``report``, ``concepts``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ImageInputError, LabelNameError
from ..models.introspect import LabelResolver, label_resolver_for

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
#: a class index as text; a sign is allowed so that "-1" reads as a (bad) index, not a name
_INTEGER = re.compile(r"^[+-]?[0-9]+$")


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

    Labels come from the name of the folder holding each file. Without ``labels`` a
    folder named by an integer (``root/281/cat.jpg``) gives that class index and other
    files get no label (they are explained for their prediction). With a
    `LabelResolver` every sub-folder must name a class (index, class name, synonym
    or WordNet id); files directly in ``root`` have no label. Either way every folder is
    checked here, before any image is read: folders named by an index out of range
    (``5000/`` for 1000 classes, ``-1/``) fail together in one message, then an unknown
    class name fails.

    Args:
        root: the image folder.
        labels: how folder names become classes (see `label_resolver_for`).
        num_classes: the model's class count, to check index folders against without
            ``labels`` (``None``: only negative indices are caught).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        labels: LabelResolver | None = None,
        num_classes: int | None = None,
    ) -> None:
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
        self.resolver = labels
        self.num_classes = labels.num_classes if labels is not None else num_classes
        folders = sorted({p.parent for p in self.files})
        self._check_index_folders(folders)
        self._folder_labels: dict[Path, int | None] = {}
        for folder in folders:
            self._folder_labels[folder] = self._folder_label(folder)

    def _check_index_folders(self, folders: list[Path]) -> None:
        """Every folder named by an out-of-range index, in one error, before any image."""
        limit = self.num_classes

        def out_of_range(name: str) -> bool:
            if not _INTEGER.match(name):
                return False
            return int(name) < 0 or (limit is not None and int(name) >= limit)

        bad = [
            folder.relative_to(self.root).as_posix()
            for folder in folders
            if folder != self.root and out_of_range(folder.name)
        ]
        if not bad:
            return
        shown = ", ".join(f"'{name}'" for name in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        valid = f"0..{limit - 1} (the model has {limit} classes)" if limit else "0 or more"
        raise LabelNameError(
            f"class folder{'s' if len(bad) > 1 else ''} {shown}{more} under '{self.root}': "
            f"index out of range; a folder named by a class index must be {valid}. Rename "
            f"or remove {'them' if len(bad) > 1 else 'it'}."
        )

    def _folder_label(self, folder: Path) -> int | None:
        if folder == self.root:
            return None
        if self.resolver is None:
            return int(folder.name) if _INTEGER.match(folder.name) else None
        where = f"folder '{folder.relative_to(self.root).as_posix()}'"
        return self.resolver.resolve(folder.name, where=where)

    @property
    def labels(self) -> list[int | None]:
        """The label of every file, in order (no image is read)."""
        return [self._folder_labels[p.parent] for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        path = self.files[index]
        label = self._folder_labels[path.parent]
        return Sample(path.relative_to(self.root).as_posix(), path, label)


class DatasetSource(Sequence[Sample]):
    """A map-style torch ``Dataset`` yielding ``image`` or ``(image, label)``.

    Labels may be ints, 0-d tensors or ``None``; with a `LabelResolver` also
    class names (strings).
    """

    def __init__(self, dataset: Dataset, labels: LabelResolver | None = None) -> None:
        if not hasattr(dataset, "__len__"):
            raise TypeError("evaluate needs a map-style Dataset with __len__ (or a folder).")
        self.dataset = dataset
        self.resolver = labels

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            # (image,) from TensorDataset(images); (image, label, ...) from labelled sets.
            image, label = item[0], (item[1] if len(item) > 1 else None)
        else:
            image, label = item, None
        if isinstance(label, torch.Tensor):
            label = int(label.item())
        if label is not None and self.resolver is not None:
            label = self.resolver.resolve(label, where=f"dataset item {index}")
        return Sample(str(index), image, None if label is None else int(label))


def as_source(
    data: Any, labels: LabelResolver | None = None, num_classes: int | None = None
) -> Sequence[Sample]:
    """An image folder path, a ``Dataset`` or a ``DataLoader`` (its dataset) as samples.

    Args:
        data: the images.
        labels: how class names become indices (folders named by class, string labels);
            ``None`` keeps integer labels only.
        num_classes: without ``labels``, the class count index folders are checked against.
    """
    if isinstance(data, (str, os.PathLike)):
        return ImageFolderSource(data, labels, num_classes)
    if isinstance(data, DataLoader):
        return DatasetSource(data.dataset, labels)
    if isinstance(data, Dataset):
        return DatasetSource(data, labels)
    raise TypeError(
        f"data must be an image folder path, a torch Dataset or a DataLoader, "
        f"got {type(data).__name__}."
    )


def describe_source(samples: Sequence[Sample]) -> str:
    """The images in a few words, for messages: ``'photos/'`` or ``the dataset (TensorDataset)``."""
    if isinstance(samples, ImageFolderSource):
        return f"'{samples.root}'"
    if isinstance(samples, DatasetSource):
        return f"the dataset ({type(samples.dataset).__name__})"
    return f"the images ({type(samples).__name__})"


def no_readable_images(samples: Sequence[Sample], skipped: dict[str, str]) -> ImageInputError:
    """The error of a run in which no image could be read: where, which files and why.

    One rule for every run over a dataset (``evaluate``, ``benchmark``, ``concepts``): an
    empty result from images that were all skipped is an error, not an empty table.

    Args:
        samples: the images of the run.
        skipped: the unreadable image ids -> reason, in order.
    """
    shown = list(skipped.items())[:5]
    listed = ", ".join([f"{shown[0][0]}: {shown[0][1]}", *(name for name, _ in shown[1:])])
    more = f", and {len(skipped) - len(shown)} more" if len(skipped) > len(shown) else ""
    return ImageInputError(
        f"no image of {describe_source(samples)} could be read: {len(skipped)} of "
        f"{len(samples)} skipped ({listed}{more}); a run needs at least one readable image: "
        f"fix or remove the broken files, or point to another folder."
    )


def source_for(data: Any, model: torch.nn.Module) -> Sequence[Sample]:
    """``data`` as samples labelled the one way every command reads them: folders (and
    dataset labels) named by class index, the model's class names (yours first), an
    ImageNet name or WordNet id (see `LabelResolver`); files directly in a folder's root
    have no label and are explained for their prediction."""
    return as_source(data, labels=label_resolver_for(model))


def count_labelled(samples: Sequence[Sample]) -> int:
    """How many samples carry a label (no image is read for a folder)."""
    if isinstance(samples, ImageFolderSource):
        return sum(label is not None for label in samples.labels)
    return sum(sample.label is not None for sample in samples)
