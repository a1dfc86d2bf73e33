"""Images in, model batches out; heatmaps back onto the original photos."""

from ..models.introspect import data_config, model_device, model_dtype, timm_model_of
from .geometry import ImageGeometry, heatmap_to_original
from .pixels import ImageScalingWarning
from .preprocess import (
    ImageInput,
    ImagesInput,
    PreparedBatch,
    denormalize,
    eval_transform,
    normalization,
    picture_of,
    prepare_images,
    transform_geometry,
)

__all__ = [
    "ImageGeometry",
    "ImageInput",
    "ImageScalingWarning",
    "ImagesInput",
    "PreparedBatch",
    "data_config",
    "denormalize",
    "eval_transform",
    "heatmap_to_original",
    "model_device",
    "model_dtype",
    "normalization",
    "picture_of",
    "prepare_images",
    "timm_model_of",
    "transform_geometry",
]
