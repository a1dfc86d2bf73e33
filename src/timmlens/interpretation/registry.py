"""Explanation methods by name: one place that turns ``"gradcam"`` into an explainer.

Used by :func:`~timmlens.interpretation.quick_explain`, the comparisons and the
``timmlens`` command line. Each entry builds an :class:`~timmlens.interpretation.Explainer`
whose call is ``explainer(images, target_class) -> (H, W) | (B, H, W)``.

=============  =======================================================  ============
name           explainer                                                applies to
=============  =======================================================  ============
gradcam        :class:`GradCAM` (``target_layer=``; family default)     every model
gradcampp      :class:`GradCAMPlusPlus` (``target_layer=``)             every model
ig             :class:`IntegratedGradients` (``n_steps=``, ...)         every model
smoothgrad     :class:`SmoothGrad` (``n_samples=``, ``noise_level=``)   every model
rollout        :class:`AttentionVisualizer`: class-specific rollout     global-attention
               when called with a target, plain rollout without         ViTs (ViT, DeiT,
                                                                        BEiT, EVA)
=============  =======================================================  ============

Aliases: ``"gradcam++"`` -> ``gradcampp``, ``"integrated_gradients"`` -> ``ig``,
``"attention"``/``"attention_rollout"`` -> ``rollout``. Explainer modules are imported
on first use.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..adapters import get_adapter
from ..errors import UnsupportedModelError
from .base import Explainer


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the registry name (``"gradcam"``).
        title: how figures and tables name it (``"GradCAM"``).
        factory: ``factory(model, **options) -> Explainer``.
        needs_attention: only for models with global self-attention blocks.
        uses_layer: the method taps a layer (``target_layer=`` option, ``layer_names``).
        summary: one line for ``--help`` and docs.
    """

    name: str
    title: str
    factory: Callable[..., Explainer]
    needs_attention: bool = False
    uses_layer: bool = False
    summary: str = ""


def _gradcam(model: nn.Module, **options: Any) -> Explainer:
    from .cam import GradCAM

    return GradCAM(model, **options)


def _gradcampp(model: nn.Module, **options: Any) -> Explainer:
    from .cam import GradCAMPlusPlus

    return GradCAMPlusPlus(model, **options)


def _ig(model: nn.Module, **options: Any) -> Explainer:
    from .input import IntegratedGradients

    return IntegratedGradients(model, **options)


def _smoothgrad(model: nn.Module, **options: Any) -> Explainer:
    from .input import SmoothGrad

    return SmoothGrad(model, **options)


def _rollout(model: nn.Module, **options: Any) -> Explainer:
    from .attention import AttentionVisualizer

    if options:
        raise TypeError(
            f"rollout takes no construction options, got {sorted(options)}; pass head_fusion, "
            f"discard_ratio or start_layer to the call."
        )
    return AttentionVisualizer(model)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "gradcam",
            "GradCAM",
            _gradcam,
            uses_layer=True,
            summary="gradient-weighted class activation map of one layer (fast, coarse)",
        ),
        MethodSpec(
            "gradcampp",
            "GradCAM++",
            _gradcampp,
            uses_layer=True,
            summary="GradCAM with higher-order weights (better for several objects)",
        ),
        MethodSpec(
            "ig",
            "Integrated Gradients",
            _ig,
            summary="path integral of input gradients from a baseline (pixel-level, any model)",
        ),
        MethodSpec(
            "smoothgrad",
            "SmoothGrad",
            _smoothgrad,
            summary="input gradients averaged over noisy copies (pixel-level, any model)",
        ),
        MethodSpec(
            "rollout",
            "Attention rollout",
            _rollout,
            needs_attention=True,
            summary="attention flow through the blocks, class-specific with a target (ViTs)",
        ),
    )
}

ALIASES: dict[str, str] = {
    "gradcam++": "gradcampp",
    "gradcam_plusplus": "gradcampp",
    "gradcamplusplus": "gradcampp",
    "integrated_gradients": "ig",
    "integratedgradients": "ig",
    "attention": "rollout",
    "attention_rollout": "rollout",
}


def method_names() -> list[str]:
    """The registered method names, in registry order."""
    return list(METHODS)


def resolve_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` for ``name`` (case-insensitive, aliases accepted).

    Raises:
        ValueError: an unknown name; the message lists the methods and the closest match.
    """
    if not isinstance(name, str):
        raise TypeError(f"method must be a name such as 'gradcam', got {type(name).__name__}.")
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in METHODS:
        return METHODS[key]
    close = difflib.get_close_matches(key, [*METHODS, *ALIASES], n=1)
    hint = f" Did you mean '{ALIASES.get(close[0], close[0])}'?" if close else ""
    raise ValueError(f"unknown method '{name}'; available: {', '.join(METHODS)}.{hint}")


def supports(model: nn.Module, name: str) -> bool:
    """Whether method ``name`` applies to ``model`` (rollout needs global attention)."""
    spec = resolve_method(name)
    return not spec.needs_attention or bool(get_adapter(model).attention_blocks)


def available_methods(model: nn.Module | None = None) -> list[str]:
    """Registered methods, or those that apply to ``model``."""
    return [name for name in METHODS if model is None or supports(model, name)]


def default_method(model: nn.Module) -> str:
    """The method :func:`~timmlens.interpretation.quick_explain` uses for ``model``.

    ``"rollout"`` for ViT-like models with global self-attention blocks (called with the
    predicted class it is the class-specific, gradient-weighted rollout of Chefer et al.,
    which uses all blocks, not only the last one); ``"gradcam"`` for everything else
    (CNNs, ConvNeXt, EfficientNet, Swin, ...), at the family's default layer.
    """
    return "rollout" if get_adapter(model).attention_blocks else "gradcam"


def create_explainer(name: str, model: nn.Module, **options: Any) -> Explainer:
    """Build the explainer registered as ``name`` for ``model``.

    Args:
        name: a registered name or alias (see the module docstring).
        model: an ``ImageClassifier`` or a bare timm model.
        options: constructor arguments of the explainer (``target_layer=`` for the CAM
            methods, ``n_steps=`` for IG, ``n_samples=`` for SmoothGrad, ...).

    Raises:
        ValueError: unknown method name.
        UnsupportedModelError: the method does not apply to this model.
    """
    spec = resolve_method(name)
    if spec.needs_attention:
        reason = get_adapter(model).attention_unavailable_reason
        if reason is not None:
            raise UnsupportedModelError(reason)
    return spec.factory(model, **options)


def layer_of(explainer: Explainer) -> str | None:
    """The tapped layer(s) of a CAM explainer as one string, ``None`` for other methods."""
    names = getattr(explainer, "layer_names", None)
    return ", ".join(names) if names else None
