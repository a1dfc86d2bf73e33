"""Explanations on disk: ``.npz`` arrays plus JSON metadata, never pickle.

One file holds the heatmap(s) (``float32``, model-input coordinates), the class
probabilities, optionally the original photo (``uint8``), and a JSON document (stored in
the archive as UTF-8 bytes) with what made them: the model (spec, whether its weights
are pretrained), the method and layer, the target and predicted classes, the geometry
that maps the heatmap onto the photo, and the timmlens version. ``np.load`` reads it
with ``allow_pickle=False``, and so does [`load_explanation`][].

``result.save(path)`` on a [`ExplanationResult`][timmlens.quick.ExplanationResult],
[`MethodComparison`][timmlens.quick.MethodComparison] or
[`Explanation`][timmlens.interpretation.base.Explanation] writes such a file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
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


def load_explanation(path: str | os.PathLike[str]) -> SavedExplanation:
    """Read an explanation written by ``result.save(path)`` (no pickle is ever loaded).

    Raises:
        FileNotFoundError: no such file.
        ExplanationFileError: the file is not a saved timmlens explanation, or of a newer
            format than this timmlens reads.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved explanation at '{path}'.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise ExplanationFileError(
            f"'{path}' is not a saved explanation (an .npz archive written by result.save): {exc}"
        ) from exc
    if _METADATA not in arrays:
        raise ExplanationFileError(
            f"'{path}' is an .npz archive without timmlens metadata; expected a file written "
            f"by result.save(path)."
        )
    metadata = json.loads(arrays.pop(_METADATA).tobytes().decode("utf-8"))
    if metadata.get("format") != FORMAT:
        raise ExplanationFileError(f"'{path}' holds '{metadata.get('format')}', not {FORMAT}.")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise ExplanationFileError(
            f"'{path}' was written in format {metadata['format_version']} by timmlens "
            f"{metadata.get('timmlens_version')}; this timmlens reads up to {FORMAT_VERSION}: "
            f"upgrade timmlens."
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


def batch_figure(heatmap: torch.Tensor, targets: torch.Tensor | None, method: str = "") -> Any:
    """The ``(B, H, W)`` maps of a batch side by side, titled with their ``(B,)`` targets
    (no photos: an Explanation keeps none)."""
    from .viz.static import OverlayPanel, plot_grid

    maps = heatmap.detach().float().cpu()
    target_list = [] if targets is None else targets.tolist()
    panels = [
        OverlayPanel(
            np.zeros((*maps.shape[-2:], 3), dtype=np.uint8),
            maps[i],
            None,
            f"image {i}" + (f", class {target_list[i]}" if i < len(target_list) else ""),
        )
        for i in range(maps.shape[0])
    ]
    return plot_grid(panels, ncols=4, suptitle=method, alpha=1.0, panel_size=2.2)
