"""Sweep every timm family: does timmlens explain it with zero configuration?

For each module of ``timm.list_modules()`` the smallest architecture (parameters
counted on the meta device, nothing allocated) is built with random weights (made
explainable by ``timmlens.testing.make_explainable``) at the smallest input it
accepts from a short list. Recorded per family: the adapter's default layer and its
layout, and whether GradCAM gives a finite, non-constant map at input resolution.

Writes ``benchmarks/results/zoo_coverage.json`` and the table ``docs/zoo_coverage.md``
(generated; never edit it by hand).

    .venv/bin/python benchmarks/zoo_coverage.py [--families resnet vit ...] [--timeout 120]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch

from timmlens.adapters import get_adapter, probe_layout
from timmlens.testing import make_explainable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "zoo_coverage.json"
TABLE = ROOT / "docs" / "zoo_coverage.md"
# From 128 up: at 64 px a stride-32 (or 64) layer is 2x2 (1x1), too coarse to judge a map.
INPUT_SIZES = (128, 160, 192, 224, 256)


@dataclass
class FamilyResult:
    family: str
    architecture: str = ""
    params_m: float = 0.0
    input_size: int = 0
    resolved: bool = False
    default_layer: str = ""
    layout: str = ""
    gradcam_ok: bool = False
    reason: str = ""
    seconds: float = 0.0


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


def build_at_smallest_input(name: str) -> tuple[torch.nn.Module, int]:
    """The model and the smallest square input from INPUT_SIZES it runs on.

    Variable-size models are built once and probed at each size; fixed-size ones
    (ViT-likes) are rebuilt with ``img_size=`` only when no size fits as built.
    """
    errors = []

    def create(**kwargs) -> torch.nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, **kwargs).eval()
            if getattr(model, "num_classes", 1) == 0:
                # Headless feature extractors (DINOv3, SAM2, ...): a head to explain.
                torch.manual_seed(0)
                model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
            return model.eval()

    def runs(model: torch.nn.Module, size: int) -> bool:
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
    for size in INPUT_SIZES:
        if runs(model, size):
            return make_explainable(model), size
    for size in INPUT_SIZES:
        try:
            resized = create(img_size=size)
        except TypeError as exc:
            errors.append(str(exc))
            break
        if runs(resized, size):
            return make_explainable(resized), size
    raise RuntimeError("no input size worked; " + errors[-1][:200])


def check_gradcam(model: torch.nn.Module, size: int) -> tuple[bool, str]:
    from timmlens.interpretation import GradCAM

    inputs = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    # relu=False: with random weights the positive evidence can be empty by chance; the
    # question here is whether the mechanism yields a real map, not its sign.
    maps = GradCAM(model, normalize=False, relu=False)(inputs)
    if maps.shape != (2, size, size):
        return False, f"map shape {tuple(maps.shape)}, expected (2, {size}, {size})"
    if not torch.isfinite(maps).all():
        return False, "map has NaN/inf"
    if (maps.flatten(1).max(1).values - maps.flatten(1).min(1).values).min() <= 0:
        return False, "map is constant"
    return True, ""


def sweep_family(family: str, timeout_s: int) -> FamilyResult:
    result = FamilyResult(family)
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout_s)
    try:
        picked = smallest_architecture(family)
        if picked is None:
            result.reason = "no architecture builds on the meta device"
            return result
        result.architecture, params = picked
        result.params_m = round(params / 1e6, 2)
        model, result.input_size = build_at_smallest_input(result.architecture)
        adapter = get_adapter(model)
        result.default_layer = adapter.default_layer
        layout = probe_layout(
            model, result.default_layer, (3, result.input_size, result.input_size)
        )
        result.layout = layout.kind + (
            f"+{layout.num_prefix_tokens}" if layout.kind == "tokens" else ""
        )
        result.resolved = True
        result.gradcam_ok, result.reason = check_gradcam(model, result.input_size)
    except Exception as exc:  # recorded, the sweep goes on
        first_line = (str(exc).strip().splitlines() or [""])[0]
        result.reason = f"{type(exc).__name__}: {first_line[:160]}"
        if "-v" in sys.argv:
            traceback.print_exc()
    finally:
        signal.alarm(0)
        result.seconds = round(time.perf_counter() - start, 1)
    return result


def write_table(results: list[FamilyResult]) -> None:
    resolved = sum(r.resolved for r in results)
    working = sum(r.gradcam_ok for r in results)
    lines = [
        "# Zoo coverage",
        "",
        "Generated by `benchmarks/zoo_coverage.py` with timm "
        f"{timm.__version__} (do not edit by hand). The smallest architecture of every timm "
        "family, random weights, smallest accepted input, zero configuration.",
        "",
        f"**Families: {len(results)} - adapter resolved: {resolved} - GradCAM works: "
        f"{working} ({100 * working / max(len(results), 1):.0f}%)**",
        "",
        "| family | architecture | params (M) | input | default layer | layout | GradCAM | note |",
        "| --- | --- | ---: | ---: | --- | --- | :---: | --- |",
    ]
    for r in results:
        note = r.reason.replace("|", "\\|")
        lines.append(
            f"| {r.family} | {r.architecture} | {r.params_m} | {r.input_size or '-'} | "
            f"`{r.default_layer or '-'}` | {r.layout or '-'} | {'yes' if r.gradcam_ok else 'no'} | "
            f"{note} |"
        )
    TABLE.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", help="only these timm modules")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per family")
    parser.add_argument("-v", action="store_true", help="print tracebacks")
    args = parser.parse_args()
    torch.set_num_threads(2)
    families = args.families or timm.list_modules()
    results = []
    for family in families:
        result = sweep_family(family, args.timeout)
        results.append(result)
        status = "ok " if result.gradcam_ok else ("res" if result.resolved else "---")
        print(
            f"{status} {family:28s} {result.architecture:36s} {result.seconds:6.1f}s "
            f"{result.reason}",
            flush=True,
        )
    if not args.families:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps([asdict(r) for r in results], indent=1))
        write_table(results)
    resolved = sum(r.resolved for r in results)
    working = sum(r.gradcam_ok for r in results)
    print(f"resolved {resolved} / gradcam {working} / total {len(results)}")


if __name__ == "__main__":
    main()
