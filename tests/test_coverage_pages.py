"""The coverage pages' generators can redo one method without re-running the others.

``benchmarks/sweep_reuse.py`` rebuilds the caches of ``benchmarks/zoo_coverage.py`` and
``benchmarks/method_matrix.py`` from the committed pages, and decides structural refusals
on a meta-device build. A page written from an imported cache must be the page imported
(every mark, reason, failure and second kept), and a refusal decided on the meta device
must be the cell the sweep records on the real model.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from timmlens.interpretation.registry import methods
from timmlens.testing import explainable_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import method_matrix as mm  # noqa: E402
import zoo_coverage as zc  # noqa: E402
from sweep_reuse import (  # noqa: E402
    matrix_cells_from_page,
    structural_refusals,
    zoo_results_from_page,
)

VERSIONS = r"with timm \S+ and torch \S+?( |\.)"


def _versionless(text: str) -> str:
    return re.sub(VERSIONS, r"with timm X and torch Y\1", text)


def test_the_zoo_page_written_from_its_own_cells_is_the_page():
    page = zc.TABLE.read_text()
    results = zoo_results_from_page(page)
    names = methods()
    missing = [f for f in timm.list_modules() if f not in {r.family for r in results}]
    assert len(results) == 98 and all(r.cells for r in results)
    assert _versionless(zc.page(results, names, missing)) == _versionless(page)


def test_zoo_cells_keep_their_reason_star_and_provenance():
    by_family = {r.family: r for r in zoo_results_from_page(zc.TABLE.read_text())}
    beit = by_family["beit"]
    assert (beit.architecture, beit.depth, beit.input_size) == ("beit_base_patch16_224", 4, 224)
    assert beit.cells["scorecam"].status == zc.FAILING
    assert beit.cells["scorecam"].input_size == zc.FALLBACK_SIDE  # "**FAIL***"
    assert beit.cells["scorecam"].note.startswith("timed out")
    assert beit.cells["gradcam"].carried.startswith("the sweep of 2026-11-30")
    assert beit.cells["fullgrad"].carried == ""  # ran with the page's settings
    refusal = beit.cells["deeplift"]
    assert refusal.status == zc.REFUSED and refusal.note.startswith("UnsupportedModelError: ")


def test_the_matrix_page_written_from_its_own_cells_is_the_page_and_says_what_was_carried():
    page = mm.TABLE.read_text()
    cells = matrix_cells_from_page(page)
    keys = list(mm.MODELS)
    assert list(cells) == keys and all(len(cells[k]) == len(methods()) for k in keys)
    flat = [c for key in keys for c in cells[key].values()]
    text = mm.page_text(flat, methods(), keys, figure=True)

    # once carried, the page says so; the tables and the rest are the page's own
    def bare(text: str) -> str:
        text = re.sub(r"\*\*Carried over:\*\*.*\n\n", "", text)
        return re.sub(r"on \d{4}-\d{2}-\d{2} with", "", _versionless(text))

    assert bare(text) == bare(page)
    assert f"({len(flat)} of {len(flat)})" in text
    # reading the new page back gives the same cells, provenance included
    again = matrix_cells_from_page(text)
    assert again == cells
    # a row run again is named as such; its seconds are the new run's
    cells["resnet18"]["lrp"] = mm.Cell("lrp", "resnet18", "works", 9.5, True)
    flat = [c for key in keys for c in cells[key].values()]
    text = mm.page_text(flat, methods(), keys, figure=True)
    assert "the other rows (`lrp`) ran again on" in text
    assert matrix_cells_from_page(text)["resnet18"]["lrp"].seconds == 9.5


def _cases():
    return [("test_vit", "lrp"), ("test_resnet", "attnlrp"), ("test_resnet", "chefer")]


@pytest.mark.parametrize(("architecture", "method"), _cases())
def test_a_refusal_on_the_meta_device_is_the_cell_the_sweep_records(architecture, method):
    result = zc.FamilyResult("family", architecture)
    decided = structural_refusals(result, [method, "gradcam"])
    assert set(decided) == {method}  # gradcam does not refuse: left to the real model
    model = explainable_model(architecture)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    real = zc.run_cell(method, model, x, [0, 1], timeout=60)
    assert real.status == zc.REFUSED
    assert (decided[method].status, decided[method].note) == (real.status, real.note)


def test_a_method_that_runs_is_not_decided_on_the_meta_device():
    # lrp reads test_resnet's blocks: the sweep must run it on the real model
    assert structural_refusals(zc.FamilyResult("resnet", "test_resnet"), ["lrp"]) == {}


def test_a_cpu_clock_limit_counts_cpu_time_not_waiting():
    zc.CPU_CLOCK[0] = True
    try:
        zc._arm(1)
        time.sleep(1.5)  # waiting (another job's turn on a shared CPU) does not count
        with pytest.raises(zc.Timeout):
            while True:  # computing does
                sum(range(1000))
    finally:
        zc._disarm()
        zc.CPU_CLOCK[0] = False
