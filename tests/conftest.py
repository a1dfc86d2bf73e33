"""Shared fixtures: the bundled real model, scikit-image photos, tiny random models; offline."""

from __future__ import annotations

import os

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
