"""Architecture-aware adapters: where to look inside every timm family."""

from .adapter import AttentionBlock, LayerSpec, ModelAdapter, ResolvedLayer, get_adapter
from .bias_layers import BiasLayer, bias_layers, fullgrad_unavailable_reason
from .describe import ModelDescription, describe, probe_layout
from .layout import Layout
from .tap import SpatialView, spatial_tap

__all__ = [
    "AttentionBlock",
    "BiasLayer",
    "LayerSpec",
    "Layout",
    "ModelAdapter",
    "ModelDescription",
    "ResolvedLayer",
    "SpatialView",
    "bias_layers",
    "describe",
    "fullgrad_unavailable_reason",
    "get_adapter",
    "probe_layout",
    "spatial_tap",
]
