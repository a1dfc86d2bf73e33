"""``--device`` and ``device=``: a device name checked before any model is loaded."""

from __future__ import annotations

import torch

from .errors import DeviceError

__all__ = ["resolve_device"]

_EXAMPLES = "cpu, cuda, cuda:1, mps"


def _available(kind: str) -> tuple[bool, int | None]:
    """Whether a device type is usable here, and how many devices of it (if it says)."""
    if kind == "cpu":
        return True, None
    if kind == "cuda":
        return torch.cuda.is_available(), torch.cuda.device_count()
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available()), None
    backend = getattr(torch, kind, None)  # xpu, npu, ...: torch.<type>.is_available()
    if backend is not None and callable(getattr(backend, "is_available", None)):
        count = getattr(backend, "device_count", None)
        return bool(backend.is_available()), count() if callable(count) else None
    return False, None


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a :class:`torch.device` that exists here, or ``None`` for ``None``.

    Raises:
        DeviceError: a name torch does not know, a device type not available on this
            machine (``cuda`` without a GPU or without a CUDA build of torch), or an index
            past the devices there are. The message says what is available instead.
    """
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(
            f"unknown device {str(device)!r}; expected a torch device such as {_EXAMPLES}."
        ) from exc
    available, count = _available(resolved.type)
    if not available:
        if resolved.type == "cuda":
            why = (
                f"torch {torch.__version__} was built without CUDA"
                if torch.version.cuda is None
                else "no CUDA GPU is visible: torch.cuda.is_available() is False"
            )
        else:
            why = f"torch finds no {resolved.type} device"
        raise DeviceError(
            f"device '{resolved}' is not available on this machine ({why}); use --device cpu "
            f"(device='cpu'), or run where such a device is."
        )
    if resolved.index is not None and count is not None and resolved.index >= count:
        raise DeviceError(
            f"device '{resolved}' does not exist: {count} {resolved.type} device(s) are "
            f"visible, {resolved.type}:0 to {resolved.type}:{count - 1}."
        )
    return resolved
