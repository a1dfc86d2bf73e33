"""Warnings that point at the user's line, not at timmlens internals."""

from __future__ import annotations

import sys
import warnings

_PACKAGE = __name__.split(".")[0] + "."


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside timmlens.

    A fixed ``stacklevel`` breaks as soon as a public function is reached through another
    path (``GradCAM(model)`` and ``quick_explain(model)`` sit at different depths); the
    frame walk does not. The ``"default"`` filter then shows each warning once per line of
    the user's code.
    """
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class DegenerateMapWarning(UserWarning):
    """An explanation whose heatmap is constant (often all zero): it ranks no pixel above
    another, so it explains nothing. The message names the method, the images and the
    likely cause (random weights, dead gradients, a score the masks do not move, too few
    samples)."""
