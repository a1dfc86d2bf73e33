"""``make``'s torch install (tools/install_torch.py, issue 30 item 8): the CPU build on a
machine without an NVIDIA GPU when PyTorch's CPU index answers, PyPI's default otherwise."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "install_torch.py"
PINS = ["torch==2.14.1", "torchvision==0.29.1"]


@pytest.fixture(scope="module")
def install_torch():
    spec = importlib.util.spec_from_file_location("install_torch", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_machine_with_the_index_gets_the_cpu_build_then_pypi(install_torch):
    attempts, why = install_torch.plan(
        PINS, gpu=lambda: False, reachable=lambda index: True, index="https://cpu.example/whl"
    )
    cpu_pins = ["torch==2.14.1+cpu", "torchvision==0.29.1"]
    assert attempts == [
        ["install", "--quiet", "--index-url", "https://cpu.example/whl", *cpu_pins],
        ["install", "--quiet", *PINS],  # the fallback when that install fails
    ]
    assert "CPU build" in why


def test_unreachable_index_or_a_gpu_gets_the_default_build(install_torch):
    offline, why = install_torch.plan(PINS, gpu=lambda: False, reachable=lambda index: False)
    assert offline == [["install", "--quiet", *PINS]] and "does not answer" in why
    gpu, why = install_torch.plan(PINS, gpu=lambda: True, reachable=lambda index: True)
    assert gpu == [["install", "--quiet", *PINS]] and "NVIDIA GPU" in why
    forced, _ = install_torch.plan(PINS, build="cuda", gpu=lambda: False, reachable=lambda i: True)
    assert forced == gpu
    cpu, _ = install_torch.plan(PINS, build="cpu", gpu=lambda: True, reachable=lambda i: True)
    assert cpu[0][2:4] == ["--index-url", install_torch.CPU_INDEX]
    with pytest.raises(ValueError, match="build='rocm': use one of auto, cpu, cuda"):
        install_torch.plan(PINS, build="rocm")


def test_only_an_exact_torch_pin_gets_the_cpu_label(install_torch):
    assert install_torch.cpu_pins(["torch==2.14.1", "torch>=2.1", "torchvision==0.29.1"]) == [
        "torch==2.14.1+cpu",
        "torch>=2.1",
        "torchvision==0.29.1",
    ]
    assert install_torch.cpu_pins(["torch"]) == ["torch"]


def test_a_local_index_folder_is_reachable_and_a_missing_one_is_not(install_torch, tmp_path):
    (tmp_path / "torch").mkdir()
    assert install_torch.index_reachable(tmp_path.as_uri())
    assert not install_torch.index_reachable((tmp_path / "nothing").as_uri())
    # a host that does not resolve answers False (no exception), within the timeout
    assert not install_torch.index_reachable("http://no-such-host.invalid/whl", timeout=2)


def test_dry_run_prints_the_commands_it_would_run(tmp_path):
    (tmp_path / "torch").mkdir()
    command = [sys.executable, str(SCRIPT), "--dry-run", "--build", "cpu"]
    done = subprocess.run(
        [*command, "--index", tmp_path.as_uri(), *PINS], capture_output=True, text=True, check=True
    )
    lines = done.stderr.splitlines()
    assert lines[0] == f"install_torch: no NVIDIA GPU: the CPU build from {tmp_path.as_uri()}"
    assert lines[1].endswith(
        f"--index-url {tmp_path.as_uri()} torch==2.14.1+cpu torchvision==0.29.1"
    )
    assert lines[2].endswith("pip install --quiet torch==2.14.1 torchvision==0.29.1")


def test_the_makefile_installs_torch_through_the_script():
    makefile = (ROOT / "Makefile").read_text()
    assert "tools/install_torch.py --index $(TORCH_CPU_INDEX) $(TORCH_PINS)" in makefile
    assert "TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu" in makefile
