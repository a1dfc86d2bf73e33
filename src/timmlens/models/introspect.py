"""The one home of model facts: what is this model?

Every floor above asks here (and nothing here imports above `timmlens.models`):

* **unwrapping**: the module timmlens explains inside ``torch.compile`` / ``DataParallel``
  / DDP wrappers ([`unwrap_model`][timmlens.models.wrappers.unwrap_model]), and the
  timm model inside an ``ImageClassifier`` (`timm_model_of`);
* **device, dtype and data config** (input size, mean, std, crop: `data_config`);
* **class count** (`num_outputs`), **class names** (`model_class_names`, `class_label`,
  `class_name_of`, `model_name_of`) and **label matching** (`LabelResolver`: class
  indices, the model's own names, ImageNet names, synonyms and WordNet ids);
* **the forward trace** of a model timm knows nothing of.

The trace: a torchvision classifier or a hand-written CNN has no ``feature_info``, no
``num_classes``; but one forward with a hook on every module tells the output shape of
each module in the order they finish. From that record:

* the class count is the last dimension of the ``(B, K)`` output;
* the CAM layer is the last module with a spatial output (4-D, more than one position)
  after which the spatial dimensions collapse (global pooling, flattening). Modules
  finish after their children, so a whole stage (``layer4``) wins over its last block.

The trace runs once per model on a zero image of the model's data-config size, inside
`explaining` (eval mode, model left as found), and is kept
until the model's set of modules changes (a replaced head gives a new trace).
"""

from __future__ import annotations

import difflib
import re
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import timm.data
import torch
from torch import nn

from .._model_state import explaining
from ..errors import LabelNameError, LayerResolutionError, UnsupportedModelError
from .class_names import CLASS_NAMES_ATTRIBUTE
from .weights_status import weights_status
from .wrappers import unwrap_model

__all__ = [
    "IMAGENET_NUM_CLASSES",
    "ForwardTrace",
    "LabelResolver",
    "ModuleCall",
    "class_label",
    "class_name_of",
    "data_config",
    "declares_num_classes",
    "forward_trace",
    "imagenet_class_names",
    "label_resolver_for",
    "model_class_names",
    "model_device",
    "model_dtype",
    "model_metadata",
    "model_name_of",
    "normalize_class_name",
    "num_outputs",
    "timm_model_of",
    "traced_num_classes",
    "unwrap_model",
]

#: a class index as text; a sign is allowed so that "-1" reads as a (bad) index, not a name
_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def timm_model_of(model: nn.Module) -> nn.Module:
    """The timm model inside an ``ImageClassifier`` (or the model itself)."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model


def model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    tensor = next(model.parameters(), None)
    return tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32


def data_config(model: nn.Module) -> dict[str, Any]:
    """The model's timm data config: input size, interpolation, mean, std, crop.

    A model built with another fixed ``img_size`` than its pretrained config (a ViT
    created with ``img_size=384``) must be fed that size, so it wins over the config.
    """
    # unwrapped: timm's ``assert model`` calls len(), which a compiled model refuses
    timm_model = timm_model_of(unwrap_model(model, warn=False))
    config = timm.data.resolve_data_config({}, model=timm_model)
    embed = getattr(timm_model, "patch_embed", None)
    img_size = getattr(embed, "img_size", None)
    if img_size is not None and getattr(embed, "strict_img_size", False):
        config["input_size"] = (config["input_size"][0], *(int(v) for v in img_size))
    return config


# ---------------------------------------------------------------- forward trace
@dataclass(frozen=True)
class ModuleCall:
    """One module's finished forward: its dotted name and the shape of its output.

    ``shape`` is that of the output tensor, or of the first tensor of a tuple/list
    output; ``None`` when it returned no tensor.
    """

    name: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class ForwardTrace:
    """The modules of one forward in the order they finished, and the model's output shape."""

    calls: tuple[ModuleCall, ...]
    output_shape: tuple[int, ...] | None
    input_shape: tuple[int, ...]

    def last_spatial_layer(self) -> ModuleCall:
        """The last module with a spatial output before global pooling (see module doc).

        Raises:
            LayerResolutionError: no such module, spatial outputs up to the end (not a
                classifier), or token layers after it (a transformer: no CNN layer to tap).
        """
        counts = Counter(call.name for call in self.calls)
        spatial = [
            index
            for index, call in enumerate(self.calls)
            if call.shape is not None
            and len(call.shape) == 4
            and call.shape[2] * call.shape[3] > 1
            and counts[call.name] == 1  # a module run twice (a shared ReLU) has no one output
        ]
        size = "x".join(str(v) for v in self.input_shape[-2:])
        if not spatial:
            raise LayerResolutionError(
                f"No layer of this model outputs a spatial map (B, C, h, w) for a {size} "
                f"input, so there is no default CAM layer. Pass target_layer= with a layer "
                f"whose output is a feature map; timmlens.describe(model) lists the layers."
            )
        last = spatial[-1]
        tokens = [
            call.name
            for call in self.calls[last + 1 :]
            if call.shape is not None and len(call.shape) == 3 and min(call.shape[1:]) > 1
        ]
        if tokens:
            raise LayerResolutionError(
                f"The last spatial layer, '{self.calls[last].name}', is followed by token "
                f"layers ('{tokens[0]}' outputs (B, N, D)): a transformer, whose CAM layer "
                f"timmlens cannot guess without timm's facts. Pass target_layer= with a "
                f"block's output and check the map, or use a timm model."
            )
        return self.calls[last]


_traces: weakref.WeakKeyDictionary[nn.Module, tuple[Any, ForwardTrace]] = (
    weakref.WeakKeyDictionary()
)
_traces_guard = threading.Lock()


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((item for item in output if isinstance(item, torch.Tensor)), None)
    return None


def _shape(output: Any) -> tuple[int, ...] | None:
    tensor = _first_tensor(output)
    return tuple(tensor.shape) if tensor is not None else None


def forward_trace(model: nn.Module) -> ForwardTrace:
    """The [`ForwardTrace`][] of ``model`` (traced once, then reused; see the module doc)."""
    channels, height, width = data_config(model)["input_size"]
    device = model_device(model)
    key = (tuple(map(id, model.modules())), (channels, height, width), device)
    with _traces_guard:
        cached = _traces.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    calls: list[ModuleCall] = []
    names = {}
    for name, module in model.named_modules():
        names.setdefault(module, name)

    def record(module: nn.Module, _args: Any, output: Any) -> None:
        calls.append(ModuleCall(names[module], _shape(output)))

    inputs = torch.zeros(1, channels, height, width, device=device, dtype=model_dtype(model))
    with explaining(model), torch.no_grad():
        handles = [module.register_forward_hook(record) for module in names if module is not model]
        try:
            output = model(inputs)
        except Exception as exc:
            raise UnsupportedModelError(
                f"{type(model).__name__} failed on a {height}x{width} test image, which "
                f"timmlens runs once to find its layers and class count: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            for handle in handles:
                handle.remove()
    trace = ForwardTrace(tuple(calls), _shape(output), tuple(inputs.shape))
    with _traces_guard:
        _traces[model] = (key, trace)
    return trace


def traced_num_classes(model: nn.Module) -> int | None:
    """The class count ``K`` of a model whose output is ``(B, K)`` logits, else ``None``."""
    shape = forward_trace(model).output_shape
    return shape[1] if shape is not None and len(shape) == 2 and shape[1] > 0 else None


# ------------------------------------------------------------------ class count
def _declared_class_counts(model: nn.Module) -> list[object]:
    """``num_classes`` of ``model`` and of its timm backbone (``ImageClassifier``), if set."""
    owners = (model, getattr(model, "backbone", None))
    return [getattr(owner, "num_classes", None) for owner in owners if owner is not None]


def declares_num_classes(model: nn.Module) -> bool:
    """Whether ``model`` (or its timm backbone) states its class count, as timm models do.

    Any other ``nn.Module`` returning logits is taken at its word; a timm model with
    ``num_classes=0`` (headless: its output is pooled features) is not a classifier.
    """
    return any(isinstance(count, int) for count in _declared_class_counts(model))


def num_outputs(model: nn.Module) -> int:
    """Number of classes of ``model``: its (or its timm backbone's) ``num_classes``.

    A model that states none (torchvision, a plain ``nn.Module``) is run once on a test
    image and its ``(B, K)`` output gives ``K``
    ([`forward_trace`][], remembered per model).
    """
    for count in _declared_class_counts(model):
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            return count
    if not declares_num_classes(model):
        traced = traced_num_classes(model)
        if traced is not None:
            return traced
    raise UnsupportedModelError(
        f"{type(model).__name__} has no classifier (num_classes is 0 or missing), so there "
        f"is no class score to explain. Give it a head: ImageClassifier(spec, num_classes=N) "
        f"or timm.create_model(name, num_classes=N)."
    )


# ------------------------------------------------------------------ class names
IMAGENET_NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class descriptions in index order (from ``timm.data.ImageNetInfo``)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def class_label(
    index: int,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    short: bool = True,
) -> str:
    """A readable name for class ``index``.

    ``class_names`` wins when given; else a 1000-class model gets its ImageNet name (with
    ``short``, only its first synonym: ``"dragonfly"``, not ``"dragonfly, darning
    needle, devil's darning needle, ..."``); anything else is ``"class N"``.
    """
    index = int(index)
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    if num_classes == IMAGENET_NUM_CLASSES and 0 <= index < IMAGENET_NUM_CLASSES:
        name = imagenet_class_names()[index]
        return name.split(",")[0].strip() if short else name
    return f"class {index}"


def model_class_names(model: nn.Module) -> Sequence[str] | None:
    """Class names the model carries: the user's (``ImageClassifier(class_names=...)``),
    else the timm model's own (``pretrained_cfg["label_names"]``), if any."""
    given = getattr(unwrap_model(model), CLASS_NAMES_ATTRIBUTE, None)
    if isinstance(given, list) and len(given) == num_outputs(model):
        return list(given)
    names = getattr(timm_model_of(model), "pretrained_cfg", {}) or {}
    labels = names.get("label_names") if isinstance(names, Mapping) else None
    if labels and len(labels) == num_outputs(model):
        return list(labels)
    return None


def class_name_of(model: nn.Module, index: int) -> str:
    """The name of class ``index`` for ``model`` (see [`class_label`][])."""
    return class_label(index, num_outputs(model), model_class_names(model))


def class_namer(model: nn.Module) -> Callable[[int | None], str | None]:
    """``index -> name`` as [`class_name_of`][] names it, the names looked up once (for
    many rows); ``None`` (no label) stays ``None``."""
    count, names = num_outputs(model), model_class_names(model)

    def name(index: int | None) -> str | None:
        return None if index is None else class_label(index, count, names)

    return name


def model_name_of(model: nn.Module) -> str:
    """A short name for figures: the spec of an ``ImageClassifier``, else the architecture."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, str) and spec:
        return spec
    cfg = getattr(timm_model_of(model), "pretrained_cfg", {}) or {}
    return str(cfg.get("architecture") or type(timm_model_of(model)).__name__)


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """The model's name, class count (``None`` for a headless backbone, whose attention
    maps need no class) and weights status, as saved files record them."""
    try:
        num_classes: int | None = num_outputs(model)
    except UnsupportedModelError:
        num_classes = None
    return {
        "name": model_name_of(model),
        "num_classes": num_classes,
        "weights": weights_status(model).to_json(),
    }


# --------------------------------------------------------------- label matching
def normalize_class_name(name: str) -> str:
    """The key class names are matched by: lower case, ``_`` as space, single spaces."""
    return " ".join(str(name).replace("_", " ").split()).lower()


class LabelResolver:
    """Class names (as folder names or dataset labels) -> class indices of one model.

    A name resolves, in this order, as: an integer ``0..num_classes-1``; one of the model's
    own ``class_names``; and for 1000-class models (``imagenet=True``) an ImageNet WordNet
    id (``n02123045``), a full ImageNet description (``"tabby, tabby cat"``), its first
    synonym (``"tabby"``, the name figures show) or any other synonym (``"tabby cat"``).
    Names match case-insensitively, with ``_`` for spaces. A name that fits several classes
    at the first level it matches (ImageNet has two classes called ``"crane"``) is an error
    that says which and how to name them apart.

    Args:
        num_classes: the model's number of outputs.
        class_names: the model's own class names (``pretrained_cfg["label_names"]``).
        imagenet: also accept ImageNet names; default: when ``num_classes == 1000``.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        imagenet: bool | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.imagenet = (
            self.num_classes == IMAGENET_NUM_CLASSES if imagenet is None else bool(imagenet)
        )
        # Levels of names, first match wins: key -> the class indices it names.
        self._levels: list[dict[str, list[int]]] = []
        self._wnids: dict[int, str] = {}
        if self.class_names:
            self._levels.append(_index(enumerate(self.class_names)))
        if self.imagenet:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            descriptions = imagenet_class_names()[: self.num_classes]
            count = len(descriptions)
            synonyms = [[s for s in d.split(",") if s.strip()] for d in descriptions]
            self._wnids = {i: info.index_to_label_name(i) for i in range(count)}
            self._levels += [
                _index(self._wnids.items()),
                _index(enumerate(descriptions)),
                _index((i, names[0]) for i, names in enumerate(synonyms)),
                _index((i, name) for i, names in enumerate(synonyms) for name in names),
            ]

    def __call__(self, name: str | int) -> int:
        return self.resolve(name)

    def resolve(self, name: str | int, where: str = "label") -> int:
        """The class index ``name`` stands for.

        Args:
            name: an integer (or its text) or a class name.
            where: what carries the name, for the error message (``"folder 'a/b'"``).

        Raises:
            LabelNameError: an unknown or ambiguous name, or an index out of range.
        """
        if isinstance(name, bool):
            raise LabelNameError(f"{where}: a label must be a class index or name, got {name}.")
        text = str(name).strip()
        if isinstance(name, int) or _INTEGER.match(text):
            index = int(text)
            if not 0 <= index < self.num_classes:
                raise LabelNameError(
                    f"{where}: class {index} is out of range: the model has {self.num_classes} "
                    f"classes (0..{self.num_classes - 1})."
                )
            return index
        key = normalize_class_name(text)
        for level in self._levels:
            indices = level.get(key)
            if indices and len(indices) == 1:
                return indices[0]
            if indices:
                raise LabelNameError(self._ambiguous(text, indices, where))
        raise LabelNameError(self._unknown(text, key, where))

    def expected(self) -> str:
        """What names this resolver accepts, as the end of a sentence ("Expected ...")."""
        parts = [f"class indices 0..{self.num_classes - 1}"]
        if self.class_names:
            shown = ", ".join(repr(n) for n in self.class_names[:5])
            more = f", ... ({len(self.class_names)} in all)" if len(self.class_names) > 5 else ""
            parts.append(f"the model's class names ({shown}{more})")
        if self.imagenet:
            parts.append(
                "ImageNet class names or synonyms (e.g. 'tabby', 'tabby cat', 'tiger cat'; "
                "case-insensitive, '_' for spaces)"
            )
            parts.append("WordNet ids (e.g. 'n02123045')")
        return ", ".join(parts[:-1]) + (", or " if len(parts) > 1 else "") + parts[-1]

    def _ambiguous(self, text: str, indices: list[int], where: str) -> str:
        options = []
        for index in sorted(set(indices)):
            wnid = self._wnids.get(index)
            options.append(f"{index}" + (f" ({wnid})" if wnid else ""))
        return (
            f"{where}: '{text}' names {len(set(indices))} classes: {', '.join(options)}; "
            f"use the class index" + (" or WordNet id" if self.imagenet else "") + " instead."
        )

    def _unknown(self, text: str, key: str, where: str) -> str:
        candidates: dict[str, int] = {}
        for level in self._levels:
            for name, indices in level.items():
                candidates.setdefault(name, indices[0])
        close = difflib.get_close_matches(key, list(candidates), n=5, cutoff=0.6)
        hint = (
            " Close matches: " + ", ".join(f"'{n}' ({candidates[n]})" for n in close) + "."
            if close
            else ""
        )
        message = (
            f"{where}: '{text}' is not a class of this model.{hint} Expected {self.expected()}."
        )
        if not self.class_names and not self.imagenet:
            # a fine-tuned model without names: the folder names are likely its classes
            message += (
                " If the folders name your classes, give the model their names in index "
                "order: class_names=[...] in Python, --class-names FILE|a,b,c on the command "
                "line."
            )
        return message


def _index(pairs: Any) -> dict[str, list[int]]:
    """``(index, name)`` pairs -> normalised name -> the indices it names (no repeats)."""
    table: dict[str, list[int]] = {}
    for index, name in pairs:
        key = normalize_class_name(name)
        if key and index not in table.setdefault(key, []):
            table[key].append(index)
    return table


def label_resolver_for(model: nn.Module) -> LabelResolver:
    """The `LabelResolver` of ``model``: its class count, own names, ImageNet names."""
    return LabelResolver(num_outputs(model), model_class_names(model))
