"""Not a timing: the peak memory of ScoreCAM and RISE on 64 images at 224 px (CPU).

Both methods score many masked copies of the images, built a chunk at a time inside the
scoring machinery (`timmlens.interpretation.scoring`), whose chunks are sized from one
forward memory budget (512 MiB on the CPU, `MEMORY_DEFAULTS`). This script checks that a
whole call stays within that budget: each method runs in a fresh process (so nothing
else's peak counts), the process's peak resident memory (``VmHWM``) is reset just before
the call (``/proc/self/clear_refs``, Linux) and read just after, and the growth is
compared with the budget. Inputs, model and explainer are made before the reset; the
warm-up call runs on a 32 px image, so no large block freed by it hides the call's own.

Model: timm's ``test_resnet`` with random weights made explainable, fed 224 px (the
memory of a chunk scales with the input size; the model is tiny so the run takes a minute
on 2 cores). RISE runs 64 masks (its memory per chunk does not depend on the number of
masks, only its time does). Run with::

    python benchmarks/memory_peak.py          # prints one line per method, exits 1 if over
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

IMAGES, SIDE = 64, 224
RISE_MASKS = 64

CHILD = """
import json, sys, time, warnings
from pathlib import Path
import torch
from timmlens.interpretation.registry import as_explainer
from timmlens.interpretation.scoring import memory_budget
from timmlens.testing import explainable_model

method, images, side, masks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(2)
model = explainable_model("test_resnet", seed=0, num_classes=10)
inputs = torch.randn(images, 3, side, side, generator=torch.Generator().manual_seed(0))
options = {"n_masks": masks} if method == "rise" else {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    explainer = as_explainer(method, model, **options)
    # warm-up on a tiny input: lazy imports and first-call set-up, but no large freed
    # blocks the allocator could keep and the measured call reuse unseen
    explainer.explain_batch(inputs[:1, :, :32, :32], [0])


def peak_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


Path("/proc/self/clear_refs").write_text("5")  # peak := current
before = current_kib()
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    heatmaps = explainer.explain_batch(inputs, [i % 10 for i in range(images)])
seconds = time.perf_counter() - start
assert heatmaps.shape == (images, side, side)
print(json.dumps({
    "method": method,
    "rss_before_mib": before / 1024,
    "growth_mib": (peak_kib() - before) / 1024,
    "budget_mib": memory_budget(torch.device("cpu"), "forward") / 2**20,
    "inputs_mib": inputs.numel() * 4 / 2**20,
    "seconds": seconds,
}))
"""


def measure(method: str) -> dict[str, float]:
    """Run ``method`` on ``IMAGES`` images in a fresh process; its memory figures."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(IMAGES), str(SIDE), str(RISE_MASKS)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    if not Path("/proc/self/clear_refs").exists():
        print("needs Linux (/proc/self/clear_refs to reset the peak)", file=sys.stderr)
        return 2
    over = False
    for method in ("scorecam", "rise"):
        figures = measure(method)
        within = figures["growth_mib"] <= figures["budget_mib"]
        over |= not within
        print(
            f"{method}: {IMAGES} images at {SIDE} px: peak growth {figures['growth_mib']:.0f} MiB "
            f"(budget {figures['budget_mib']:.0f} MiB, inputs {figures['inputs_mib']:.0f} MiB, "
            f"process before {figures['rss_before_mib']:.0f} MiB), {figures['seconds']:.1f} s: "
            f"{'within' if within else 'OVER'} the budget"
        )
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
