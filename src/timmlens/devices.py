"""Device names from users (``--device``, ``device=``) checked before any work starts."""

from __future__ import annotations

import os

import torch

from .errors import DeviceError

#: what ``resolve_device`` accepts, for messages and ``--help``
DEVICE_CHOICES = "cpu, cuda, cuda:N, mps or auto"


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    # torch.cuda, torch.xpu, torch.backends.mps: each backend says whether it can run
    backend = getattr(torch.backends, kind, None) if kind == "mps" else getattr(torch, kind, None)
    is_available = getattr(backend, "is_available", None)
    return bool(callable(is_available) and is_available())


def resolve_device(name: str | torch.device | None) -> torch.device | None:
    """The ``torch.device`` named ``name``, checked to exist on this machine (``None``
    stays ``None``: the model stays where it is).

    ``"auto"`` picks CUDA, then Apple's MPS, then the CPU. Under ``torchrun`` a CUDA
    device without an index is this rank's GPU (``cuda:$LOCAL_RANK``), so ranks do not
    all load onto ``cuda:0``.

    Raises:
        DeviceError: not a device name, a backend this machine lacks (``cuda`` without a
            GPU), or a GPU index beyond the ones present - each with what to use instead.
    """
    if name is None:
        return None
    if str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _available("mps") else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"'{name}' is not a device; expected {DEVICE_CHOICES}.") from exc
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if not _available(device.type):
        raise DeviceError(
            f"device '{name}' is not available on this machine: this torch "
            f"({torch.__version__}) finds no {device.type.upper()} device. Use 'cpu', or "
            f"'auto' for the best device present."
        )
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise DeviceError(
                f"device '{name}' does not exist: this machine has {count} CUDA "
                f"device{'' if count == 1 else 's'} (cuda:0..cuda:{count - 1})."
            )
    return device
