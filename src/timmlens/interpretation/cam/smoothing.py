"""The CAM engine's map options: ``aug_smooth``, ``eigen_smooth`` and ``layer_fusion``.

They are pytorch-grad-cam 1.5.7's options (``cam(x, targets, aug_smooth=True,
eigen_smooth=True)`` and a list of ``target_layers``), given once to the shared engine
([`CAMExplainer`][timmlens.interpretation.cam.engine.CAMExplainer]) so every CAM method,
present and future, has them:

* ``aug_smooth``: test-time augmentation as pytorch-grad-cam's default ``ttach``
  transforms: the input flipped left-right or not, times ``0.9``, ``1`` or ``1.1`` (six
  augmentations); each augmentation's heatmap is flipped back and the six are averaged.
  All augmentations of a batch run as one batch (one forward and one backward), not one
  pass per augmentation.
* ``eigen_smooth``: the map is the first principal component of the method's weighted
  activations ``(B, C, h, w)`` (``w_k A_k`` for channel-weight methods, ``g * A`` for
  HiResCAM), instead of their channel sum.
* ``layer_fusion``: how the per-layer maps of several target layers combine, after each
  is upsampled and min-max normalised: ``"mean"`` (pytorch-grad-cam's
  ``aggregate_multi_layers``), ``"max"`` or ``"sum"``.

This module holds the pieces that need no engine: the augmentations, the fusion rules,
the principal-component projection and the option checks.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Literal

import torch

from .._targets import CallableTargets, ResolvedTargets

__all__ = [
    "AUGMENTATIONS",
    "ENGINE_OPTIONS",
    "LAYER_FUSIONS",
    "LayerFusion",
    "augment",
    "average_augmentations",
    "check_flag",
    "check_fusion",
    "deaugment",
    "first_principal_component",
    "fuse_layer_maps",
    "repeat_targets",
    "with_engine_options",
]

LayerFusion = Literal["mean", "max", "sum"]
LAYER_FUSIONS: tuple[str, ...] = ("mean", "max", "sum")

#: pytorch-grad-cam's default test-time augmentations (``tta.HorizontalFlip()`` x
#: ``tta.Multiply([0.9, 1, 1.1])``), in ttach's order: ``(flip left-right, factor)``.
AUGMENTATIONS: tuple[tuple[bool, float], ...] = tuple(
    (flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)
)
#: the augmentation that leaves the input as it is: its classes and logits are reported
IDENTITY = AUGMENTATIONS.index((False, 1.0))

#: the engine's keyword-only options and their defaults (every CAM constructor takes them)
ENGINE_OPTIONS: dict[str, Any] = {
    "aug_smooth": False,
    "eigen_smooth": False,
    "layer_fusion": "mean",
}


def augment(inputs: torch.Tensor) -> torch.Tensor:
    """Every augmentation of every image: ``(B, C, H, W)`` -> ``(A*B, C, H, W)``.

    Row ``a * B + b`` is image ``b`` under ``AUGMENTATIONS[a]`` (ttach's ``hflip`` is
    ``flip(3)``; ``Multiply`` scales the preprocessed tensor, as pytorch-grad-cam does).
    """
    return torch.cat(
        [(inputs.flip(3) if flip else inputs) * factor for flip, factor in AUGMENTATIONS]
    )


def deaugment(maps: torch.Tensor) -> torch.Tensor:
    """Maps of augmented rows put back on the original image: ``(A*B, h, w)`` -> ``(A, B, h, w)``.

    A flipped row's map is flipped back (ttach's ``deaugment_mask``); a factor changes
    nothing geometric.
    """
    per_augmentation = maps.unflatten(0, (len(AUGMENTATIONS), -1))
    return torch.stack(
        [
            m.flip(-1) if flip else m
            for m, (flip, _) in zip(per_augmentation, AUGMENTATIONS, strict=True)
        ]
    )


def repeat_targets(targets: ResolvedTargets) -> ResolvedTargets:
    """Targets of ``B`` images for the ``A*B`` rows of `augment` (``None`` stays ``None``:
    each augmented copy's own predicted class, as pytorch-grad-cam's ``targets=None``)."""
    if isinstance(targets, CallableTargets):
        return targets.repeat(len(AUGMENTATIONS))
    return None if targets is None else targets * len(AUGMENTATIONS)


def average_augmentations(
    heatmaps: torch.Tensor,
    layer_maps: list[torch.Tensor],
    chosen: Any,
    logits: torch.Tensor,
    scale: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[torch.Tensor, list[torch.Tensor], Any, torch.Tensor]:
    """The result of the ``A*B`` augmented rows for the ``B`` images.

    Args:
        heatmaps: ``(A*B, H, W)`` fused heatmaps of the augmented rows.
        layer_maps: one ``(A*B, h_l, w_l)`` raw map per layer.
        chosen: ``(A*B,)`` classes (or the callable target) the rows explained.
        logits: ``(A*B, K)``.
        scale: applied to each row's heatmap before the average (pytorch-grad-cam scales
            every augmentation's map to ``[0, 1]``); ``None`` averages raw maps.

    Returns:
        ``(B, H, W)`` average of the flipped-back heatmaps, each layer's flipped-back
        average ``(B, h_l, w_l)``, and the classes and logits of the unaugmented images.
    """
    if scale is not None:
        heatmaps = scale(heatmaps)
    batch = heatmaps.shape[0] // len(AUGMENTATIONS)
    rows = slice(IDENTITY * batch, (IDENTITY + 1) * batch)
    mean_layer_maps = [deaugment(m).mean(dim=0) for m in layer_maps]
    return deaugment(heatmaps).mean(dim=0), mean_layer_maps, chosen[rows], logits[rows]


def fuse_layer_maps(
    maps: list[torch.Tensor], rule: LayerFusion, normalize: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """One heatmap from several layers' upsampled maps: ``L x (B, H, W)`` -> ``(B, H, W)``.

    One layer passes through. With several, each map is min-max normalised first (layers
    differ in scale; pytorch-grad-cam's ``scale_cam_image`` per layer), then combined by
    ``rule``: ``"mean"`` (pytorch-grad-cam's ``aggregate_multi_layers``), ``"max"`` (the
    strongest layer at each pixel) or ``"sum"``.
    """
    if len(maps) == 1:
        return maps[0]
    stacked = torch.stack([normalize(m) for m in maps])
    if rule == "max":
        return stacked.amax(dim=0)
    return stacked.sum(dim=0) if rule == "sum" else stacked.mean(dim=0)


def first_principal_component(features: torch.Tensor) -> torch.Tensor:
    """Each image's features projected on their first principal component: -> ``(B, h, w)``.

    The features of one image are read as ``h * w`` samples of ``C`` variables, centred
    over the samples, and projected on the first right-singular vector ``v`` of that
    ``(h*w, C)`` matrix, as pytorch-grad-cam's ``get_2d_projection`` does.

    Sign convention: ``v`` and ``-v`` are both first singular vectors, and SVD routines
    return either (pytorch-grad-cam keeps whatever numpy's LAPACK returns, so after its
    ReLU a map can come out nearly empty, or inverted). Here the sign is chosen so that
    ``sum_k v_k >= 0``, which is the same as the map correlating non-negatively with the
    channel mean of the features (``<X v, X 1> = s_1^2 (v . 1)`` for the centred matrix
    ``X``): the map points where the features are high on balance. For EigenCAM that is
    the mean activation; for EigenGradCAM, HiResCAM's map ``sum_k g_k A_k`` (evidence for
    the class); for ``eigen_smooth``, the method's own map. The result is therefore
    ``+-`` pytorch-grad-cam's projection, per image.

    Args:
        features: ``(B, C, h, w)``; half precision is computed in float32 (SVD needs it).

    Returns:
        ``(B, h, w)`` in the features' dtype (float32 for half-precision features).
    """
    batch, _, height, width = features.shape
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    samples = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
    centred = samples - samples.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    component = vh[:, 0]  # (B, C)
    sign = torch.where(component.sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(component)
    projection = torch.einsum("bnc,bc->bn", centred, component * sign)
    return projection.reshape(batch, height, width)


def check_flag(name: str, value: object, method: str) -> bool:
    """``value`` if it is a bool, else a ``TypeError`` that says what to pass."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{method}'s {name} must be True or False, got {value!r} "
            f"({type(value).__name__}); e.g. {name}=True."
        )
    return value


def check_fusion(value: object, method: str) -> LayerFusion:
    """``value`` if it is a fusion rule, else a ``ValueError`` listing them."""
    if value not in LAYER_FUSIONS:
        raise ValueError(
            f"{method}'s layer_fusion={value!r} is not a rule; use one of "
            f"{', '.join(map(repr, LAYER_FUSIONS))} (how the maps of several target layers "
            f"combine, after each is min-max normalised)."
        )
    return value  # type: ignore[return-value]


def with_engine_options(init: Callable[..., None]) -> Callable[..., None]:
    """A CAM subclass's ``__init__`` that also takes the engine's options (`ENGINE_OPTIONS`).

    A method with its own constructor (``seed=``, ``max_batch=``) need not list the
    engine's options: they are taken here, keyword-only, and set once the method's own
    ``__init__`` has run (``set_engine_options``), so every CAM method, present and
    future, has them with the same checks. The signature shows them, so the registry's
    option checks and ``--help`` see them. An ``__init__`` that names them itself (or
    takes ``**kwargs``) is left alone.
    """
    signature = inspect.signature(init)
    parameters = list(signature.parameters.values())
    if all(name in signature.parameters for name in ENGINE_OPTIONS) or any(
        p.kind is p.VAR_KEYWORD for p in parameters
    ):
        return init

    @functools.wraps(init)
    def init_with_engine_options(self: Any, *args: Any, **kwargs: Any) -> None:
        options = {name: kwargs.pop(name, default) for name, default in ENGINE_OPTIONS.items()}
        init(self, *args, **kwargs)
        self.set_engine_options(**options)

    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in ENGINE_OPTIONS.items()
    ]
    init_with_engine_options.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=parameters + extra
    )
    return init_with_engine_options
