"""Where ``lrp``'s time goes: setup, forward under the rules, backward (rules), per op.

For one model and batch: the plain forward+backward of the target logits, ``lrp``, and
the same composite under Zennit's own hooks (what ``lrp`` ran before its rules became
their layers' backward), timed in interleaved rounds (best of each, and each round's
ratio to the limit: on a shared CPU the load changes between rounds, not within one);
then ``lrp`` split into its parts (the per-call setup: composite built, canonizers
applied, rules put on and taken off; the forward under the rules) and
``torch.profiler``'s operator tables of one call of each (counts and self time of the
convolutions show how many conv-sized passes each does).
Prints markdown::

    PYTHONPATH=src python benchmarks/lrp_profile.py resnet50 --side 64 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch

from timmlens.interpretation._targets import TargetScore
from timmlens.interpretation.registry import create_explainer
from timmlens.testing import make_explainable


def _best(fn: Callable[[], object], repeats: int) -> float:
    return min(_rounds({"": fn}, repeats)[""])


def _rounds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` per round, run in turn ``repeats`` times.

    CPU seconds of this process (``time.process_time``): with one thread, the work done,
    whatever else the shared CPU runs meanwhile (wall time there measures the load).
    """
    seconds: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            start = time.process_time()
            fn()
            seconds[label].append(time.process_time() - start)
    return seconds


def _paired_ratios(rounds: dict[str, list[float]], reference: str) -> None:
    """Each entry over the reference of the same round: median [min, max] (a round's
    entries share the machine's state, so their ratio varies less than either time)."""
    print("\n| entry | / limit, same round: median [min, max] |\n| --- | --- |")
    for label, seconds in rounds.items():
        ratios = sorted(a / b for a, b in zip(seconds, rounds[reference], strict=True))
        print(f"| {label} | {statistics.median(ratios):.2f}x [{ratios[0]:.2f}, {ratios[-1]:.2f}] |")


def _zennit_hooks(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> Callable:
    """``lrp``'s composite under Zennit's own hooks and ``Gradient`` attributor."""
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    from timmlens.interpretation.input.zennit_rules import batchnorm_pairs, canonizers, layer_map

    pairs = batchnorm_pairs(model, x[:1])
    rows = torch.arange(len(targets))

    def seed(output: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(output)
        out[rows, targets] = output[rows, targets]
        return out

    def run() -> None:
        composite = EpsilonPlusFlat(layer_map=layer_map(), canonizers=canonizers(pairs))
        with Gradient(model, composite) as attributor:
            attributor(x, seed)

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="resnet50")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--composite", default="epsilon_plus_flat")
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.model == "efficientnet_lite0":
        from timmlens import load_model

        model = load_model("bundled:efficientnet_lite0").eval()
    else:
        model = make_explainable(timm.create_model(args.model)).eval()
    x = torch.randn(args.batch, 3, args.side, args.side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    # the whole batch in one chunk, as the limit runs it
    explainer = create_explainer(
        "lrp", model, composite=args.composite, memory_budget_bytes=64 * 2**30
    )
    explainer.attributions(x, targets.tolist())  # warm: the BatchNorm probe runs once

    def plain() -> None:
        inputs = x.clone().requires_grad_(True)
        torch.autograd.grad(model(inputs).gather(1, targets[:, None]).sum(), inputs)

    composite_of = explainer._composite_for  # the per-call setup, as run() does it
    score = TargetScore(explainer.model)

    def setup_only() -> None:
        composite = composite_of(x)
        composite.register(explainer.model)
        composite.remove()

    def forward_only() -> None:
        composite = composite_of(x)
        composite.register(explainer.model)
        try:
            score(x.clone().requires_grad_(True), targets)
        finally:
            composite.remove()

    zennit_hooks = _zennit_hooks(explainer.model, x, targets)
    whole = {
        "forward+backward (limit)": plain,
        "lrp (whole call)": lambda: explainer.attributions(x, targets),
    }
    if args.composite == "epsilon_plus_flat":
        whole["the same rules under Zennit's hooks (before)"] = zennit_hooks
    rounds = _rounds(whole, args.repeats)
    parts = {
        **{label: min(seconds) for label, seconds in rounds.items()},
        "  setup: composite, canonizers, hooks on and off": _best(setup_only, args.repeats),
        "  setup + forward under the rules": _best(forward_only, args.repeats),
        "  the limit's forward alone (with grad)": _best(
            lambda: model(x.clone().requires_grad_(True)), args.repeats
        ),
        "  refusal check (unavailable_reason)": _best(
            lambda: explainer.unavailable_reason(explainer.model), args.repeats
        ),
    }
    limit = parts["forward+backward (limit)"]
    print(
        f"{args.model}, batch {args.batch}, {args.side} px, {args.composite}, CPU threads "
        f"{torch.get_num_threads()}\n"
    )
    print("| part | seconds | / limit |\n| --- | --- | --- |")
    for label, seconds in parts.items():
        print(f"| {label} | {seconds:.3f} | {seconds / limit:.2f}x |")
    _paired_ratios(rounds, "forward+backward (limit)")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        explainer.attributions(x, targets)
    with profile(activities=[ProfilerActivity.CPU]) as plain_prof:
        plain()
    tables = [("lrp", prof), ("forward+backward", plain_prof)]
    if args.composite == "epsilon_plus_flat":
        with profile(activities=[ProfilerActivity.CPU]) as zennit_prof:
            zennit_hooks()
        tables.append(("Zennit's hooks (before)", zennit_prof))
    _print_passes(tables)
    for label, table in tables:
        print(f"\n{label}: operators by self CPU time\n")
        print(table.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


#: the operators that count conv-sized passes: forward, and input gradient
PASSES = ("aten::convolution", "aten::convolution_backward")


def _print_passes(tables: list[tuple[str, object]]) -> None:
    """Calls and total CPU time of the convolutions' forward and input gradient, per run."""
    print("\n| run | total self CPU (s) | " + " | ".join(f"{op} calls (s)" for op in PASSES) + " |")
    print("| --- | --- |" + " --- |" * len(PASSES))
    for label, prof in tables:
        averages = prof.key_averages()
        total = sum(event.self_cpu_time_total for event in averages) / 1e6
        cells = []
        for op in PASSES:
            events = [event for event in averages if event.key == op]
            calls = sum(event.count for event in events)
            seconds = sum(event.cpu_time_total for event in events) / 1e6
            cells.append(f"{calls} ({seconds:.2f})")
        print(f"| {label} | {total:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
