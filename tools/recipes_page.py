"""The recipes page (``docs/recipes.md``), generated from the adapters so it cannot drift.

    python tools/recipes_page.py docs/recipes.md            # write it (make docs)
    python tools/recipes_page.py docs/recipes.md --check    # exit 1 if out of date (CI)

A docs tool, not part of the library: it builds every example architecture at full size
with random weights (no download) and asks `timmlens.adapters.describe` for its facts.
``tests/test_recipes.py`` runs every snippet on a shrunken model of the same family.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import timm
import torch

from timmlens.adapters.describe import ModelDescription, describe
from timmlens.interpretation.registry import METHODS

# (family title, example architecture, tip). The facts in each row come from the adapter.
RECIPE_MODELS: list[tuple[str, str, str]] = [
    ("ResNet", "resnet50", "layer3 gives finer, less class-specific maps than layer4."),
    ("ResNeXt", "resnext50_32x4d", "Same stages as ResNet; the recipes' layer4 is the default."),
    (
        "EfficientNet",
        "efficientnet_b0",
        "conv_head sees 1280 channels at 1/32 resolution; blocks.5 doubles the resolution.",
    ),
    (
        "MobileNetV3",
        "mobilenetv3_large_100",
        "Its conv_head runs after global pooling (a 1x1 map): CAM uses the last block instead.",
    ),
    ("RegNet", "regnety_002", "Stages are s1..s4; s4 is the last before pooling."),
    ("ConvNeXt", "convnext_tiny", "stages.3 is 1/32 resolution; stages.2 for finer maps."),
    ("DenseNet", "densenet121", "features.norm5 is the last normalised feature map."),
    (
        "ViT",
        "vit_small_patch16_224",
        "Class-token pooling: CAM taps blocks[-1].norm1; rollout or class-specific rollout "
        "show the attention path.",
    ),
    (
        "DeiT (distilled)",
        "deit_tiny_distilled_patch16_224",
        "Two prefix tokens (class, distillation); rollout can read either token's row.",
    ),
    (
        "ViT with registers",
        "vit_small_patch14_reg4_dinov2",
        "Four register tokens are dropped with the class token before reshaping to the grid.",
    ),
    (
        "EVA-02",
        "eva02_tiny_patch14_224",
        "Average pooling: the last block's patch tokens get gradients, so CAM taps it.",
    ),
    ("BEiT", "beit_base_patch16_224", "Average pooling with fc_norm; rollout applies."),
    (
        "Swin",
        "swin_tiny_patch4_window7_224",
        "NHWC stages and windowed attention: use GradCAM (no global rollout).",
    ),
]


def _methods_for_every_model() -> str:
    """Titles of the first-choice methods (``compared_by_default``) for every family (all but
    attention); the methods page and the matrix list the rest."""
    return ", ".join(
        spec.title
        for spec in METHODS.values()
        if spec.compared_by_default and not spec.needs_attention
    )


def describe_architecture(name: str) -> ModelDescription:
    """The adapter's description of ``name`` built with random weights (no download)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
    return describe(model, print_it=False)


def _slug(title: str) -> str:
    """The anchor mkdocs' ``toc`` gives a heading (``"DeiT (distilled)"`` -> ``deit-distilled``)."""
    kept = re.sub(r"[^\w\s-]", "", title).strip().lower()
    return re.sub(r"[-\s]+", "-", kept)


def pretrained_spec(architecture: str) -> tuple[str, bool]:
    """``("arch.default_tag", has_classifier)``: timm's default weights for ``architecture``.

    Self-supervised checkpoints (DINOv2, EVA-02 MIM) have no classifier (``num_classes``
    0): a recipe then adds a head, which must be trained before its maps mean anything.
    """
    cfg = timm.models.get_pretrained_cfg(architecture)
    if cfg is None or not cfg.tag:
        return architecture, True
    return f"{architecture}.{cfg.tag}", bool(cfg.num_classes)


def recipe_snippet(architecture: str, facts: ModelDescription) -> str:
    """The runnable code of one family's recipe (``tests/test_recipes.py`` runs each)."""
    spec, has_classifier = pretrained_spec(architecture)
    imports = "GradCAM, AttentionVisualizer" if facts.attention_blocks else "GradCAM"
    if has_classifier:
        load = f'model = ImageClassifier("{spec}")  # timm\'s default weights (downloads once)'
    else:
        load = (
            f'model = ImageClassifier("{spec}", num_classes=10)\n'
            f"# ^ a self-supervised checkpoint without classifier: the new head must be\n"
            f"#   fine-tuned before its maps mean anything"
        )
    lines = [
        "from PIL import Image",
        "from timmlens import ImageClassifier",
        f"from timmlens.interpretation import {imports}",
        "",
        load,
        'image = Image.open("cat.jpg")',
        f'cam = GradCAM(model, target_layer="backbone.{facts.default_layer}")  # the default',
        "heatmap = cam(image)  # (H, W) in [0, 1], model-input coordinates",
    ]
    if facts.attention_blocks:
        lines += [
            "rollout = AttentionVisualizer(model).attention_rollout(image)  # (H, W)",
        ]
    return "\n".join(lines)


def recipes_markdown() -> str:
    """The recipes page: a summary table, then per family its facts, tip and snippet."""
    lines = [
        "# Recipes per architecture",
        "",
        "Generated from timmlens' adapters by `tools/recipes_page.py` (`make docs`); do not "
        "edit by hand. Every snippet is run by the test suite "
        "(`tests/test_recipes.py`, on a shrunken model of the same family). Layer names are "
        "those of a bare timm model; in an `ImageClassifier` they start with `backbone.` "
        "(both forms are accepted). [Every method](methods/index.md) and "
        "[where each works](methods/matrix.md) are listed on their own pages.",
        "",
        f"First-choice methods for every family: {_methods_for_every_model()}; ViT-like "
        f"families add attention maps and rollout.",
        "",
        "| family | example | default CAM layer | layout | prefix tokens |",
        "| --- | --- | --- | --- | ---: |",
    ]
    sections: list[str] = []
    for title, architecture, tip in RECIPE_MODELS:
        facts = describe_architecture(architecture)
        layout = facts.layout.split(" (")[0]
        anchor = _slug(title)
        lines.append(
            f"| [{title}](#{anchor}) | `{architecture}` | `{facts.default_layer}` | {layout} | "
            f"{facts.num_prefix_tokens} |"
        )
        attention = (
            f"{len(facts.attention_blocks)} global attention blocks: attention maps and "
            f"rollout apply."
            if facts.attention_blocks
            else "No global attention: GradCAM and the input methods."
        )
        sections += [
            f"## {title}",
            "",
            f"`{architecture}`: default CAM layer `{facts.default_layer}` "
            f"({facts.default_layer_reason}); layout {layout}; "
            f"{facts.num_prefix_tokens} prefix tokens. {attention}",
            "",
            f"Tip: {tip}",
            "",
            "```python",
            recipe_snippet(architecture, facts),
            "```",
            "",
        ]
    lines += [
        "",
        "Why the default layer: timm's `feature_info` names the last stage of nearly every "
        "family and is used as is; the overrides are ViTs with class-token pooling (the last "
        "block's patch tokens get no gradient, so CAM taps `blocks[-1].norm1`) and "
        "EfficientNet (`conv_head`, the layer the usual recipes name). Every timm family is "
        "swept in [zoo coverage](zoo_coverage.md). Models from outside timm (torchvision, "
        "your own CNN) get the last spatial layer before global pooling, found by tracing "
        "one forward.",
        "",
        *sections,
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python tools/recipes_page.py PATH [--check]``: write or verify the page."""
    parser = argparse.ArgumentParser(description="Generate the recipes page from the adapters.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--check", action="store_true", help="fail if PATH is out of date")
    args = parser.parse_args(argv)
    text = recipes_markdown()
    if args.check:
        if not args.path.exists() or args.path.read_text() != text:
            print(
                f"{args.path} is out of date with the adapters; rewrite it with "
                f"`python tools/recipes_page.py {args.path}` (or `make docs`)."
            )
            return 1
        return 0
    args.path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
