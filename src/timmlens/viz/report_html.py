"""The error-analysis report as one self-contained HTML page; nothing here runs a model.

`render_card` turns one misclassified photo and its two heatmaps (for the predicted
and for the true class) into an HTML fragment with three pictures embedded as JPEG data
URIs; `render_report` puts the numbers, the confusion-pair and per-class tables and
the cards, grouped by confusion pair, on one page. The page loads nothing from anywhere
(no scripts, fonts, stylesheets or images outside it) and every label, path and class
name on it is HTML-escaped, so a class called ``<script>alert(1)</script>`` is shown, not
run.

The inputs are plain data: the JSON summary that
`timmlens.analysis.error_report` writes next to the page (see there for its keys),
pictures as arrays and heatmaps in model-input coordinates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..data import ImageGeometry
from .arrays import (
    DEFAULT_CMAP,
    HeatmapLike,
    PictureLike,
    downscaled,
    heatmap_on_picture,
    jpeg_data_uri,
    picture_array,
    value_range,
)
from .html_page import escape, render_page
from .labels import format_probability

DEFAULT_ALPHA = 0.5
#: long side of each picture on a card, in pixels
CARD_IMAGE_SIDE = 256
#: JPEG quality of the embedded pictures
JPEG_QUALITY = 85
#: how many image ids a confusion-pair row lists before "+ N more"
IDS_PER_PAIR = 5


# ------------------------------------------------------------------ pictures
def display_picture(
    image: PictureLike, geometry: ImageGeometry | None, max_side: int = CARD_IMAGE_SIDE
) -> tuple[np.ndarray, ImageGeometry | None]:
    """The photo scaled to at most ``max_side`` pixels, and the geometry that fits it.

    The heatmap's way onto the photo (undo the crop, then the resize) only changes in its
    last step, the resize to the photo's size; so the geometry of the smaller photo is
    the same with ``original_size`` replaced, and the map is drawn onto it directly.

    Returns:
        ``(picture (h, w, 3) uint8, geometry or None)``.
    """
    picture = downscaled(picture_array(image), max_side)
    if geometry is not None:
        geometry = dataclasses.replace(geometry, original_size=picture.shape[:2])
    return picture, geometry


def overlay_array(
    picture: np.ndarray,
    heatmap: HeatmapLike,
    geometry: ImageGeometry | None = None,
    *,
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
) -> np.ndarray:
    """The heatmap blended over the photo, as the static figures draw it: ``(h, w, 3)`` uint8.

    Colours span `value_range` of the map (as in
    [`draw_overlay`][timmlens.viz.static.draw_overlay]); where the crop cut the photo away the
    photo is left uncoloured.

    Args:
        picture: ``(h, w, 3)`` uint8 photo (see `display_picture`).
        heatmap: ``(H, W)`` in model-input coordinates.
        geometry: how the photo became the model input, sized for ``picture``.
    """
    from matplotlib import colormaps  # on first use: the report module loads without it

    on_picture = heatmap_on_picture(heatmap, picture.shape[:2], geometry)
    low, high = value_range(on_picture)
    finite = np.isfinite(on_picture)
    scaled = np.clip((np.nan_to_num(on_picture, nan=low) - low) / max(high - low, 1e-12), 0, 1)
    colours = colormaps[cmap](scaled)[..., :3] * 255.0
    blended = (1.0 - alpha) * picture.astype(np.float32) + alpha * colours
    out = np.where(finite[..., None], blended, picture.astype(np.float32))
    return np.round(out).clip(0, 255).astype(np.uint8)


def _figure(picture: np.ndarray, caption: str, css: str, alt: str) -> str:
    height, width = picture.shape[:2]
    source = jpeg_data_uri(picture, JPEG_QUALITY)
    return (
        f'<figure><img src="{source}" width="{width}" height="{height}" '
        f'alt="{escape(alt)}"><figcaption class="{css}">{escape(caption)}</figcaption></figure>'
    )


def probability_text(probability: float) -> str:
    """``0.393`` -> ``"39.3%"``; below 0.1% two significant digits: ``"0.0045%"``."""
    if 0 < probability < 0.001:
        return f"{100 * probability:.2g}%"
    return format_probability(probability)


def class_caption(side: str, name: str, probability: float) -> str:
    """``"predicted: tiger cat (39.3%)"`` / ``"true: tabby (17.0%)"``."""
    return f"{side}: {name} ({probability_text(probability)})"


def render_card(
    error: Mapping[str, Any],
    image: PictureLike,
    predicted_map: HeatmapLike,
    true_map: HeatmapLike,
    geometry: ImageGeometry | None = None,
    *,
    max_side: int = CARD_IMAGE_SIDE,
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
) -> str:
    """One error as an HTML fragment: photo | predicted-class map | true-class map.

    Args:
        error: an entry of the summary's ``"errors"`` (``id``, ``true``, ``true_name``,
            ``predicted``, ``predicted_name``, ``p_true``, ``p_predicted``, ``true_rank``).
        image: the original photo.
        predicted_map, true_map: ``(H, W)`` heatmaps in model-input coordinates for the
            predicted and for the true class.
        geometry: how ``image`` became the model input.
        max_side: long side of each picture in pixels.
    """
    picture, small_geometry = display_picture(image, geometry, max_side)
    predicted = class_caption("predicted", error["predicted_name"], error["p_predicted"])
    true = class_caption("true", error["true_name"], error["p_true"])
    panels = [
        _figure(picture, "photo", "photo", f"photo {error['id']}"),
        _figure(
            overlay_array(picture, predicted_map, small_geometry, cmap=cmap, alpha=alpha),
            predicted,
            "predicted",
            f"heatmap for the predicted class {error['predicted_name']}",
        ),
        _figure(
            overlay_array(picture, true_map, small_geometry, cmap=cmap, alpha=alpha),
            true,
            "true",
            f"heatmap for the true class {error['true_name']}",
        ),
    ]
    head = (
        f"<code>{escape(error['id'])}</code> &middot; true class ranked "
        f"{int(error['true_rank'])} of the model's scores"
    )
    return (
        f'<div class="card"><div class="head">{head}</div>'
        f'<div class="panels">{"".join(panels)}</div></div>'
    )


# ------------------------------------------------------------------ page
def _percent(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * float(value):.1f}%"


def _model_heading(summary: dict[str, Any]) -> str:
    """The model's name, with its weights note (``[random weights]``) when it has one."""
    note = summary.get("weights")
    return f"{summary['model']} [{note}]" if note else str(summary["model"])


def _number(value: str, label: str) -> str:
    return f'<div class="number"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def _header(summary: Mapping[str, Any]) -> str:
    counts = summary["counts"]
    numbers = [
        _number(str(counts["images"]), "images"),
        _number(str(counts["labelled"]), "labelled"),
        _number(str(counts["correct"]), "correct"),
        _number(str(counts["errors"]), "errors"),
    ]
    numbers += [
        _number(_percent(value), f"top-{k} accuracy") for k, value in summary["top_k"].items()
    ]
    if counts["unlabelled"]:
        numbers.append(_number(str(counts["unlabelled"]), "skipped (no label)"))
    parts = [
        f'<p class="note">data: <code>{escape(summary["data"])}</code> &middot; method: '
        f"{escape(summary['method'])} &middot; {int(summary['num_classes'])} classes</p>",
        f'<div class="numbers">{"".join(numbers)}</div>',
    ]
    if counts["unlabelled"]:
        parts.append(
            f'<p class="note">{counts["unlabelled"]} image(s) without a label were skipped '
            f"(files directly in the data folder, or dataset items whose label is None).</p>"
        )
    return "\n".join(parts)


def _pairs_table(summary: Mapping[str, Any], shown_pairs: set[int], top_pairs: int | None) -> str:
    pairs = summary["confusion_pairs"]
    if not pairs:
        return '<p class="note">No confusions: every labelled image was classified correctly.</p>'
    errors = max(1, int(summary["counts"]["errors"]))
    listed = pairs if top_pairs is None else pairs[:top_pairs]
    rows = []
    for number, pair in enumerate(listed):
        ids = ", ".join(f"<code>{escape(i)}</code>" for i in pair["ids"][:IDS_PER_PAIR])
        if len(pair["ids"]) > IDS_PER_PAIR:
            ids += f" + {len(pair['ids']) - IDS_PER_PAIR} more"
        link = f' <a href="#pair-{number}">gallery</a>' if number in shown_pairs else ""
        rows.append(
            f'<tr><td class="num">{number + 1}</td><td>{escape(pair["true_name"])}</td>'
            f"<td>{escape(pair['predicted_name'])}</td>"
            f'<td class="num">{int(pair["count"])}</td>'
            f'<td class="num">{_percent(pair["count"] / errors)}</td><td>{ids}{link}</td></tr>'
        )
    note = (
        f'<p class="note">{len(pairs) - len(listed)} less frequent pair(s) not listed here '
        f"(all are in the JSON summary).</p>"
        if len(listed) < len(pairs)
        else ""
    )
    return (
        '<table><thead><tr><th class="num">#</th><th>true class</th><th>predicted as</th>'
        '<th class="num">errors</th><th class="num">share of errors</th><th>images</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}"
    )


def _class_table(summary: Mapping[str, Any]) -> str:
    rows = []
    ordered = sorted(summary["per_class"], key=lambda row: (row["accuracy"], row["class"]))
    for row in ordered:
        confused = "-"
        if row["confused_with"] is not None:
            confused = f"{escape(row['confused_with_name'])} ({int(row['confused_count'])})"
        rows.append(
            f'<tr><td>{escape(row["name"])}</td><td class="num">{int(row["class"])}</td>'
            f'<td class="num">{int(row["n"])}</td><td class="num">{int(row["correct"])}</td>'
            f'<td class="num">{_percent(row["accuracy"])}</td><td>{confused}</td></tr>'
        )
    return (
        '<table><thead><tr><th>class</th><th class="num">index</th><th class="num">images</th>'
        '<th class="num">correct</th><th class="num">accuracy</th><th>most confused with</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _colour_bar(cmap: str = DEFAULT_CMAP) -> str:
    """The heatmaps' colour scale as a labelled CSS gradient (each map spans its own range)."""
    from matplotlib import colormaps

    stops = ", ".join(
        "#" + bytes(round(c * 255) for c in colormaps[cmap](t)[:3]).hex()
        for t in np.linspace(0, 1, 11)
    )
    return (
        '<p class="note colour-bar">relevance: 0 '
        f'<span style="display:inline-block;width:180px;height:12px;vertical-align:middle;'
        f'border:1px solid #888;background:linear-gradient(to right, {stops})"></span> '
        "high (each map on its own scale, from 0 to its maximum)</p>"
    )


def _gallery(
    summary: Mapping[str, Any], groups: Sequence[Mapping[str, Any]], cards: Mapping[str, str]
) -> str:
    gallery = summary["gallery"]
    if not summary["counts"]["errors"]:
        return '<p class="note">No errors to show.</p>'
    parts = [
        f'<p class="note">{gallery["shown"]} of {summary["counts"]["errors"]} error(s) shown, '
        f"grouped by confusion pair (most frequent first). Each card: the photo, the "
        f"{escape(summary['method'])} heatmap for the predicted class and the one for the "
        f"true class (bright: strongest evidence for that class; parts of the photo the "
        f"model's crop cut away are left uncoloured).</p>",
        _colour_bar(),
    ]
    if gallery["left_out"]:
        parts.append(
            f'<p class="note">{gallery["left_out"]} error(s) left out of the gallery '
            f"(max_examples={gallery['max_examples']}); the JSON summary lists every error.</p>"
        )
    for group in groups:
        pair = group["pair"]
        shown = [cards[i] for i in group["ids"] if i in cards]
        more = int(pair["count"]) - len(shown)
        title = (
            f"{escape(pair['true_name'])} &rarr; {escape(pair['predicted_name'])} "
            f"({int(pair['count'])} error{'s' if pair['count'] != 1 else ''}"
            + (f", {more} not shown" if more else "")
            + ")"
        )
        parts.append(f'<h3 id="pair-{int(group["number"])}">{title}</h3>')
        parts.append(f'<div class="cards">{"".join(shown)}</div>')
    return "\n".join(parts)


def render_report(
    summary: Mapping[str, Any],
    groups: Sequence[Mapping[str, Any]],
    cards: Mapping[str, str],
    *,
    top_pairs: int | None = 10,
) -> str:
    """The whole page.

    Args:
        summary: the JSON summary (``model``, ``method``, ``data``, ``num_classes``,
            ``counts``, ``top_k``, ``confusion_pairs``, ``per_class``, ``gallery``).
        groups: the gallery sections in order, each ``{"number": i, "pair": pair,
            "ids": [...]}`` with ``i`` the pair's position in ``confusion_pairs``.
        cards: image id -> card HTML (`render_card`).
        top_pairs: rows of the confusion-pair table (``None``: all).
    """
    shown_pairs = {int(group["number"]) for group in groups}
    body = [
        _header(summary),
        "<h2>Most frequent confusions</h2>",
        _pairs_table(summary, shown_pairs, top_pairs),
        "<h2>Per-class accuracy</h2>",
        '<p class="note">Classes present in the data, worst first.</p>',
        _class_table(summary),
        "<h2>Errors</h2>",
        _gallery(summary, groups, cards),
    ]
    # a report is read, not driven: no script on it, not even the error counter
    title = f"Error analysis: {_model_heading(summary)}"
    return render_page(title, "\n".join(body), styles=("report.css",), instrumented=False)
