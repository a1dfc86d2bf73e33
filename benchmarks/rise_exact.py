"""Our insertion and deletion next to RISE's own ``evaluation.py`` on the four photos.

The real EfficientNet-Lite0, GradCAM maps at its default layer, RISE's step
parameterisation (``--step`` pixels per step; RISE uses 224 at 224 x 224), ties in
RISE's order (``tie_order="rise"``). Prints per photo: RISE's AUC, ours, their largest
curve difference, and ours with the previous start (``"blur_reflect"``).

    PYTHONPATH=src python benchmarks/rise_exact.py --step 224
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_rise_exact import _rise_curves, auc
from timmlens import load_model
from timmlens.data import prepare_images
from timmlens.interpretation import GradCAM
from timmlens.interpretation.metrics import ExplanationMetrics

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


def main(step: int) -> None:
    model = load_model("bundled:efficientnet_lite0")
    images = prepare_images([getattr(data, name)() for name in PHOTOS], model).tensor
    heatmaps = GradCAM(model).explain_batch(images, None).detach()
    ours = ExplanationMetrics(model, pixels_per_step=step, tie_order="rise").compute(
        images, heatmaps
    )
    old = ExplanationMetrics(
        model, pixels_per_step=step, tie_order="rise", insertion_substrate="blur_reflect"
    ).insertion(images, heatmaps)
    print(f"step={step} pixels ({-(-224 * 224 // step)} steps), GradCAM maps, tie_order='rise'")
    print(
        "| photo | RISE insertion | ours | max curve diff | blur_reflect (before) "
        "| RISE deletion | ours | max curve diff |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for b, name in enumerate(PHOTOS):
        ref = _rise_curves(model, images[b : b + 1], heatmaps[b], stable=True, step=step)
        cells = [name]
        for kind in ("insertion", "deletion"):
            curve = ours[kind].y[b].double().numpy()
            cells += [
                f"{auc(ref[kind]):.6f}",
                f"{ours[kind].per_image[b].item():.6f}",
                f"{np.abs(curve - ref[kind]).max():.1e}",
            ]
            if kind == "insertion":
                cells.append(f"{old.per_image[b].item():.6f}")
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step", type=int, default=224)
    main(parser.parse_args().step)
