"""Sweep every timm family x every registered method, with zero configuration.

For each module of ``timm.list_modules()`` the smallest architecture (parameters
counted on the meta device, nothing allocated) is built with random weights (made
explainable by ``timmlens.testing.make_explainable``) at the smallest input it
accepts from a short list (fixed-size ViT-likes are rebuilt with ``img_size=``).
Every registered method then runs on it through ``as_explainer(name, model)`` with
the small settings of ``benchmarks/method_matrix.py`` (``FAST``: few samples, masks,
steps), for the model's top two classes on one seeded random image. A cell is

- **works**: both maps finite, non-constant, and different for the two classes (a
  class-agnostic method such as EigenCAM must give the same map twice);
- **refused**: the method raised a ``TimmLensError`` that names its reason;
- **failing**: anything else (a crash, a constant or class-independent map, a timeout).

Results are cached per family in ``outputs/zoo_coverage/<family>.json`` (git-ignored),
so the sweep resumes where it stopped; ``--redo`` recomputes the named families.
``--write`` (or a run over every family) writes ``docs/zoo_coverage.md`` from the cache
(generated; never edit it by hand).

    .venv/bin/python benchmarks/zoo_coverage.py [--families resnet vit ...] [--redo]
        [--chunk 0/2] [--methods gradcam ...] [--fast | --slow] [--timeout 90] [--write]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from method_matrix import judge, options_for, settings_note, short_reason
from timmlens.adapters import get_adapter, probe_layout
from timmlens.errors import TimmLensError
from timmlens.interpretation.registry import as_explainer, methods, resolve_method
from timmlens.testing import make_explainable

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "outputs" / "zoo_coverage"
# The smallest architecture of each family (parameters counted on the meta device);
# counting every model of the large families takes minutes, so the pick is kept here.
# --repick recounts (after a timm upgrade).
ARCHITECTURES = ROOT / "benchmarks" / "zoo_architectures.json"
# Masked-forward and sampling methods: run after the others (--slow) on a loaded machine.
SLOW = (
    "scorecam",
    "ablationcam",
    "occlusion",
    "featureablation",
    "shapley",
    "kernelshap",
    "lime",
    "rise",
)
TABLE = ROOT / "docs" / "zoo_coverage.md"
# Small inputs keep the sweep affordable on a CPU; 96 px still leaves a 3x3 map at stride 32.
INPUT_SIZES = (96, 128, 160, 192, 224, 256)
WORKS, REFUSED, FAILING = "works", "refused", "failing"


@dataclass
class Cell:
    status: str  # WORKS, REFUSED or FAILING
    note: str = ""  # the refusal's reason or the failure
    seconds: float = 0.0


@dataclass
class FamilyResult:
    family: str
    architecture: str = ""
    params_m: float = 0.0
    input_size: int = 0
    default_layer: str = ""
    layout: str = ""
    reason: str = ""  # why the family could not be swept at all
    fused_attention: int = 0  # modules with timm's ``fused_attn`` switch
    cells: dict[str, Cell] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def load(cls, path: Path) -> FamilyResult:
        raw = json.loads(path.read_text())
        raw["cells"] = {m: Cell(**c) for m, c in raw["cells"].items()}
        return cls(**raw)


class Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise Timeout("timed out")


def count_params(name: str) -> int | None:
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
        return sum(p.numel() for p in model.parameters())
    except Exception:
        return None


def smallest_architecture(family: str) -> tuple[str, int] | None:
    counted = [(count_params(n), n) for n in timm.list_models(module=family)]
    counted = [(c, n) for c, n in counted if c is not None]
    if not counted:
        return None
    params, name = min(counted)
    return name, params


def build_at_smallest_input(name: str) -> tuple[nn.Module, int]:
    """The model and the smallest square input from ``INPUT_SIZES`` it runs on.

    At each size, the model as built is tried first, then (fixed-size ViT-likes) one
    rebuilt with ``img_size=``, whose data config then says that size.
    """
    errors: list[str] = []

    def create(**kwargs) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, **kwargs)
            if getattr(model, "num_classes", 1) == 0:
                # Headless feature extractors (DINOv3, SAM2, ...): a head to explain.
                torch.manual_seed(0)
                model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        return model.eval()

    def runs(model: nn.Module, size: int) -> bool:
        try:
            with torch.no_grad():
                model(torch.randn(1, 3, size, size))
            return True
        except Timeout:
            raise
        except Exception as exc:
            errors.append(f"{size}: {exc}")
            return False

    model = create()
    resizable = True
    for size in INPUT_SIZES:
        if runs(model, size):
            return make_explainable(model), size
        if not resizable:
            continue
        try:
            resized = create(img_size=size)
        except TypeError as exc:
            errors.append(str(exc))
            resizable = False
            continue
        except Exception as exc:
            errors.append(f"{size}: {exc}")
            continue
        if runs(resized, size):
            cfg = dict(getattr(resized, "pretrained_cfg", {}) or {})
            resized.pretrained_cfg = {**cfg, "input_size": (3, size, size)}
            return make_explainable(resized), size
    raise RuntimeError("no input size worked; " + errors[-1][:200])


def run_cell(method: str, model: nn.Module, inputs: torch.Tensor, classes: list[int], timeout: int):
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        explainer = as_explainer(method, model, **options_for(method, model))
        maps = [explainer.explain_batch(inputs, [c])[0].detach().float() for c in classes]
        verdict = judge(*maps, class_agnostic=explainer.class_agnostic)
        cell = Cell(WORKS, "") if verdict.startswith("works") else Cell(FAILING, verdict[7:])
        if verdict == "works (class-agnostic)":
            cell.note = "class-agnostic"
    except TimmLensError as exc:  # a refusal with its reason: part of the answer
        cell = Cell(REFUSED, f"{type(exc).__name__}: {short_reason(exc, method, 160)}")
    except Timeout:
        cell = Cell(FAILING, f"timed out after {timeout} s")
    except Exception as exc:  # anything else is a bug to report
        first = (str(exc).strip().splitlines() or [""])[0]
        cell = Cell(FAILING, f"{type(exc).__name__}: {first[:160]}")
        if "-v" in sys.argv:
            traceback.print_exc()
    finally:
        signal.alarm(0)
    cell.seconds = round(time.perf_counter() - start, 1)
    return cell


def picked_architecture(family: str, repick: bool) -> tuple[str, float] | None:
    """The family's smallest architecture and its size in M parameters (kept in
    ``ARCHITECTURES``; counted anew with ``repick`` or for a family not there yet)."""
    known = json.loads(ARCHITECTURES.read_text()) if ARCHITECTURES.exists() else {}
    if family in known and not repick:
        name, params_m = known[family]
        return name, params_m
    picked = smallest_architecture(family)
    if picked is None:
        return None
    known[family] = [picked[0], round(picked[1] / 1e6, 2)]
    ARCHITECTURES.write_text(json.dumps(known, indent=0, sort_keys=True) + "\n")
    return picked[0], known[family][1]


def sweep_family(
    family: str, names: list[str], timeout: int, result: FamilyResult, repick: bool = False
) -> FamilyResult:
    """Run the ``names`` not yet in ``result.cells`` on the family's model."""
    start = time.perf_counter() - result.seconds
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout * 3)
    try:
        picked = picked_architecture(family, repick)
        if picked is None:
            result.reason = "no architecture builds on the meta device"
            return result
        result.architecture, result.params_m = picked
        model, size = build_at_smallest_input(result.architecture)
        result.input_size = size
    except Exception as exc:
        result.reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
        return result
    except Timeout:
        result.reason = f"building the model took over {timeout * 3} s"
        return result
    finally:
        signal.alarm(0)
    result.fused_attention = sum(hasattr(m, "fused_attn") for m in model.modules())
    try:
        result.default_layer = get_adapter(model).default_layer
        layout = probe_layout(model, result.default_layer, (3, size, size))
        prefix = f"+{layout.num_prefix_tokens}" if layout.kind == "tokens" else ""
        result.layout = layout.kind + prefix
    except Exception as exc:
        result.layout = f"({type(exc).__name__})"
    inputs = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ranked = model(inputs)[0].argsort(descending=True)
    classes = [int(ranked[0]), int(ranked[1])]  # predicted class and the runner-up
    for method in names:
        if method not in result.cells:
            result.cells[method] = run_cell(method, model, inputs, classes, timeout)
    result.seconds = round(time.perf_counter() - start, 1)
    return result


# ------------------------------------------------------------------ the page
_MARK = {WORKS: "yes", REFUSED: "-", FAILING: "**FAIL**"}


def method_totals(results: list[FamilyResult], names: list[str]) -> dict[str, Counter]:
    return {m: Counter(r.cells[m].status for r in results if m in r.cells) for m in names}


def page(results: list[FamilyResult], names: list[str], missing: list[str]) -> str:
    totals = method_totals(results, names)
    swept = [r for r in results if r.cells]
    lines = [
        "# Zoo coverage: every timm family x every method",
        "",
        f"Generated by `benchmarks/zoo_coverage.py` with timm {timm.__version__} and torch "
        f"{torch.__version__} (do not edit by hand). The smallest architecture of every timm "
        "family, random weights made explainable by `timmlens.testing.make_explainable`, the "
        "smallest accepted input from "
        f"{', '.join(map(str, INPUT_SIZES))} px, zero configuration: every method is built "
        "with `as_explainer(name, model)` and only the slow ones get small settings (those "
        "of `benchmarks/method_matrix.py`). Each method explains the model's top two classes "
        "on one seeded random image.",
        "",
        "A cell is **yes** when both maps are finite and non-constant and differ between the "
        "two classes (a class-agnostic method such as EigenCAM must give the same map "
        "twice); **-** when the method refuses the family with a `TimmLensError` whose "
        "reason is listed below; **FAIL** for anything else (a crash, a constant or "
        "class-independent map, a timeout); **?** when the cell has not run yet (the sweep "
        "is resumable: `--slow` runs the masked-forward and sampling methods after the "
        "others).",
        "",
        f"Small settings: {settings_note()}",
        "",
        f"**Families: {len(results)} ({len(swept)} swept)"
        + (f"; not swept yet: {', '.join(missing)}" if missing else "")
        + "**",
        "",
        "## Totals per method",
        "",
        "| method | works | refused (reason below) | failing | not run yet |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for m in names:
        t = totals[m]
        left = len(swept) - sum(t.values())
        lines.append(f"| `{m}` | {t[WORKS]} | {t[REFUSED]} | {t[FAILING]} | {left} |")
    lines += [
        "",
        "## The matrix",
        "",
        "| family | architecture | input | default layer | layout | " + " | ".join(names) + " |",
        "| --- | --- | ---: | --- | --- |" + " :---: |" * len(names),
    ]
    for r in results:
        marks = [_MARK[r.cells[m].status] if m in r.cells else "?" for m in names]
        lines.append(
            f"| {r.family} | {r.architecture or '-'} | {r.input_size or '-'} | "
            f"`{r.default_layer or '-'}` | {r.layout or '-'} | " + " | ".join(marks) + " |"
        )
    lines += ["", "## Refusals and their reasons", ""]
    refusals: dict[tuple[str, str], list[str]] = {}
    for r in results:
        for m, cell in r.cells.items():
            if cell.status == REFUSED:
                refusals.setdefault((m, cell.note), []).append(r.family)
    if not refusals:
        lines.append("None.")
    for (m, note), families in sorted(refusals.items()):
        note = note.replace("|", "\\|")
        lines.append(f"- `{m}` on {', '.join(families)}: {note}")
    lines += ["", "## Failures", ""]
    failures = [
        f"- `{m}` on {r.family}: {cell.note}"
        for r in results
        for m, cell in r.cells.items()
        if cell.status == FAILING
    ]
    failures += [f"- {r.family} (not swept): {r.reason}" for r in results if r.reason]
    lines += failures or ["None."]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", help="only these timm modules")
    parser.add_argument("--methods", nargs="*", help="only these methods")
    parser.add_argument("--slow", action="store_true", help="only the slow methods (SLOW)")
    parser.add_argument("--fast", action="store_true", help="all but the slow methods")
    parser.add_argument("--repick", action="store_true", help="count the smallest anew")
    parser.add_argument("--chunk", default="0/1", help="i/n: every n-th family from the i-th")
    parser.add_argument("--redo", action="store_true", help="recompute cached families")
    parser.add_argument("--write", action="store_true", help="write the page from the cache")
    parser.add_argument("--timeout", type=int, default=90, help="seconds per cell")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-v", action="store_true", help="print tracebacks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    every = list(timm.list_modules())
    families = args.families or every
    index, count = map(int, args.chunk.split("/"))
    families = families[index::count]
    names = args.methods or methods()
    if args.slow:
        names = [m for m in names if m in SLOW]
    if args.fast:
        names = [m for m in names if m not in SLOW]
    for name in names:
        resolve_method(name)
    CACHE.mkdir(parents=True, exist_ok=True)
    for family in families:
        path = CACHE / f"{family}.json"
        old = FamilyResult.load(path) if path.exists() else FamilyResult(family)
        if args.redo:
            old = FamilyResult(family, cells={m: c for m, c in old.cells.items() if m not in names})
        if old.reason or all(m in old.cells for m in names):
            continue
        result = sweep_family(family, names, args.timeout, old, args.repick)
        path.write_text(json.dumps(asdict(result), indent=1))
        counts = Counter(c.status for c in result.cells.values())
        print(
            f"{family:28s} {result.architecture:36s} {result.seconds:6.1f}s "
            f"{dict(counts)} {result.reason}",
            flush=True,
        )
        for m, cell in result.cells.items():
            if cell.status != WORKS or "-v" in sys.argv:
                print(f"    {m:14s} {cell.status:8s} {cell.seconds:5.1f}s {cell.note}", flush=True)
    if args.write:
        cached = {p.stem: FamilyResult.load(p) for p in CACHE.glob("*.json")}
        results = [cached[f] for f in every if f in cached]
        missing = [f for f in every if f not in cached]
        TABLE.write_text(page(results, methods(), missing))
        print(f"wrote {TABLE.relative_to(ROOT)}: {len(results)} families, missing {missing}")


if __name__ == "__main__":
    main()
