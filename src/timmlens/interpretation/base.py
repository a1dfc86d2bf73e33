"""The calling convention every explainer shares.

``explainer(images, target_class=None)`` -> heatmap: ``(H, W)`` for one image,
``(B, H, W)`` for a batch, in model-input coordinates, float32 on the model's device
(whatever the model's dtype; see `timmlens.interpretation._result_rules`).
"""

from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .._model_state import explaining, require_gradients
from ..data import ImagesInput, PreparedBatch, picture_of, prepare_images
from ..errors import ImageInputError
from ..models.introspect import (
    class_name_of,
    data_config,
    model_metadata,
    num_outputs,
    unwrap_model,
)
from ..saving import FigureDisplay
from ._result_rules import checked_result, precision_errors, warn_if_constant
from ._targets import CallableTargets, ResolvedTargets, TargetInput, validate_targets

#: Packages whose assertions are not the model's own input checks (found without
#: importing them).
_NOT_THE_MODEL = tuple(
    os.path.dirname(os.path.abspath(spec.origin)) + os.sep
    for spec in map(importlib.util.find_spec, ("timmlens", "captum"))
    if spec is not None and spec.origin is not None
)


def raised_by_the_model(error: AssertionError) -> bool:
    """Whether ``error`` comes from the model's code (timm's ``_assert`` input checks)."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return False
    filename = os.path.abspath(frame.tb_frame.f_code.co_filename)
    return not filename.startswith(_NOT_THE_MODEL)


@contextmanager
def explanation_call(
    model: nn.Module, inputs: torch.Tensor, what: str, needs_gradients: bool = True
) -> Iterator[None]:
    """The guard around every explanation of ``inputs`` ``(B, C, H, W)`` by ``model``.

    Refuses NaN/inf inputs and (for gradient methods) ``torch.inference_mode()``, holds
    `explaining` (per-model lock, eval mode, state
    restored), and turns the model's own input assertions (a ViT fed a size that is not
    a multiple of its patch size) into an [`ImageInputError`][] naming the size.
    """
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or inf; explanations of them would be NaN.")
    if needs_gradients:
        require_gradients(what)
    with explaining(model):
        try:
            yield
        except AssertionError as exc:
            if not raised_by_the_model(exc):
                raise
            height, width = inputs.shape[-2:]
            expected = data_config(model).get("input_size", (None, "?", "?"))
            raise ImageInputError(
                f"The model's input check failed for {height}x{width} pixels: {exc} Its data "
                f"config gives {expected[1]}x{expected[2]}. Pass images (PIL, paths, arrays), "
                f"which timmlens resizes, or resize tensors with timmlens.prepare_images."
            ) from exc


#: Units in the last place within which a map's spread is rounding, not signal.
ROUNDING_ULPS = 16


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-map min-max normalisation to [0, 1]: ``(B, H, W)`` -> ``(B, H, W)``.

    A constant map becomes all zeros (there is nothing to rank), and so does a map whose
    spread is within rounding of its values (`ROUNDING_ULPS` units in the last place of
    its dtype): a constant map upsampled bilinearly differs from itself by such noise,
    which min-max scaling would blow up to a [0, 1] pattern that means nothing.
    """
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    rounding = ROUNDING_ULPS * torch.finfo(maps.dtype).eps * torch.maximum(low.abs(), high.abs())
    span = (high - low).view(-1, 1, 1)
    signal = span > rounding.clamp_min(eps).view(-1, 1, 1)
    low = low.view(-1, 1, 1)
    return torch.where(signal, (maps - low) / span.clamp_min(eps), torch.zeros_like(maps))


@dataclass(frozen=True, eq=False)
class Explanation(FigureDisplay):
    """Everything one explanation call computed, always batched (``B`` images).

    Attributes:
        heatmap: ``(B, H, W)`` float32, the maps [`Explainer.explain`][] returns.
        targets: ``(B,)`` long, the explained classes (``None`` only where no class was
            involved: the plain attention rollout of a headless model). For a callable
            target, which has no class, the predicted classes (see `target_label`).
        logits: ``(B, K)`` the model's logits for the inputs, detached, where the method
            ran a clean forward pass anyway (``None`` otherwise).
        attributions: the method's raw output before it became a heatmap: Captum's
            ``(B, C, H, W)`` input attributions, a one-layer CAM's ``(B, h, w)`` map,
            rollout's ``(B, N)`` token relevance; ``None`` where there is no single one.
        extras: method-specific values (e.g. ``"layer_maps"`` of CAMs).
        context: what made it, filled in by the explainer: ``method``, ``layer``,
            ``model`` (name, class count, weights status) and, for images given as
            pictures, ``geometries``; [`save`][] records it.
        target_label: ``"custom target (<callable's name>)"`` when the target was a
            callable (then `targets` are the predicted classes); ``None`` for classes.
        pictures: per image, what its figure draws the heatmap on: the original photo
            (PIL), or for a tensor input the model's view of it (``(3, H, W)`` CPU tensor
            in [0, 1]); filled by [`Explainer.explain_full`][], ``None`` otherwise.
    """

    heatmap: torch.Tensor
    targets: torch.Tensor | None
    logits: torch.Tensor | None = None
    attributions: torch.Tensor | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    target_label: str | None = None
    pictures: tuple[Any, ...] | None = field(default=None, repr=False)

    def save(self, path: str | os.PathLike[str]) -> Any:
        """Write the heatmaps ``(B, H, W)``, targets, probabilities and `context` to
        ``path`` (``.npz`` + JSON metadata, see [`timmlens.load_explanation`][])."""
        from ..saving import save_batch_explanation

        return save_batch_explanation(path, self.heatmap, self.targets, self.logits, self.context)

    def titles(self) -> list[str]:
        """Per image, the explained class and (when another) the prediction, named as the
        model names them, with probabilities where the method ran a clean forward:
        ``"tabby (87.3%)"``, ``"target tabby (0.0%), predicted espresso (90.4%)"``."""
        from ..viz.labels import class_heading, explanation_title

        count = self.heatmap.shape[0]
        targets = self.context.get("target_names") or [None] * count
        predicted = self.context.get("predicted_names") or [None] * count
        probabilities = None if self.logits is None else self.logits.float().softmax(-1).cpu()
        titles = []
        for i in range(count):
            p_pred = None if probabilities is None else float(probabilities[i].max())
            if self.target_label is not None:  # a callable target: no class, no probability
                top = explanation_title(predicted[i], p_pred) if predicted[i] else ""
                titles.append(f"{self.target_label}, predicted {top}" if top else self.target_label)
            elif targets[i] is None:
                titles.append(f"image {i}")
            else:
                assert self.targets is not None
                p_target = (
                    None if probabilities is None else float(probabilities[i, self.targets[i]])
                )
                titles.append(class_heading(targets[i], p_target, predicted[i], p_pred))
        return titles

    def figure(self, **options: Any) -> Any:
        """The heatmaps on their photos, one panel per image titled with its classes
        (`titles`), the method and any weights note above (`timmlens.viz.static.plot_images`;
        ``options`` are its own: ``cmap``, ``alpha``, ``crop``, ``ncols``). Without pictures
        (an Explanation built by hand) the maps are drawn on black."""
        from ..saving import batch_figure

        return batch_figure(
            self.heatmap,
            self.titles(),
            method=self._method_heading(),
            pictures=self.pictures,
            geometries=self.context.get("geometries"),
            note=self._weights_note(),
            **options,
        )

    def _method_heading(self) -> str:
        """``"GradCAM @ backbone.layer4"``: the method's title and its layer, if any."""
        title = self.context.get("title") or self.context.get("method") or ""
        layer = self.context.get("layer")
        return title + (f" @ {layer}" if layer else "")

    def _weights_note(self) -> str | None:
        return ((self.context.get("model") or {}).get("weights") or {}).get("note")

    def _repr_html_(self) -> str:
        """The notebook display: the figure (each map on its photo, titled with its classes)
        inline, under the method's heading, and each image's classes as text."""
        from ..viz.notebook import result_html

        count, height, width = self.heatmap.shape
        model = (self.context.get("model") or {}).get("name")
        details = f"heatmap ({count}, {height}, {width})" + (f", model {model}" if model else "")
        return result_html(
            self._figure_png,
            self._method_heading() or "explanation",
            [f"image {i}: {title}" for i, title in enumerate(self.titles())],
            note=self._weights_note(),
            details=details,
        )


def class_names_of(model: nn.Module, result: Explanation) -> dict[str, list[str]]:
    """``{"target_names": [...], "predicted_names": [...]}`` of ``result``'s ``(B,)``
    targets and (where it has logits) predictions, as the model names its classes (the
    user's ``class_names``, its ``label_names``, ImageNet's, else ``"class N"``); a part
    with no classes (a headless model's rollout, a callable target) is left out."""
    names: dict[str, list[str]] = {}
    if result.targets is not None:
        # a callable target's result carries the predicted classes as its targets
        key = "target_names" if result.target_label is None else "predicted_names"
        names[key] = [class_name_of(model, int(t)) for t in result.targets.tolist()]
    if result.logits is not None:
        predicted = result.logits.argmax(-1).tolist()
        names["predicted_names"] = [class_name_of(model, int(p)) for p in predicted]
    return names


def predict(model: nn.Module, inputs: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """The model's logits for ``inputs`` ``(B, C, H, W)`` -> ``(B, K)``: eval mode, no grad.

    Inside `explaining`, so a model in train mode predicts
    without dropout and is left as found. ``chunk`` bounds the images per forward.
    """
    step = chunk or max(1, inputs.shape[0])
    with explaining(model), torch.no_grad():
        return torch.cat([model(inputs[lo : lo + step]) for lo in range(0, inputs.shape[0], step)])


class Explainer(ABC):
    """Base class: preprocessing, target checks and model-state hygiene in one place.

    Subclasses implement [`attribute`][] on a preprocessed batch and return an
    [`Explanation`][]; [`explain`][] gives its heatmaps, [`explain_full`][] all of it.
    Results are returned, never kept for the next call to read: one explainer serves
    threads and calls side by side.

    What every method's result obeys, checked once in [`explain_batch_full`][]:

    * every heatmap is **float32 on the model's device**, whatever the model's dtype
      (``model.half()``, ``.double()``); raw ``attributions`` keep the dtype the method
      computed in;
    * NaN or inf in a result is an error, not a map: on a float16/bfloat16 model a method
      whose arithmetic fails in that precision (``deeplift``, ``deepliftshap``,
      ``gradientshap`` on CPU) raises [`UnsupportedModelError`][timmlens.UnsupportedModelError]
      and says to explain a float32 copy;
    * a constant (usually all-zero) map warns
      ([`DegenerateMapWarning`][timmlens.DegenerateMapWarning]) with the likely causes
      of its engine, `constant_map_causes`.
    """

    #: short method name used in figures, tables and the CLI
    name: str = "explainer"
    #: display name in figure titles (``"GradCAM++"``; set by ``register_method``)
    title: str = ""
    #: whether [`attribute`][] takes gradients (refused under ``torch.inference_mode``)
    needs_gradients: bool = True
    #: the map ignores the target class by design (EigenCAM): same map for every class
    class_agnostic: bool = False
    #: forwards of the whole model per image explained for given target classes, where
    #: the method knows it in advance (``None``: not known; ``timmlens.evaluate`` then
    #: measures it on the first batch). It sizes the progress of long runs.
    forwards_per_image: int | None = None
    #: why this engine's map can come out constant, for the `DegenerateMapWarning`
    constant_map_causes: str = (
        "the target's score does not depend on the input (untrained weights, or a "
        "target_class whose score ignores the image)"
    )
    #: whether a constant map is suspect (not for RandomCAM, whose clipped random sums
    #: may be all zero by design)
    warns_on_constant_maps: bool = True

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}.")
        # torch.compile, DataParallel, DDP: explain the module inside (compile is warned)
        self.model = unwrap_model(model)

    def __call__(
        self, images: ImagesInput, target_class: TargetInput = None, **kwargs: Any
    ) -> torch.Tensor:
        return self.explain(images, target_class=target_class, **kwargs)

    # ``with GradCAM(model) as cam:`` as in pytorch-grad-cam and torchcam: explainers that
    # hook layers (the CAM engine) keep their hooks for the block and remove them at its
    # end; outside a block every call installs and removes its own. Others hold nothing.
    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks a ``with`` block installed (nothing for most explainers)."""
        return None

    def explain(
        self, images: ImagesInput, target_class: TargetInput = None, **kwargs: Any
    ) -> torch.Tensor:
        """Heatmap(s) for ``images``: ``(H, W)`` for one image, ``(B, H, W)`` for a batch.

        Args:
            images: PIL image, path, numpy array, CHW/BCHW tensor, or a list of them.
            target_class: class to explain: one int for all images, one per image,
                ``None`` for each image's predicted class, or a callable
                ``logits (B, K) -> scores (B,)`` (a class group's sum, a probability; see
                `timmlens.interpretation._targets` for what it receives).
        """
        batch = self.prepare(images)
        maps = self.explain_batch(batch.tensor, target_class, **kwargs)
        return maps[0] if batch.single else maps

    def explain_full(
        self, images: ImagesInput, target_class: TargetInput = None, **kwargs: Any
    ) -> Explanation:
        """The whole [`Explanation`][] of ``images`` (always batched, also for one image)."""
        batch = self.prepare(images)
        result = self.explain_batch_full(batch.tensor, target_class, **kwargs)
        context = {
            **result.context,
            "geometries": list(batch.geometries),
            **class_names_of(self.model, result),
        }
        pictures = tuple(picture_of(batch, i, self.model) for i in range(len(batch)))
        return replace(result, context=context, pictures=pictures)

    def prepare(self, images: ImagesInput) -> PreparedBatch:
        return prepare_images(images, self.model)

    def explain_batch(
        self, inputs: torch.Tensor, target_class: TargetInput = None, **kwargs: Any
    ) -> torch.Tensor:
        """Heatmaps ``(B, H, W)`` for a preprocessed batch ``(B, C, H, W)``."""
        return self.explain_batch_full(inputs, target_class, **kwargs).heatmap

    def explain_batch_full(
        self, inputs: torch.Tensor, target_class: TargetInput = None, **kwargs: Any
    ) -> Explanation:
        """The [`Explanation`][] of a preprocessed batch ``(B, C, H, W)``.

        The one path of every explainer: resolve the targets, enter the guard
        (`explanation_call`), [`attribute`][], then the rules of every result (float32
        heatmap, no NaN, a warning for a constant map; see the class docstring).
        """
        targets = self.resolve_targets(target_class, inputs)
        needs_gradients = self.gradients_needed(targets)
        with (
            precision_errors(self.model, self.name),
            explanation_call(self.model, inputs, self.describe(targets), needs_gradients),
        ):
            result = self.attribute(inputs, targets, **kwargs)
        result = checked_result(self, result)
        warn_if_constant(self, result)
        result = replace(result, context={**self.context(), **result.context})
        if isinstance(result.targets, CallableTargets):
            result = self._callable_result(result, inputs)
        return result

    def constant_map_causes_of(self, result: Explanation) -> str:
        """The likely causes of a constant map in ``result`` (`constant_map_causes`;
        engines that know more about a call, such as a CAM layer's size, say it)."""
        del result
        return self.constant_map_causes

    def context(self) -> dict[str, Any]:
        """What makes this explainer's results: method, layer and model (saved with them)."""
        names = getattr(self, "layer_names", None)
        return {
            "method": self.name,
            "title": self.title or self.name,
            "layer": ", ".join(names) if names else None,
            "model": model_metadata(self.model),
        }

    def _callable_result(self, result: Explanation, inputs: torch.Tensor) -> Explanation:
        """A callable target's result: its label, and the predicted classes as targets."""
        assert isinstance(result.targets, CallableTargets)
        logits = result.logits if result.logits is not None else predict(self.model, inputs)
        return replace(result, targets=logits.argmax(dim=1), target_label=result.targets.label)

    def resolve_targets(self, target_class: TargetInput, inputs: torch.Tensor) -> ResolvedTargets:
        """One class index per image of ``inputs``, a callable target, or ``None`` for the
        predicted classes."""
        return validate_targets(
            target_class, inputs.shape[0], num_outputs(self.model), self.model, self.name
        )

    def gradients_needed(self, targets: ResolvedTargets) -> bool:
        """Whether explaining ``targets`` takes gradients (see `needs_gradients`)."""
        del targets
        return self.needs_gradients

    def describe(self, targets: ResolvedTargets) -> str:
        """What this call is, for messages."""
        del targets
        return type(self).__name__

    @abstractmethod
    def attribute(
        self, inputs: torch.Tensor, targets: ResolvedTargets, **kwargs: Any
    ) -> Explanation:
        """The explanation of inputs ``(B, C, H, W)`` for validated ``targets``.

        ``targets`` is ``None`` for the predicted classes. A callable target reaches the
        engine as `CallableTargets`; the result
        carries it as ``targets`` and [`explain_batch_full`][] swaps in the predicted
        classes and the label. Runs inside the guard.
        """
