"""Redo one method's cells of the coverage pages without re-running every method.

The sweeps of ``benchmarks/zoo_coverage.py`` (98 families x every method) and
``benchmarks/method_matrix.py`` (six models x every method) take hours of CPU; their
caches (``outputs/``, git-ignored) are lost with the machine. When one method changes,
only its cells need to run again:

- ``zoo_results_from_page`` / ``matrix_cells_from_page`` rebuild a sweep's cache from the
  page it generated (committed), every cell as the page shows it, so that the sweep's
  ``--redo --methods <name>`` recomputes that method and ``--write`` rewrites the page
  with the other cells unchanged. The pages hold everything the page shows (marks,
  reasons, failures, and the matrix's seconds), so a page written from an imported
  cache is the page imported (tested);
- ``structural_refusals`` decides, without building the model, the cells a method
  refuses by the model's module types alone: the registry's ``unavailable_reason``, the
  first thing ``as_explainer`` checks, on the family's architecture built on the meta
  device as the sweep builds it (the same constructor arguments; module types do not
  depend on weights or input size). The refusal is the very message the sweep would
  record; every method it does not refuse runs on the real model as before.
"""

from __future__ import annotations

import json
import re
import warnings

import timm
import torch
from torch import nn

import method_matrix as mm
import zoo_coverage as zc
from timmlens.errors import UnsupportedModelError
from timmlens.interpretation.registry import resolve_method

__all__ = ["matrix_cells_from_page", "structural_refusals", "zoo_results_from_page"]

_ZOO_STATUS = {"yes": zc.WORKS, "-": zc.REFUSED, "**FAIL**": zc.FAILING}


def _same_settings(text: str) -> None:
    """The page's cells ran with the present small settings, or importing them would
    misdescribe them (the page says every cell not carried ran with those)."""
    if mm.settings_note() not in text:
        raise ValueError(
            "the page's small settings are not the present ones (method_matrix.settings_note"
            "()): its cells cannot be carried as run with them. Run the sweep anew."
        )


def _section(text: str, title: str, end: str | None = None) -> str:
    start = text.index(f"## {title}")
    return text[start : text.index(f"## {end}") if end else len(text)]


def _row(line: str) -> list[str]:
    """The cells of a markdown table row (``\\|`` inside a cell kept, unescaped)."""
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


def _zoo_carried(text: str) -> list[tuple[str, str, str | None]]:
    """``(method, family or None: every family, source)`` of the page's "Carried over"
    lines, in their order (the cells' order in the cache that wrote the page)."""
    carried = []
    pattern = (
        r"^\*\*Carried over:\*\* \d+ cells (?:of (.*?)|\((.*?)\)) come from (.*); "
        r"every other cell ran"
    )
    for columns, cells, source in re.findall(pattern, text, re.M):
        for method in re.findall(r"`(\w+)`", columns):
            carried.append((method, None, source))
        for method, families in re.findall(r"`(\w+)` on ([\w, ]+)", cells):
            carried += [(method, family, source) for family in families.split(", ")]
    return carried


def zoo_results_from_page(text: str) -> list[zc.FamilyResult]:
    """The zoo sweep's cache as the page ``text`` (``docs/zoo_coverage.md``) shows it.

    Each cell gets its mark, its refusal's reason or its failure, and the page's
    provenance (``Cell.carried``); a starred cell ran at ``zc.FALLBACK_SIDE`` (the page
    says no more). Seconds are not on the page: 0.
    """
    _same_settings(text)
    archs = json.loads(zc.ARCHITECTURES.read_text())
    carried = _zoo_carried(text)
    sources = {(method, family): source for method, family, source in carried}
    refused: dict[tuple[str, str], str] = {}
    for method, families, note in re.findall(
        r"^- `(\w+)` on ([\w, ]+): (.*)$", _section(text, "Refusals", "Failures"), re.M
    ):
        for family in families.split(", "):
            refused[(method, family)] = note.replace("\\|", "|")
    failing: dict[tuple[str, str], str] = {}
    reasons: dict[str, str] = {}
    for line in _section(text, "Failures").splitlines():
        cell = re.match(r"^- `(\w+)` on (\w+): (.*)$", line)
        if cell:
            failing[(cell.group(1), cell.group(2))] = cell.group(3)
        elif unswept := re.match(r"^- (\w+) \(not swept\): (.*)$", line):
            reasons[unswept.group(1)] = unswept.group(2)
    table = [line for line in _section(text, "The matrix", "Refusals").splitlines() if line]
    names = _row(table[1])[5:]
    order = list(failing)  # the failures' order on the page is their cells' order
    results = []
    for line in table[3:]:
        family, arch, size, layer, layout, *marks = _row(line)
        if len(marks) != len(names):
            raise ValueError(f"{family}: {len(marks)} marks for {len(names)} methods")
        depth = re.fullmatch(r"(\S+) \(depth (\d+)\)", arch)
        arch, depth = (depth.group(1), int(depth.group(2))) if depth else (arch, 0)
        result = zc.FamilyResult(
            family,
            "" if arch == "-" else arch,
            archs.get(family, ["", 0.0])[1],
            0 if size == "-" else int(size),
            depth,
            "" if layer == "`-`" else layer.strip("`"),
            "" if layout == "-" else layout,
            reasons.get(family, ""),
        )
        cells: dict[str, zc.Cell] = {}
        for method, mark in zip(names, marks, strict=True):
            if mark == "?":
                continue
            status = _ZOO_STATUS[mark.removesuffix("*") if mark != "**FAIL**" else mark]
            note = {zc.REFUSED: refused, zc.FAILING: failing}.get(status, {})
            if status != zc.WORKS and (method, family) not in note:
                raise ValueError(f"{method} on {family}: {status} with no reason on the page")
            cells[method] = zc.Cell(
                status,
                note.get((method, family), ""),
                0.0,
                zc.FALLBACK_SIDE if mark.endswith("*") and mark != "**FAIL**" else 0,
                sources.get((method, family), sources.get((method, None), "")),
            )
        # the cache's order, which the page's lists follow: the carried cells in the order
        # the provenance lines name them, then the failures in the page's order
        first = [m for m, f, _ in carried if f in (None, family) and m in cells]
        first += [m for m, f in order if f == family]
        result.cells = {m: cells[m] for m in first} | cells
        results.append(result)
    return results


def matrix_cells_from_page(text: str) -> dict[str, dict[str, mm.Cell]]:
    """Model key -> method -> cell, as the page ``text`` (``docs/methods/matrix.md``)
    shows them: the status table and the seconds table. Cells the page says were not
    run are left out; no maps (the page has only the figure)."""
    _same_settings(text)
    generated = re.search(r"on (\d{4}-\d{2}-\d{2}) with timm (\S+) and torch (\S+)\.$", text, re.M)
    if generated is None:
        raise ValueError("the page does not say when and with what it was generated")
    default = "the page generated on {} (timm {}, torch {})".format(*generated.groups())
    carried = {
        method: source
        for methods, source in re.findall(mm.CARRIED_PATTERN, text, re.M)
        for method in re.findall(r"`(\w+)`", methods)
    }
    tables = [
        [_row(line) for line in block.splitlines()]
        for block in re.findall(r"^\| method \|.*?(?=\n\n|\Z)", text, re.M | re.S)
    ]
    if len(tables) != 2:
        raise ValueError(f"expected the status and the seconds tables, found {len(tables)}")
    status, seconds = tables
    keys = status[0][1:]
    cells: dict[str, dict[str, mm.Cell]] = {key: {} for key in keys}
    for row, times in zip(status[2:], seconds[2:], strict=True):
        method = row[0].strip("`")
        for key, state, second in zip(keys, row[1:], times[1:], strict=True):
            if state == mm.NOT_RUN:
                continue
            cells[key][method] = mm.Cell(
                method,
                key,
                state,
                float(second),
                state.startswith("works"),
                carried=carried.get(method, default),
            )
    return cells


def meta_model(result: zc.FamilyResult) -> nn.Module:
    """The family's architecture as ``zc.build_model`` makes it (a head of 10 classes on a
    headless one; ``result.depth`` blocks where the sweep built it shallower), on the meta
    device: module types and arrangement only, nothing allocated or computed."""
    depth = {"depth": result.depth} if result.depth else {}
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = timm.create_model(result.architecture, pretrained=False, **depth)
        if getattr(model, "num_classes", 1) == 0:
            model = timm.create_model(
                result.architecture, pretrained=False, num_classes=10, **depth
            )
    return model.eval()


def structural_refusals(result: zc.FamilyResult, names: list[str]) -> dict[str, zc.Cell]:
    """The cells of ``names`` that refuse the family by its module types alone.

    Each is the cell ``zc.run_cell`` records for that refusal (``as_explainer`` raises
    ``UnsupportedModelError(f"{name}: {reason}")`` before it builds anything). A method
    that does not refuse, or whose check needs more than the module types (it raises on
    the meta device), is left out: the sweep runs it on the real model.
    """
    try:
        model = meta_model(result)
    except Exception:  # the architecture does not build on the meta device
        return {}
    cells = {}
    for name in names:
        spec = resolve_method(name)
        try:
            reason = spec.unavailable_reason(model)
        except Exception:
            continue
        if reason is not None:
            error = UnsupportedModelError(f"{spec.name}: {reason}")
            cells[name] = zc.refusal_cell(error, name)
    return cells
