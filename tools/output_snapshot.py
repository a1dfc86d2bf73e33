"""Every method's and metric's output on fixed models, inputs and seeds, for bit-identity checks.

A refactoring must not change a single number. Run this before and after::

    python tools/output_snapshot.py write outputs/snapshot_before.npz
    python tools/output_snapshot.py write outputs/snapshot_after.npz
    python tools/output_snapshot.py compare outputs/snapshot_before.npz outputs/snapshot_after.npz

``compare`` exits 1 and names every array that differs (or is missing). The settings
below are the script's own, not the library's, so a change of the library's defaults for
tests does not move them.
"""

from __future__ import annotations

import argparse
import random
import sys
import warnings
from typing import Any

import numpy as np
import torch

SIDE, CLASSES = 64, 10
MODELS = {
    "cnn": ("test_resnet", {}),
    "effnet": ("test_efficientnet", {}),
    "vit": ("test_vit", {"img_size": SIDE}),
}
#: Small, fixed settings per method (the library's own cheap settings may move).
OPTIONS: dict[str, dict[str, Any]] = {
    "ig": {"n_steps": 4},
    "smoothgrad": {"n_samples": 4},
    "gradientshap": {"n_samples": 4, "n_baselines": 2},
    "deepliftshap": {"n_baselines": 2},
    "occlusion": {"window": 32},
    "featureablation": {"grid": 4},
    "shapley": {"grid": 4, "n_samples": 2},
    "kernelshap": {"grid": 4, "n_samples": 16},
    "lime": {"grid": 4, "n_samples": 16},
    "rise": {"n_masks": 32},
}


def _seed(value: int = 0) -> None:
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def _inputs() -> torch.Tensor:
    return torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))


def _methods(model: torch.nn.Module, family: str, out: dict[str, np.ndarray]) -> None:
    from timmlens.interpretation.registry import as_explainer, methods, supports

    x = _inputs()
    for method in methods():
        if not supports(model, method):
            continue
        _seed()
        explainer = as_explainer(method, model, **OPTIONS.get(method, {}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            heatmap = explainer(x, target_class=[1, 2])
        out[f"method/{family}/{method}"] = heatmap.detach().float().cpu().numpy()


def _metrics(model: torch.nn.Module, family: str, out: dict[str, np.ndarray]) -> None:
    from timmlens.interpretation.metrics import ExplanationMetrics
    from timmlens.interpretation.metrics.registry import metrics

    x = _inputs()
    heatmap = torch.rand(2, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    evaluator = ExplanationMetrics(model)
    for name in metrics("heatmap"):
        _seed()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = evaluator.compute(x, heatmap, target_class=[1, 2], metrics=[name])[name]
        out[f"metric/{family}/{name}/value"] = np.asarray(float(result))
        per_image = getattr(result, "per_image", None)
        if per_image is not None:
            out[f"metric/{family}/{name}/per_image"] = np.asarray(per_image, dtype=np.float64)
        for part in ("x", "y"):
            curve = getattr(result, part, None)
            if curve is not None:
                out[f"metric/{family}/{name}/{part}"] = np.asarray(curve, dtype=np.float64)
        for part, value in getattr(result, "details", {}).items():
            out[f"metric/{family}/{name}/details/{part}"] = np.asarray(value, dtype=np.float64)


def snapshot() -> dict[str, np.ndarray]:
    """``{"method/<family>/<name>" | "metric/<family>/<name>/<part>": array}``."""
    from timmlens.testing import explainable_model

    torch.set_num_threads(1)  # the same reduction order on every run
    out: dict[str, np.ndarray] = {}
    for family, (name, kwargs) in MODELS.items():
        model = explainable_model(name, num_classes=CLASSES, **kwargs)
        _methods(model, family, out)
        _metrics(model, family, out)
    return out


def compare(before: str, after: str) -> int:
    a, b = np.load(before), np.load(after)
    problems = [f"missing after: {key}" for key in a.files if key not in b.files]
    problems += [f"new after: {key}" for key in b.files if key not in a.files]
    for key in a.files:
        if key in b.files and not np.array_equal(a[key], b[key], equal_nan=True):
            diff = np.nanmax(np.abs(a[key].astype(np.float64) - b[key].astype(np.float64)))
            problems.append(f"differs: {key} (max abs diff {diff:.3g})")
    print(f"{len(a.files)} arrays before, {len(b.files)} after; {len(problems)} problems")
    for line in problems:
        print("  " + line)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("write").add_argument("path")
    pair = commands.add_parser("compare")
    pair.add_argument("before")
    pair.add_argument("after")
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args.before, args.after)
    arrays = snapshot()
    np.savez_compressed(args.path, **arrays)
    print(f"wrote {len(arrays)} arrays to {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
