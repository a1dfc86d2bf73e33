"""Conservation of ``lrp``: summed input relevance over the target logit, per family and composite.

LRP's property (Bach et al. 2015): the relevance of the input sums to the score explained.
Rules lose a share where biases absorb relevance (epsilon, z+ with a merged BatchNorm
shift), where the epsilon stabiliser eats it, and, with signed activations (SiLU,
Hardswish) passed through, where a neuron's z+ is ~0. Prints a markdown table (the one in
docs/methods/lrp.md)::

    PYTHONPATH=src python benchmarks/lrp_conservation.py [--families]
"""

from __future__ import annotations

import warnings

import timm
import torch
from skimage import data

from timmlens import load_model
from timmlens.data.preprocess import prepare_images
from timmlens.interpretation.registry import create_explainer
from timmlens.testing import make_explainable

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")
PHOTOS = [getattr(data, name)() for name in ("chelsea", "coffee", "rocket", "astronaut")]
#: (label, model factory, side): the trained Lite0 on photos; random-init timm models
#: (made explainable) at a small side on the same photos
MODELS = [
    ("EfficientNet-Lite0 (trained)", lambda: load_model("bundled:efficientnet_lite0"), None),
    (
        "gt-resnet: ResNet-10-T (trained, known-answer)",
        lambda: load_model("bundled:gt-resnet"),
        None,
    ),
    ("resnet50 (random)", lambda: _random("resnet50"), 128),
    ("resnext50_32x4d (random)", lambda: _random("resnext50_32x4d"), 128),
    ("seresnet50 (random, SE)", lambda: _random("seresnet50"), 128),
    ("efficientnet_b0 (random, SiLU, SE)", lambda: _random("efficientnet_b0"), 128),
    (
        "mobilenetv3_large_100 (random, Hardswish, SE)",
        lambda: _random("mobilenetv3_large_100"),
        128,
    ),
]


#: the families the generic canonizers added (issue 29): small random-init members at 64 px
#: (the CPU this was measured on was shared; the ratios do not depend much on the side)
FAMILIES = [
    (f"{name} (random{note})", (lambda name=name: _random(name)), 64)
    for name, note in (
        ("seresnext26d_32x4d", ", grouped, SE"),
        ("res2net50_14w_8s", ", splits"),
        ("regnety_002", ", SE"),
        ("dla46_c", ", roots"),
        ("convmixer_1024_20_ks9_p14", ", BN after GELU"),
        ("densenet121", ", concat, pre-act BN"),
        ("convnext_atto", ", LayerNorm, GELU"),
        ("vgg11_bn", ""),
    )
]


def _random(name: str) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return make_explainable(timm.create_model(name)).eval()


def ratios(model: torch.nn.Module, side: int | None, photos: int = 4) -> dict[str, str]:
    x = prepare_images(PHOTOS[:photos], model).tensor
    if side is not None:
        x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear")
    with torch.no_grad():
        logits = model(x)
    targets = logits.argmax(dim=1)
    chosen = logits[torch.arange(len(x)), targets]
    row = {}
    for composite in COMPOSITES:
        relevance = create_explainer("lrp", model, composite=composite).attributions(x, targets)
        ratio = relevance.sum(dim=(1, 2, 3)) / chosen
        row[composite] = f"{ratio.mean():.3f} ({ratio.min():.3f} to {ratio.max():.3f})"
    return row


def main() -> None:
    import sys

    models = FAMILIES if "--families" in sys.argv else MODELS
    print("| model | " + " | ".join(f"`{c}`" for c in COMPOSITES) + " |")
    print("| --- |" + " --- |" * len(COMPOSITES))
    photos = 2 if models is FAMILIES else 4  # chelsea, coffee: a busy shared CPU
    for label, factory, side in models:
        row = ratios(factory(), side, photos)
        print(f"| {label} | " + " | ".join(row[c] for c in COMPOSITES) + " |", flush=True)


if __name__ == "__main__":
    main()
