"""Read and check the ``config.json`` of a HuggingFace-layout timm folder.

timm parses the file itself, but a malformed one surfaces as a bare ``KeyError``,
``TypeError`` or ``JSONDecodeError`` without the file's name. We check the fields
timm (and timmlens' preprocessing) read before timm sees the file, so the error names
the file, the field, the value found and the value expected.

timm writes two layouts (``timm.models.save_for_hf``): the current one with
``architecture`` and a nested ``pretrained_cfg`` object, and a legacy flat one where
the whole object is the pretrained config and also holds ``architecture``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

_EXAMPLE = '{"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": {...}}'
_ADVICE = (
    "Fix the file, or re-create the folder with timm.models.save_for_hf(model, folder) "
    "or download it again."
)

Check = Callable[[Any], bool]


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_number_list(length: int | None = None) -> Check:
    def check(value: Any) -> bool:
        return (
            isinstance(value, list)
            and (length is None or len(value) == length)
            and len(value) > 0
            and all(_is_number(item) for item in value)
        )

    return check


def _is_img_size(value: Any) -> bool:
    return _is_int(value, 1) or (
        isinstance(value, list) and len(value) == 2 and all(_is_int(v, 1) for v in value)
    )


# field -> (check, what is expected); every field is optional unless listed in _REQUIRED.
_TOP_FIELDS: dict[str, tuple[Check, str]] = {
    "architecture": (lambda v: isinstance(v, str) and bool(v.strip()), "a timm model name"),
    "num_classes": (_is_int, "an int >= 0"),
    "num_features": (lambda v: v is None or _is_int(v, 1), "an int >= 1 or null"),
    "global_pool": (lambda v: isinstance(v, str), 'a string such as "avg"'),
    "pretrained_cfg": (lambda v: isinstance(v, dict), "a JSON object"),
    "model_args": (lambda v: isinstance(v, dict), "a JSON object"),
    "label_names": (lambda v: isinstance(v, list | dict), "a list of class names"),
}
_PRETRAINED_FIELDS: dict[str, tuple[Check, str]] = {
    "num_classes": (_is_int, "an int >= 0"),
    "input_size": (
        lambda v: isinstance(v, list) and len(v) == 3 and all(_is_int(x, 1) for x in v),
        "[channels, height, width] ints >= 1",
    ),
    "mean": (_is_number_list(), "a list of numbers, one per channel"),
    "std": (_is_number_list(), "a list of numbers, one per channel"),
    "crop_pct": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "interpolation": (lambda v: isinstance(v, str), 'a string such as "bicubic"'),
    "label_names": (lambda v: isinstance(v, list | dict), "a list of class names"),
}
_MODEL_ARGS_FIELDS: dict[str, tuple[Check, str]] = {
    "num_classes": (_is_int, "an int >= 0"),
    "in_chans": (lambda v: _is_int(v, 1), "an int >= 1"),
    "img_size": (_is_img_size, "an int >= 1 or [height, width]"),
}


def _show(value: Any, limit: int = 60) -> str:
    """``value`` as JSON text, shortened: the message quotes the file, not Python."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _described(value: Any) -> str:
    """``'a JSON array ([1, 2])'``; just ``'null'`` for null, which says it all."""
    return "null" if value is None else f"a JSON {_json_kind(value)} ({_show(value)})"


def _check_fields(
    path: Path, section: dict[str, Any], fields: dict[str, tuple[Check, str]], prefix: str = ""
) -> None:
    for name, (check, expected) in fields.items():
        if name in section and not check(section[name]):
            value = section[name]
            raise ModelLoadError(
                f"{path}: field '{prefix}{name}' is {_described(value)}; "
                f"expected {expected}. {_ADVICE}"
            )


def _parse(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"Cannot read {path}: {exc}. {_ADVICE}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
            f"Expected a timm config such as {_EXAMPLE}. {_ADVICE}"
        ) from exc


def read_model_config(path: Path) -> dict[str, Any]:
    """The parsed ``config.json`` at ``path``, checked field by field.

    Raises:
        ModelLoadError: the file is not JSON, not a JSON object, lacks ``architecture``,
            or a field timm reads has the wrong type; the message names the file and field.
    """
    config = _parse(path)
    if not isinstance(config, dict):
        raise ModelLoadError(
            f"{path} holds {_described(config)}; expected a "
            f"JSON object describing a timm model, such as {_EXAMPLE}. {_ADVICE}"
        )
    if "architecture" not in config:
        raise ModelLoadError(
            f"{path}: required field 'architecture' is missing; expected the timm model "
            f"name, such as {_EXAMPLE}. {_ADVICE}"
        )
    _check_fields(path, config, _TOP_FIELDS)
    # The legacy flat layout is its own pretrained config.
    pretrained, prefix = config.get("pretrained_cfg", config), "pretrained_cfg."
    if pretrained is config:
        prefix = ""
    _check_fields(path, pretrained, _PRETRAINED_FIELDS, prefix)
    _check_fields(path, config.get("model_args", {}), _MODEL_ARGS_FIELDS, "model_args.")
    return config
