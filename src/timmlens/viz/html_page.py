"""The one builder of timmlens's HTML pages: skeleton, escaping, styles and scripts.

Every page (the explanation page of `timmlens.viz.explanation_page`, the plotly figures of
[`write_html`][timmlens.viz.interactive.write_html], the error report of
`timmlens.viz.report_html`, the concept gallery) is [`render_page`][] around its own
body. Styles and scripts are package data files in ``timmlens/viz/assets`` (plain
``.css`` and ``.js``, checked by the tests with ``node --check``), inlined into the page,
so a page loads nothing from anywhere.

Labels reach a page only through [`escape`][] (HTML) or [`json_for_script`][] (data a
script sets with ``textContent``), so a class called ``<script>alert(1)</script>`` is
shown, never run.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

#: the page sets these attributes on <html>: a count of drawn views, and of JS errors
#: (``assets/errors.js`` and ``assets/explanation.js`` spell the same names)
READY_ATTRIBUTE = "data-timmlens-plotted"
ERRORS_ATTRIBUTE = "data-timmlens-errors"
#: the style every instrumented page starts with (body, heading, note)
PAGE_STYLE = "page.css"


def escape(text: object) -> str:
    """HTML-escape a label (quotes too: it may stand in an attribute, or in plotly's text)."""
    return html.escape(str(text), quote=True)


@cache
def asset(name: str) -> str:
    """The text of ``timmlens/viz/assets/<name>`` (a ``.css`` or ``.js`` file).

    Raises:
        FileNotFoundError: no such asset; the message lists the ones there are.
    """
    folder = resources.files("timmlens.viz").joinpath("assets")
    path = folder.joinpath(name)
    if not path.is_file():
        known = sorted(p.name for p in folder.iterdir() if p.is_file())
        raise FileNotFoundError(
            f"no page asset {name!r} in timmlens/viz/assets; expected one of {known}. "
            "A missing file in an installed package means the wheel was built without its "
            "package data ([tool.setuptools.package-data] in pyproject.toml)."
        )
    return path.read_text(encoding="utf-8")


def json_for_script(data: Any) -> str:
    """JSON safe inside ``<script>``: ``<``, ``>`` and ``&`` as unicode escapes."""
    text = json.dumps(data, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(
    title: str,
    body: str,
    *,
    subtitle: str | None = None,
    styles: Sequence[str] = (PAGE_STYLE,),
    scripts: Sequence[str] = (),
    data: Any = None,
    instrumented: bool = True,
) -> str:
    """A whole self-contained page: ``<head>`` with the styles, ``<h1>title</h1>``, the body.

    Args:
        title: plain text (escaped here): the page's ``<title>`` and its ``<h1>``.
        body: the page's own HTML after the heading (its labels already escaped).
        subtitle: plain text (escaped here) in a ``<p class="note">`` under the heading;
            ``None`` leaves the paragraph out.
        styles: asset names of the style sheets, inlined in this order.
        scripts: asset names of the scripts, inlined at the end of the body.
        data: JSON for the scripts, in ``<script type="application/json"
            id="timmlens-data">`` before them (`json_for_script`).
        instrumented: put the counters of drawn views and of JavaScript errors on
            ``<html>`` (`READY_ATTRIBUTE`, `ERRORS_ATTRIBUTE`) with the error counter
            script in the head; ``False`` gives a page without any script.

    Returns:
        The page's HTML.
    """
    attributes = f' {ERRORS_ATTRIBUTE}="0" {READY_ATTRIBUTE}="0"' if instrumented else ""
    head = [
        "<!DOCTYPE html>",
        f'<html lang="en"{attributes}>',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
    ]
    if instrumented:
        head.append(f"<script>\n{asset('errors.js')}</script>")
    css = "".join(asset(name) for name in styles)
    head += [f"<style>\n{css}</style>", "</head>", "<body>", f"<h1>{escape(title)}</h1>"]
    if subtitle is not None:
        head.append(f'<p class="note">{escape(subtitle)}</p>')
    tail = []
    if data is not None:
        tail.append(
            f'<script type="application/json" id="timmlens-data">{json_for_script(data)}</script>'
        )
    tail += [f"<script>\n{asset(name)}</script>" for name in scripts]
    return "\n".join([*head, body, *tail, "</body>", "</html>", ""])
