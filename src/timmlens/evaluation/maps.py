"""``evaluate(save_maps=True)``: one saved explanation per image and method, next to the rows."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from ..interpretation.base import Explainer
from .sources import Sample

#: the folder of ``out`` that ``save_maps=True`` fills
MAPS_DIR = "maps"


def map_path(maps_dir: Path, method: str, image_id: str) -> Path:
    """Where ``evaluate(save_maps=True)`` keeps one image's map: ``maps/<method>/<id>.npz``.

    The id's folders are kept (``3/cat.jpg`` -> ``maps/gradcam/3/cat.jpg.npz``); ``..``
    and absolute parts are dropped, so a map never lands outside ``maps_dir``.
    """
    parts = [p for p in PurePosixPath(image_id.replace("\\", "/")).parts if p not in ("/", "..")]
    return maps_dir.joinpath(method, *parts[:-1], f"{parts[-1] if parts else '_'}.npz")


def save_batch_maps(
    maps_dir: Path,
    name: str,
    samples: list[Sample],
    needed: list[int],
    heatmaps: torch.Tensor,
    context: dict[str, Any],
) -> None:
    """One ``.npz`` per image of ``needed`` (heatmap ``(H, W)`` + metadata), atomically.

    ``context`` holds the batch's ``probabilities`` ``(B, K)``, ``targets``, ``predicted``,
    ``geometries``, ``layers``, ``model`` and ``class_name`` (index -> name, `class_namer`).
    """
    from ..saving import geometry_json, save_explanation

    for position, i in enumerate(needed):
        sample = samples[i]
        probabilities = context["probabilities"][i]
        save_explanation(
            map_path(maps_dir, name, sample.id),
            {name: heatmaps[position]},
            {
                "kind": "evaluate",
                "id": sample.id,
                "method": name,
                "layer": context["layers"].get(name),
                "model": context["model"],
                "label": sample.label,
                "label_name": context["class_name"](sample.label),
                "target_class": context["targets"][i],
                "target_name": context["class_name"](context["targets"][i]),
                "target_probability": float(probabilities[context["targets"][i]]),
                "predicted_class": context["predicted"][i],
                "predicted_name": context["class_name"](context["predicted"][i]),
                "geometry": geometry_json(context["geometries"][i]),
            },
            probabilities=probabilities,
        )


def maps_settings(
    out_dir: Path, model: nn.Module, explainers: dict[str, Explainer]
) -> dict[str, Any]:
    """What ``save_maps=True`` needs: the folder, the model's metadata, each method's layer."""
    from ..interpretation.registry import layer_of
    from ..models.introspect import model_metadata

    return {
        "dir": out_dir / MAPS_DIR,
        "model": model_metadata(model),
        "layers": {name: layer_of(e) for name, e in explainers.items()},
    }
