"""Quality of the concept dictionaries on the real EfficientNet-Lite0 (the table in
``docs/discover.md``): held-out R^2, dead codes and cross-seed stability per method.

    OMP_NUM_THREADS=2 python tools/dictionary_quality.py outputs/dictionary-quality

A docs tool, not part of the library. Data: random crops and mirror images of the
scikit-image photos that ship with the package (no download) and the known-answer
generator's images (`timmlens.groundtruth.generate`), 224 px; layer ``conv_head``
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
from PIL import Image
from torch.utils.data import Dataset

from timmlens import ImageClassifier
from timmlens.analysis import fit_concepts
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--generated", type=int, default=60)
    parser.add_argument("--concepts", type=int, default=64)
    parser.add_argument("--sparsity", type=int, default=8)
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
    for method in args.methods:
        start = time.perf_counter()
        top_k = {} if method in ("nmf", "sae-jumprelu") else {"sparsity": args.sparsity}
        result = fit_concepts(
            model, data, n_concepts=args.concepts, layer="conv_head", out=args.out / method,
            method=method, stability=True, overwrite=True, progress=False, gallery=False,
            batch_size=40, **top_k,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        q = result.quality
        raw[method] = {**q, "seconds": seconds, "fit": result.fit}
        r2 = "n/a" if q["r2"] is None else f"{q['r2']:.3f}"
        where = " (in-sample)" if q["in_sample"] else ""
        rows.append(
            f"| {method} | {args.concepts} | {r2}{where} | {q['dead_codes']} "
            f"({q['dead_fraction']:.0%}) | {q['stability']:.3f} | {q['stability_min']:.3f} "
            f"| {seconds:.0f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"EfficientNet-Lite0 (bundled, ImageNet), layer conv_head (1280 x 7 x 7), "
            f"{args.photos} photo crops + {args.generated} known-answer images at {SIDE} px "
            f"({len(data) * 49} positions; R^2 on the 1 image in 5 held out), seed 0 vs 1:",
            "",
            "| method | K | R^2 | dead codes | stability (mean matched cosine) | worst pair "
            "| seconds (2 fits) |",
            "|---|---|---|---|---|---|---|",
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
