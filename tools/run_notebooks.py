"""Execute the notebooks of docs/notebooks and store them with their outputs.

    python tools/run_notebooks.py                       # every notebook, in place
    python tools/run_notebooks.py docs/notebooks/quick_start.ipynb

The docs render the notebooks as stored (mkdocs-jupyter with ``execute: false``), so a
docs build needs no model run and shows what a reader gets; the slow test
``tests/test_notebooks.py`` executes them afresh so they cannot rot. Each notebook runs in
a new kernel of this Python, in a temporary folder (what it writes under ``outputs/``
goes away, and the paths it prints are relative), with the directory of this Python first
on ``PATH`` so ``!timmlens`` is this install's command. Outputs are kept small: a few
figures per notebook at 100 dpi, stored as 256-colour PNGs (`compact`; `MAX_BYTES` is
checked by the tests).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "docs" / "notebooks"
#: the largest stored notebook (outputs included) the tests accept
MAX_BYTES = 1_500_000
#: seconds one cell may take (the leaderboard's benchmark is the longest)
CELL_TIMEOUT = 1200


def notebooks() -> list[Path]:
    """The stored notebooks, in name order."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def execute(path: Path, cwd: Path, timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """``path`` executed in a fresh kernel with ``cwd`` as its working folder.

    Raises nbclient's ``CellExecutionError`` at the first cell that raises.
    """
    book = nbformat.read(path, as_version=4)
    environment = os.environ.copy()
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment["PATH"]])
    environment.setdefault("MPLBACKEND", "agg")
    client = NotebookClient(
        book,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    saved = os.environ.copy()
    os.environ.update(environment)  # the kernel inherits this process's environment
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    for cell in book.cells:  # timings change every run: keep them out of the stored file
        cell.metadata.pop("execution", None)
    return book


#: stderr that says something about the kernel, not the notebook (tqdm.auto imported
#: without ipywidgets); dropped from stored outputs
_KERNEL_NOISE = ("TqdmWarning: IProgress not found", "from .autonotebook import tqdm")


def compact(book: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Smaller stored outputs: each PNG re-encoded with a 256-colour palette where that is
    smaller (photos with overlays shrink about 3.5 times, the figures stay readable; also
    inside the output's HTML display, which embeds the same PNG), and kernel noise on
    stderr left out. Run on a copy to store; the tests read the raw run."""
    import base64
    import io

    from PIL import Image

    for cell in book.cells:
        kept = []
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stderr":
                lines = [
                    line
                    for line in output.text.splitlines(keepends=True)
                    if not any(noise in line for noise in _KERNEL_NOISE)
                ]
                if not lines:
                    continue
                output.text = "".join(lines)
            png = output.get("data", {}).get("image/png")
            if png:
                raw = base64.b64decode(png)
                picture = Image.open(io.BytesIO(raw)).convert("RGB")
                buffer = io.BytesIO()
                picture.quantize(256, method=Image.Quantize.MEDIANCUT).save(
                    buffer, "PNG", optimize=True
                )
                if buffer.tell() < len(raw):
                    smaller = base64.b64encode(buffer.getvalue()).decode()
                    output.data["image/png"] = smaller
                    # a result's HTML display embeds the same PNG: the smaller one there too
                    html = output.data.get("text/html")
                    if isinstance(html, str) and png in html:
                        output.data["text/html"] = html.replace(png, smaller)
            kept.append(output)
        if cell.cell_type == "code":
            cell.outputs = kept
    return book


def output_text(book: nbformat.NotebookNode) -> str:
    """Every text the notebook's cells printed or displayed, joined."""
    parts = []
    for cell in book.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                data = output.get("data", {})
                parts.append(data.get("text/markdown", "") or data.get("text/plain", ""))
            elif output.output_type == "error":
                parts.append("\n".join(output.traceback))
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="default: every stored notebook")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT, help="seconds per cell")
    args = parser.parse_args(argv)
    for path in args.paths or notebooks():
        with tempfile.TemporaryDirectory(prefix="timmlens-notebook-") as folder:
            book = execute(path, Path(folder), timeout=args.timeout)
        nbformat.write(compact(book), path)
        print(f"{path}: {path.stat().st_size / 1e3:.0f} kB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
