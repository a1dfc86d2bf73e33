"""The HTML pages' one builder and its assets: scripts that parse, style sheets that close,
and every page (explanation, error report, concept gallery) built from the same skeleton."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from timmlens.viz.html_page import (
    ERRORS_ATTRIBUTE,
    READY_ATTRIBUTE,
    asset,
    escape,
    json_for_script,
    render_page,
)

ASSETS = Path(str(resources.files("timmlens.viz").joinpath("assets")))
SCRIPTS = sorted(ASSETS.glob("*.js"))
STYLES = sorted(ASSETS.glob("*.css"))
EVIL = "<script>alert(1)</script>"


def test_there_are_assets_of_both_kinds():
    assert {p.name for p in SCRIPTS} >= {"errors.js", "explanation.js"}
    assert {p.name for p in STYLES} >= {"page.css", "explanation.css", "report.css"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JavaScript syntax check needs `node --check`")
    run = subprocess.run([node, "--check", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def _without_comments_and_strings(css: str) -> str:
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    return re.sub(r"\"[^\"\n]*\"|'[^'\n]*'", '""', css)


@pytest.mark.parametrize("style", STYLES, ids=lambda p: p.name)
def test_style_sheets_are_well_formed(style):
    text = style.read_text(encoding="utf-8")
    assert text.count("/*") == text.count("*/"), "an unclosed comment"
    depth = 0
    for char in _without_comments_and_strings(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth in (0, 1), "a '}' without its '{', or a nested block"
    assert depth == 0, "a '{' without its '}'"
    # every rule is `selectors { property: value; ... }`
    for body in re.findall(r"\{([^}]*)\}", _without_comments_and_strings(text)):
        for declaration in filter(str.strip, body.split(";")):
            assert re.fullmatch(r"\s*[-a-z]+\s*:\s*\S[^:]*", declaration), declaration
    # nothing fetched from outside the page
    assert "url(" not in text and "@import" not in text


def test_scripts_count_on_the_attributes_python_reads():
    assert f'"{ERRORS_ATTRIBUTE}"' in asset("errors.js")
    script = asset("explanation.js")
    assert f'"{READY_ATTRIBUTE}"' in script and f'"{ERRORS_ATTRIBUTE}"' in script


def test_assets_are_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    shipped = {Path("src/timmlens", pattern) for pattern in patterns["timmlens"]}
    for path in [*SCRIPTS, *STYLES]:
        assert any(path.match(str(pattern)) for pattern in shipped), path


def test_unknown_asset_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match=r"no page asset 'nope.js'.*'explanation.js'"):
        asset("nope.js")


def test_page_escapes_its_title_and_subtitle_and_inlines_its_assets():
    page = render_page(
        EVIL,
        "<p>body</p>",
        subtitle=EVIL,
        styles=("page.css", "explanation.css"),
        scripts=("explanation.js",),
        data={"label": EVIL},
    )
    assert EVIL not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 3  # title, h1, note
    assert asset("explanation.css") in page and asset("explanation.js") in page
    assert f'{ERRORS_ATTRIBUTE}="0" {READY_ATTRIBUTE}="0"' in page
    assert json_for_script({"label": EVIL}) in page and "\\u003cscript\\u003e" in page
    assert not re.search(r"<script[^>]*\bsrc=|<link", page)
    assert page.index("<h1>") < page.index("<p>body</p>") < page.index('id="timmlens-data"')
    assert page.endswith("</body>\n</html>\n")


def test_a_page_without_instrumentation_has_no_script():
    page = render_page("report", "<p>x</p>", styles=("report.css",), instrumented=False)
    assert "<script" not in page and ERRORS_ATTRIBUTE not in page
    assert '<p class="note">' not in page  # no subtitle given
    assert escape('a & "b"') == "a &amp; &quot;b&quot;"


def test_every_page_shares_the_skeleton(tmp_path):
    """The explanation page, the error report and the concept gallery: one head, one h1."""
    import numpy as np

    from timmlens.viz.concept_gallery import render_gallery
    from timmlens.viz.interactive import explanation_html
    from timmlens.viz.report_html import render_report

    photo = np.full((30, 40, 3), 100, dtype=np.uint8)
    explanation = explanation_html(
        tmp_path / "e.html", photo, {"m": np.random.default_rng(0).random((8, 8))}, label=EVIL
    ).read_text(encoding="utf-8")
    summary = {
        "model": EVIL,
        "weights": None,
        "method": "gradcam",
        "data": "d",
        "num_classes": 2,
        "counts": {"images": 0, "labelled": 0, "correct": 0, "errors": 0, "unlabelled": 0},
        "top_k": {},
        "confusion_pairs": [],
        "per_class": [],
        "gallery": {"shown": 0, "left_out": 0, "max_examples": None},
    }
    report = render_report(summary, [], {})
    gallery_summary = {
        "n_concepts": 0,
        "layer": "l",
        "n_images": 0,
        "model": "m",
        "fit": "nmf",
        "relative_error": 0.0,
        "labels_unavailable_reason": None,
        "concepts": [],
    }
    gallery = render_gallery(gallery_summary, [])
    for page in (explanation, report, gallery):
        assert page.startswith('<!DOCTYPE html>\n<html lang="en"')
        assert '<head>\n<meta charset="utf-8">\n<title>' in page
        assert page.count("<h1>") == 1 and page.endswith("</body>\n</html>\n")
        assert EVIL not in page
    assert "<h1>Error analysis: &lt;script&gt;" in report and "<script" not in report
    assert asset("report.css") in report and asset("concepts.css") in gallery
