"""Edges between tensors and pictures: originals as ``uint8`` arrays, heatmaps on them."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data import ImageGeometry, heatmap_to_original

HeatmapLike = torch.Tensor | np.ndarray
PictureLike = Image.Image | np.ndarray | torch.Tensor

#: The default colormap of heatmaps, chosen on purpose: ``"inferno"`` is perceptually
#: uniform (equal steps in relevance look like equal steps in colour, so a figure shows no
#: edges the map does not have, unlike ``"jet"``), stays ordered in greyscale print and for
#: colour-blind readers, and its bright end marks high relevance. Signed maps get
#: `DIVERGING_CMAP`, centred on 0. Every figure function takes ``cmap=``.
DEFAULT_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"


def to_numpy(values: Any) -> np.ndarray:
    """A tensor (any device, any dtype) or array-like as a ``float32`` numpy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def picture_array(image: PictureLike) -> np.ndarray:
    """An RGB picture as ``(H, W, 3)`` ``uint8``.

    Accepts PIL images (any mode), numpy ``HW``/``HWC`` arrays (``uint8``, or floats in
    [0, 1]) and tensors ``(3, H, W)`` / ``(1, 3, H, W)`` of pixel values in [0, 1] (use
    `timmlens.data.denormalize` on a model input first).
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        tensor = image.detach().float().cpu()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
            raise ValueError(
                f"a picture tensor must be (3, H, W) or (1, 3, H, W) pixel values in [0, 1], "
                f"got {tuple(image.shape)}; denormalize model inputs first."
            )
        array = tensor.clamp(0, 1).permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"cannot show an array of shape {array.shape} as an RGB picture.")
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def heatmap_on_picture(
    heatmap: HeatmapLike, picture_size: tuple[int, int], geometry: ImageGeometry | None = None
) -> np.ndarray:
    """A model-input heatmap ``(H, W)`` drawn onto a picture of ``picture_size = (H0, W0)``.

    With ``geometry`` (from `timmlens.data.PreparedBatch.geometries`) the resize and
    crop are undone, so the map sits where the model looked and the cut-away border is NaN
    (transparent in plots). Without it the heatmap is stretched over the whole picture.

    Returns:
        ``(H0, W0)`` ``float32`` array.
    """
    tensor = torch.as_tensor(to_numpy(heatmap))
    if tensor.ndim == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 2:
        raise ValueError(
            f"expected one (H, W) heatmap, got shape {tuple(tensor.shape)}; index a batch first."
        )
    height, width = tensor.shape
    if geometry is None:
        geometry = ImageGeometry(picture_size, (height, width), (0, 0, height, width))
    elif tuple(geometry.original_size) != tuple(picture_size):
        raise ValueError(
            f"the geometry is for a {geometry.original_size} original, the picture is "
            f"{picture_size}; pass the original photo the heatmap was computed from."
        )
    return heatmap_to_original(tensor, geometry).numpy().astype(np.float32)


def value_range(heatmap: np.ndarray, percentile: float = 99.5) -> tuple[float, float]:
    """Colour limits of a heatmap: ``(0, top)`` for non-negative maps, symmetric if signed.

    ``top`` is the maximum (1 for normalised maps), except for sparse pixel-level maps
    (Integrated Gradients, SmoothGrad) whose ``percentile``-th percentile is below half
    the maximum: there it is that percentile, so a few extreme pixels saturate instead
    of washing every other pixel out to the bottom colour.
    """
    finite = np.abs(heatmap[np.isfinite(heatmap)])
    if finite.size == 0:
        return 0.0, 1.0
    peak = float(finite.max())
    if peak <= 0:
        return 0.0, 1.0
    robust = float(np.percentile(finite, percentile))
    top = robust if 0 < robust < 0.5 * peak else peak
    if float(np.nanmin(heatmap)) < 0:
        return -top, top
    return 0.0, top


def scaled_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(height, width)`` shrunk (never enlarged) so the long side is at most ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def nearest_sample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour sample of ``grid`` ``(H0, W0)`` -> ``(height, width)`` (NaN kept)."""
    rows = np.minimum(
        ((np.arange(height) + 0.5) * grid.shape[0] / height).astype(int), grid.shape[0] - 1
    )
    cols = np.minimum(
        ((np.arange(width) + 0.5) * grid.shape[1] / width).astype(int), grid.shape[1] - 1
    )
    return grid[np.ix_(rows, cols)]


def downscaled(picture: np.ndarray, max_side: int) -> np.ndarray:
    """An ``(h, w, 3)`` uint8 picture resized (Lanczos) to `scaled_size`."""
    height, width = scaled_size(*picture.shape[:2], max_side)
    if (height, width) == picture.shape[:2]:
        return picture
    resized = Image.fromarray(picture).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(resized)


def jpeg_data_uri(picture: np.ndarray, quality: int = 90) -> str:
    """An ``(h, w, 3)`` uint8 picture as a ``data:image/jpeg;base64,...`` URI."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def crop_on_picture(geometry: ImageGeometry) -> tuple[float, float, float, float]:
    """The model input's crop box in original-photo pixels: ``(top, left, height, width)``.

    It may extend past the photo where the preprocessing padded.
    """
    top, left, crop_h, crop_w = geometry.crop_box
    sy = geometry.original_size[0] / geometry.resized_size[0]
    sx = geometry.original_size[1] / geometry.resized_size[1]
    return top * sy, left * sx, crop_h * sy, crop_w * sx


def png_data_uri(picture: np.ndarray) -> str:
    """An ``(h, w, 3)`` uint8 picture as a lossless ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
