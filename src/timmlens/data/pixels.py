"""Pixels of any mode, dtype and bit depth to the 8-bit RGB picture the models were trained on.

The scaling rule (each image on its own; an alpha channel on its own, by the same rule):

- ``bool``, PIL mode ``1``: False 0, True 1.
- ``uint8`` and the 8-bit PIL modes: / 255.
- ``uint16``, PIL ``I;16`` / ``I;16B`` / ``I;16L`` / ``I;16N``: / 65535, the dtype's range.
- float (PIL ``F``) with every value in [0, 1]: as is.
- other integers >= 0 (``int8`` ... ``int64``, ``uint32``, PIL ``I``): the dtype does not
  say the range, so the values do: all <= 255 -> / 255, all <= 65535 -> / 65535 (a 16-bit
  PNG that an older Pillow opens as ``I``), with an `ImageScalingWarning` saying
  which.
- anything else (negative values, float beyond [0, 1], more than 16 bits): min-max
  stretch to [0, 1], with an `ImageScalingWarning`; the contrast is then the
  image's own, not absolute. A constant image becomes black.
- NaN or inf: [`ImageInputError`][timmlens.errors.ImageInputError].

Scaled pixels are rounded to 8 bits, the depth the pretrained models saw. Data whose
signal sits in a narrow band of a wide range (a 12-bit scan stored as 16-bit) looks dark
or flat this way: window it yourself to a float array in [0, 1] first.

Numpy arrays are channels last: ``HW`` or ``HWC`` with ``C`` in 1 (grey), 2 (grey +
alpha), 3 (RGB) or 4 (RGBA). Transparent pixels are composited on white.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .._warnings import warn_caller
from ..errors import ImageInputError


class ImageScalingWarning(UserWarning):
    """Pixel values whose range was inferred from the values themselves, not their dtype."""


_EXPECTED = "uint8 0-255, uint16 0-65535 or float 0-1"
_CHANNELS = {1: "grey", 2: "grey + alpha", 3: "RGB", 4: "RGBA"}


def array_to_pil(array: np.ndarray, where: str) -> Image.Image:
    """An ``HW`` or ``HWC`` array (any real dtype) as an 8-bit PIL image (L, LA, RGB, RGBA)."""
    array = _channels_last(array, where)
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        colour = _to_uint8(array[..., :-1], where)
        alpha = _to_uint8(array[..., -1:], f"{where} (alpha channel)")
        pixels = np.concatenate([colour, alpha], axis=-1)
    else:
        pixels = _to_uint8(array, where)
    return Image.fromarray(np.ascontiguousarray(pixels))


def pil_to_rgb(image: Image.Image, where: str) -> Image.Image:
    """Any PIL image as RGB, scaled by the module's rule, transparency composited on white."""
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;"):
        # PIL's own convert("RGB") clips these to 0..255: 16-bit turns white, 0-1 float black.
        try:
            values = np.asarray(image)
        except (TypeError, ValueError) as exc:
            raise ImageInputError(
                f"{where}: PIL mode {mode} cannot be read as pixel values ({exc}); "
                f"convert it to 'L', 'RGB' or 'F' first."
            ) from exc
        native = values.astype(values.dtype.newbyteorder("="), copy=False)
        image = array_to_pil(native, f"{where} (PIL mode {mode})")
    try:
        if mode == "La":  # premultiplied; PIL converts it to LA only
            image = image.convert("LA")
        if any(band in ("A", "a") for band in image.getbands()) or "transparency" in image.info:
            # Composite on white: dropping alpha would show the pixels meant to be hidden.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageInputError(
            f"{where}: PIL cannot convert mode {mode} to RGB ({exc}); convert the image "
            f"to 'RGB' or 'L' yourself first."
        ) from exc


def _channels_last(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` as ``HW`` or ``HWC`` (C = 2, 3, 4), or an error naming what to do instead."""
    described = f"{where}: numpy array of shape {array.shape} and dtype {array.dtype}"
    if array.dtype.kind not in "buif":
        raise ImageInputError(
            f"{described} does not hold pixel values; expected bool, integer or float "
            f"pixels ({_EXPECTED})."
        )
    if array.size == 0:
        raise ImageInputError(f"{described} is empty; expected an image of at least 1x1.")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in _CHANNELS):
        return array
    if array.ndim == 3 and array.shape[0] in _CHANNELS:
        hint = "it looks channels-first (C, H, W): pass array.transpose(1, 2, 0)"
    elif array.ndim == 4:
        hint = "for several images pass a list of HWC arrays"
    else:
        hint = "reshape it to (H, W) or (H, W, C)"
    raise ImageInputError(
        f"{described} is not an image; expected HW (grayscale) or HWC with 1, 2, 3 or 4 "
        f"channels (channels last); {hint}."
    )


def _to_uint8(values: np.ndarray, where: str) -> np.ndarray:
    return np.round(_unit_range(values, where) * 255.0).astype(np.uint8)


def _unit_range(values: np.ndarray, where: str) -> np.ndarray:
    """``values`` (any shape) as float64 in [0, 1] by the rule of the module docstring."""
    kind, size = values.dtype.kind, values.dtype.itemsize
    if kind == "b":
        return values.astype(np.float64)
    if kind == "u" and size <= 2:
        return values / float(np.iinfo(values.dtype).max)
    if kind == "f" and not np.isfinite(values).all():
        raise ImageInputError(
            f"{where}: the {values.dtype} pixels contain NaN or inf; replace them "
            f"(e.g. np.nan_to_num) and pass finite values ({_EXPECTED})."
        )
    low, high = float(values.min()), float(values.max())
    if kind == "f" and low >= 0.0 and high <= 1.0:
        return values.astype(np.float64)
    if kind in "iu" and low >= 0 and high <= 65535:
        full = 255 if high <= 255 else 65535
        _warn(
            f"{where}: {values.dtype} pixels in [{low:.0f}, {high:.0f}] were read as "
            f"{'8' if full == 255 else '16'}-bit (divided by {full}). Pass uint8, uint16 or "
            f"float 0-1 to state the range yourself."
        )
        return values / float(full)
    _warn(
        f"{where}: {values.dtype} pixels in [{low:.4g}, {high:.4g}] fit no known pixel range "
        f"({_EXPECTED}); stretched min-max to [0, 1], so the contrast is the image's own. "
        f"Scale them yourself to float 0-1 to choose otherwise."
    )
    # Halved so that a span like [-1e308, 1e308] does not overflow to inf.
    span = high / 2 - low / 2
    if not span > 0:  # a constant image (or one only subnormals apart)
        return np.zeros(values.shape)
    return np.clip((values.astype(np.float64) / 2 - low / 2) / span, 0.0, 1.0)


def _warn(message: str) -> None:
    # Point the warning at the first caller outside timmlens: its depth varies by input kind.
    warn_caller(message, ImageScalingWarning)
