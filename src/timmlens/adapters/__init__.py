"""Architecture-aware adapters: where to look inside every timm family."""

from .adapter import AttentionBlock, LayerSpec, ModelAdapter, ResolvedLayer, get_adapter
from .describe import ModelDescription, describe, probe_layout
from .layout import Layout
from .tap import SpatialView, spatial_tap

__all__ = [
    "AttentionBlock",
    "LayerSpec",
    "Layout",
    "ModelAdapter",
    "ModelDescription",
    "ResolvedLayer",
    "SpatialView",
    "describe",
    "get_adapter",
    "probe_layout",
    "spatial_tap",
]
