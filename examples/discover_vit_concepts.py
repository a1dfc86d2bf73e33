"""A sparse dictionary over the patch tokens of the known-answer ViT (``bundled:gt-vit-gap``).

Run from the repository root::

    python examples/discover_vit_concepts.py --out outputs/vit-concepts

The model was trained on the synthetic task of ``docs/known_answers.md``: each class is
one shape in one colour, among distractors sharing its shape or its colour. A TopK SAE
(``fit_concepts(method="sae-topk")``) is fitted over the patch tokens of its last block
(class and register tokens left out by the adapter) on generated images, and each concept
is summarised by the true classes of its top images (the generator's labels) and by how
much of its map falls on the deciding object (the generator's evidence mask). Prints a
Markdown table; writes the gallery (with feature visualisations when
``--visualize-steps`` > 0) to ``--out``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from timmlens import load_model
from timmlens.analysis import fit_concepts
from timmlens.analysis.concept_maps import concept_maps
from timmlens.groundtruth import generate


class Images(Dataset):
    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.images[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/vit-concepts"))
    parser.add_argument("--model", default="bundled:gt-vit-gap")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--concepts", type=int, default=24)
    parser.add_argument("--sparsity", type=int, default=3)
    parser.add_argument("--layer", default=None, help="default: the adapter's feature layer")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--visualize-steps", type=int, default=0)
    parser.add_argument("--top-images", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    data = generate(args.images, size=64, seed=7)
    result = fit_concepts(
        model, Images(data.images), n_concepts=args.concepts, layer=args.layer, out=args.out,
        method="sae-topk", sparsity=args.sparsity, epochs=args.epochs, overwrite=True,
        top_k_images=args.top_images, visualize_steps=args.visualize_steps, batch_size=64,
    )  # fmt: skip
    print(result)
    print()
    print("| concept | energy | head's top class | true classes of its top images | purity "
          "| map on the deciding object |")  # fmt: skip
    print("|---|---:|---|---|---:|---:|")
    purities, on_object = [], []
    for k in range(result.n_concepts):
        indices = [item["index"] for item in result.top_images[k]]
        labels = Counter(data.class_names[int(data.labels[i])] for i in indices)
        _, count = labels.most_common(1)[0]
        purity = count / len(indices)
        maps = concept_maps(result, model, [data.images[i] for i in indices]).cpu()[:, k]
        evidence = torch.from_numpy(data.evidence[indices]).float()
        share = float((maps * evidence).sum() / maps.sum().clamp_min(1e-12))
        area = float(evidence.mean())
        purities.append(purity)
        on_object.append(share)
        head = result.top_classes[k][0]["name"] if result.top_classes[k] else "-"
        listed = ", ".join(f"{name} {n}" for name, n in labels.most_common(3))
        print(
            f"| {k + 1} | {result.energy_share[k]:.1%} | {head} | {listed} | {purity:.0%} "
            f"| {share:.0%} (object area {area:.0%}) |"
        )
    print()
    print(f"mean purity {np.mean(purities):.0%}; mean map share on the deciding object "
          f"{np.mean(on_object):.0%}; gallery: {result.html_path}")  # fmt: skip


if __name__ == "__main__":
    main()
