"""Issue 26: docstrings and docs pages state what the code does now.

Each claim is checked against its source: the method counts of the README, the docs index
and the package description against the registry, the randomisation docstring against the
figures of docs/sanity_checks.md, ``ExplanationMetrics``' equality with RISE against the
tie-order caveat of ``pixel_ranks``, and the sanity page against the ReLU6 behaviour of
guided backprop.
"""

from __future__ import annotations

import re
from pathlib import Path

from timmlens import parameter_randomization_test
from timmlens.interpretation.metrics import ExplanationMetrics

SANITY_PAGE = Path(__file__).resolve().parents[1] / "docs" / "sanity_checks.md"


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_the_randomisation_docstring_quotes_the_sanity_page():
    doc = _flat(parameter_randomization_test.__doc__)
    page = _flat(SANITY_PAGE.read_text())
    seed0 = re.search(r"With seed 0 alone the fully randomised mean is (-?\d\.\d+)", page)
    seed2 = re.search(r"with seed 2 it is (-?\d\.\d+)", page)
    assert seed0 and seed2
    assert "0.59" not in doc
    assert f"is {seed0.group(1)} with seed 0 alone and {seed2.group(1)} with seed 2" in doc


def test_the_rise_equality_states_the_tie_order_caveat():
    doc = _flat(ExplanationMetrics.__doc__)
    claim = doc[doc.index("equals RISE's ``evaluation.py``") :][:300]
    assert "distinct" in claim and 'tie_order="rise"' in claim and "pixel_ranks" in claim


def test_the_sanity_page_says_guided_backprop_needs_relu_and_shows_it():
    page = _flat(SANITY_PAGE.read_text())
    section = page[page.index("## Guided backprop needs ReLU") :]
    section = section[: section.index(" ## ", 10)]
    for needed in ("ReLU6", "saliency", "nn.ReLU", "top-1", "chelsea", "coffee", "Adebayo"):
        assert needed in section, needed
    # The measured figures: one row per step (13 on Lite0), four numbers each.
    assert "guided backprop Spearman | saliency Spearman" in section
    assert len(re.findall(r"\| \d+ \| [\w.() ]+ \|(?: -?\d\.\d{3} \|){4}", section)) == 13


def test_the_method_counts_are_the_registrys():
    from collections import Counter

    from timmlens.interpretation.registry import METHODS, methods

    root = SANITY_PAGE.parents[1]
    total = len(methods())
    for path in ("README.md", "docs/index.md", "pyproject.toml"):
        text = _flat((root / path).read_text(encoding="utf-8"))
        counts = {int(n) for n in re.findall(r"(\d+) methods", text)}
        assert counts == {total}, (path, counts, total)
    kinds = Counter(spec.kind for spec in METHODS.values())
    readme = _flat((root / "README.md").read_text(encoding="utf-8"))
    for kind, words in (("cam", "CAM"), ("input", "input attribution")):
        assert f"{kinds[kind]} {words}:" in readme, kind
    assert f"{kinds['attention']} attention/relevance" in readme
