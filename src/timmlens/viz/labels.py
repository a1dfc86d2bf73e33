"""Class names and titles shared by the static and interactive figures.

Nothing here runs a model: callers pass class indices, probabilities and counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache

IMAGENET_NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class descriptions in index order (from ``timm.data.ImageNetInfo``)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def class_label(
    index: int,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    short: bool = True,
) -> str:
    """A readable name for class ``index``.

    ``class_names`` wins when given; else a 1000-class model gets its ImageNet name (with
    ``short``, only its first synonym: ``"dragonfly"``, not ``"dragonfly, darning
    needle, devil's darning needle, ..."``); anything else is ``"class N"``.
    """
    index = int(index)
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    if num_classes == IMAGENET_NUM_CLASSES and 0 <= index < IMAGENET_NUM_CLASSES:
        name = imagenet_class_names()[index]
        return name.split(",")[0].strip() if short else name
    return f"class {index}"


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
