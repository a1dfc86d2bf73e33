"""The methods page (``docs/methods/index.md``), generated from the method registry alone.

    python tools/methods_page.py docs/methods/index.md           # write it (``make docs``)
    python tools/methods_page.py docs/methods/index.md --check   # fail if out of date

Kept out of the package: the library has no use for its own docs page.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from timmlens.interpretation.registry import METHODS


def _default_text(parameter: inspect.Parameter) -> str:
    if parameter.default is inspect.Parameter.empty:
        return f"`{parameter.name}`"
    return f"`{parameter.name}={parameter.default!r}`"


def methods_markdown() -> str:
    """The methods page: one section per registered method, in registry order."""
    specs = list(METHODS.values())
    lines = [
        "# Methods at a glance",
        "",
        "Generated from the method registry by "
        "`python tools/methods_page.py docs/methods/index.md` (`make docs`); "
        "do not edit by hand. The name is what `create_explainer`, `quick_explain(method=)`, "
        "`compare_methods`, `evaluate` and the CLI's `--method` take, and what result rows "
        "and figures are keyed by; aliases are accepted as input only.",
        "",
        "| name | title | kind | applies to | cost per batch | summary |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec in specs:
        lines.append(
            f"| `{spec.name}` | {spec.title} | {spec.kind} | {spec.applies_to} | "
            f"{spec.cost or '-'} | {spec.summary or '-'} |"
        )
    for spec in specs:
        options = ", ".join(_default_text(p) for p in spec.options().values()) or "none"
        aliases = ", ".join(f"`{a}`" for a in spec.aliases) or "none"
        lines += [
            "",
            f"## `{spec.name}`: {spec.title}",
            "",
            spec.summary or "",
            "",
            f"- **class:** `{spec.cls.__module__}.{spec.cls.__qualname__}`",
            f"- **kind:** {spec.kind}" + (" (taps a layer: `target_layer=`)" * spec.uses_layer),
            f"- **paper:** {spec.paper or '-'}",
            f"- **formula:** `{spec.formula}`" if spec.formula else "- **formula:** -",
            f"- **cost:** {spec.cost or '-'}",
            f"- **applies to:** {spec.applies_to}",
            f"- **aliases:** {aliases}",
            f"- **options:** {options}",
            "- **in `compare_methods` by default:** "
            + ("yes" if spec.compared_by_default else "no (name it)"),
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Write the page to PATH, or with ``--check`` exit 1 when PATH differs from it."""
    parser = argparse.ArgumentParser(description="Generate the methods page from the registry.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--check", action="store_true", help="fail if PATH is out of date")
    args = parser.parse_args(argv)
    text = methods_markdown()
    if args.check:
        if not args.path.exists() or args.path.read_text(encoding="utf-8") != text:
            print(f"{args.path} is out of date with the method registry; run `make docs`.")
            return 1
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
