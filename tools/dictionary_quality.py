"""Quality of the concept dictionaries on the real EfficientNet-Lite0 (the table in
``docs/discover.md``): held-out R^2, dead codes and cross-seed stability per method.

    OMP_NUM_THREADS=2 python tools/dictionary_quality.py outputs/dictionary-quality

A docs tool, not part of the library. Data: random crops and mirror images of the
scikit-image photos that ship with the package (no download) and the known-answer
generator's images (`timmlens.groundtruth.generate`), 224 px, extracted once (the first method's
`fit_concepts` run) and read by every other method; layer ``conv_head``
(1280 channels, 7x7). Every method gets the same images, K and seed; the table is printed
as Markdown and written to ``<out>/table.md`` with the raw figures in ``<out>/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from timmlens import ImageClassifier
from timmlens.analysis import fit_concepts
from timmlens.analysis.concept_dictionaries import fit_with_quality
from timmlens.analysis.concept_store import ShardStore
from timmlens.groundtruth import generate

SIDE = 224
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "immunohistochemistry", "hubble_deep_field")


class Pictures(Dataset):
    def __init__(self, pictures: list[np.ndarray]) -> None:
        self.pictures = pictures

    def __len__(self) -> int:
        return len(self.pictures)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.pictures[index]


def photos(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` random crops (half mirrored) of the bundled scikit-image colour photos."""
    from skimage import data

    sources = []
    for name in PHOTOS:
        try:
            sources.append(getattr(data, name)())
        except Exception:  # a photo scikit-image would download: left out
            continue
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        photo = sources[i % len(sources)]
        height, width = photo.shape[:2]
        scale = rng.uniform(0.4, 1.0)
        h, w = int(height * scale), int(width * scale)
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = photo[top : top + h, left : left + w]
        crop = crop[:, ::-1] if i % 2 else crop
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((SIDE, SIDE))))
    return out


def _refit(args: argparse.Namespace, n_images: int, method: str, sparsity: int | None) -> tuple:
    """``method`` on the shards already in ``args.out``: `fit_with_quality`, as fit_concepts
    calls it (same offset, held-out images, seeds)."""
    store = ShardStore(args.out, 40, n_images)
    batches = list(range(store.n_batches))
    options = {
        "layer": "conv_head", "n_concepts": args.concepts, "seed": 0, "epochs": args.epochs,
        "method": method, "sparsity": sparsity, "stability": True,
    }  # fmt: skip
    fitted, quality = fit_with_quality(
        store, batches, store.offset(), n_images, options, torch.device("cpu"),
        tqdm(disable=True),
    )  # fmt: skip
    return quality, fitted.description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--generated", type=int, default=60)
    parser.add_argument("--concepts", type=int, default=64)
    parser.add_argument("--sparsity", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=None, help="default: ~1000 steps")
    parser.add_argument(
        "--methods", nargs="+", default=["nmf", "sae-topk", "sae-batchtopk", "sae-jumprelu",
                                         "archetypal"],
    )  # fmt: skip
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Maximum number of iterations")
    model = ImageClassifier("bundled:efficientnet_lite0")
    images = photos(args.photos) + list(generate(args.generated, size=SIDE, seed=0).images)
    data = Pictures(images)
    rows, raw = [], {}
    extracted = (args.out / "shards").is_dir()  # a previous run's shards: read them again
    for method in args.methods:
        start = time.perf_counter()
        sparsity = None if method == "nmf" else args.sparsity  # JumpReLU: its starting budget
        if not extracted:  # extracts the shards once; the other methods read them
            first = fit_concepts(
                model, data, n_concepts=args.concepts, layer="conv_head", out=args.out,
                method=method, stability=True, progress=False, gallery=False, batch_size=40,
                sparsity=sparsity, epochs=args.epochs,
            )  # fmt: skip
            q, fit = first.quality, first.fit
            extracted = True
        else:
            q, fit = _refit(args, len(data), method, sparsity)
        seconds = time.perf_counter() - start
        raw[method] = {**q, "seconds": seconds, "fit": fit}
        r2 = "n/a" if q["r2"] is None else f"{q['r2']:.3f}"
        where = " (in-sample)" if q["in_sample"] else ""
        rows.append(
            f"| {method} | {args.concepts} | {r2}{where} | {q['dead_codes']} "
            f"({q['dead_fraction']:.0%}) | {q['active_codes']:.1f} | {q['stability']:.3f} "
            f"| {q['stability_min']:.3f} "
            f"| {seconds:.0f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"EfficientNet-Lite0 (bundled, ImageNet), layer conv_head (1280 x 7 x 7), "
            f"{args.photos} photo crops + {args.generated} known-answer images at {SIDE} px "
            f"({len(data) * 49} positions; R^2 on the 1 image in 5 held out), seed 0 vs 1, "
            f"{'about 1000 optimizer steps' if args.epochs is None else f'{args.epochs} passes'}:",
            "",
            "| method | K | R^2 | dead codes | active codes | stability (mean matched cosine) "
            "| worst pair | seconds (2 fits) |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "quality.json").write_text(json.dumps(raw, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
