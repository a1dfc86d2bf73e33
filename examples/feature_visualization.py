"""Feature visualisation of the real EfficientNet-Lite0 and the known-answer ResNet.

Run from the repository root::

    python examples/feature_visualization.py                  # several minutes on 2 CPU cores
    python examples/feature_visualization.py --out outputs/fv --steps 64

Writes to ``--out`` (default ``docs/images/``, the figures of ``docs/discover.md``):

* ``feature_vis_lite0.png``: the real ImageNet Lite0 at 224 px: the tiger-cat and
  espresso logits and channel 112 of ``bn2`` (the top channel for tiger cat), with MACO
  and Fourier; each panel's title gives the class the model reads in it;
* ``feature_vis_gt-resnet.png``: every class logit of the known-answer ResNet at 64 px,
  MACO and Fourier, with the class the model reads in each image and its probability;

and prints one line per image (objective, final score, predicted class).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from timmlens import ImageClassifier
from timmlens.analysis import objectives as obj
from timmlens.analysis import visualize_feature
from timmlens.models.introspect import class_name_of, data_config


def _predicted(model: torch.nn.Module, image: torch.Tensor) -> tuple[str, float]:
    config = data_config(model)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        probabilities = model((image[None].cpu() - mean) / std).softmax(-1)[0]
    k = int(probabilities.argmax())
    return class_name_of(model, k), float(probabilities[k])


def _grid(panels: list[tuple[str, torch.Tensor]], columns: int, path: Path, scale: float) -> None:
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(scale * columns, scale * rows + 0.3))
    for axis, (title, image) in zip(axes.flat, panels, strict=False):
        axis.imshow(image.permute(1, 2, 0).cpu().numpy())
        axis.set_title(title, fontsize=8)
    for axis in axes.flat:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=72)
    plt.close(figure)
    print(f"wrote {path}")


def lite0(out: Path, steps: int, methods: tuple[str, ...]) -> None:
    model = ImageClassifier("bundled:efficientnet_lite0")
    cases = [
        ("tiger cat logit", obj.class_logit(282)),
        ("espresso logit", obj.class_logit(967)),
        ("bn2 channel 112", obj.channel("bn2", 112)),
    ]
    panels = []
    for method in methods:
        for title, objective in cases:
            result = visualize_feature(model, objective=objective, steps=steps, method=method)
            name, p = _predicted(model, result.image)
            print(f"lite0 {method} {objective}: {result.final_score:.3g}, read as {name} {p:.2f}")
            panels.append((f"{title} ({method})\nread as: {name} {p:.0%}", result.image))
    _grid(panels, 3, out / "feature_vis_lite0.png", 3.0)


def gt_resnet(out: Path, steps: int) -> None:
    model = ImageClassifier("bundled:gt-resnet")
    panels = []
    for method in ("maco", "fourier"):
        for k in range(6):
            result = visualize_feature(
                model, objective=obj.class_logit(k), steps=steps, size=64, method=method
            )
            name, p = _predicted(model, result.image)
            print(
                f"gt-resnet {method} class {k} ({class_name_of(model, k)}): read as {name} {p:.2f}"
            )
            panels.append(
                (f"{class_name_of(model, k)} ({method})\nread as {name} {p:.0%}", result.image)
            )
    _grid(panels, 6, out / "feature_vis_gt-resnet.png", 1.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--steps", type=int, default=256, help="optimisation steps per image")
    parser.add_argument("--only", choices=("lite0", "gt-resnet"), default=None)
    parser.add_argument("--lite0-methods", nargs="+", default=["maco", "fourier"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "gt-resnet"):
        gt_resnet(args.out, args.steps)
    if args.only in (None, "lite0"):
        lite0(args.out, args.steps, tuple(args.lite0_methods))


if __name__ == "__main__":
    main()
