"""Titles shared by the static and interactive figures.

Nothing here runs a model: callers pass class names, probabilities and counts. Class
names themselves are a model fact (`timmlens.models.introspect`); `class_label` and
`imagenet_class_names` are importable from here too, as documented.
"""

from __future__ import annotations

import math
import re

from ..models.introspect import class_label, imagenet_class_names

__all__ = [
    "class_heading",
    "class_label",
    "explanation_title",
    "format_probability",
    "imagenet_class_names",
    "mpl_text",
    "wrap_title",
]


def format_probability(probability: float | None) -> str:
    """``0.873`` -> ``"87.3%"`` (empty for ``None`` or NaN)."""
    if probability is None or math.isnan(float(probability)):
        return ""
    return f"{float(probability):.1%}"


def explanation_title(
    label: str | None = None,
    probability: float | None = None,
    method: str | None = None,
    note: str | None = None,
) -> str:
    """``"tiger cat (87.3%) - gradcam [random weights]"``; parts that are ``None`` are left out."""
    parts = []
    if label:
        prob = format_probability(probability)
        parts.append(f"{label} ({prob})" if prob else label)
    if method:
        parts.append(method)
    title = " - ".join(parts)
    if note:
        title = f"{title} [{note}]" if title else f"[{note}]"
    return title


def class_heading(
    target: str,
    target_probability: float | None,
    predicted: str | None = None,
    predicted_probability: float | None = None,
) -> str:
    """The explained class, and the prediction when it is another class, each labelled.

    ``"tabby (87.3%)"`` when the target is the prediction; else
    ``"target tabby (0.0%), predicted espresso (90.4%)"``, never a probability that could
    be read as the other class's.
    """
    own = explanation_title(target, target_probability)
    if predicted is None or predicted == target:
        return own
    return f"target {own}, predicted {explanation_title(predicted, predicted_probability)}"


#: where a title may break: after " - ", "; ", ", ", ": " and before " [" (never in a name)
_BREAKS = re.compile(r"(?<= - )|(?<=; )|(?<=, )|(?<=: )|(?= \[)")


def wrap_title(text: str, width: int) -> str:
    """``text`` in lines of about ``width`` characters, broken only between its parts.

    Class, model, method and layer names are never cut (``textwrap`` would break
    ``"hf-hub:timm/vit_tiny_patch16_224"`` or ``"tiger cat"`` anywhere); a part longer
    than ``width`` gets a line of its own.
    """
    lines: list[str] = []
    for raw in text.splitlines() or [""]:
        line = ""
        for piece in (p for p in _BREAKS.split(raw) if p):
            if line.strip() and len(line.rstrip()) + len(piece.rstrip()) > width:
                lines.append(line.rstrip().removesuffix(" -"))  # the break separates
                line = piece.lstrip()
            else:
                line += piece
        lines.append(line.rstrip())
    return "\n".join(lines)


def mpl_text(text: str) -> str:
    """Text safe for matplotlib titles: ``$`` would otherwise start mathtext."""
    return text.replace("$", r"\$")
