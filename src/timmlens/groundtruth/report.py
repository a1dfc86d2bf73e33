"""Tables of the known-answer benchmark: rankings with paired tests, and metric agreement.

``python -m timmlens.groundtruth.report --out docs/known_answers_tables.md`` scores every
method on every shipped known-answer model and writes the tables the docs page shows
(also ``timmlens groundtruth benchmark``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..evaluation.paired import estimate, rank_methods, ranking_agreement
from ..models.known_answer import (
    KNOWN_ANSWER_SIZE,
    KNOWN_ANSWER_SPECS,
    RECIPES,
    known_answer_facts,
)
from .benchmark import FAITHFULNESS, REFERENCES, MethodScores, benchmark_model, metric_direction
from .generator import generate
from .scores import SCORES

PRIMARY = "mass accuracy"
PROG = "timmlens groundtruth benchmark"
#: Where a run keeps each model's per-image values (`load_raw`, `page_from_raw` read
#: them back), one file per model so models can be run one at a time.
RAW_DIR = Path("outputs/known_answers")


def raw_path(spec: str, folder: Path = RAW_DIR) -> Path:
    """The file that keeps the per-image values of ``spec``'s run."""
    return Path(folder) / f"raw-{spec.split(':', 1)[1]}.json"


#: The page's text above the generated tables.
INTRO = """# Which method finds the evidence?

A photo has no known answer: nobody can say which pixels a network used, so a ranking of
explanation methods on photos rests on faithfulness metrics, which disagree with each
other. Here the answer is known by construction. `timmlens.groundtruth.generate` draws
64 px images with one **deciding object** (a shape of one colour: six classes such as
"red circle" or "yellow square") among two to four **distractors** (the other shape and
colour combinations, drawn independently of the label) on a cluttered background
(CLEVR-XAI, Arras et al. 2022, and FunnyBirds, Hesse et al. 2023, in miniature). Five
small timm models, two CNNs and three ViTs, are trained on it on CPU (`timmlens
groundtruth train`, from a seed) and ship with the package in float16
(`bundled:gt-resnet`, `bundled:gt-efficientnet`, `bundled:gt-vit`, `bundled:gt-vit-gap`,
`bundled:gt-deit`; {megabytes} MB in all).

**The models use the evidence, and only it.** With the deciding object refilled with
background their accuracy falls to chance (1/6 = 0.167); with a distractor removed it
does not move (1000 test images of seed 0; none of them was trained on):

{models}

The training times above are those of the shipped runs (one thread, on a CPU shared with
other jobs). Retrained with `timmlens groundtruth train --no-save` on an otherwise idle
2-core CPU (two threads), the models take 118 s (`gt-resnet`), 146 s
(`gt-efficientnet`), 391 s (`gt-vit`), 401 s (`gt-vit-gap`) and 432 s (`gt-deit`) and
reach 0.987, 0.998, 0.964, 0.955 and 0.974 test accuracy (0.176-0.189 without the object,
0.975-0.999 without a distractor): the same recipe from the same seed, though not the
same bits, since sums in another thread count round differently.

!!! note "The ViTs have a convolutional stem, the EfficientNet fused-MBConv blocks"
    A ViT whose patch embedding is a linear projection of 8 px or 4 px patches did not
    learn the task on a CPU budget: it found which colours and shapes were in the image
    but not which shape had which colour (test accuracy 0.45 after 800 steps with 8 px
    patches, 0.36 after 400 steps with 4 px patches; a Swin with 4 px patches 0.33 after
    400 steps), where the ResNet is at 0.99 after 600. The known-answer ViTs therefore
    embed patches with three stride-2 3x3 convolutions (BatchNorm, ReLU; 8x8 tokens of
    8x8 px), timm's `HybridEmbed` in place of the linear projection: the "hybrid" ViT of
    Dosovitskiy et al. (2021) and the convolutional stem of Xiao et al. (2021).
    Everything after the stem is timm's `VisionTransformer` with a class token
    (`gt-vit`), average pooling (`gt-vit-gap`) or class and distillation tokens
    (`gt-deit`), and every attention method reads its blocks as it reads any ViT's.

    The same budget decided the second CNN. A ConvNeXt reached 0.33 after 400 steps
    with its patchify stem, 0.38 after 600 with an overlapping stem and 0.36 after 500
    with layer scale starting at 1; TinyNet-E (depthwise-separable MBConv blocks only,
    8-16 channels early) 0.84 after 1000 steps at output stride 8 (29 min on one core).
    timm's smallest EfficientNet generator (`test_efficientnet`: a depthwise-separable
    block, two fused-MBConv blocks, two MBConv blocks with squeeze-and-excitation, SiLU;
    0.1 M parameters) at output stride 8 reached 0.97 after 400 steps and ships as
    `gt-efficientnet`: full 3x3 convolutions in the early stages (the fused-MBConv of
    EfficientNetV2 and EdgeTPU) let it bind a shape to its colour as the ResNet does.

**Scores against the evidence mask** (per image; mean [95% CI], clipped to [0, 1]):
*mass accuracy*, the share of the map's positive relevance inside the deciding object
(Arras et al.); *rank accuracy*, the share of its |mask| most relevant pixels inside it;
the *pointing game* (is the maximum inside it?) and the *energy pointing game* (share of
relevance in its bounding box, Score-CAM). Methods are ranked by mass accuracy; "vs next"
is the paired Wilcoxon signed-rank test of mass accuracy against the method below, image
by image, and "≈" marks a pair that is **not distinguishable** at the 5% level. The object
covers about 3% of the image, so a map that knows nothing (`randomcam`, `centerprior`,
the reference rows) scores about 0.03. Slow perturbation methods (occlusion, feature
ablation, Shapley sampling, KernelSHAP, LIME, RISE, ScoreCAM, AblationCAM) run at their
registered quick settings (where they have them) on fewer images; their pairs with the
others use the images both have. Regenerate with `python -m timmlens.groundtruth.report
--out docs/known_answers.md --figures docs/images` (`make known-answers`; one model:
`--model bundled:gt-vit`, the page is rebuilt from every model's saved values).

{overview}

{figures}
"""


def ranking_table(results: Mapping[str, MethodScores], primary: str = PRIMARY) -> str:
    """Markdown: methods by ``primary`` (best first), every score's mean [95% CI].

    The "vs next" column gives the paired Wilcoxon p-value of the ``primary`` score against
    the method below; "≈" marks a pair that is not distinguishable at the 5% level.
    """
    rows = rank_methods({name: r.scores[primary] for name, r in results.items()}, seed=0)
    head = ["#", "method", *SCORES, "vs next", "images"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for position, row in enumerate(rows, 1):
        scores = results[row.name]
        cells = [str(estimate(values)) for values in scores.scores.values()]
        versus = row.versus_next
        mark = (
            ""
            if versus is None
            else (
                f"≈ (p={versus.p_value:.2f})" if row.tied_with_next else f"p={versus.p_value:.1g}"
            )
        )
        name = f"`{row.name}`" + (" (reference)" if row.name in REFERENCES else "")
        lines.append(
            "| " + " | ".join([str(position), name, *cells, mark, str(scores.images)]) + " |"
        )
    return "\n".join(lines)


def agreement_table(
    per_model: Mapping[str, Mapping[str, MethodScores]],
    metrics: Sequence[str] = FAITHFULNESS,
    primary: str = PRIMARY,
) -> str:
    """Markdown: Kendall's tau [95% CI] of each metric's method ranking with the known one."""
    models = list(per_model)
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for metric in metrics:
        cells = []
        for model in models:
            results = per_model[model]
            truth = {n: r.scores[primary] for n, r in results.items() if metric in r.metrics}
            judged = {n: r.metrics[metric] for n, r in results.items() if metric in r.metrics}
            common = _common_images(list(truth.values()) + list(judged.values()))
            if len(truth) < 3 or not common.any():
                cells.append("n/a")
                continue
            agreement = ranking_agreement(
                {n: v[common] for n, v in truth.items()},
                {n: v[common] for n, v in judged.items()},
                other_higher_is_better=metric_direction(metric),
            )
            cells.append(str(agreement))
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _common_images(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``(N,)`` bool: the images where every array has a value."""
    return np.logical_and.reduce([np.isfinite(a) for a in arrays])


def _section(spec: str, results: Mapping[str, MethodScores], note: str) -> str:
    """One model's heading, ranking table and the note under it."""
    return f"## `{spec}`: {RECIPES[spec].what}\n\n{ranking_table(results)}\n\n{note}\n"


def _intro(per_model: Mapping[str, Mapping[str, MethodScores]]) -> str:
    specs = list(per_model)
    megabytes = (
        sum(
            RECIPES[spec].weights_path.stat().st_size
            for spec in KNOWN_ANSWER_SPECS
            if RECIPES[spec].weights_path.is_file()
        )
        / 1e6
    )
    figures = "\n\n".join(
        f"![Every method on three test images of {spec}; the deciding object in cyan]"
        f"(images/known_answers_{spec.split(':', 1)[1]}.png)"
        for spec in specs
    )
    return (
        INTRO.replace("{megabytes}", f"{megabytes:.1f}")
        .replace("{models}", models_table(specs))
        .replace("{overview}", overview_table(per_model))
        .replace("{figures}", figures)
    )


def overview_table(per_model: Mapping[str, Mapping[str, MethodScores]]) -> str:
    """Markdown: each method's mass accuracy and rank on every model, best mean rank first."""
    specs = list(per_model)
    ranks: dict[str, dict[str, int]] = {}
    for spec, results in per_model.items():
        order = sorted(results, key=lambda n: -np.nanmean(results[n].scores[PRIMARY]))
        for position, name in enumerate(order, 1):
            ranks.setdefault(name, {})[spec] = position
    names = sorted(ranks, key=lambda n: (np.mean(list(ranks[n].values())), n))
    head = ["method", *(f"`{spec.split(':', 1)[1]}`" for spec in specs)]
    lines = [
        "**Every model at a glance**: mass accuracy (rank on that model; a blank: the method "
        "does not apply), methods by their mean rank over the models they apply to.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in names:
        cells = []
        for spec in specs:
            result = per_model[spec].get(name)
            cells.append(
                ""
                if result is None
                else f"{np.nanmean(result.scores[PRIMARY]):.3f} ({ranks[name][spec]})"
            )
        label = f"`{name}`" + (" (reference)" if name in REFERENCES else "")
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def models_table(specs: Sequence[str]) -> str:
    """Markdown: each model's accuracy, with the deciding object or a distractor removed."""
    lines = [
        "| model | architecture | test accuracy | deciding object removed | "
        "one distractor removed | training |",
        "|---|---|---|---|---|---|",
    ]
    for spec in specs:
        facts = known_answer_facts(spec) if RECIPES[spec].weights_path.is_file() else {}
        nan = float("nan")
        lines.append(
            f"| `{spec}` | {RECIPES[spec].what} | {facts.get('accuracy', nan):.3f} | "
            f"{facts.get('without_evidence', nan):.3f} | "
            f"{facts.get('without_distractor', nan):.3f} | "
            f"{facts.get('steps', '?')} steps, {facts.get('train_seconds', '?')} s |"
        )
    return "\n".join(lines)


def run(
    specs: Sequence[str],
    images: int,
    slow_images: int,
    metrics: Sequence[str],
    out: Path,
    metric_images: int = 100,
    raw_dir: Path = RAW_DIR,
) -> dict[str, dict[str, MethodScores]]:
    """Benchmark ``specs`` on ``images`` test images, each model's values to its raw file.

    After each model the page ``out`` is rebuilt from every raw file in ``raw_dir``, so
    models benchmarked in separate runs (or a stopped run's finished models) share one page.
    """
    from ..models import load_model

    data = generate(images, size=KNOWN_ANSWER_SIZE, seed=0)
    per_model: dict[str, dict[str, MethodScores]] = {}
    for spec in specs:
        started = time.perf_counter()
        model = load_model(spec)
        per_model[spec] = benchmark_model(
            model, data, slow_images=slow_images, metrics=metrics, metric_images=metric_images
        )
        minutes = (time.perf_counter() - started) / 60
        note = (
            f"({len(data)} test images, seed 0; slow methods on the first {slow_images}; "
            f"metrics on the first {metric_images}; {minutes:.1f} min on this machine)"
        )
        write_raw(raw_path(spec, raw_dir), per_model[spec], note)
        page_from_raw(raw_dir, out)
        print(_section(spec, per_model[spec], note), flush=True)
    return per_model


AGREEMENT_INTRO = """
## Which metric to believe

Each faithfulness metric ranks the methods by its own mean over the same images; the
table gives Kendall's tau between that ranking and the known-answer ranking (mass
accuracy), with a 95% bootstrap interval over images (a metric where lower is better is
turned round first), for each model. tau = +1: the metric
orders the methods as the evidence does; 0: no relation. Metrics run at 16 curve steps
and their other defaults.

"""


def write_raw(path: Path, results: Mapping[str, MethodScores], note: str) -> None:
    """One model's per-image values and the note under its table, as JSON at ``path``."""
    raw = {
        "note": note,
        "methods": {
            name: {
                "scores": {k: v.tolist() for k, v in r.scores.items()},
                "metrics": {k: v.tolist() for k, v in r.metrics.items()},
                "images": r.images,
                "options": r.options,
                "seconds": r.seconds,
            }
            for name, r in results.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(raw))
    partial.replace(path)  # a stopped run never leaves half a file


def load_raw(path: Path) -> tuple[dict[str, MethodScores], str]:
    """One model's per-image values and note, as `write_raw` wrote them."""
    raw = json.loads(Path(path).read_text())
    results = {
        name: MethodScores(
            name,
            {k: np.asarray(v, dtype=np.float64) for k, v in row["scores"].items()},
            {k: np.asarray(v, dtype=np.float64) for k, v in row["metrics"].items()},
            images=row["images"],
            options=row["options"],
            seconds=row["seconds"],
        )
        for name, row in raw["methods"].items()
    }
    return results, raw.get("note", "")


def page_from_raw(raw_dir: Path, out: Path) -> list[str]:
    """Rewrite the page ``out`` from the raw files in ``raw_dir`` (no model runs).

    Returns:
        The specs on the page, in the recipes' order.
    """
    specs = [spec for spec in KNOWN_ANSWER_SPECS if raw_path(spec, raw_dir).is_file()]
    if not specs:
        raise FileNotFoundError(
            f"no known-answer results in {raw_dir} (raw-<model>.json); run "
            f"{PROG} --model <spec> first."
        )
    per_model, notes = {}, {}
    for spec in specs:
        per_model[spec], notes[spec] = load_raw(raw_path(spec, raw_dir))
    sections = [_intro(per_model)]
    sections += [_section(spec, per_model[spec], notes[spec]) for spec in specs]
    metrics = sorted(
        {m for results in per_model.values() for r in results.values() for m in r.metrics},
        key=list(FAITHFULNESS).index,
    )
    text = "\n".join(sections)
    if metrics:
        text += AGREEMENT_INTRO + agreement_table(per_model, metrics) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return specs


def write_figures(specs: Sequence[str], folder: Path) -> list[Path]:
    """Every applicable method on three test images of each model, the evidence outlined."""
    from ..interpretation.registry import methods, supports
    from ..models import load_model
    from .figures import evidence_figure

    data = generate(3, size=KNOWN_ANSWER_SIZE, seed=0)
    paths = []
    for spec in specs:
        model = load_model(spec)
        names = [name for name in methods() if supports(model, name)]
        name = spec.split(":", 1)[1]
        title = f"{spec} ({RECIPES[spec].what}): every method, true class, evidence in cyan"
        paths.append(
            evidence_figure(model, data, names, title, folder / f"known_answers_{name}.png")
        )
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        choices=KNOWN_ANSWER_SPECS,
        help="model to benchmark (repeatable; default: every shipped one)",
    )
    parser.add_argument("--images", type=int, default=500)
    # the settings the docs page was made with (35-42 min per model on one CPU core)
    parser.add_argument("--slow-images", type=int, default=50)
    parser.add_argument("--metric-images", type=int, default=30)
    parser.add_argument(
        "--figures",
        type=Path,
        default=None,
        help="also draw every method on 3 images of "
        "each model into this folder (known_answers_<model>.png)",
    )
    parser.add_argument("--metric", action="append", help="faithfulness metric (repeatable)")
    parser.add_argument("--out", type=Path, default=RAW_DIR / "tables.md")
    parser.add_argument(
        "--raw", type=Path, default=RAW_DIR, help="folder of the per-model raw-<model>.json"
    )
    parser.add_argument(
        "--page-only",
        action="store_true",
        help="rebuild the page from the raw files in --raw; run no model",
    )
    args = parser.parse_args(argv)
    if args.page_only:
        print(f"wrote {args.out} ({', '.join(page_from_raw(args.raw, args.out))})")
        return 0
    specs = args.model or [s for s in KNOWN_ANSWER_SPECS if RECIPES[s].weights_path.is_file()]
    if args.figures is not None:
        write_figures(specs, args.figures)
    run(
        specs,
        args.images,
        args.slow_images,
        args.metric or FAITHFULNESS,
        args.out,
        args.metric_images,
        args.raw,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
