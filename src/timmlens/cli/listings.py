"""``timmlens methods`` and ``timmlens metrics``: what can be run, with its options and
defaults, read from the registries; and ``--method-option k=v``, parsed and checked
against the options each chosen method takes (the same constructor keywords as Python).
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Sequence
from typing import Any

from ..interpretation.registry import METHODS, methods, resolve_method

#: constructor arguments that are not options: the model and the engine's plumbing
_NOT_OPTIONS = {"self", "model", "args", "kwargs"}


def method_option_defaults(name: str) -> dict[str, Any]:
    """``{option: default}`` of method ``name``'s constructor (``inspect.Parameter.empty``
    for an option without a default)."""
    signature = inspect.signature(resolve_method(name).cls.__init__)
    return {
        parameter.name: parameter.default
        for parameter in signature.parameters.values()
        if parameter.name not in _NOT_OPTIONS
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }


def _shown(value: Any) -> str:
    return "required" if value is inspect.Parameter.empty else repr(value)


def methods_listing(kind: str | None = None) -> str:
    """One block per method: name, engine, summary, cost and options with defaults."""
    blocks = []
    for name in methods(kind):
        spec = METHODS[name]
        options = ", ".join(f"{k}={_shown(v)}" for k, v in method_option_defaults(name).items())
        lines = [f"{name} ({spec.kind}): {spec.summary}"]
        if spec.cost:
            lines.append(f"    cost: {spec.cost}")
        lines.append(f"    options: {options or 'none'}")
        if spec.quick_options:
            quick = ", ".join(f"{k}={v!r}" for k, v in spec.quick_options.items())
            lines.append(f"    --quick uses: {quick}")
        blocks.append("\n".join(lines))
    hint = "Set an option with --method-option NAME=VALUE (e.g. --method-option n_steps=64)."
    return "\n".join(blocks) + f"\n\n{hint}\n"


def metrics_listing() -> str:
    """One block per metric: name, direction, what it needs, summary, its options."""
    from ..interpretation.metrics.registry import metrics as metric_names
    from ..interpretation.metrics.registry import resolve_metric

    blocks = []
    for name in metric_names():
        spec = resolve_metric(name)
        direction = "higher is better" if spec.higher_is_better else "lower is better"
        lines = [f"{name} ({direction}; needs {spec.needs}): {spec.summary}"]
        lines += [f"    {o.name}={o.default!r}: {o.doc}" for o in spec.options]
        blocks.append("\n".join(lines))
    return "\n".join(blocks) + "\n"


def _value(text: str) -> Any:
    """``64`` -> 64, ``0.5`` -> 0.5, ``(8,8)`` -> (8, 8), ``True``; anything else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_method_options(items: Sequence[str], chosen: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["n_steps=64", "ig.baseline=0.5"]`` -> ``{method: {option: value}}`` for the
    ``chosen`` methods: a bare option goes to every chosen method that takes it,
    ``method.option`` to that method only.

    Raises:
        ValueError: an item without ``=``, or an option none of the methods takes (the
            message lists the options they do take).
    """
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"--method-option {item!r}: expected NAME=VALUE, e.g. --method-option n_steps=64"
            )
        method, _, option = key.strip().rpartition(".")
        targets = [resolve_method(method).name] if method else list(chosen)
        takers = [m for m in targets if option in method_option_defaults(m)]
        if not takers:
            known = sorted({o for m in targets for o in method_option_defaults(m)})
            raise ValueError(
                f"--method-option {item!r}: {', '.join(targets)} take{'s' * (len(targets) == 1)} "
                f"no option '{option}'; options: {', '.join(known) or 'none'} (see: timmlens "
                f"methods)"
            )
        for name in takers:
            options.setdefault(name, {})[option] = _value(text)
    return options


#: ``--model-arg`` names that other options set (their own option says it better)
_OWN_OPTIONS = {"num_classes": "--num-classes N", "pretrained": "--model with a pretrained tag"}


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """``["img_size=384", "drop_rate=0.1"]`` -> ``{"img_size": 384, "drop_rate": 0.1}``:
    ``timm.create_model`` keywords, each value a Python literal (else a string).

    Raises:
        ValueError: an item without ``=`` or a name that is not an identifier, or one
            that another option sets (``num_classes``: ``--num-classes``).
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(
                f"--model-arg {item!r}: expected NAME=VALUE with NAME a timm.create_model "
                f"keyword, e.g. --model-arg img_size=384"
            )
        if key in _OWN_OPTIONS:
            raise ValueError(f"--model-arg {item!r}: use {_OWN_OPTIONS[key]} for {key}")
        options[key] = _value(text)
    return options
