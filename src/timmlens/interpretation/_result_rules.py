"""The rules every explainer's result obeys, applied once in ``Explainer.explain_batch_full``.

* **dtype**: every heatmap is float32 on the model's device, whatever the model's dtype
  (a ``model.half()`` or ``.double()`` model included). Maps are normalised to [0, 1] and
  go on to metrics, numpy and files, where one dtype is one less surprise; float32 holds
  every value a float16 map has. Raw attributions stay in the dtype the method computed.
* **finite**: NaN or inf in a method's attributions or heatmap is an error, never a map
  (min-max normalisation would turn a NaN map into an all-zero one, silently). On a
  float16 or bfloat16 model, where that is the usual cause, the error says the method
  cannot run in that precision, as it does when torch refuses a float32 operand.
* **constant maps warn**: a constant heatmap (all zero, usually) ranks no pixel above
  another; a [`DegenerateMapWarning`][timmlens.DegenerateMapWarning] names the images
  and the engine's likely causes (`Explainer.constant_map_causes`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._warnings import DegenerateMapWarning, warn_caller
from ..data import model_dtype
from ..errors import UnsupportedModelError
from ..models.weights_status import weights_status

if TYPE_CHECKING:
    from .base import Explainer, Explanation

#: The dtype of every heatmap an explainer returns.
HEATMAP_DTYPE = torch.float32
#: Model dtypes below float32, whose range and precision some methods' arithmetic exceeds.
REDUCED_PRECISION = (torch.float16, torch.bfloat16)
#: Words of torch's errors for operands of two dtypes (``expected scalar type Float but
#: found Half``, ``Input type (torch.FloatTensor) and weight type (torch.HalfTensor)``).
_DTYPE_ERROR_WORDS = ("Half", "BFloat16", "scalar type", "dtype")
#: Methods that run in float16 (the test over every method on a half-precision model).
_RUNS_IN_HALF = "gradcam, saliency, ig, smoothgrad or occlusion"
#: Image indices a message lists before it counts the rest.
_LISTED = 10


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def reduced_precision(model: nn.Module) -> torch.dtype | None:
    """The model's dtype where it is float16 or bfloat16, else ``None``."""
    dtype = model_dtype(model)
    return dtype if dtype in REDUCED_PRECISION else None


def _images(indices: Sequence[int], batch: int) -> str:
    """``[0, 3]``, or the first ten and a count for long lists."""
    if len(indices) <= _LISTED:
        return str(list(indices))
    shown = ", ".join(str(i) for i in indices[:_LISTED])
    return f"[{shown}, ...] ({len(indices)} of {batch})"


def _refusal(method: str, dtype: torch.dtype, reason: str) -> UnsupportedModelError:
    name = _name(dtype)
    return UnsupportedModelError(
        f"{method} cannot explain this {name} model: {reason}. Explain a float32 copy "
        f"instead (copy.deepcopy(model).float(); images are cast to the model's dtype), or "
        f"use a method that runs in {name}, e.g. {_RUNS_IN_HALF}."
    )


@contextmanager
def precision_errors(model: nn.Module, method: str) -> Iterator[None]:
    """Torch's dtype-mismatch ``RuntimeError`` on a float16/bfloat16 model, raised inside
    the block, becomes an [`UnsupportedModelError`][timmlens.UnsupportedModelError]."""
    try:
        yield
    except RuntimeError as exc:
        dtype = reduced_precision(model)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if dtype is None or not any(word in text for word in _DTYPE_ERROR_WORDS):
            raise
        raise _refusal(
            method,
            dtype,
            f"part of its computation is float32 and meets the model's {_name(dtype)} "
            f"weights (torch: {text})",
        ) from exc


def _non_finite_images(values: torch.Tensor) -> list[int]:
    """Indices along dim 0 of ``values`` ``(B, ...)`` that hold NaN or inf."""
    if values.is_floating_point() and values.numel():
        return (~torch.isfinite(values)).flatten(1).any(dim=1).nonzero().flatten().tolist()
    return []


def checked_result(explainer: Explainer, result: Explanation) -> Explanation:
    """``result`` with a float32 heatmap, after refusing NaN/inf (see the module docstring).

    Raises:
        UnsupportedModelError: NaN or inf in the heatmap, the attributions or a layer map.
    """
    parts = [result.heatmap, result.attributions, *result.extras.get("layer_maps", ())]
    tensors = [part for part in parts if isinstance(part, torch.Tensor)]
    bad = sorted({i for part in tensors for i in _non_finite_images(part)})
    if bad:
        where = _images(bad, result.heatmap.shape[0])
        dtype = reduced_precision(explainer.model)
        if dtype is not None:
            raise _refusal(
                explainer.name,
                dtype,
                f"it computed NaN/inf for image(s) {where} ({_name(dtype)} rounds small "
                f"differences to zero and overflows above {torch.finfo(dtype).max:g}, and the "
                f"method's arithmetic divides or sums past that)",
            )
        raise UnsupportedModelError(
            f"{explainer.name} computed NaN/inf for image(s) {where} from finite inputs: the "
            f"model's forward or backward overflows or divides by zero there. Check the model "
            f"on these images (torch.isfinite(model(images)).all()) and its weights."
        )
    heatmap = result.heatmap
    if heatmap.dtype != HEATMAP_DTYPE:
        result = replace(result, heatmap=heatmap.to(HEATMAP_DTYPE))
    return result


def warn_if_constant(explainer: Explainer, result: Explanation) -> None:
    """A [`DegenerateMapWarning`][timmlens.DegenerateMapWarning] for the constant maps of
    ``result.heatmap`` ``(B, H, W)`` (one warning per call), with the likely causes."""
    heatmap = result.heatmap
    if not explainer.warns_on_constant_maps or heatmap.shape[-2:].numel() < 2:
        return
    flat = heatmap.detach().flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    constant = (low == high).nonzero().flatten().tolist()
    if not constant:
        return
    zero = bool((high[constant] == 0).all())
    causes = explainer.constant_map_causes_of(result)
    if causes == explainer.constant_map_causes:  # the engine's list: name the usual one
        random = weights_status(explainer.model).random
        why = (
            f"Likely causes{' (this model has random weights, the usual one)' if random else ''}"
            f": {causes}. Try trained weights, another target_class or another method"
        )
    else:  # the engine knows the cause of this call
        why = f"Cause: {causes}"
    warn_caller(
        f"{explainer.name}: the heatmap of image(s) {_images(constant, flat.shape[0])} is "
        f"{'all zero' if zero else 'constant'}, so it ranks no pixel above another and "
        f"explains nothing. {why}; a metric of this map ranks its pixels in row-major order.",
        DegenerateMapWarning,
    )
