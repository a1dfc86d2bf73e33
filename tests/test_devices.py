"""resolve_device: names checked against this machine, one clear error each."""

from __future__ import annotations

import pytest
import torch

from timmlens.devices import resolve_device
from timmlens.errors import DeviceError


def test_cpu_and_auto_without_accelerators(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_missing_backends_and_bad_names(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"device 'cuda:1' is not available.*no CUDA device"):
        resolve_device("cuda:1")
    with pytest.raises(DeviceError, match=r"device 'mps' is not available.*no MPS device"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match=r"^'gpu' is not a device; expected cpu, cuda, cuda:N"):
        resolve_device("gpu")


def test_cuda_index_and_torchrun_rank(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(DeviceError, match=r"this machine has 2 CUDA devices \(cuda:0..cuda:1\)"):
        resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins
