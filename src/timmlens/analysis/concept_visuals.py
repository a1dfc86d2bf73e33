"""The gallery of a [`fit_concepts`][timmlens.analysis.concepts.fit_concepts] run, with each
concept's feature visualisation when asked.

`write_concept_gallery` re-reads each concept's top images (`concept_extract.top_pictures`)
and, with ``visualize_steps > 0``, draws every concept by
[`visualize_concept`][timmlens.analysis.concept_maps.visualize_concept] (MACO, the run's
seed, the model's input size), then hands plain arrays to
`timmlens.viz.concept_gallery.write_gallery`.

A visualisation costs ``steps`` forward and backward passes per concept (seconds on a GPU,
about a minute per concept for a 224 px CNN on two CPU cores at 128 steps), so each one is
kept in ``out/feature_vis/concept_<n>.png`` with a key in its PNG text: the concept's atom,
the layer, the model's identity and the options. A rerun in the same folder (after a stop,
or to write the page again) reuses every picture whose key matches and draws the others; a
picture is written to a temporary file and renamed, so a stop never leaves half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, PngImagePlugin
from torch import nn
from tqdm.auto import tqdm

from ..data import data_config
from .concept_extract import top_pictures
from .concept_maps import concept_direction, visualize_concept

if TYPE_CHECKING:
    from .concepts import DatasetConcepts

#: the folder of the cached visualisations, inside the run's output folder
VISUALIZATION_DIR = "feature_vis"
#: the PNG text field holding a picture's key
KEY_FIELD = "timmlens-key"
#: the parameterisation the gallery uses (MACO scales to ViTs, Fel et al. 2023)
GALLERY_METHOD = "maco"


def visualization_key(result: DatasetConcepts, concept: int, options: dict[str, Any]) -> str:
    """A SHA-256 of what decides concept ``concept``'s picture: its atom ``(C,)`` (float32
    bytes), the layer, the model's identity (run.json) and the visualisation options."""
    atom = concept_direction(result, concept).cpu().numpy().astype(np.float32)
    facts = {
        "layer": result.layer,
        "model": result.identity.get("model"),
        "options": options,
    }
    digest = hashlib.sha256(atom.tobytes())
    digest.update(json.dumps(facts, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _cached(path: Path, key: str) -> np.ndarray | None:
    """The picture at ``path`` if its key is ``key``, else ``None`` (absent, other, broken)."""
    try:
        with Image.open(path) as picture:
            if picture.text.get(KEY_FIELD) != key:  # type: ignore[attr-defined]
                return None
            return np.asarray(picture.convert("RGB"))
    except (OSError, ValueError, SyntaxError):
        return None


def _store(path: Path, picture: np.ndarray, key: str) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(KEY_FIELD, key)
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(picture).save(partial, format="PNG", pnginfo=info)
    os.replace(partial, path)


def concept_visualizations(
    model: nn.Module,
    result: DatasetConcepts,
    steps: int,
    out_dir: Path,
    seed: int = 0,
    show: bool = False,
) -> list[np.ndarray]:
    """Every concept's feature visualisation, ``(s, s, 3)`` uint8 each (``s`` the model's
    input side), drawn or read from ``out_dir/feature_vis``.

    Args:
        model: the model the concepts were fitted on.
        result: the fit (`DatasetConcepts`).
        steps: optimisation steps per concept (MACO).
        out_dir: the run's output folder.
        seed: the visualisation's seed.
        show: a progress bar over the concepts.
    """
    size = int(data_config(model)["input_size"][-1])
    options = {"steps": steps, "size": size, "method": GALLERY_METHOD, "seed": seed}
    folder = out_dir / VISUALIZATION_DIR
    folder.mkdir(exist_ok=True)
    for old in folder.glob("concept_*.png"):  # an earlier run's extra concepts (--overwrite)
        number = old.stem.removeprefix("concept_")
        if not number.isdigit() or int(number) > result.n_concepts:
            old.unlink(missing_ok=True)
    pictures = []
    for k in tqdm(range(result.n_concepts), desc="visualize", unit="concept", disable=not show):
        key = visualization_key(result, k, options)
        path = folder / f"concept_{k + 1}.png"
        picture = _cached(path, key)
        if picture is None:
            drawn = visualize_concept(model, result, k, progress=False, **options)
            image = drawn.image.detach().float().clamp(0, 1).permute(1, 2, 0)
            picture = (image * 255).round().byte().cpu().numpy()
            _store(path, picture, key)
        pictures.append(picture)
    return pictures


def write_concept_gallery(
    model: nn.Module,
    samples: Any,
    result: DatasetConcepts,
    maps: list[list[np.ndarray]],
    sizes: list[list[tuple[int, int]]],
    visualize_steps: int,
    show: bool,
) -> Path:
    """``concepts.html`` and the strips in ``result.out_dir``, with each concept's feature
    visualisation when ``visualize_steps > 0``; the page's path.

    Args:
        samples: the run's images (``samples[index].image``).
        maps, sizes: per concept, per top image, the ``(h, w)`` map and the input's ``(H, W)``.
    """
    from ..viz.concept_gallery import write_gallery

    pictures = top_pictures(model, samples, result.top_images, maps, sizes)
    visuals = None
    if visualize_steps > 0:
        seed = int((result.identity.get("concepts") or {}).get("seed", 0))
        visuals = concept_visualizations(model, result, visualize_steps, result.out_dir, seed, show)
    caption = f"feature visualisation ({GALLERY_METHOD.upper()}, {visualize_steps} steps)"
    return write_gallery(result, pictures, result.out_dir, visuals, caption)
