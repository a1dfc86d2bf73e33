"""Explanations on disk: ``.npz`` arrays plus JSON metadata, never pickle.

One file holds the heatmap(s) (``float32``, model-input coordinates), the class
probabilities, optionally the original photo (``uint8``), and a JSON document (stored in
the archive as UTF-8 bytes) with what made them: the model (spec, whether its weights
are pretrained), the method and layer, the target and predicted classes, the geometry
that maps the heatmap onto the photo, and the timmlens version. ``np.load`` reads it
with ``allow_pickle=False``; [`load_explanation`][] reads it as an untrusted file (no
pickle, every array's declared shape and size checked before it is read).

``result.save(path)`` on a [`ExplanationResult`][timmlens.quick.ExplanationResult],
[`MethodComparison`][timmlens.quick.MethodComparison] or
[`Explanation`][timmlens.interpretation.base.Explanation] writes such a file.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import ImageGeometry
from .errors import ExplanationFileError, OutputPathError

FORMAT = "timmlens.explanation"
FORMAT_VERSION = 1
SUFFIX = ".npz"
_METADATA = "metadata_json"
_IMAGE = "image"
_PROBABILITIES = "probabilities"
_HEATMAP = "heatmap_{}"
_HEATMAP_NAME = re.compile(r"heatmap_\d+")

__all__ = ["SavedExplanation", "load_explanation", "save_explanation"]


def explanation_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``.npz`` added when it has no suffix; another suffix is refused."""
    path = Path(path)
    if not path.suffix:
        return path.with_name(f"{path.name}{SUFFIX}")
    if path.suffix.lower() != SUFFIX:
        raise OutputPathError(
            f"explanations are saved as {SUFFIX} (arrays + JSON metadata); '{path}' has "
            f"'{path.suffix}'. Give a path ending in {SUFFIX}, or none ({SUFFIX} is added); "
            f"for a figure use save_figure(path)."
        )
    return path


def geometry_json(geometry: ImageGeometry | None) -> dict[str, list[int]] | None:
    if geometry is None:
        return None
    return {
        "original_size": list(geometry.original_size),
        "resized_size": list(geometry.resized_size),
        "crop_box": list(geometry.crop_box),
    }


def geometry_from_json(data: Mapping[str, Any] | None) -> ImageGeometry | None:
    if data is None:
        return None
    return ImageGeometry(
        tuple(data["original_size"]), tuple(data["resized_size"]), tuple(data["crop_box"])
    )


def _array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def save_explanation(
    path: str | os.PathLike[str],
    heatmaps: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    probabilities: Any | None = None,
    image: Any | None = None,
) -> Path:
    """Write heatmaps and metadata to one ``.npz`` file (atomically); returns its path.

    Args:
        path: the file (``.npz`` added when it has no suffix).
        heatmaps: name (usually the method) -> ``(H, W)`` or ``(B, H, W)`` heatmap.
        metadata: JSON-able facts about them (model, method, classes, geometry, ...);
            the format, its version and the timmlens version are added.
        probabilities: ``(K,)`` or ``(B, K)`` class probabilities.
        image: the original photo (anything ``timmlens.viz.picture_array`` accepts),
            stored as ``uint8`` so the loaded explanation can be drawn again.
    """
    from ._version import __version__

    path = explanation_path(path)
    if not heatmaps:
        raise ValueError("nothing to save: no heatmaps.")
    names = list(heatmaps)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "timmlens_version": __version__,
        **dict(metadata),
        "heatmaps": names,
        "heatmap_coordinates": "model input (H, W); geometry maps them onto the photo",
    }
    arrays: dict[str, np.ndarray] = {
        _HEATMAP.format(i): _array(heatmaps[name]) for i, name in enumerate(names)
    }
    if probabilities is not None:
        arrays[_PROBABILITIES] = _array(probabilities)
    if image is not None:
        from .viz.arrays import picture_array

        arrays[_IMAGE] = picture_array(image)
    text = json.dumps(document, allow_nan=False, default=_json_default)
    arrays[_METADATA] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a killed run never leaves half a file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez_compressed(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")


@dataclass
class SavedExplanation:
    """An explanation read back by [`load_explanation`][].

    Attributes:
        heatmaps: name -> heatmap tensor, as saved (``(H, W)`` or ``(B, H, W)``, float32).
        metadata: the JSON document (model, weights, method, layer, classes, geometry,
            timmlens version, ...).
        probabilities: the class probabilities, if saved.
        image: the original photo ``(H0, W0, 3)`` uint8, if saved.
        path: the file it was read from.
    """

    heatmaps: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, Any] = field(repr=False)
    probabilities: torch.Tensor | None = field(default=None, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)
    path: Path | None = None

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.heatmaps.items())
        note = f" [{self.weights_note}]" if self.weights_note else ""
        return (
            f"SavedExplanation({self.model}{note}, "
            f"{self.metadata.get('heading') or self.target_name or self.target_class}, "
            f"heatmaps {{{shapes}}}, path={str(self.path)!r})"
        )

    @property
    def heatmap(self) -> torch.Tensor:
        """The first (for most files: the only) heatmap."""
        return next(iter(self.heatmaps.values()))

    @property
    def method(self) -> str | None:
        return self.metadata.get("method")

    @property
    def layer(self) -> str | None:
        return self.metadata.get("layer")

    @property
    def target_class(self) -> Any:
        """The explained class (a list for a batch)."""
        return self.metadata.get("target_class")

    @property
    def target_name(self) -> Any:
        return self.metadata.get("target_name")

    @property
    def predicted_class(self) -> Any:
        return self.metadata.get("predicted_class")

    @property
    def model(self) -> str | None:
        return (self.metadata.get("model") or {}).get("name")

    @property
    def weights_note(self) -> str | None:
        """``"random weights"`` / ``"untrained N-class head"`` / ``None`` (trained)."""
        return ((self.metadata.get("model") or {}).get("weights") or {}).get("note")

    @property
    def geometry(self) -> ImageGeometry | list[ImageGeometry | None] | None:
        """How the photo became the model input (a list for a batch)."""
        data = self.metadata.get("geometry")
        if isinstance(data, list):
            return [geometry_from_json(g) for g in data]
        return geometry_from_json(data)

    def figure(self, **options: Any) -> Any:
        """The overlay figure again (photo needed: saved with ``image``), or the bare map."""
        from .viz.labels import explanation_title
        from .viz.static import plot_overlay

        heading = self.metadata.get("heading") or self.target_name
        heading = heading if isinstance(heading, str) else None
        method = self.metadata.get("title") or self.method
        title = explanation_title(heading, None, method, self.weights_note)
        heatmap = self.heatmap if self.heatmap.ndim == 2 else self.heatmap[0]
        if self.image is None or isinstance(self.geometry, list):
            picture = np.zeros((*heatmap.shape, 3), dtype=np.uint8)
            return plot_overlay(picture, heatmap, title=title, show_original=False, **options)
        return plot_overlay(self.image, heatmap, self.geometry, title=title, **options)

    def _repr_png_(self) -> bytes:
        return figure_png(self.figure())


def figure_png(figure: Any, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (for notebooks' ``_repr_png_``)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


class FigureDisplay:
    """Mixin for a result whose notebook display is its ``figure()``: drawn once, since a
    notebook asks for both the PNG and the HTML display (``_repr_html_`` reads
    ``_figure_png`` too)."""

    @cached_property
    def _figure_png(self) -> bytes:
        return figure_png(self.figure())  # type: ignore[attr-defined]

    def _repr_png_(self) -> bytes:
        return self._figure_png


MAX_BYTES = 256 * 2**20
"""Default limit (256 MiB) on the bytes that a saved explanation's arrays declare together:
64 Mi float32 values, e.g. 1,300 heatmaps of 224x224 or a 48-megapixel photo with its map.
[`load_explanation`][] checks it from the arrays' headers before reading any array."""

_GEOMETRY_SIZES = {"original_size": 2, "resized_size": 2, "crop_box": 4}


def _is_member(name: str) -> bool:
    """Whether an archive member is one this format defines (others are never read)."""
    return name in (_METADATA, _IMAGE, _PROBABILITIES) or _HEATMAP_NAME.fullmatch(name) is not None


def _check_array(name: str, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """What is wrong with a member's declared shape and dtype, or ``None``."""
    if name == _METADATA:
        expected, dims = np.dtype(np.uint8), (1,)
        layout = "(N,) UTF-8 bytes"
    elif name == _IMAGE:
        expected, dims = np.dtype(np.uint8), (3,)
        layout = "(H0, W0, 3) photo"
        if len(shape) == 3 and shape[-1] != 3:
            return f"has shape {shape}; expected a {layout} of {expected}"
    elif name == _PROBABILITIES:
        expected, dims, layout = np.dtype(np.float32), (1, 2), "(K,) or (B, K)"
    else:
        expected, dims, layout = np.dtype(np.float32), (2, 3), "(H, W) or (B, H, W)"
    if dtype != expected or len(shape) not in dims:
        return f"has shape {shape} and dtype {dtype}; expected {layout} {expected}"
    return None


def _damaged(path: Path, problem: str) -> ExplanationFileError:
    return ExplanationFileError(
        f"'{path}' is not a readable saved explanation: {problem}. Expected an .npz file "
        f"written by result.save(path); if it was, it has been damaged since (cut short, "
        f"edited): save the explanation again."
    )


def _read_document(path: Path, data: np.ndarray) -> dict[str, Any]:
    try:
        document = json.loads(data.tobytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"its metadata is not UTF-8 text ({exc})") from exc
    except (ValueError, RecursionError) as exc:
        raise _damaged(path, f"its metadata is not JSON ({exc})") from exc
    if not isinstance(document, dict):
        kind = {list: "list", str: "string"}.get(type(document), type(document).__name__)
        raise _damaged(path, f"its metadata is a JSON {kind}, expected a JSON object")
    if document.get("format") != FORMAT:
        raise ExplanationFileError(
            f"'{path}' holds {_short(document.get('format'))}, not {FORMAT}: its metadata has no "
            f"'format': '{FORMAT}'. Expected a file written by result.save(path)."
        )
    version = document.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise _damaged(path, f"its 'format_version' is {_short(version)}, expected an integer")
    if version > FORMAT_VERSION:
        raise ExplanationFileError(
            f"'{path}' was written in format {version} by timmlens "
            f"{document.get('timmlens_version')}; this timmlens reads up to {FORMAT_VERSION}: "
            f"upgrade timmlens."
        )
    problem = _metadata_problem(document)
    if problem:
        raise _damaged(path, problem)
    return document


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut: a tampered field can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def _metadata_problem(document: Mapping[str, Any]) -> str | None:
    """What is wrong with the fields [`SavedExplanation`][] reads, or ``None``."""
    names = document.get("heatmaps")
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) for n in names)
        or len(set(names)) != len(names)
    ):
        return f"its 'heatmaps' is {_short(names)}, expected a non-empty list of distinct names"
    model = document.get("model")
    if not (model is None or _is_model(model)):
        return f"its 'model' is {_short(model)}, expected {{'name': str, 'weights': {{...}}}}"
    for key in ("method", "layer", "title"):
        if not isinstance(document.get(key), str | None):
            return f"its '{key}' is {_short(document[key])}, expected a string"
    geometry = document.get("geometry")
    parts = geometry if isinstance(geometry, list) else [geometry]
    if not all(part is None or _is_geometry(part) for part in parts):
        return (
            f"its 'geometry' is {_short(geometry)}, expected {{'original_size': [H0, W0], "
            f"'resized_size': [H, W], 'crop_box': [top, left, height, width]}} (or a list)"
        )
    return None


def _is_model(data: Any) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str | None):
        return False
    weights = data.get("weights")
    if weights is None:
        return True
    return isinstance(weights, dict) and isinstance(weights.get("note"), str | None)


def _is_geometry(data: Any) -> bool:
    return isinstance(data, dict) and all(
        isinstance(data.get(key), list)
        and len(data[key]) == size
        and all(isinstance(v, int) and not isinstance(v, bool) for v in data[key])
        for key, size in _GEOMETRY_SIZES.items()
    )


def load_explanation(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES
) -> SavedExplanation:
    """Read an explanation written by ``result.save(path)`` (no pickle is ever loaded).

    The file is treated as untrusted: each array's shape and dtype are read from its
    ``.npy`` header and checked before the array is read, and so is their total size.

    Args:
        path: the ``.npz`` file.
        max_bytes: refuse a file whose arrays declare more bytes than this, together
            (default ``timmlens.saving.MAX_BYTES``, 256 MiB), so that a small
            file cannot expand into gigabytes; raise it for a larger file you trust.

    Raises:
        FileNotFoundError: no such file.
        ExplanationFileError: the file is not a saved timmlens explanation (not a zip
            archive, cut short, tampered metadata, arrays of the wrong shape or dtype, a
            pickle), its arrays declare more than ``max_bytes``, or it is of a newer format
            than this timmlens reads. The file is closed in every case.
    """
    from ._npz_reader import ArchiveError, read_npz

    path = Path(path)
    if path.is_dir():
        raise ExplanationFileError(
            f"'{path}' is a folder; give one .npz file written by result.save(path) "
            f"(evaluate(save_maps=True) writes them under <out>/maps/<method>/)."
        )
    if not path.is_file():
        raise FileNotFoundError(f"no saved explanation at '{path}'.")
    try:
        arrays = read_npz(path, _is_member, _check_array, max_bytes)
    except ArchiveError as exc:
        if exc.too_large:
            raise ExplanationFileError(
                f"'{path}' is refused before reading: {exc} (max_bytes). A saved explanation "
                f"of a few images is far smaller; if you trust this file, pass "
                f"load_explanation(path, max_bytes=...) with a larger limit."
            ) from exc
        raise _damaged(path, str(exc)) from exc
    if _METADATA not in arrays:
        raise ExplanationFileError(
            f"'{path}' is an .npz archive without timmlens metadata; expected a file written "
            f"by result.save(path)."
        )
    metadata = _read_document(path, arrays.pop(_METADATA))
    missing = [_HEATMAP.format(i) for i in range(len(metadata["heatmaps"]))]
    missing = [name for name in missing if name not in arrays]
    if missing:
        raise _damaged(
            path,
            f"its metadata names {len(metadata['heatmaps'])} heatmap(s) but "
            f"{', '.join(missing)} is missing",
        )
    heatmaps = {
        name: torch.from_numpy(arrays[_HEATMAP.format(i)])
        for i, name in enumerate(metadata["heatmaps"])
    }
    probabilities = arrays.get(_PROBABILITIES)
    return SavedExplanation(
        heatmaps=heatmaps,
        metadata=metadata,
        probabilities=None if probabilities is None else torch.from_numpy(probabilities),
        image=arrays.get(_IMAGE),
        path=path,
    )


def save_batch_explanation(
    path: str | os.PathLike[str],
    heatmap: torch.Tensor,
    targets: torch.Tensor | None,
    logits: torch.Tensor | None,
    context: Mapping[str, Any],
) -> Path:
    """Write a batch's maps and what made them (what ``Explanation.save`` hands down).

    Args:
        path: the file (``.npz`` added when it has no suffix).
        heatmap: ``(B, H, W)`` maps.
        targets: ``(B,)`` explained classes, or ``None``.
        logits: ``(B, K)`` logits (saved as probabilities), or ``None``.
        context: JSON-able facts (method, layer, model), and optionally ``"geometries"``:
            one ``ImageGeometry`` (or ``None``) per image.
    """
    context = dict(context)
    geometries = context.pop("geometries", None)
    target_list = None if targets is None else targets.tolist()
    probabilities = None
    metadata: dict[str, Any] = {"kind": "explanation", **context, "target_class": target_list}
    if logits is not None:
        probabilities = logits.detach().float().softmax(-1).cpu()
        metadata["predicted_class"] = probabilities.argmax(-1).tolist()
        if target_list is not None:
            rows = torch.arange(len(target_list))
            metadata["target_probability"] = probabilities[rows, target_list].tolist()
    if geometries is not None:
        metadata["geometry"] = [geometry_json(g) for g in geometries]
    name = context.get("method") or "heatmap"
    return save_explanation(path, {name: heatmap}, metadata, probabilities=probabilities)


def batch_figure(
    heatmap: torch.Tensor,
    titles: Sequence[str],
    method: str = "",
    *,
    pictures: Sequence[Any] | None = None,
    geometries: Sequence[ImageGeometry | None] | None = None,
    note: str | None = None,
    **options: Any,
) -> Any:
    """The ``(B, H, W)`` maps of a batch, each on its photo and under its title.

    Args:
        heatmap: ``(B, H, W)`` maps in model-input coordinates.
        titles: one per image (the classes, named).
        method: the method, above the grid.
        pictures: one photo per image (PIL, ``HWC`` array or ``(3, H, W)`` tensor in
            [0, 1]); ``None`` draws the maps on black.
        geometries: one per image, mapping each map onto its photo.
        note: a weights note (``"random weights"``) for the heading.
        options: `timmlens.viz.static.plot_images`'s (``cmap``, ``alpha``, ``crop``,
            ``ncols``).
    """
    from .viz.static import plot_images

    maps = heatmap.detach().float().cpu()
    black = np.zeros((*maps.shape[-2:], 3), dtype=np.uint8)
    images = list(pictures) if pictures is not None else [black] * maps.shape[0]
    # a bare map has nothing to blend with: drawn opaque
    options.setdefault("alpha", 0.5 if pictures is not None else 1.0)
    options.setdefault("ncols", 4)
    return plot_images(
        images,
        maps,
        list(geometries) if pictures is not None and geometries is not None else None,
        labels=list(titles),
        method=method or None,
        note=note,
        **options,
    )
