"""Make the MACO magnitude spectrum that ships in the package, from natural photos.

    python tools/maco_spectrum.py       # writes src/timmlens/analysis/assets/maco_spectrum.npy
    python tools/maco_spectrum.py --out spectrum.npy --crops 64

MACO (Fel et al., NeurIPS 2023) fixes the magnitude of the visualisation's spectrum to the
mean magnitude of natural images and optimises only the phase. horama downloads that
spectrum (computed on ImageNet) at run time; timmlens computes its own, offline, from the
colour photos scikit-image ships (astronaut, chelsea, coffee, rocket, hubble_deep_field):
random square crops of each (a third of the short side to all of it), resized to
224 x 224, in [0, 1], mapped to the decorrelated colour components the parameterisation
optimises (``rgb = components @ M``, so ``components = rgb @ M^-1``), then the mean
``|rfft2|`` per component. Stored as ``(3, 224, 113)`` float16 (about 150 kB).
Seeded: a rerun writes the same array.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data

from timmlens.analysis.feature_params import COLOR_CORRELATION_SVD_SQRT, MACO_SPECTRUM_PATH

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
SIZE = 224


def random_crops(photo: np.ndarray, crops: int, rng: np.random.Generator) -> torch.Tensor:
    """Random square crops of ``photo`` ``(H, W, 3)`` uint8 -> ``(crops, 3, 224, 224)``."""
    image = torch.from_numpy(photo).permute(2, 0, 1).float() / 255.0
    height, width = image.shape[1:]
    out = []
    for _ in range(crops):
        side = int(rng.integers(min(height, width) // 3, min(height, width) + 1))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = image[:, top : top + side, left : left + side].unsqueeze(0)
        out.append(F.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", antialias=True)[0])
    return torch.stack(out)


def magnitude_spectrum(crops_per_photo: int = 32, seed: int = 0) -> np.ndarray:
    """The mean magnitude spectrum ``(3, 224, 113)`` of the decorrelated colour components."""
    rng = np.random.default_rng(seed)
    inverse = torch.linalg.inv(torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=torch.float32))
    total = torch.zeros(3, SIZE, SIZE // 2 + 1)
    count = 0
    for name in PHOTOS:
        crops = random_crops(getattr(data, name)(), crops_per_photo, rng)
        components = torch.einsum("bchw,cd->bdhw", crops, inverse)
        total += torch.fft.rfft2(components).abs().sum(0)
        count += len(crops)
    return (total / count).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MACO_SPECTRUM_PATH)
    parser.add_argument("--crops", type=int, default=32, help="random crops per photo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spectrum = magnitude_spectrum(args.crops, args.seed).astype(np.float16)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, spectrum, allow_pickle=False)
    print(f"wrote {args.out}: {spectrum.shape} float16, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
