"""Every recipe on docs/recipes.md runs as written, on a shrunken model of its family."""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import timmlens

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "recipes.md"


def _load_tool(path: Path):
    """A script of tools/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipes_page = _load_tool(ROOT / "tools" / "recipes_page.py")
RECIPE_MODELS, pretrained_spec = recipes_page.RECIPE_MODELS, recipes_page.pretrained_spec
CNN_64PX = {"pretrained_cfg_overlay": {"input_size": (3, 64, 64)}}
NARROW = {"embed_dim": 32, "num_heads": 2}  # ViTs keep their 12 blocks (the layer names)
# Same family and layer names as the snippet's model, at a size a test can afford.
SHRINK: dict[str, dict[str, object]] = {
    "resnet50": {"layers": [1, 1, 1, 1], **CNN_64PX},
    "resnext50_32x4d": {"layers": [1, 1, 1, 1], **CNN_64PX},
    "efficientnet_b0": CNN_64PX,
    "mobilenetv3_large_100": CNN_64PX,
    "regnety_002": CNN_64PX,
    "convnext_tiny": {"dims": (8, 16, 32, 64), **CNN_64PX},
    "densenet121": CNN_64PX,
    "vit_small_patch16_224": {"img_size": 32, **NARROW},
    "deit_tiny_distilled_patch16_224": {"img_size": 32, **NARROW},
    "vit_small_patch14_reg4_dinov2": {"img_size": 28, **NARROW},
    "eva02_tiny_patch14_224": {"img_size": 28, **NARROW},
    "beit_base_patch16_224": {"img_size": 32, **NARROW},
    "swin_tiny_patch4_window7_224": {"img_size": 64, "window_size": 2, "embed_dim": 24},
}


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_every_family_has_a_snippet() -> None:
    # (that the page is recipes_markdown()'s output is make docs-check's job: it builds
    # every full-size example model)
    assert len(snippets()) == len(RECIPE_MODELS) == len(SHRINK)
    for (_, architecture, _), code in zip(RECIPE_MODELS, snippets(), strict=True):
        assert f'ImageClassifier("{pretrained_spec(architecture)[0]}"' in code


@pytest.mark.parametrize("code", snippets(), ids=[m[1] for m in RECIPE_MODELS])
def test_the_snippet_runs(code: str, tmp_path, monkeypatch) -> None:
    real = timmlens.ImageClassifier

    def shrunken(spec: str, num_classes: int | None = None) -> timmlens.ImageClassifier:
        architecture = spec.split(".")[0]
        torch.manual_seed(0)
        model = timm.create_model(architecture, pretrained=False, **SHRINK[architecture])
        return real(model.eval(), num_classes=num_classes)

    monkeypatch.setattr(timmlens, "ImageClassifier", shrunken)
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (80, 60), (180, 120, 60)).save("cat.jpg")
    namespace: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained heads of the self-supervised ones
        exec(compile(code, "recipes.md", "exec"), namespace)
    heatmap = namespace["heatmap"]
    size = timmlens.data.data_config(namespace["model"])["input_size"][1:]
    assert isinstance(heatmap, torch.Tensor) and tuple(heatmap.shape) == tuple(size)
    assert torch.isfinite(heatmap).all()
    if "rollout" in namespace:
        assert tuple(namespace["rollout"].shape) == tuple(size)
