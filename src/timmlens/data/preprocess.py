"""Turn any image input into a model batch with the model's own timm data config.

Accepted inputs (one, or a list/tuple of them; pictures and tensors are not mixed):
    PIL images of any mode (8/16/32-bit, float, palette, CMYK, LAB, ...); file paths;
    numpy arrays HW or HWC with 1-4 channels (bool, integer or float); torch tensors CHW
    or BCHW, taken as already preprocessed model input.

Pictures become 8-bit RGB by the scaling rule of `timmlens.data.pixels` (16-bit by
65535, float 0-1 as is, anything else min-max with an ``ImageScalingWarning``; NaN or
inf is an ``ImageInputError``). The resize/crop geometry of each image is kept so a
heatmap can be mapped back onto the original photo.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm.data
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torchvision import transforms as T

from ..errors import ImageInputError
from ..models.introspect import data_config, model_device, model_dtype
from .geometry import ImageGeometry, keep_ratio_size, shorter_side_size
from .pixels import array_to_pil, pil_to_rgb

ImageInput = Image.Image | str | os.PathLike | np.ndarray | torch.Tensor
ImagesInput = ImageInput | Sequence[ImageInput]


@dataclass
class PreparedBatch:
    """A model-ready batch and what is needed to draw its explanations on the photos.

    Attributes:
        tensor: ``(B, C, H, W)`` normalised input on the model's device.
        originals: per image, the RGB original (``None`` for tensor inputs).
        geometries: per image, how the original became the input.
        single: whether the caller passed one image (results are then unbatched).
    """

    tensor: torch.Tensor
    originals: list[Image.Image | None]
    geometries: list[ImageGeometry]
    single: bool

    def __len__(self) -> int:
        return self.tensor.shape[0]


def eval_transform(model: nn.Module) -> T.Compose:
    return timm.data.create_transform(**data_config(model), is_training=False)


def _to_pil(image: ImageInput, index: int) -> Image.Image:
    where = f"image {index}"
    if isinstance(image, (str, os.PathLike)):
        image = _open(Path(image), where)
    elif isinstance(image, np.ndarray):
        image = array_to_pil(image, where)
    if not isinstance(image, Image.Image):
        raise ImageInputError(
            f"{where}: unsupported type {type(image).__name__}; expected a PIL image, a path, "
            f"a numpy HWC array or a CHW/BCHW tensor."
        )
    if image.width == 0 or image.height == 0:
        raise ImageInputError(f"{where}: the image is empty ({image.width}x{image.height}).")
    return pil_to_rgb(image, where)


def _open(path: Path, where: str) -> Image.Image:
    if path.is_dir():
        raise ImageInputError(
            f"{where}: '{path}' is a directory, not an image file; pass its image files, or "
            f"use timmlens.evaluate() / error_report() (CLI: timmlens evaluate / report) "
            f"for a folder."
        )
    if not path.exists():
        raise ImageInputError(f"{where}: file '{path}' does not exist.")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except Image.DecompressionBombError as exc:
        reason = str(exc).rstrip(".")
        raise ImageInputError(
            f"{where}: PIL refuses to open '{path}' as a possible decompression bomb ({reason}). "
            f"If you trust the file, raise the limit first: PIL.Image.MAX_IMAGE_PIXELS = "
            f"<pixels> (None switches the check off)."
        ) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageInputError(
            f"{where}: '{path}' is not an image file PIL can read ({exc}). "
            f"Expected a JPEG, PNG, BMP, WebP, ... file."
        ) from exc


def transform_geometry(transform: T.Compose, height: int, width: int) -> ImageGeometry:
    """Follow the resize/crop steps of a timm eval transform for a ``height x width`` image."""
    geometry = ImageGeometry.identity(height, width)
    for step in getattr(transform, "transforms", [transform]):
        _, _, crop_h, crop_w = geometry.crop_box
        if isinstance(step, T.Resize):
            size = step.size
            if isinstance(size, int) or len(size) == 1:
                size = size if isinstance(size, int) else size[0]
                geometry = geometry.resized(*shorter_side_size(crop_h, crop_w, size, step.max_size))
            else:
                geometry = geometry.resized(*size)
        elif isinstance(step, timm.data.ResizeKeepRatio):
            geometry = geometry.resized(*keep_ratio_size(crop_h, crop_w, step.size, step.longest))
        elif isinstance(step, (T.CenterCrop, timm.data.transforms.CenterCropOrPad)):
            geometry = geometry.center_cropped(*step.size)
    return geometry


def _check_tensor(tensor: torch.Tensor, channels: int) -> torch.Tensor:
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4:
        raise ImageInputError(
            f"tensor input of shape {tuple(tensor.shape)} has {tensor.ndim} dimensions; expected "
            f"a preprocessed CHW image or BCHW batch (pass PIL images or paths to preprocess)."
        )
    if tensor.shape[1] != channels:
        raise ImageInputError(
            f"tensor input of shape {tuple(tensor.shape)} has {tensor.shape[1]} channels, the "
            f"model expects {channels}; tensors must be channels-first (B, C, H, W)."
        )
    if tensor.shape[0] == 0 or tensor.shape[2] == 0 or tensor.shape[3] == 0:
        raise ImageInputError(f"tensor input of shape {tuple(tensor.shape)} is empty.")
    if not tensor.is_floating_point():
        raise ImageInputError(
            f"tensor input has dtype {tensor.dtype}; expected a float, normalised model input. "
            f"Pass uint8 pictures as numpy HWC arrays or PIL images to preprocess them."
        )
    if not torch.isfinite(tensor).all():
        raise ImageInputError("tensor input contains NaN or inf values.")
    return tensor


def prepare_images(images: ImagesInput, model: nn.Module) -> PreparedBatch:
    """Preprocess ``images`` for ``model`` and put them on its device.

    Pictures of any mode or depth become 8-bit RGB by the rule of `timmlens.data.pixels`
    (16-bit / 65535, float 0-1 as is, else min-max with an ``ImageScalingWarning``).

    Raises:
        ImageInputError: an input that is no image (NaN/inf pixels, a directory, a possible
            decompression bomb, a list mixing pictures and tensors, ...).

    Returns:
        A `PreparedBatch` with ``tensor`` of shape ``(B, C, H, W)``.
    """
    device, dtype = model_device(model), model_dtype(model)
    channels = int(data_config(model)["input_size"][0])
    if isinstance(images, torch.Tensor):
        tensor = _check_tensor(images, channels)
        _, _, h, w = tensor.shape
        return PreparedBatch(
            tensor.to(device=device, dtype=dtype),
            [None] * tensor.shape[0],
            [ImageGeometry.identity(h, w)] * tensor.shape[0],
            single=images.ndim == 3,
        )
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    if not items:
        raise ImageInputError("no images given; expected one image or a non-empty list.")
    is_tensor = [isinstance(item, torch.Tensor) for item in items]
    if any(is_tensor):
        if not all(is_tensor):
            raise ImageInputError(_mixed_list_message(items))
        tensors = [_check_tensor(item, channels) for item in items]
        if len({t.shape[1:] for t in tensors}) != 1:
            raise ImageInputError("tensor inputs in one list must share one (C, H, W) shape.")
        return prepare_images(torch.cat(tensors), model)
    transform = eval_transform(model)
    originals = [_to_pil(item, i) for i, item in enumerate(items)]
    tensor = torch.stack([transform(image) for image in originals])
    geometries = [transform_geometry(transform, image.height, image.width) for image in originals]
    return PreparedBatch(
        tensor.to(device=device, dtype=dtype), list(originals), geometries, single=single
    )


def _mixed_list_message(items: list[Any]) -> str:
    kinds = ", ".join(sorted({type(item).__name__ for item in items}))
    return (
        f"the list of images mixes tensors with other inputs ({kinds}); a list must hold "
        f"only pictures (paths, PIL images, numpy arrays) or only preprocessed tensors. "
        f"Preprocess the pictures first (prepare_images(pictures, model).tensor) and "
        f"concatenate, or explain the two kinds in separate calls."
    )


def normalization(model: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's mean and std as ``(1, C, 1, 1)`` tensors on ``like``'s device and dtype."""
    config = data_config(model)
    mean = torch.tensor(config["mean"], device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
    std = torch.tensor(config["std"], device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
    return mean, std


def denormalize(tensor: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Undo the model's mean/std normalisation: ``(B, C, H, W)`` -> pixel values in [0, 1]."""
    mean, std = normalization(model, tensor)
    return (tensor * std + mean).clamp(0, 1)


def picture_of(batch: PreparedBatch, index: int, model: nn.Module) -> Image.Image | torch.Tensor:
    """What to draw image ``index``'s heatmap on: its original photo, or for a tensor input
    (which has none) the model's view of it, a ``(3, H, W)`` CPU tensor in [0, 1]."""
    original = batch.originals[index]
    if original is not None:
        return original
    return denormalize(batch.tensor[index : index + 1], model)[0].cpu()
