"""Sweep every timm family x every registered method, with zero configuration.

For each module of ``timm.list_modules()`` the smallest architecture (parameters
counted on the meta device, nothing allocated) is built with random weights (BatchNorm
statistics set on random images by ``timmlens.testing.calibrate_batchnorm``, then made
explainable by ``timmlens.testing.make_explainable``) at the model's own input size
capped at ``MAX_SIDE`` (fixed-size ViT-likes are rebuilt with ``img_size=``; the next
smaller of ``INPUT_SIZES`` where it does not run). Architectures over ``LARGE_M``
parameters get ``REDUCED_DEPTH`` blocks where they take ``depth=``. Every registered
method then runs on it through ``as_explainer(name, model)`` with the small settings of
``benchmarks/method_matrix.py`` (``FAST``: few samples, masks,
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
        [--chunk 0/2] [--methods gradcam ...] [--fast | --slow] [--timeout 90]
        [--first-try 10] [--write] [--from-page] [--structural [--no-build]] [--cpu-clock]

A cell that times out at the family's size (``--first-try`` seconds; 0 skips that try)
runs again at ``FALLBACK_SIDE`` (``--timeout`` seconds); the page stars it. One method
again, the cache lost: ``--from-page --methods <name> --redo --structural`` (see
``benchmarks/sweep_reuse.py``).
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import timm
import torch
from torch import nn

from method_matrix import judge, options_for, settings_note, short_reason
from timmlens.adapters import get_adapter, probe_layout
from timmlens.errors import TimmLensError
from timmlens.interpretation.registry import as_explainer, methods, resolve_method
from timmlens.testing import calibrate_batchnorm, make_explainable

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
# Each model runs at its own input size (its data config), capped at MAX_SIDE: maps
# computed at a size the model was not designed for can be constant when the real ones
# are not (a 3x3 map at 96 px and stride 32, a stem that pools it away). A model that does
# not run at that size, or a cell that times out there, falls back to the smaller sizes.
MAX_SIDE = 256
INPUT_SIZES = (96, 128, 160, 192, 224, 256)
FALLBACK_SIDE = INPUT_SIZES[0]
# Families whose smallest architecture is this large (M parameters) are built with
# REDUCED_DEPTH blocks when the constructor takes ``depth=`` (deepseek_vit: 412M, BEiT: 87M): the
# question is whether the architecture explains, which depth does not change, and the
# full-depth model takes minutes per cell on a CPU.
LARGE_M = 50.0
REDUCED_DEPTH = 4
WORKS, REFUSED, FAILING = "works", "refused", "failing"


@dataclass
class Cell:
    status: str  # WORKS, REFUSED or FAILING
    note: str = ""  # the refusal's reason or the failure
    seconds: float = 0.0
    input_size: int = 0  # set when the cell fell back from the family's input size
    carried: str = ""  # where a cell not run by this code comes from (an earlier sweep's page)


@dataclass
class FamilyResult:
    family: str
    architecture: str = ""
    params_m: float = 0.0
    input_size: int = 0
    depth: int = 0  # REDUCED_DEPTH when the large architecture was built shallower
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


# Time limits in the process's CPU time (``--cpu-clock``), not wall-clock time, which on a
# shared CPU measures the other jobs' load (with one thread, the same on an idle machine)
CPU_CLOCK = [False]


def _arm(seconds: int) -> None:
    """Raise ``Timeout`` after ``seconds`` (CPU or wall-clock, `CPU_CLOCK`)."""
    cpu = CPU_CLOCK[0]
    signal.signal(signal.SIGPROF if cpu else signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_PROF if cpu else signal.ITIMER_REAL, seconds)


def _disarm() -> None:  # either clock
    signal.setitimer(signal.ITIMER_PROF, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)


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


def own_side(model: nn.Module) -> int:
    """The model's own input side (its data config), capped at ``MAX_SIDE``."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return min(int(cfg["input_size"][-1]), MAX_SIDE)


def build_model(name: str, sides: tuple[int, ...] | None = None, **kwargs) -> tuple[nn.Module, int]:
    """The model and the first square input side of ``sides`` it runs on.

    ``sides`` defaults to the model's own side (capped at ``MAX_SIDE``), then the
    smaller ``INPUT_SIZES`` from the largest down. At each side the model as built is
    tried first, then (fixed-size ViT-likes) one rebuilt with ``img_size=``, whose data
    config then says that side.
    """
    errors: list[str] = []

    def create(**extra) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, **kwargs, **extra)
            if getattr(model, "num_classes", 1) == 0:
                # Headless feature extractors (DINOv3, SAM2, ...): a head to explain.
                torch.manual_seed(0)
                model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs, **extra)
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

    def explainable(model: nn.Module, size: int) -> nn.Module:
        # BatchNorm statistics of the random net on random images (seeded): without
        # them deep random nets (ConvMixer) lose the input and every map is noise.
        images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
        return calibrate_batchnorm(make_explainable(model), images)

    model = create()
    if sides is None:
        own = own_side(model)
        sides = (own, *sorted((s for s in INPUT_SIZES if s < own), reverse=True))
    resizable = True
    for size in sides:
        if runs(model, size):
            if own_side(model) != size:  # the explainers read the side from the config
                cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
                model.pretrained_cfg = {**cfg, "input_size": (3, size, size)}
            return explainable(model, size), size
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
            return explainable(resized, size), size
    raise RuntimeError("no input size worked; " + errors[-1][:200])


def relu_diagnosis(method: str, model: nn.Module, inputs: torch.Tensor, classes: list[int]) -> str:
    """Why a ReLU'd map is constant: the signed map (``relu=False``) of each class is
    below zero everywhere (random weights), or itself constant (a real failure)."""
    options = {**options_for(method, model), "relu": False, "normalize": False}
    signed = [as_explainer(method, model, **options).explain_batch(inputs, [c])[0] for c in classes]
    if all(m.max() < 0 for m in signed):
        return " (ReLU of a signed map below zero everywhere, for both classes)"
    if any(m.max() <= m.min() for m in signed):
        return " (the signed map is constant too)"
    return ""


def refusal_cell(exc: TimmLensError, method: str) -> Cell:
    """The cell of a refusal: the error's class and the gist of its reason."""
    return Cell(REFUSED, f"{type(exc).__name__}: {short_reason(exc, method, 160)}")


def run_cell(method: str, model: nn.Module, inputs: torch.Tensor, classes: list[int], timeout: int):
    start = time.perf_counter()
    _arm(timeout)
    try:
        explainer = as_explainer(method, model, **options_for(method, model))
        maps = [explainer.explain_batch(inputs, [c])[0].detach().float() for c in classes]
        verdict = judge(*maps, class_agnostic=explainer.class_agnostic)
        cell = Cell(WORKS, "") if verdict.startswith("works") else Cell(FAILING, verdict[7:])
        if verdict == "works (class-agnostic)":
            cell.note = "class-agnostic"
        if cell.note == "constant map" and getattr(explainer, "relu", False):
            cell.note += relu_diagnosis(method, model, inputs, classes)
    except TimmLensError as exc:  # a refusal with its reason: part of the answer
        cell = refusal_cell(exc, method)
    except Timeout:
        cell = Cell(FAILING, f"timed out after {timeout} s")
    except Exception as exc:  # anything else is a bug to report
        first = (str(exc).strip().splitlines() or [""])[0]
        cell = Cell(FAILING, f"{type(exc).__name__}: {first[:160]}")
        if "-v" in sys.argv:
            traceback.print_exc()
    finally:
        _disarm()
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


def build_family_model(result: FamilyResult, sides: tuple[int, ...] | None = None):
    """The family's model at its input side; a ``LARGE_M`` architecture is built with
    ``REDUCED_DEPTH`` blocks where its constructor takes ``depth=`` (``result.depth``)."""
    if result.params_m > LARGE_M:
        try:
            model, size = build_model(result.architecture, sides, depth=REDUCED_DEPTH)
            result.depth = REDUCED_DEPTH
            return model, size
        except TypeError:  # no depth= option: the architecture as it is
            pass
    return build_model(result.architecture, sides)


def seeded_case(model: nn.Module, size: int) -> tuple[nn.Module, torch.Tensor, list[int]]:
    """One seeded random image and the model's top two classes on it."""
    inputs = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ranked = model(inputs)[0].argsort(descending=True)
    return model, inputs, [int(ranked[0]), int(ranked[1])]  # predicted and runner-up


def small_case(result: FamilyResult) -> tuple[nn.Module, torch.Tensor, list[int]]:
    """The family's model at ``FALLBACK_SIDE`` (or the next larger of ``INPUT_SIZES``
    below its own, where it does not run at that), for cells that timed out at its size."""
    sides = tuple(s for s in INPUT_SIZES if s < result.input_size) or (FALLBACK_SIDE,)
    model, size = build_family_model(result, sides)
    return seeded_case(model, size)


def sweep_family(
    family: str,
    names: list[str],
    timeout: int,
    result: FamilyResult,
    repick: bool = False,
    first_try: int | None = None,
) -> FamilyResult:
    """Run the ``names`` not yet in ``result.cells`` on the family's model.

    Each cell gets ``first_try`` seconds (default ``timeout``) at the family's input
    side; one that times out there (or every cell, with ``first_try=0``) runs again at
    ``FALLBACK_SIDE`` with ``timeout`` seconds.
    """
    first_try = timeout if first_try is None else first_try
    start = time.perf_counter() - result.seconds
    _arm(timeout * 3)
    try:
        picked = picked_architecture(family, repick)
        if picked is None:
            result.reason = "no architecture builds on the meta device"
            return result
        result.architecture, result.params_m = picked
        model, size = build_family_model(result)
        result.input_size = size
    except Timeout:  # before Exception, which it is
        result.reason = f"building the model took over {timeout * 3} s"
        return result
    except Exception as exc:
        result.reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
        return result
    finally:
        _disarm()
    result.fused_attention = sum(hasattr(m, "fused_attn") for m in model.modules())
    try:
        result.default_layer = get_adapter(model).default_layer
        layout = probe_layout(model, result.default_layer, (3, size, size))
        prefix = f"+{layout.num_prefix_tokens}" if layout.kind == "tokens" else ""
        result.layout = layout.kind + prefix
    except Exception as exc:
        result.layout = f"({type(exc).__name__})"
    _, inputs, classes = seeded_case(model, size)
    # (model, inputs, classes) at a smaller side, built when first needed; or why none
    fallback: list = []
    for method in names:
        if method in result.cells:
            continue
        if first_try > 0 or size <= FALLBACK_SIDE:
            cell = run_cell(method, model, inputs, classes, first_try or timeout)
        else:  # straight to the fallback side
            cell = Cell(FAILING, "timed out after 0 s")
        if cell.note.startswith("timed out") and size > FALLBACK_SIDE:
            if not fallback:
                try:
                    fallback.append(small_case(result))
                except Exception as exc:  # no smaller side the model runs at
                    fallback.append(f" (runs at no smaller side: {type(exc).__name__})")
            if isinstance(fallback[0], str):  # the cell at the family's side, or its timeout
                if first_try < timeout:  # the full timeout there
                    cell = run_cell(method, model, inputs, classes, timeout)
                if cell.note.startswith("timed out"):
                    cell.note += fallback[0]
                result.cells[method] = cell
                continue
            small = run_cell(method, *fallback[0], timeout)
            small.input_size = fallback[0][1].shape[-1]
            small.seconds = round(small.seconds + cell.seconds, 1)
            if small.status == FAILING and first_try > 0:
                small.note = f"timed out at {size} px; at {small.input_size} px: {small.note}"
            cell = small
        result.cells[method] = cell
    result.seconds = round(time.perf_counter() - start, 1)
    return result


# ------------------------------------------------------------------ the page
_MARK = {WORKS: "yes", REFUSED: "-", FAILING: "**FAIL**"}


def mark(cell: Cell) -> str:
    """The cell's mark; a star when it ran at a smaller side than the family's."""
    return _MARK[cell.status] + ("*" if cell.input_size else "")


def method_totals(results: list[FamilyResult], names: list[str]) -> dict[str, Counter]:
    return {m: Counter(r.cells[m].status for r in results if m in r.cells) for m in names}


def page(results: list[FamilyResult], names: list[str], missing: list[str]) -> str:
    totals = method_totals(results, names)
    swept = [r for r in results if r.cells]
    carried: dict[str, dict[str, list[str]]] = {}  # source -> method -> families
    for r in results:
        for m, cell in r.cells.items():
            if cell.carried and m in names:
                carried.setdefault(cell.carried, {}).setdefault(m, []).append(r.family)
    provenance = []
    for source, by_method in carried.items():
        cells = f"{sum(map(len, by_method.values()))} cells"
        if all(len(f) == len(swept) for f in by_method.values()):  # whole columns
            cells += " of " + ", ".join(f"`{m}`" for m in by_method)
        else:
            on = ("`{}` on {}".format(m, ", ".join(f)) for m, f in by_method.items())
            cells += f" ({'; '.join(on)})"
        provenance.append(
            f"**Carried over:** {cells} come from {source}; every other cell ran with the "
            "settings above."
        )
    lines = [
        "# Zoo coverage: every timm family x every method",
        "",
        f"Generated by `benchmarks/zoo_coverage.py` with timm {timm.__version__} and torch "
        f"{torch.__version__} (do not edit by hand). The smallest architecture of every timm "
        "family (built with "
        f"{REDUCED_DEPTH} blocks where it has over {LARGE_M:.0f}M parameters and takes "
        "`depth=`), random weights made explainable by `timmlens.testing.make_explainable` "
        "with BatchNorm statistics from `timmlens.testing.calibrate_batchnorm` on random "
        f"images, at the model's own input size capped at {MAX_SIDE} px (the next smaller of "
        f"{', '.join(map(str, INPUT_SIZES))} px where it does not run there), zero "
        "configuration: every method is built with `as_explainer(name, model)` and only the "
        "slow ones get small settings (those of `benchmarks/method_matrix.py`). Each method "
        "explains the model's top two classes on one seeded random image. The layer and "
        "attention methods run at the family's input size; the input methods get 10 s there "
        f"and the masked-forward and sampling methods none (CPU time), and then run at "
        f"{FALLBACK_SIDE} px (the next size the model runs at): a star marks such a cell. "
        "Limits are wall-clock seconds, or the sweep's CPU seconds (one thread) for cells run "
        "with `--cpu-clock` on a shared machine; on an idle machine the two agree.",
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
        *(line for text in provenance for line in (text, "")),
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
        marks = [mark(r.cells[m]) if m in r.cells else "?" for m in names]
        depth = f" (depth {r.depth})" if r.depth else ""
        lines.append(
            f"| {r.family} | {r.architecture or '-'}{depth} | {r.input_size or '-'} | "
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
    parser.add_argument(
        "--reverse", action="store_true", help="last family first (a second worker on a chunk)"
    )
    parser.add_argument("--write", action="store_true", help="write the page from the cache")
    parser.add_argument("--from-page", action="store_true", help="cache uncached rows as shown")
    parser.add_argument("--structural", action="store_true", help="refusals decided on meta")
    parser.add_argument("--no-build", action="store_true", help="with --structural: only those")
    parser.add_argument("--timeout", type=int, default=90, help="seconds per cell")
    parser.add_argument(
        "--first-try",
        type=int,
        help=f"seconds per cell at the family's side before {FALLBACK_SIDE} px (0: skip it)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpu-clock", action="store_true", help="limits count CPU time")
    parser.add_argument("-v", action="store_true", help="print tracebacks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    CPU_CLOCK[0] = args.cpu_clock
    every = list(timm.list_modules())
    families = args.families or every
    index, count = map(int, args.chunk.split("/"))
    families = families[index::count][:: -1 if args.reverse else 1]
    names = args.methods or methods()
    if args.slow:
        names = [m for m in names if m in SLOW]
    if args.fast:
        names = [m for m in names if m not in SLOW]
    for name in names:
        resolve_method(name)
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.from_page:
        from sweep_reuse import zoo_results_from_page

        for result in zoo_results_from_page(TABLE.read_text()):
            path = CACHE / f"{result.family}.json"
            if not path.exists():  # a cached row is newer than the page
                path.write_text(json.dumps(asdict(result), indent=1))
    for family in families:
        path = CACHE / f"{family}.json"
        old = FamilyResult.load(path) if path.exists() else FamilyResult(family)
        if args.redo:  # the row's model as cached (built anew if a cell needs it)
            kept = {m: c for m, c in old.cells.items() if m not in names}
            old = replace(old, reason="", cells=kept, seconds=0.0)
        if old.reason or all(m in old.cells for m in names):
            continue
        if args.structural and old.architecture:
            from sweep_reuse import structural_refusals

            pending = [m for m in names if m not in old.cells]
            old.cells.update(structural_refusals(old, pending))
        if all(m in old.cells for m in names) or args.no_build:  # no model built
            result = old
        else:
            result = sweep_family(family, names, args.timeout, old, args.repick, args.first_try)
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
