"""Shared fixtures: real weights and photos (offline), tiny explainable timm models."""

from __future__ import annotations

import os
import warnings

import pytest
import timm
import torch

from timmlens.testing import make_explainable

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A random-init timm model whose explanations are non-trivial (see make_explainable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, **kwargs)
    return make_explainable(model, seed=seed)


@pytest.fixture(scope="session")
def real_model():
    """timmlens.ImageClassifier with the bundled real ImageNet EfficientNet-Lite0."""
    from timmlens import load_model

    return load_model("bundled:efficientnet_lite0")


@pytest.fixture(scope="session")
def photos():
    """scikit-image photos as HWC uint8 arrays, by name."""
    from skimage import data

    return {name: getattr(data, name)() for name in ("chelsea", "coffee", "rocket", "astronaut")}
