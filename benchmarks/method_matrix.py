"""Every registered method on six timm families: does it work, or why does it refuse?

Models: resnet18, the real (bundled) EfficientNet-Lite0, convnext_atto, vit_tiny,
deit_tiny_distilled and swin_tiny. All but EfficientNet-Lite0 have random weights made
explainable by ``timmlens.testing.make_explainable`` (nothing is downloaded); each runs
at its own input size, capped at 224 px. Every method is built through
``as_explainer(name, model, **quick)`` (``quick``: the method's own ``quick_options``) and run on
scikit-image's chelsea photo for the predicted class and the runner-up. A cell "works"
when both maps are finite and non-constant and differ between the two classes (a
class-agnostic method must give the same map twice: "works (class-agnostic)"); else it
holds the refusal (first line of the ``TimmLensError``) or ``FAILS: <exception>``.

Writes ``docs/methods/matrix.md`` (generated; never edit it by hand) and the figure
``docs/images/methods_chelsea.png``: every method that works on the real
EfficientNet-Lite0, for its predicted class.

Each cell is cached in ``outputs/method_matrix/<model>.json`` (git-ignored; the maps of the
real model beside it) as soon as it has run, so a sweep resumes where it stopped and two
processes can share the models (``--models``); ``--redo`` runs the named cells again, and a
cache made with other quick settings is dropped. A run over every model and method, or
``--write``, writes the page and the figure from the cache: a cell that has not run yet
says **not run**.

    .venv/bin/python benchmarks/method_matrix.py [--methods gradcam ig ...] [--models resnet18 ...]
        [--redo] [--write] [--from-page] [--keep-figure]

To redo one method after a change (the cache lost): ``--from-page`` caches every cell as
the committed page shows it (status and seconds, no maps; ``benchmarks/sweep_reuse.py``),
``--methods <name> --redo`` runs that method again, and ``--write --keep-figure`` writes
the page from the cache, saying which rows were carried over, and leaves the figure.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import re
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from skimage import data as skdata
from torch import nn

import timmlens
from timmlens.data.preprocess import data_config
from timmlens.errors import TimmLensError
from timmlens.interpretation.input.perturbation import patch_pixels
from timmlens.interpretation.registry import as_explainer, methods, resolve_method
from timmlens.testing import explainable_model

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "methods" / "matrix.md"
CACHE = ROOT / "outputs" / "method_matrix"
NOT_RUN = "not run"
# The page's line naming the rows carried over from an earlier page (``write_page``)
CARRIED_PATTERN = (
    r"^\*\*Carried over:\*\* the cells of (.*?) \(\d+ of \d+\) come from (.*?) "
    r"\(its cache lost\)"
)
FIGURE = ROOT / "docs" / "images" / "methods_chelsea.png"
MAX_SIDE = 224
REAL = "efficientnet_lite0"
# Column key -> timm name (None: the bundled, trained EfficientNet-Lite0).
MODELS: dict[str, str | None] = {
    "resnet18": "resnet18",
    REAL: None,
    "convnext_atto": "convnext_atto",
    "vit_tiny": "vit_tiny_patch16_224",
    "deit_tiny_distilled": "deit_tiny_distilled_patch16_224",
    "swin_tiny": "swin_tiny_patch4_window7_224",
}
# Small settings for the slow methods (each method's ``quick_options``, the one set the tests
# and the leaderboard use too): the question is whether a method works, not how good its
# map is at paper settings.
# Occlusion on models without a patch size (CNNs, Swin): 56 px windows, stride 28 (49
# forwards) instead of the default 16 px (729); ViTs keep their patch-sized default.
CNN_OCCLUSION_WINDOW = 56


@dataclass
class Cell:
    method: str
    model: str
    status: str = ""
    seconds: float = 0.0
    works: bool = False
    heatmap: np.ndarray | None = field(default=None, repr=False)
    carried: str = ""  # where a cell not run by this cache comes from (an earlier page)


class Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise Timeout("timed out")


def build_model(key: str) -> nn.Module:
    """The column's model in eval mode, fed at most ``MAX_SIDE`` px."""
    name = MODELS[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name is None:
            model = timmlens.load_model(f"bundled:{key}").eval()
        else:
            model = explainable_model(name)
            side = int(data_config(model)["input_size"][-1])
            if side > MAX_SIDE:
                model = explainable_model(name, img_size=MAX_SIDE)
                model.pretrained_cfg = {
                    **model.pretrained_cfg,
                    "input_size": (3, MAX_SIDE, MAX_SIDE),
                }
    return model


def options_for(method: str, model: nn.Module) -> dict[str, Any]:
    """The quick settings of ``method`` for ``model`` (``register_method`` has checked
    them against the constructor)."""
    options = dict(resolve_method(method).quick_options)
    if method == "occlusion":  # CNNs: one window size here; ViTs: their patch-sized default
        options.pop("window", None)
        if patch_pixels(model) is None:
            options["window"] = CNN_OCCLUSION_WINDOW
    return options


def short_reason(exc: BaseException, method: str, limit: int = 100) -> str:
    """The gist of a refusal for a table cell, whose row and column already name the
    method and the model: ``"lrp: vit_tiny (family 'x') is not covered: ..."`` -> the
    unsupported modules, else the first sentence without its ``method: model (family)``."""
    first = (str(exc).strip().splitlines() or [""])[0]
    modules = re.findall(r"\w+ \(x\d+\)", first)
    if modules:
        rules = "Zennit's" if method == "lrp" else "Captum's"
        return f"not covered by {rules} rules: " + ", ".join(modules)
    while first.startswith(f"{method}: "):  # AttnLRP's refusals carry the prefix twice
        first = first.removeprefix(f"{method}: ")
    first = re.sub(r"^\S+ \([^)]*\) ", "", first).split(". ")[0].rstrip(".")
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


def judge(first: torch.Tensor, second: torch.Tensor, class_agnostic: bool) -> str:
    """'works', 'works (class-agnostic)' or what is wrong with the two maps ``(H, W)``."""
    for maps in (first, second):
        if not torch.isfinite(maps).all():
            return "FAILS: map has NaN/inf"
        if maps.max() - maps.min() <= 0:
            return "FAILS: constant map"
    same = torch.allclose(first, second, rtol=0, atol=1e-6)
    if class_agnostic:
        return "works (class-agnostic)" if same else "FAILS: class-agnostic map depends on class"
    return "FAILS: same map for both classes" if same else "works"


def run_cell(
    method: str, key: str, model: nn.Module, inputs: torch.Tensor, classes: list[int], timeout: int
) -> Cell:
    cell = Cell(method, key)
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        explainer = as_explainer(method, model, **options_for(method, model))
        maps = [explainer.explain_batch(inputs, [c])[0].detach().cpu() for c in classes]
        cell.status = judge(*maps, class_agnostic=explainer.class_agnostic)
        cell.works = cell.status.startswith("works")
        cell.heatmap = maps[0].numpy()
    except TimmLensError as exc:  # a refusal: part of the answer
        cell.status = short_reason(exc, method)
    except Exception as exc:  # anything else is a bug to report
        first = (str(exc).strip().splitlines() or [""])[0]
        cell.status = f"FAILS: {type(exc).__name__}: {first[:100]}"
        if "-v" in sys.argv:
            traceback.print_exc()
    finally:
        signal.alarm(0)
        cell.seconds = round(time.perf_counter() - start, 1)
    return cell


def load_cells(key: str) -> dict[str, Cell]:
    """The cached cells of the model ``key`` (with the real model's maps), if they were
    made with the present quick settings."""
    path = CACHE / f"{key}.json"
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    if raw.get("settings") != settings_note():
        return {}
    cells = {}
    for method, fields in raw["cells"].items():
        cell = Cell(method, key, **fields)
        heatmap = CACHE / key / f"{method}.npy"
        if cell.works and heatmap.exists():
            cell.heatmap = np.load(heatmap)
        cells[method] = cell
    return cells


def save_cells(key: str, cells: dict[str, Cell]) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    raw = {
        "settings": settings_note(),
        "cells": {
            m: {"status": c.status, "seconds": c.seconds, "works": c.works}
            | ({"carried": c.carried} if c.carried else {})
            for m, c in cells.items()
        },
    }
    (CACHE / f"{key}.json").write_text(json.dumps(raw, indent=1))


def sweep_model(
    key: str, names: list[str], timeout: int, photo: np.ndarray, redo: bool = False
) -> list[Cell]:
    """Run the cells of ``names`` on the model ``key`` that are not cached yet (all of
    them with ``redo``), caching each as it finishes."""
    cached = load_cells(key)
    todo = [m for m in names if redo or m not in cached]
    if todo:
        model = build_model(key)
        inputs = timmlens.prepare_images(photo, model).tensor
        with torch.no_grad():
            ranked = model(inputs)[0].argsort(descending=True)
        classes = [int(ranked[0]), int(ranked[1])]  # predicted class and the runner-up
    for method in todo:
        cell = run_cell(method, key, model, inputs, classes, timeout)
        cached[method] = cell
        if key == REAL and cell.heatmap is not None:
            (CACHE / key).mkdir(parents=True, exist_ok=True)
            np.save(CACHE / key / f"{method}.npy", cell.heatmap)
        save_cells(key, cached)
        print(f"{key:20s} {method:16s} {cell.seconds:6.1f}s  {cell.status}", flush=True)
    return [cached[m] for m in names]


def markdown_table(cells: list[Cell], names: list[str], keys: list[str], what: str) -> list[str]:
    by = {(c.method, c.model): c for c in cells}
    missing = Cell("", "", status=NOT_RUN)
    lines = [
        "| method | " + " | ".join(keys) + " |",
        "| --- |" + " --- |" * len(keys),
    ]
    for method in names:
        row = []
        for key in keys:
            cell = by.get((method, key), missing)
            if what == "status":
                text = cell.status
            else:
                text = "-" if cell.status == NOT_RUN else f"{cell.seconds:.1f}"
            row.append(text.replace("|", "\\|"))
        lines.append(f"| `{method}` | " + " | ".join(row) + " |")
    return lines


def settings_note() -> str:
    fast = ", ".join(
        f"{method} " + " ".join(f"{k}={v}" for k, v in opts.items())
        for method in methods()
        if method != "occlusion" and (opts := resolve_method(method).quick_options)
    )
    return (
        f"Settings: {fast}; occlusion window={CNN_OCCLUSION_WINDOW} (stride "
        f"{CNN_OCCLUSION_WINDOW // 2}) on models without a patch size (CNNs, Swin), the "
        "patch-sized default on ViTs; every other method at its defaults."
    )


def carried_note(cells: list[Cell]) -> list[str]:
    """The page's lines naming the rows carried over from an earlier page, by source."""
    sources: dict[str, list[Cell]] = {}
    for cell in cells:
        if cell.carried:
            sources.setdefault(cell.carried, []).append(cell)
    lines = []
    rerun = ", ".join(f"`{m}`" for m in dict.fromkeys(c.method for c in cells if not c.carried))
    later = (
        f"; the other rows ({rerun}) ran again on {datetime.date.today().isoformat()} with "
        "the code of this commit. Their seconds come from that later run, on a machine under "
        "other load: compare them with the carried rows' only roughly."
        if rerun
        else "."
    )
    for source, carried in sources.items():
        rows = ", ".join(f"`{m}`" for m in dict.fromkeys(c.method for c in carried))
        lines += [
            f"**Carried over:** the cells of {rows} ({len(carried)} of {len(cells)}) come "
            f"from {source} (its cache lost), run with the same settings{later}",
            "",
        ]
    return lines


def write_page(cells: list[Cell], names: list[str], keys: list[str], figure: bool) -> str:
    """Write ``TABLE`` (`page_text`); returns its text."""
    text = page_text(cells, names, keys, figure)
    TABLE.write_text(text)
    return text


def page_text(cells: list[Cell], names: list[str], keys: list[str], figure: bool) -> str:
    """The page of ``cells``: the status table, the figure's place, the seconds table."""
    ran = {(c.method, c.model) for c in cells}
    left = [(m, k) for m in names for k in keys if (m, k) not in ran]
    unrun = (
        [
            f"**{len(left)} of {len(names) * len(keys)} cells have not run yet** (the sweep "
            "was stopped before them; it resumes from its cache): they say **not run**, and "
            "the figure below lacks any of them on EfficientNet-Lite0.",
            "",
        ]
        if left
        else []
    )
    if any("Timeout" in c.status for c in cells):
        unrun += [
            "**FAILS: Timeout** marks a cell that ran past its time limit (`--timeout`, "
            "300 s by default) on the shared CPU: a limit of this run, not an error of the "
            "method.",
            "",
        ]
    unrun += carried_note(cells)
    lines = [
        "# Every method on every family",
        "",
        "Generated by `benchmarks/method_matrix.py` (do not edit by hand) on "
        f"{datetime.date.today().isoformat()} with timm {timm.__version__} and torch "
        f"{torch.__version__}.",
        "",
        "Each method runs through `as_explainer(name, model, **options)` on scikit-image's "
        "chelsea photo, for the model's predicted class and its runner-up. EfficientNet-Lite0 "
        "is the bundled, trained model; the others have random weights made explainable by "
        "`timmlens.testing.make_explainable`, all at 224 px. A cell says **works** when both "
        "maps are finite and non-constant and differ between the two classes "
        "(**works (class-agnostic)**: a method that ignores the class by design gave the same "
        "map twice); otherwise it gives the reason the method refuses the model, or "
        "**FAILS** with the error.",
        "",
        *unrun,
        settings_note() + " The settings are small on purpose: the table says whether a "
        "method works, not how good its map is at paper settings.",
        "",
        *markdown_table(cells, names, keys, "status"),
        "",
    ]
    if figure:
        lines += [
            "## Every working method on chelsea",
            "",
            "The trained EfficientNet-Lite0, the predicted class, the settings above.",
            "",
            f"![Every method on chelsea](../images/{FIGURE.name})",
            "",
        ]
    lines += [
        "## Seconds per cell",
        "",
        "Building the explainer and both calls, on the CPU; a shared machine, so only a "
        "rough guide.",
        "",
        *markdown_table(cells, names, keys, "seconds"),
        "",
    ]
    return "\n".join(lines)


def draw_figure(cells: list[Cell], photo: np.ndarray) -> int:
    """The overlays of the methods that work on the real model; returns the PNG's bytes."""
    from PIL import Image

    from timmlens.viz.labels import class_label
    from timmlens.viz.static import OverlayPanel, plot_grid

    model = build_model(REAL)
    batch = timmlens.prepare_images(photo, model)
    with torch.no_grad():
        probs = model(batch.tensor)[0].softmax(-1)
    label = class_label(int(probs.argmax()), num_classes=probs.numel())
    geometry = batch.geometries[0]
    panels = [OverlayPanel(photo, None, None, "original")]
    panels += [
        OverlayPanel(photo, c.heatmap, geometry, c.method)
        for c in cells
        if c.model == REAL and c.works
    ]
    fig = plot_grid(
        panels,
        ncols=6,
        panel_size=2.4,
        suptitle=f"EfficientNet-Lite0 on chelsea: {label} ({float(probs.max()):.1%})",
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=70, bbox_inches="tight")
    # A palette PNG: photo overlays do not compress, and 256 colours look the same here.
    picture = Image.open(buffer).convert("RGB").quantize(colors=256)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    picture.save(FIGURE, optimize=True)
    return FIGURE.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", help="only these methods (the page is not written)")
    parser.add_argument("--models", nargs="*", choices=list(MODELS), help="only these models")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    parser.add_argument("--redo", action="store_true", help="run cached cells again")
    parser.add_argument("--write", action="store_true", help="only write the page from the cache")
    parser.add_argument(
        "--from-page",
        action="store_true",
        help=f"first cache the cells missing from the cache as {TABLE.name} shows them",
    )
    parser.add_argument(
        "--keep-figure",
        action="store_true",
        help="write the page but leave the figure as it is (carried cells have no maps)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-v", action="store_true", help="print tracebacks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.methods or methods()
    keys = args.models or list(MODELS)
    photo = skdata.chelsea()
    # The libraries the methods load on first use, loaded before any cell is timed: else
    # whichever method first needs one (Captum, Zennit) pays its import (17 s on a busy CPU)
    import captum.attr  # noqa: F401
    import zennit.composites  # noqa: F401

    start = time.perf_counter()
    if args.from_page:
        from sweep_reuse import matrix_cells_from_page

        for key, cells in matrix_cells_from_page(TABLE.read_text()).items():
            save_cells(key, cells | load_cells(key))  # cached cells are newer than the page
    if not args.write:
        cells = [c for key in keys for c in sweep_model(key, names, args.timeout, photo, args.redo)]
        print("\n".join(markdown_table(cells, names, keys, "status")))
    if args.write or (not args.methods and not args.models):
        names, keys = methods(), list(MODELS)
        cells = [c for key in keys for c in load_cells(key).values() if c.method in names]
        if not args.keep_figure:
            size = draw_figure(cells, photo)
            print(f"figure {FIGURE.relative_to(ROOT)}: {size / 1024:.0f} KB")
        write_page(cells, names, keys, figure=True)
        print(f"wrote {TABLE.relative_to(ROOT)}")
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
