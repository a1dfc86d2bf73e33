"""What an evaluation run is: model weights, method and metric options, images, version.

``evaluate`` records this identity in ``out/run.json`` and resumes only a run of the same
identity, so rows of another model, other options or other images are never averaged
with this run's. The metrics are recorded (the union computed so far) but are not part
of the check: a metric added on resume is computed for the rows that lack it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import RunMismatchError
from ..interpretation.base import Explainer
from ..models.introspect import data_config
from ..models.weights_status import weights_status
from .sources import DatasetSource, ImageFolderSource, Sample

if TYPE_CHECKING:
    from ..models import ImageClassifier

RUN_FILE = "run.json"
#: identity format; bump when the meaning of a field changes
FORMAT = 1
#: metric options that change how the work is chunked, not the scores
_PERFORMANCE_OPTIONS = {"max_batch", "memory_budget_bytes"}
_PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
#: the seed of the random weights of a model `load_model_seeded` creates from a spec
SPEC_SEED = 0
HOW_TO_PROCEED = (
    "use a new output folder (--out), or --overwrite (overwrite=True) to discard its rows"
)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: NaN and inf become ``None``, tensors a shape and hash."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.Tensor):
        digest = hashlib.sha256()
        _update_with_tensor(digest, value)
        return {"tensor": list(value.shape), "sha256": digest.hexdigest()}
    # Callables, modules, ...: their type is all that can be compared across processes.
    kind = value if isinstance(value, type) else type(value)
    return f"<{kind.__module__}.{getattr(value, '__qualname__', kind.__qualname__)}>"


def _update_with_tensor(digest: Any, tensor: torch.Tensor) -> None:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(f"{flat.dtype}{list(tensor.shape)}".encode())
    # A byte view works for every dtype (bfloat16 has no numpy twin) without a copy.
    digest.update(flat.view(torch.uint8).numpy())


def model_identity(model: nn.Module) -> dict[str, Any]:
    """Name, SHA-256 of the state dict (keys in sorted order) and preprocessing of ``model``."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        digest.update(key.encode())
        value = state[key]
        if isinstance(value, torch.Tensor):
            _update_with_tensor(digest, value)
        else:
            digest.update(repr(value).encode())
    spec = getattr(model, "spec", None)
    name = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else type(model).__name__
    config = data_config(model)
    return {
        "name": name,
        "sha256": digest.hexdigest(),
        "preprocessing": jsonable({k: config.get(k) for k in _PREPROCESSING_KEYS}),
        # not compared: they only explain a differing hash (see `_model_difference`)
        "from_spec": isinstance(spec, (str, os.PathLike)),
        "random_weights": weights_status(model).random,
    }


def load_model_seeded(
    spec: str | os.PathLike[str], seed: int = SPEC_SEED, **kwargs: Any
) -> ImageClassifier:
    """[`load_model`][timmlens.models.load_model] with every weight it draws at random drawn
    from ``seed``: the same spec gives the same model in every process.

    A spec without trained weights (``"test_resnet"``, an untagged timm name) is created
    with random weights, which differ in each process, so a run of it could never be
    resumed (its run identity holds the weights' hash). The ``timmlens`` command and
    ``benchmark`` load specs this way. Trained weights are
    unaffected. The caller's random state is left as it was (``torch.random.fork_rng``).

    Args:
        spec: any spec ``load_model`` takes.
        seed: the seed of the random weights.
        kwargs: passed to ``load_model``.
    """
    from ..models import load_model

    with torch.random.fork_rng(devices=[]):  # the CPU generator: creation runs on the CPU
        torch.manual_seed(seed)
        return load_model(spec, **kwargs)


def _effective_options(function: Any, given: Mapping[str, Any], skip: int) -> dict[str, Any]:
    """``given`` on top of ``function``'s defaults, so an explicit default equals none."""
    options: dict[str, Any] = {}
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    for parameter in parameters:
        if parameter.default is not inspect.Parameter.empty:
            options[parameter.name] = parameter.default
    options.update(given)
    return jsonable(dict(sorted(options.items())))


_PLAIN = (bool, int, float, str, type(None))


def _instance_state(explainer: Explainer) -> dict[str, Any]:
    """An explainer instance's settings as it holds them: plain public attributes, tensors
    (hashed) and its resolved layers; its model and the results of its last call left out.
    """
    state: dict[str, Any] = {}
    for key, value in sorted(vars(explainer).items()):
        if key.startswith(("_", "last_")):
            continue
        plain_list = isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value)
        if isinstance(value, (*_PLAIN, torch.Tensor)) or plain_list:
            state[key] = jsonable(value)
    layer_names = getattr(explainer, "layer_names", None)
    if layer_names is not None:
        state["layer_names"] = list(layer_names)
    return state


def method_identity(
    explainer: Explainer, options: Mapping[str, Any] | None, from_name: bool
) -> dict[str, Any]:
    """The explainer class and its settings: for a name, its construction options with
    defaults filled in; for an instance, the settings it holds (see ``_instance_state``).
    """
    kind = type(explainer)
    settings = (
        _effective_options(kind.__init__, options or {}, 2)  # skip self and model
        if from_name
        else _instance_state(explainer)
    )
    return {"class": f"{kind.__module__}.{kind.__qualname__}", "options": settings}


def metric_identity(options: Mapping[str, Any]) -> dict[str, Any]:
    """``ExplanationMetrics`` options that change scores, defaults filled in."""
    from ..interpretation.metrics import ExplanationMetrics

    effective = jsonable(dict(sorted({**ExplanationMetrics.defaults(), **options}.items())))
    return {k: v for k, v in effective.items() if k not in _PERFORMANCE_OPTIONS}


def images_identity(samples: Sequence[Sample]) -> dict[str, Any]:
    """Count and hashes of the ordered image ids; for folders also file sizes and labels.

    No image is read: a dataset is known by its length and type (ids are indices), a
    folder by its file names, sizes and folder labels.
    """
    ids = hashlib.sha256()
    content = hashlib.sha256()
    if isinstance(samples, ImageFolderSource):
        for path, label in zip(samples.files, samples.labels, strict=True):
            ids.update(path.relative_to(samples.root).as_posix().encode() + b"\n")
            content.update(f"{path.stat().st_size}\t{label}\n".encode())
        source = "folder"
    elif isinstance(samples, DatasetSource):
        for index in range(len(samples)):
            ids.update(f"{index}\n".encode())
        kind = type(samples.dataset)
        source = f"{kind.__module__}.{kind.__qualname__}"
        content.update(source.encode())
        # torchvision's ImageFolder / DatasetFolder know their files without reading them.
        for attribute in ("root", "samples"):
            value = getattr(samples.dataset, attribute, None)
            if value is not None:
                content.update(f"{attribute}={jsonable(value)!r}\n".encode())
    else:
        for sample in samples:
            ids.update(f"{sample.id}\n".encode())
        source = type(samples).__name__
    return {
        "count": len(samples),
        "ids_sha256": ids.hexdigest(),
        "content_sha256": content.hexdigest(),
        "source": source,
    }


def build_identity(
    model: nn.Module,
    methods: Mapping[str, dict[str, Any]],
    metrics: Sequence[str],
    metric_options: Mapping[str, Any],
    samples: Sequence[Sample],
    targets: str = "label",
    profile: str = "full",
) -> dict[str, Any]:
    """The identity ``run.json`` holds (see the module docstring); ``targets``: what was
    explained, ``"label"`` (true class where known) or ``"prediction"``; ``profile``
    (``"full"``, ``"quick"``) is recorded for the outputs' notes, not compared: the
    options it set are."""
    from .._version import __version__

    return {
        "format": FORMAT,
        "timmlens": __version__,
        "model": model_identity(model),
        "methods": dict(methods),
        "metric_options": metric_identity(metric_options),
        "images": images_identity(samples),
        "targets": targets,
        "profile": profile,
        "metrics": list(metrics),
    }


def read_identity(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / RUN_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunMismatchError(
            f"'{path}' is not valid JSON ({exc}); cannot tell which run wrote the rows in "
            f"'{out_dir}'; {HOW_TO_PROCEED}."
        ) from exc


def write_identity(out_dir: Path, identity: Mapping[str, Any]) -> None:
    """Write ``run.json`` atomically (a kill leaves the old or the new file, never half)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RUN_FILE
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(identity, indent=2, allow_nan=False) + "\n")
    os.replace(temporary, path)


def _short(digest: str | None) -> str:
    return (digest or "?")[:12]


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded identity and this run's, one phrase per field.

    Methods compare only where both runs have them (adding a method is a resume), and
    metrics not at all (adding one is a resume too).
    """
    found = []
    if old.get("format") != new.get("format"):
        found.append(f"run.json format {old.get('format')} vs {new.get('format')}")
    old_model, new_model = old.get("model") or {}, new.get("model") or {}
    if old_model.get("sha256") != new_model.get("sha256"):
        found.append(_model_difference(old_model, new_model))
    elif old_model.get("preprocessing") != new_model.get("preprocessing"):
        found.append(
            f"model preprocessing differs: {old_model.get('preprocessing')} "
            f"vs {new_model.get('preprocessing')}"
        )
    old_options, new_options = old.get("metric_options") or {}, new.get("metric_options") or {}
    for key in sorted(set(old_options) | set(new_options)):
        if old_options.get(key) != new_options.get(key):
            found.append(f"metric option {key}: {old_options.get(key)} vs {new_options.get(key)}")
    old_methods, new_methods = old.get("methods") or {}, new.get("methods") or {}
    for name in [m for m in new_methods if m in old_methods]:
        found.extend(_method_differences(name, old_methods[name], new_methods[name]))
    found.extend(_image_differences(old.get("images") or {}, new.get("images") or {}))
    # run.json files written before the option explained the label where known
    old_targets, new_targets = old.get("targets", "label"), new.get("targets", "label")
    if old_targets != new_targets:
        found.append(f"explained class: {old_targets} vs {new_targets}")
    if old.get("timmlens") != new.get("timmlens"):
        found.append(f"timmlens version: {old.get('timmlens')} vs {new.get('timmlens')}")
    return found


def _model_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Two models' hashes differ: which models, and for random weights why."""
    name, hashes = new.get("name"), (_short(old.get("sha256")), _short(new.get("sha256")))
    if new.get("from_spec") and new.get("random_weights") and old.get("name") == name:
        # The same spec with other weights: random weights drawn anew, say so and the cure.
        return (
            f"the model's weights differ: {name} has random weights (no trained weights were "
            f"loaded), drawn anew when it was created (sha256 {hashes[0]} in {RUN_FILE}, "
            f"{hashes[1]} now), so its rows cannot be resumed; for the same weights in every "
            f"process load it with timmlens.evaluation.load_model_seeded({str(name)!r}) (the "
            f"timmlens command and benchmark() do), or load trained weights"
        )
    return f"model differs: {old.get('name')} (sha256 {hashes[0]}) vs {name} (sha256 {hashes[1]})"


def _method_differences(name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    if old.get("class") != new.get("class"):
        return [f"method {name}: {old.get('class')} vs {new.get('class')}"]
    old_options, new_options = old.get("options") or {}, new.get("options") or {}
    return [
        f"method {name} option {key}: {old_options.get(key)} vs {new_options.get(key)}"
        for key in sorted(set(old_options) | set(new_options))
        if old_options.get(key) != new_options.get(key)
    ]


def _image_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    if old.get("count") != new.get("count"):
        return [f"image list differs: {old.get('count')} vs {new.get('count')} images"]
    if old.get("ids_sha256") != new.get("ids_sha256"):
        return [f"image list differs: other image names ({new.get('count')} in both)"]
    if old.get("content_sha256") != new.get("content_sha256"):
        what = "file sizes or folder labels" if new.get("source") == "folder" else "dataset type"
        return [
            f"images differ: same {new.get('count')} names, other {what} "
            f"({old.get('source')} vs {new.get('source')})"
        ]
    return []


def check_resumable(out_dir: Path, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> None:
    """Raise [`RunMismatchError`][] (one line) unless rows in ``out_dir`` are ``new``'s.

    Call only when ``out_dir`` holds rows (without rows there is nothing to reuse).
    """
    if old is None:
        raise RunMismatchError(
            f"'{out_dir}' holds rows but no {RUN_FILE} (written by an older timmlens, or "
            f"not by timmlens): cannot tell which model and options made them; "
            f"{HOW_TO_PROCEED}."
        )
    found = differences(old, new)
    if found:
        raise RunMismatchError(
            f"'{out_dir}' holds rows of another run: {'; '.join(found)}; {HOW_TO_PROCEED}."
        )


def merged(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` with the methods and metrics of ``old`` kept: what the folder now holds."""
    if old is None:
        return dict(new)
    methods = {**(old.get("methods") or {}), **new["methods"]}
    metrics = list(old.get("metrics") or [])
    metrics += [m for m in new["metrics"] if m not in metrics]
    return {**new, "methods": methods, "metrics": metrics}
