"""Class names the user gives: a list, a file (one name a line, or a JSON list), or ``a,b,c``.

``ImageClassifier(..., class_names=...)`` and the command's ``--class-names`` read them
here; the names are then what every title, page, row and folder label uses
(`timmlens.models.introspect.model_class_names` asks the model for them first).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import ModelLoadError

#: the attribute an ``ImageClassifier`` keeps the names in (read by ``model_class_names``)
CLASS_NAMES_ATTRIBUTE = "class_names"
ClassNames = Sequence[str] | str | os.PathLike[str]


def _from_file(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"Class names file '{path}' is not valid JSON: {exc}.") from exc
        if not isinstance(names, list):
            raise ModelLoadError(
                f"Class names file '{path}' holds a JSON {type(names).__name__}; expected a "
                f'list of names in class-index order, e.g. ["cat", "dog"].'
            )
        return [str(name) for name in names]
    # one name a line; blank lines and '#' comments are not classes
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_class_names(value: ClassNames) -> list[str]:
    """The class names in ``value``, in class-index order.

    Args:
        value: a list of names; a file (``.json``: a list; anything else: one name a
            line, blank lines and ``#`` comments skipped); or one string ``"cat,dog,fox"``.

    Raises:
        ModelLoadError: a missing file, an empty list, a repeated name.
    """
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        path = Path(text).expanduser()
        if path.is_file():
            names = _from_file(path)
        elif "," in text:
            names = [name.strip() for name in text.split(",")]
        else:
            raise ModelLoadError(
                f"class_names='{text}' is neither a file nor a comma-separated list; pass a "
                f"file with one name a line (or a JSON list), or 'cat,dog,fox'.",
                cli=f"--class-names {text} is neither a file nor a comma-separated list; pass "
                f"a file with one name a line (or a JSON list), or --class-names cat,dog,fox.",
            )
        source = f"'{text}'"
    else:
        names = [str(name).strip() for name in value]
        source = "the list"
    if not names or any(not name for name in names):
        raise ModelLoadError(f"class names from {source} include an empty name: {names[:10]}.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ModelLoadError(
            f"class names from {source} repeat {', '.join(repr(n) for n in repeated[:5])}; "
            f"each class needs its own name."
        )
    return names


def check_class_names(names: list[str], num_classes: int, source: str = "class_names") -> None:
    """``names`` must name each of the model's ``num_classes`` classes once."""
    if len(names) != num_classes:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ModelLoadError(
            f"{source} has {len(names)} names ({shown}) but the model has {num_classes} "
            f"classes; give one name per class, in class-index order.",
            cli=f"--class-names has {len(names)} names ({shown}) but the model has "
            f"{num_classes} classes; give one name per class, in class-index order.",
        )
