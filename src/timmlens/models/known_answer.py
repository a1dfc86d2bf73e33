"""The known-answer models: small timm networks trained on the synthetic task of
`timmlens.groundtruth`, loaded as ``bundled:gt-<recipe>``.

Each recipe is one timm architecture with small depth and width, at 64 px, mean = std =
0.5. The weights of the recipes that reach 95% test accuracy ship with the package (today
``bundled:gt-resnet``, 1.4 MB in float16 safetensors): the one exception to "no weights in
the repository", reproduced by ``timmlens groundtruth train`` (or ``python -m
timmlens.groundtruth.training``) from a seed. A recipe without shipped weights refuses to
load and says how to train it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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

_VIT = {"img_size": KNOWN_ANSWER_SIZE, "patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3}


@dataclass(frozen=True)
class KnownAnswerRecipe:
    """One known-answer model: its timm architecture and the options that shrink it.

    Attributes:
        name: the spec suffix (``"vit"`` for ``bundled:gt-vit``).
        architecture: the timm model name.
        options: ``timm.create_model`` keyword arguments (depth, width, ...).
        learning_rate: AdamW's peak learning rate for training.
        steps: training steps (batches of 64) that reach the documented accuracy.
        what: one line for the docs.
    """

    name: str
    architecture: str
    options: dict[str, Any] = field(default_factory=dict)
    learning_rate: float = 2e-3
    steps: int = 600
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
        return timm.create_model(
            self.architecture,
            pretrained=False,
            num_classes=len(KNOWN_ANSWER_CLASSES),
            pretrained_cfg_overlay=cfg,
            **self.options,
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
            "convnext",
            "convnext_atto",
            {"depths": (1, 1, 2, 1), "dims": (24, 48, 96, 160), "output_stride": 8},
            learning_rate=1e-3,
            steps=1500,
            what="ConvNeXt (5 blocks, output stride 8: an 8x8 CAM grid), average pool",
        ),
        KnownAnswerRecipe(
            "vit",
            "vit_tiny_patch16_224",
            dict(_VIT),
            learning_rate=2e-3,
            steps=3000,
            what="ViT, 4 blocks, 8 px patches, class token",
        ),
        KnownAnswerRecipe(
            "vit-gap",
            "vit_tiny_patch16_224",
            {**_VIT, "global_pool": "avg", "class_token": False, "fc_norm": True},
            learning_rate=1e-3,
            steps=1500,
            what="ViT, 4 blocks, 8 px patches, average pool, no class token",
        ),
        KnownAnswerRecipe(
            "deit",
            "deit_tiny_distilled_patch16_224",
            dict(_VIT),
            learning_rate=1e-3,
            steps=1500,
            what="DeiT distilled, 4 blocks, class and distillation tokens (both heads trained "
            "on the labels)",
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
