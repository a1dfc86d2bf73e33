"""The layer hierarchy view: a CAM at every stage timm knows, from early to late layers.

``explain_layers(model, image)`` is the picture behind "later layers localise better":
early stages respond to edges and textures all over the image at high resolution, late
stages to the object at low resolution. One forward and one backward pass serve every
layer (the CAM engine taps them all at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..adapters import get_adapter
from ..data import ImageGeometry, ImagesInput, picture_of, prepare_images
from ..errors import LayerResolutionError
from ..interpretation._targets import TargetInput
from ..interpretation.base import normalize_maps
from ..interpretation.cam.engine import upsample_maps
from ..interpretation.registry import create_explainer, layer_methods, resolve_method
from ..models.introspect import class_name_of
from ..models.weights_status import weights_status

#: A registry name of a method that taps a layer (``uses_layer``), such as ``"gradcam"``.
CamMethod = str


@dataclass
class LayerHierarchy:
    """CAMs of the same images and classes at several depths of one model.

    Attributes:
        layers: full dotted names, early to late.
        grid_sizes: ``(h, w)`` of each layer's map before upsampling.
        heatmaps: ``(L, B, H, W)`` on CPU, each layer's map upsampled to the input and
            min-max normalised per image (layers differ in scale).
        raw_maps: per layer, ``(B, h_l, w_l)`` on CPU: the method's maps at the layer's
            own resolution, unnormalised.
        targets: ``(B,)`` the class explained for each image.
        labels: per image, the explained class's name.
        probabilities: ``(B,)`` the model's softmax probability of each target.
        method: the registry name of the layer method (``"gradcam"``, ``"gradcampp"``, ...).
        pictures: per image, the original photo (or the de-normalised input).
        geometries: per image, how the photo became the model input.
        single: whether one image was passed.
        note: the model's weights note (``"random weights"``, ...; ``None`` when trained),
            shown in the figure's title.
    """

    layers: list[str]
    grid_sizes: list[tuple[int, int]]
    heatmaps: torch.Tensor
    raw_maps: list[torch.Tensor]
    targets: torch.Tensor
    labels: list[str]
    probabilities: torch.Tensor
    method: str
    pictures: list[Any] = field(repr=False)
    geometries: list[ImageGeometry] = field(repr=False)
    single: bool = False
    note: str | None = None

    def __len__(self) -> int:
        return len(self.layers)

    def heatmap(self, layer: str | int, image: int = 0) -> torch.Tensor:
        """The ``(H, W)`` map of one layer (by name or position) for one image."""
        index = self.layers.index(layer) if isinstance(layer, str) else layer
        return self.heatmaps[index, image]

    def pointing_game(
        self,
        *,
        boxes: Any = None,
        masks: Any = None,
        tolerance: float = 15.0,
    ) -> dict[str, float]:
        """Pointing-game hit rate of every layer: ``{layer: rate}``, early to late.

        ``boxes`` / ``masks`` are in model-input coordinates, as for
        [`timmlens.interpretation.metrics.pointing_game`][]; a rising rate is the
        number behind "later layers localise better".
        """
        from ..interpretation.metrics.pointing import pointing_game

        return {
            name: float(pointing_game(maps, boxes=boxes, masks=masks, tolerance=tolerance))
            for name, maps in zip(self.layers, self.heatmaps, strict=True)
        }


def hierarchy_layers(model: nn.Module) -> list[str]:
    """The layers [`explain_layers`][] uses by default, early to late.

    timm's ``feature_info`` stages, in order; a stage that contains the family's default
    CAM layer is replaced by it (with class-token pooling the last block's output gives
    the patch tokens no gradient, so the default is that block's ``norm1``), and a default
    layer after the last stage (EfficientNet's ``conv_head``) is appended.
    """
    adapter = get_adapter(model)
    stages = adapter.feature_stages
    try:
        default = adapter.default_layer
    except LayerResolutionError:
        default = None
    if not stages:
        if default is None:
            raise LayerResolutionError(
                f"{adapter.architecture}: timm lists no feature_info stages and there is no "
                f"default CAM layer, so there is no hierarchy to show. Pass layers=[...] with "
                f"layers that output spatial maps; timmlens.describe(model) lists candidates."
            )
        return [default]
    layers = [default if default and default.startswith(f"{stage}.") else stage for stage in stages]
    if default is not None and default not in layers:
        layers.append(default)
    return layers


def explain_layers(
    model: nn.Module,
    images: ImagesInput,
    target_class: TargetInput = None,
    *,
    layers: Sequence[str | nn.Module] | None = None,
    method: CamMethod = "gradcam",
) -> LayerHierarchy:
    """GradCAM (or GradCAM++) of ``images`` at every stage, early to late.

    Example::

        hierarchy = explain_layers(model, image)           # predicted class
        fig = timmlens.viz.plot_layers(hierarchy)          # one row per image
        hierarchy.layers  # ['backbone.blocks.0', ..., 'backbone.conv_head']

    Args:
        model: an ``ImageClassifier`` or a bare timm model; left as found.
        images: anything [`timmlens.prepare_images`][] accepts.
        target_class: one class for all images, one per image, or ``None`` for each
            image's prediction. The same class is explained at every layer.
        layers: the layers to show (names or modules, early to late); default
            `hierarchy_layers`.
        method: a method that taps a layer (``uses_layer`` in the registry:
            `layer_methods`); aliases accepted.

    Returns:
        A `LayerHierarchy`; ``heatmaps`` is ``(L, B, H, W)``, each map in [0, 1].
    """
    if not resolve_method(method).uses_layer:
        raise ValueError(
            f"explain_layers supports the layer methods {', '.join(layer_methods())}, got "
            f"{method!r}; other methods explain the input pixels, not a layer."
        )
    names = list(layers) if layers is not None else hierarchy_layers(model)
    if not names:
        raise ValueError("layers is empty: give at least one layer, or None for the stages.")
    explainer = create_explainer(method, model, target_layer=names)
    batch = prepare_images(images, model)
    result = explainer.explain_full(batch.tensor, target_class)
    raw_maps, targets = list(result.extras["layer_maps"]), result.targets
    size = (int(batch.tensor.shape[-2]), int(batch.tensor.shape[-1]))
    heatmaps = torch.stack([normalize_maps(upsample_maps(m, size)) for m in raw_maps])
    # The logits of the CAM's own forward pass: no second forward for the probabilities.
    logits = result.logits
    probabilities = logits.float().softmax(-1).gather(1, targets.view(-1, 1).to(logits.device))
    return LayerHierarchy(
        layers=explainer.layer_names,
        grid_sizes=[(int(m.shape[-2]), int(m.shape[-1])) for m in raw_maps],
        heatmaps=heatmaps.float().cpu(),
        raw_maps=[m.float().cpu() for m in raw_maps],
        targets=targets.cpu(),
        labels=[class_name_of(model, int(t)) for t in targets],
        probabilities=probabilities[:, 0].cpu(),
        method=explainer.name,
        pictures=[picture_of(batch, i, model) for i in range(len(batch))],
        geometries=list(batch.geometries),
        single=batch.single,
        note=weights_status(model).note,
    )
