"""The concept gallery of [`fit_concepts`][timmlens.analysis.concepts.fit_concepts]: one HTML page.

For every concept: its share of the activation energy, its top classes from the model's
head (or why there are none), and its top images with the concept's map overlaid, each
embedded as a small JPEG data URI; when given, the concept's feature visualisation first
(a lossless PNG data URI). Above them, the fit's quality figures (R^2, dead and active
codes, stability across seeds). The page loads nothing from anywhere and escapes every
id and class name. One PNG strip per concept (``concept_<k>.png``, the same overlays side
by side) is written next to it. Concepts are numbered from 1 on the page and in the file
names, as in the concept figures (concept 1 is row 0 of the concept vectors). Nothing here
runs a model.

The page is written to a temporary file and renamed over ``concepts.html``, so a run
stopped while writing leaves the previous page whole, never half of one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .arrays import png_data_uri
from .html_page import PAGE_STYLE, escape, render_page
from .report_html import _figure, display_picture, overlay_array, probability_text

#: long side of a gallery thumbnail, in pixels
THUMBNAIL_SIDE = 176


def concept_overlays(pictures: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """One concept's top images with its map overlaid: ``(h, w, 3)`` uint8 thumbnails.

    Args:
        pictures: per image ``{"picture", "geometry", "map"}``: the photo (or the model's
            view of a tensor input), how it became the input, and the concept's ``(H, W)``
            map in model-input coordinates.
    """
    overlays = []
    for item in pictures:
        picture, geometry = display_picture(item["picture"], item["geometry"], THUMBNAIL_SIDE)
        overlays.append(overlay_array(picture, item["map"], geometry))
    return overlays


def _classes_text(classes: Sequence[dict[str, Any]], reason: str | None) -> str:
    if not classes:
        why = escape(reason) if reason else "no classes"
        return f'<p class="classes none">no classes: {why}</p>'
    listed = ", ".join(
        f"{escape(c['name'])} ({probability_text(c['probability'])})" for c in classes
    )
    return f'<p class="classes">top classes (the head on the concept vector): {listed}</p>'


def _caption(item: dict[str, Any]) -> str:
    predicted = f" · predicted {item['predicted_name']}" if item.get("predicted_name") else ""
    return f"{item['id']} · score {item['score']:.3g}{predicted}"


def _summary_table(summary: dict[str, Any]) -> str:
    rows = []
    for concept in summary["concepts"]:
        first = concept["top_classes"][0]["name"] if concept["top_classes"] else "-"
        rows.append(
            f'<tr><td><a href="#concept-{concept["index"] + 1}">{concept["index"] + 1}</a></td>'
            f'<td class="num">{100 * concept["energy_share"]:.1f}%</td>'
            f"<td>{escape(first)}</td></tr>"
        )
    return (
        "<table><tr><th>concept</th><th>energy share</th><th>top class</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _number(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _quality_table(quality: dict[str, Any] | None) -> str:
    """The fit's quality figures (`timmlens.analysis.concept_quality.measure_fit` and the
    stability), as a small table; empty without them."""
    if not quality:
        return ""
    where = quality.get("r2_on", "held-out images")
    if quality.get("in_sample"):
        where += "; in-sample: NMF is fitted on every image"
    stability = quality.get("stability")
    stable = (
        "not measured (stability=False)"
        if stability is None
        else f"{stability:.3f} mean matched cosine, worst pair "
        f"{_number(quality.get('stability_min'))} (seeds "
        f"{', '.join(str(s) for s in quality.get('stability_seeds', []))})"
    )
    rows = [
        ("method", escape(quality.get("method", "nmf"))),
        ("R^2", f"{_number(quality.get('r2'))} ({escape(where)}, {quality.get('r2_rows', 0)} "
         "positions)"),
        ("dead codes", f"{quality.get('dead_codes', 0)} ({quality.get('dead_fraction', 0):.1%})"),
        ("active codes per position", _number(quality.get("active_codes"), 1)),
        ("stability across seeds", escape(stable)),
    ]  # fmt: skip
    body = "".join(f"<tr><td>{name}</td><td>{value}</td></tr>" for name, value in rows)
    return f'<h2>Quality of the fit</h2><table class="quality">{body}</table>'


def _visualization_figure(picture: np.ndarray, k: int, caption: str) -> str:
    height, width = picture.shape[:2]
    return (
        f'<figure class="feature-vis"><img src="{png_data_uri(picture)}" width="{width}" '
        f'height="{height}" alt="feature visualisation of concept {k}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def render_gallery(
    summary: dict[str, Any],
    overlays: Sequence[Sequence[np.ndarray]],
    visualizations: Sequence[np.ndarray] | None = None,
    visualization_caption: str = "feature visualisation",
) -> str:
    """The gallery page from ``concepts.json``'s data and each concept's overlays.

    Args:
        summary: [`DatasetConcepts.to_dict`][timmlens.analysis.concepts.DatasetConcepts.to_dict].
        overlays: per concept, one ``(h, w, 3)`` uint8 picture per top image, in order.
        visualizations: per concept, its feature visualisation ``(s, s, 3)`` uint8, shown
            before its top images; ``None``: none shown.
        visualization_caption: the caption under each visualisation.
    """
    loading = "NMF loading" if summary.get("method", "nmf") == "nmf" else "code"
    subtitle = (
        f"{summary['n_concepts']} concepts of layer {summary['layer']} over "
        f"{summary['n_images']} images of {summary['model']} ({summary['fit']}; relative "
        f"reconstruction error {summary['relative_error']:.3f}). Each image shows the "
        f"concept's map (its {loading} at every position, bilinear to the input); score: "
        f"the mean norm of the concept's term over the image."
    )
    if visualizations is not None and len(visualizations) != len(summary["concepts"]):
        raise ValueError(
            f"{len(visualizations)} visualisations for {len(summary['concepts'])} concepts; "
            f"give one per concept, or None."
        )
    parts = [_quality_table(summary.get("quality")), _summary_table(summary)]
    for concept, pictures in zip(summary["concepts"], overlays, strict=True):
        k = concept["index"] + 1
        parts.append(
            f'<section class="concept" id="concept-{k}"><h2>Concept {k} · '
            f"{100 * concept['energy_share']:.1f}% of the activation energy</h2>"
        )
        parts.append(_classes_text(concept["top_classes"], summary["labels_unavailable_reason"]))
        figures = [
            _figure(picture, _caption(item), "top", f"concept {k} on image {item['id']}")
            for item, picture in zip(concept["top_images"], pictures, strict=True)
        ]
        if visualizations is not None:
            figures.insert(
                0, _visualization_figure(visualizations[k - 1], k, visualization_caption)
            )
        parts.append(f'<div class="cards">{"".join(figures)}</div></section>')
    return render_page(
        "Concepts over a dataset",
        "\n".join(parts),
        subtitle=subtitle,
        styles=(PAGE_STYLE, "concepts.css"),
    )


def strip_png(overlays: Sequence[np.ndarray], path: Path, gap: int = 4) -> Path:
    """The overlays side by side on white, top-aligned, as one PNG."""
    height = max(o.shape[0] for o in overlays)
    width = sum(o.shape[1] for o in overlays) + gap * (len(overlays) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    left = 0
    for overlay in overlays:
        canvas[: overlay.shape[0], left : left + overlay.shape[1]] = overlay
        left += overlay.shape[1] + gap
    Image.fromarray(canvas).save(path)
    return path


def write_gallery(
    result: Any,
    pictures: Sequence[Sequence[dict[str, Any]]],
    out_dir: Path,
    visualizations: Sequence[np.ndarray] | None = None,
    visualization_caption: str = "feature visualisation",
) -> Path:
    """``concepts.html`` and ``concept_<n>.png`` (n from 1) in ``out_dir``; the page's path.

    Args:
        result: a [`DatasetConcepts`][timmlens.analysis.concepts.DatasetConcepts].
        pictures: per concept, per top image ``{"picture", "geometry", "map"}``.
        out_dir: the output folder.
        visualizations, visualization_caption: as for `render_gallery`.
    """
    overlays = [concept_overlays(row) for row in pictures]
    for k, row in enumerate(overlays):
        if row:
            strip_png(row, out_dir / f"concept_{k + 1}.png")
    page = render_gallery(result.to_dict(), overlays, visualizations, visualization_caption)
    path = out_dir / "concepts.html"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path
