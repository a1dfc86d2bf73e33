"""The CAM engine's options for CAM-kind methods that tap no layer (FullGrad, SobelCAM).

Every CAM method takes ``aug_smooth``, ``eigen_smooth`` and ``layer_fusion`` (issue 31;
the engine's `with_engine_options`). A method that is not a
[`CAMExplainer`][timmlens.interpretation.cam.engine.CAMExplainer] gets them here, with the
engine's checks and pieces (`augment`, `average_augmentations`):

* ``aug_smooth``: pytorch-grad-cam's six augmentations of every image in one batch, the
  maps flipped back, each scaled to ``[0, 1]`` (with ``normalize``) and averaged;
* ``eigen_smooth``: refused with the reason (the map is not a channel sum of weighted
  activations), unless the class's `supports_eigen_smooth` says it has terms to project
  (FullGrad: pytorch-grad-cam projects its per-layer maps); then `attribute_once` gets
  ``eigen_smooth=`` (the constructor's, or the call's);
* ``layer_fusion``: checked; with no target layers there is one map, which any rule
  leaves as it is.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from .._targets import ResolvedTargets
from ..base import Explanation, normalize_maps
from .smoothing import (
    AUGMENTATIONS,
    IDENTITY,
    LayerFusion,
    augment,
    average_augmentations,
    check_flag,
    check_fusion,
    repeat_targets,
)

__all__ = ["LayerlessEngineOptions"]


class LayerlessEngineOptions:
    """Mixin for an ``Explainer`` of kind ``"cam"`` with no layer: the engine's options.

    The class implements `attribute_once` ``(B, C, H, W) -> Explanation``; its
    ``__init__`` takes ``aug_smooth``, ``eigen_smooth`` and ``layer_fusion`` (keyword-only)
    and calls `set_engine_options`. Requires ``normalize`` on the instance.
    """

    aug_smooth: bool = False
    eigen_smooth: bool = False
    layer_fusion: LayerFusion = "mean"
    normalize: bool = True
    forwards_per_image: int | None = 1

    @classmethod
    def supports_eigen_smooth(cls) -> bool:
        """Whether ``eigen_smooth=True`` is taken (then `attribute_once` gets
        ``eigen_smooth=``); by default not: the map is not a channel sum of weighted
        activations."""
        return False

    def set_engine_options(
        self, aug_smooth: bool = False, eigen_smooth: bool = False, layer_fusion: str = "mean"
    ) -> None:
        """Check and set ``aug_smooth``, ``eigen_smooth`` (only ``False`` unless
        `supports_eigen_smooth`), ``layer_fusion``."""
        name = type(self).__name__
        self.aug_smooth = check_flag("aug_smooth", aug_smooth, name)
        self.eigen_smooth = self._checked_eigen_smooth(eigen_smooth)
        self.layer_fusion = check_fusion(layer_fusion, name)
        per_image = type(self).forwards_per_image
        if per_image and self.aug_smooth:
            self.forwards_per_image = per_image * len(AUGMENTATIONS)

    def engine_options_repr(self) -> str:
        """``", aug_smooth=True"`` / ``", eigen_smooth=True"`` where set (for
        ``__repr__``), else ``""``."""
        flags = [name for name in ("aug_smooth", "eigen_smooth") if getattr(self, name)]
        return "".join(f", {name}=True" for name in flags)

    def _checked_eigen_smooth(self, value: object) -> bool:
        name = type(self).__name__
        flag = check_flag("eigen_smooth", value, name)
        if flag and not self.supports_eigen_smooth():
            raise ValueError(
                f"{name} does not take eigen_smooth=True: its map is not a sum of weighted "
                f"activations over channels of one layer, so there is no principal component "
                f"to take. Use eigen_smooth=False, or EigenCAM / EigenGradCAM."
            )
        return flag

    def attribute_once(
        self, inputs: torch.Tensor, targets: ResolvedTargets, **kwargs: Any
    ) -> Explanation:
        """The explanation of ``inputs`` ``(B, C, H, W)`` without augmentation."""
        raise NotImplementedError

    def attribute(
        self,
        inputs: torch.Tensor,
        targets: ResolvedTargets,
        *,
        aug_smooth: bool | None = None,
        eigen_smooth: bool | None = None,
        **kwargs: Any,
    ) -> Explanation:
        """`attribute_once`, or with ``aug_smooth`` (``None``: the constructor's) the
        average over the six augmentations of each image: heatmap ``(B, H, W)``.

        ``eigen_smooth`` (``None``: the constructor's) goes to `attribute_once` where
        `supports_eigen_smooth`; with ``aug_smooth`` it applies to every augmentation.
        With ``aug_smooth`` the extras are those of the unaugmented rows.
        """
        name = type(self).__name__
        aug = self.aug_smooth if aug_smooth is None else check_flag("aug_smooth", aug_smooth, name)
        eigen = (
            self.eigen_smooth if eigen_smooth is None else self._checked_eigen_smooth(eigen_smooth)
        )
        if self.supports_eigen_smooth():
            kwargs["eigen_smooth"] = eigen
        if not aug:
            return self.attribute_once(inputs, targets, **kwargs)
        batch = inputs.shape[0]
        result = self.attribute_once(augment(inputs), repeat_targets(targets), **kwargs)
        logits = result.logits
        if logits is None:  # a method that did not run the model: nothing to slice
            logits = torch.zeros(len(AUGMENTATIONS) * batch, 0, device=inputs.device)
        scale = normalize_maps if self.normalize else None
        heatmap, _, chosen, logits = average_augmentations(
            result.heatmap, [], result.targets, logits, scale
        )
        rows = slice(IDENTITY * batch, (IDENTITY + 1) * batch)
        extras = {
            key: value[rows]
            if isinstance(value, torch.Tensor) and value.shape[:1] == result.heatmap.shape[:1]
            else value
            for key, value in result.extras.items()
        }
        return replace(
            result,
            heatmap=normalize_maps(heatmap) if self.normalize else heatmap,
            targets=chosen,
            logits=None if result.logits is None else logits,
            attributions=None,
            extras=extras,
        )
