"""The notebooks of docs/notebooks (issue 30, item 7): stored executed and small, listed in
the docs, and (slow) executed afresh with their key outputs checked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "docs" / "notebooks"
NAMES = ("quick_start", "own_model", "leaderboard")


def _stored(name: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))


def _code_cells(book: dict) -> list[dict]:
    return [cell for cell in book["cells"] if cell["cell_type"] == "code"]


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_is_executed_top_to_bottom_and_small(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    assert path.stat().st_size < 1_500_000, f"{path} is {path.stat().st_size} bytes"
    cells = _code_cells(_stored(name))
    counts = [cell["execution_count"] for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{name}: not run in order: {counts}"
    kinds = [output["output_type"] for cell in cells for output in cell["outputs"]]
    assert "error" not in kinds
    figures = sum("image/png" in output.get("data", {}) for c in cells for output in c["outputs"])
    assert 1 <= figures <= 4, f"{name}: {figures} figures stored"


def test_the_docs_list_every_notebook():
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    assert "mkdocs-jupyter:" in mkdocs and "execute: false" in mkdocs
    for name in NAMES:
        assert f"notebooks/{name}.ipynb" in mkdocs
        assert f"({name}.ipynb)" in (NOTEBOOKS / "index.md").read_text()
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.fixture(scope="module")
def runner():
    pytest.importorskip("nbclient", reason="the dev extras install nbclient")
    pytest.importorskip("ipykernel", reason="the dev extras install ipykernel")
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "tools/run_notebooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(runner, name: str, folder: Path) -> str:
    """Execute a notebook in ``folder`` (a cell that raises fails the test) -> its text."""
    book = runner.execute(NOTEBOOKS / f"{name}.ipynb", folder)
    return runner.output_text(book)


@pytest.mark.slow
def test_quick_start_runs(runner, tmp_path):
    text = _run(runner, "quick_start", tmp_path)
    assert "tiger cat" in text  # Lite0's prediction for chelsea
    assert "target_name='tabby'" in text  # the comparison explains the class named
    for name in ("gradcam", "gradcampp", "ig"):
        assert f"\n{name} " in f"\n{text}"  # a row of insertion/deletion scores
    assert "espresso" in text  # explain_full's titles name the second photo's class


@pytest.mark.slow
def test_own_model_runs_from_python_and_the_command_line(runner, tmp_path):
    text = _run(runner, "own_model", tmp_path)
    work = tmp_path / "outputs" / "notebooks" / "own_model"
    assert (work / "finetuned.pth").is_file()
    assert "6 of 6 images labelled (explained for their true class)" in text
    assert "not comparable to papers" in text
    # the command line wrote its rows, with the folder's labels
    names = (work / "names.txt").read_text().split("\n")[:6]
    rows = [json.loads(line) for line in (work / "evaluate_cli" / "rows.jsonl").open()]
    assert len(rows) == 6
    for row in rows:
        folder = row["id"].split("/")[0].replace("_", " ")
        assert names[row["label"]] == folder == names[row["target"]]
    assert f"label {names[rows[0]['label']]}" in text
    summary = json.loads((work / "evaluate_cli" / "summary.json").read_text())
    assert summary["n_labelled"] == 6 and summary["profile"] == "quick"


@pytest.mark.slow
def test_leaderboard_runs(runner, tmp_path):
    text = _run(runner, "leaderboard", tmp_path)
    out = tmp_path / "outputs" / "notebooks" / "leaderboard" / "python"
    for name in ("leaderboard.md", "leaderboard.json", "leaderboard_rows.csv", "leaderboard.tex"):
        assert (out / name).is_file(), name
    for method in ("gradcam", "gradcampp", "ig", "randomcam", "centerprior"):
        assert f"`{method}`" in text
    assert "Not comparable to papers" in text or "not comparable to papers" in text
    assert "\\begin{tabular}" in text and "best:" in text
