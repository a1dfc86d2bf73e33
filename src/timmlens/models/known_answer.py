"""The known-answer models: small timm networks trained on the synthetic task of
`timmlens.groundtruth`, loaded as ``bundled:gt-<recipe>``.

Each recipe is one timm architecture with small depth and width, at 64 px, mean = std =
0.5. Every recipe reaches 95% test accuracy, and its weights ship with the package
(``bundled:gt-resnet``, ``-efficientnet``, ``-vit``, ``-vit-gap``, ``-deit``; 0.2-1.4 MB
each in float16 safetensors): the one exception to "no weights in the repository", reproduced by
``timmlens groundtruth train`` (or ``python -m timmlens.groundtruth.training``) from a
seed. An installation without a recipe's weights refuses to load it and says how to
train it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ..errors import ModelLoadError
from .weights_status import has_synthetic_mark, mark_synthetic_task

#: The image side every known-answer model was trained at.
KNOWN_ANSWER_SIZE = 64
#: The task's class names, in label order (the generator's ``CLASS_NAMES``).
KNOWN_ANSWER_CLASSES: tuple[str, ...] = (
    "red circle",
    "green square",
    "blue triangle",
    "yellow cross",
    "blue circle",
    "yellow square",
)
KNOWN_ANSWER_PREFIX = "bundled:gt-"
#: Where the shipped weights live (package data).
WEIGHTS_DIR = Path(__file__).with_name("weights")

_VIT = {"img_size": KNOWN_ANSWER_SIZE, "depth": 4, "embed_dim": 96, "num_heads": 3}
#: The ViTs' stem: three stride-2 conv layers, so 8x8 tokens of 8x8 px each.
_VIT_STEM = (24, 48, 96)


class ConvStem(nn.Sequential):
    """Stride-2 3x3 conv, BatchNorm, ReLU layers: a hybrid ViT's patch embedding.

    ``(B, 3, H, W) -> (B, channels[-1], H / 2^k, W / 2^k)`` for ``k = len(channels)``. A
    convolutional stem in place of the linear patch projection (Dosovitskiy et al. 2021,
    Sec. 3.1 "hybrid"; Xiao et al. 2021, "Early convolutions help transformers see
    better") lets a small ViT bind a shape to its colour within the CPU training budget,
    which the linear projection of 8 px or 4 px patches did not (docs/known_answers.md).
    """

    def __init__(self, channels: tuple[int, ...]):
        layers: list[nn.Module] = []
        width = 3
        for out in channels:
            layers += [nn.Conv2d(width, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        super().__init__(*layers)
        self.num_features = width  # what timm's HybridEmbed reads
        self.stride = 2 ** len(channels)


@dataclass(frozen=True)
class KnownAnswerRecipe:
    """One known-answer model: its timm architecture and the options that shrink it.

    Attributes:
        name: the spec suffix (``"vit"`` for ``bundled:gt-vit``).
        architecture: the timm model name.
        options: ``timm.create_model`` keyword arguments (depth, width, ...).
        learning_rate: AdamW's peak learning rate for training.
        steps: training steps that reach the documented accuracy.
        batch_size: images per training step.
        train_images: size of the generated training pool (image ``i`` of the pool is the
            same for every recipe, so a smaller pool is a prefix of a larger one).
        conv_stem: channels of a `ConvStem` that replaces a ViT's linear patch embedding
            (timm's ``HybridEmbed``); empty for the architecture's own stem.
        what: one line for the docs.
    """

    name: str
    architecture: str
    options: dict[str, Any] = field(default_factory=dict)
    learning_rate: float = 2e-3
    steps: int = 600
    batch_size: int = 64
    train_images: int = 12_000
    conv_stem: tuple[int, ...] = ()
    what: str = ""

    @property
    def spec(self) -> str:
        return f"{KNOWN_ANSWER_PREFIX}{self.name}"

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"gt-{self.name}.safetensors"

    def create(self) -> nn.Module:
        """The architecture with random weights and the task's data config."""
        cfg = {
            "input_size": (3, KNOWN_ANSWER_SIZE, KNOWN_ANSWER_SIZE),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "crop_pct": 1.0,
            "crop_mode": "center",
            "interpolation": "bilinear",
            "num_classes": len(KNOWN_ANSWER_CLASSES),
            "label_names": list(KNOWN_ANSWER_CLASSES),
        }
        options = dict(self.options)
        if self.conv_stem:
            from timm.layers import HybridEmbed

            stem = ConvStem(self.conv_stem)
            options["patch_size"] = 1  # HybridEmbed projects the stem's map pixel by pixel
            options["embed_layer"] = partial(
                HybridEmbed,
                backbone=stem,
                feature_size=KNOWN_ANSWER_SIZE // stem.stride,
                feature_ratio=stem.stride,
            )
        return timm.create_model(
            self.architecture,
            pretrained=False,
            num_classes=len(KNOWN_ANSWER_CLASSES),
            pretrained_cfg_overlay=cfg,
            **options,
        )


RECIPES: dict[str, KnownAnswerRecipe] = {
    recipe.spec: recipe
    for recipe in (
        KnownAnswerRecipe(
            "resnet",
            "resnet10t",
            {"channels": (24, 48, 96, 192), "stem_width": 16, "output_stride": 8},
            what="ResNet-10-T (4 basic blocks, output stride 8: an 8x8 CAM grid), average pool",
        ),
        KnownAnswerRecipe(
            "efficientnet",
            "test_efficientnet",
            {"output_stride": 8},
            learning_rate=3e-3,
            steps=1500,
            train_images=30_000,
            what="EfficientNet (fused-MBConv and MBConv-SE blocks, output stride 8), average pool",
        ),
        KnownAnswerRecipe(
            "vit",
            "vit_tiny_patch16_224",
            dict(_VIT),
            learning_rate=1e-3,
            steps=2000,
            train_images=30_000,
            conv_stem=_VIT_STEM,
            what="ViT, 4 blocks, class token, conv stem (8x8 tokens)",
        ),
        KnownAnswerRecipe(
            "vit-gap",
            "vit_tiny_patch16_224",
            {**_VIT, "global_pool": "avg", "class_token": False, "fc_norm": True},
            learning_rate=1e-3,
            steps=2000,
            train_images=30_000,
            conv_stem=_VIT_STEM,
            what="ViT, 4 blocks, average pool (no class token), conv stem (8x8 tokens)",
        ),
        KnownAnswerRecipe(
            "deit",
            "deit_tiny_distilled_patch16_224",
            dict(_VIT),
            learning_rate=1e-3,
            steps=2000,
            train_images=30_000,
            conv_stem=_VIT_STEM,
            what="DeiT distilled, 4 blocks, class and distillation tokens (both heads trained "
            "on the labels), conv stem (8x8 tokens)",
        ),
    )
}
KNOWN_ANSWER_SPECS: tuple[str, ...] = tuple(RECIPES)


def known_answer_recipe(spec: str) -> KnownAnswerRecipe:
    """The recipe of ``spec`` (``"bundled:gt-vit"``), or a [`ModelLoadError`][] listing them."""
    if spec not in RECIPES:
        raise ModelLoadError(
            f"Unknown known-answer model '{spec}'. The known-answer specs are: "
            f"{', '.join(KNOWN_ANSWER_SPECS)}."
        )
    return RECIPES[spec]


def is_known_answer_model(module: Any) -> bool:
    """Whether ``module`` was loaded by `create_known_answer_model`."""
    return has_synthetic_mark(module)


def create_known_answer_model(spec: str) -> nn.Module:
    """The shipped model of ``spec`` (float32, eval mode), trained on the synthetic task."""
    from safetensors.torch import load_file

    recipe = known_answer_recipe(spec)
    path = recipe.weights_path
    if not path.is_file():
        raise ModelLoadError(
            f"The weights of '{spec}' ({path.name}) are not in this installation of timmlens; "
            "reinstall it, or train them: timmlens groundtruth train "
            f"--model {recipe.name}."
        )
    model = recipe.create()
    state = {key: value.float() for key, value in load_file(path).items()}
    model.load_state_dict(state, strict=True)
    return mark_synthetic_task(model.eval())  # titles and files say what it learned


def save_known_answer_weights(model: nn.Module, spec: str, facts: dict[str, Any]) -> Path:
    """Write ``model``'s weights for ``spec`` in float16 with ``facts`` as metadata."""
    from safetensors.torch import save_file

    recipe = known_answer_recipe(spec)
    recipe.weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().half().contiguous() for key, value in model.state_dict().items()}
    metadata = {
        "spec": spec,
        "architecture": recipe.architecture,
        "options": json.dumps(recipe.options),
        "conv_stem": json.dumps(recipe.conv_stem),
        "facts": json.dumps(facts),
    }
    save_file(state, str(recipe.weights_path), metadata=metadata)
    return recipe.weights_path


def round_to_shipped_precision(model: nn.Module) -> nn.Module:
    """Round ``model``'s floating-point state to float16 and back, in place, as shipped."""
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(value.half().float())
    return model


def known_answer_facts(spec: str) -> dict[str, Any]:
    """What the training of ``spec`` reported (accuracy, interventions, time), from its file."""
    from safetensors import safe_open

    recipe = known_answer_recipe(spec)
    with safe_open(str(recipe.weights_path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return json.loads(metadata.get("facts", "{}"))
