"""Where ``lrp``'s time goes: setup, forward under Zennit's hooks, backward (rules), per op.

For one model and batch: the plain forward+backward of the target logits; then ``lrp``
split into its parts (the per-call setup: composite built, canonizers applied, hooks
registered and removed; the forward with hooks; the backward, where Zennit's rules
recompute each layer), and ``torch.profiler``'s operator table of one ``lrp`` call
(counts and self time of the convolutions show how many conv-sized passes each rule
does). Prints markdown::

    PYTHONPATH=src python benchmarks/lrp_profile.py resnet50 --side 64 --batch 8
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import timm
import torch

from timmlens.interpretation._targets import TargetScore
from timmlens.interpretation.registry import create_explainer
from timmlens.testing import make_explainable


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="resnet50")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
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
    explainer = create_explainer("lrp", model, composite=args.composite)
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

    parts = {
        "forward+backward (limit)": _best(plain, args.repeats),
        "lrp (whole call)": _best(lambda: explainer.attributions(x, targets), args.repeats),
        "  setup: composite, canonizers, hooks on and off": _best(setup_only, args.repeats),
        "  setup + forward under the hooks": _best(forward_only, args.repeats),
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

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        explainer.attributions(x, targets)
    with profile(activities=[ProfilerActivity.CPU]) as plain_prof:
        plain()
    for label, table in (("lrp", prof), ("forward+backward", plain_prof)):
        print(f"\n{label}: operators by self CPU time\n")
        print(table.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
