"""Shared fixtures: the bundled real model, scikit-image photos, tiny random models, a
two-rank torchrun; offline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def real_model():
    """timmlens.ImageClassifier with the bundled real ImageNet EfficientNet-Lite0."""
    from timmlens import load_model

    return load_model("bundled:efficientnet_lite0")


@pytest.fixture(scope="module")
def small() -> torch.nn.Module:
    """timm's ``test_resnet``, 10 classes, random weights made explainable (seed 0)."""
    from timmlens.testing import explainable_model

    return explainable_model("test_resnet", seed=0, num_classes=10)


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    """timm's ``test_vit`` at 32x32, 10 classes, random weights made explainable (seed 0)."""
    from timmlens.testing import explainable_model

    return explainable_model("test_vit", seed=0, num_classes=10, img_size=32)


@pytest.fixture(scope="session")
def photos():
    """scikit-image photos as HWC uint8 arrays, by name."""
    from skimage import data

    return {name: getattr(data, name)() for name in ("chelsea", "coffee", "rocket", "astronaut")}


#: put before every torchrun test script: ``this_rank()`` is 0 when the script runs alone
TORCHRUN_PROLOGUE = """import torch.distributed as dist


def this_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0

"""
#: put after it: exiting with a live gloo group can abort (SIGABRT)
TORCHRUN_EPILOGUE = """
if dist.is_initialized():
    dist.destroy_process_group()
"""


@pytest.fixture
def torchrun(tmp_path):
    """``torchrun(code, *args) -> script``: run ``code`` as two CPU ranks (gloo) under
    ``torchrun --standalone`` and assert that both succeed; returns the script's path
    (``tmp_path / "run.py"``), which also runs alone as a plain Python script.

    ``code`` (dedented here) gets `TORCHRUN_PROLOGUE` (``dist``, ``this_rank()``) before it
    and `TORCHRUN_EPILOGUE` after it. Ranks should write one file each: prints of two
    ranks to one pipe can interleave mid-line.
    """

    def run(code: str, *args: object, timeout: float = 300) -> Path:
        script = tmp_path / "run.py"
        script.write_text(TORCHRUN_PROLOGUE + textwrap.dedent(code) + TORCHRUN_EPILOGUE)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
        done = subprocess.run(
            [*command, "--standalone", str(script), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return script

    return run
