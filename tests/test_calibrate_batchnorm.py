"""`timmlens.testing.calibrate_batchnorm`: the BatchNorm statistics random nets need.

Random weights leave BatchNorm at mean 0 / variance 1; deep random nets then lose the
input (ConvMixer, EfficientViT (MIT) in the zoo sweep: constant GradCAM and gradient
maps). One train-mode pass sets each channel's statistics to the batch.
"""

from __future__ import annotations

import torch
from timm.models.convmixer import ConvMixer
from torch import nn

from timmlens.interpretation.registry import as_explainer
from timmlens.testing import calibrate_batchnorm, explainable_model, make_explainable


def _images(side: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _input_gradient(model: nn.Module, x: torch.Tensor) -> float:
    x = x.clone().requires_grad_(True)
    model(x)[0, 0].backward()
    return x.grad.abs().max().item()


def test_deep_random_convmixer_gets_its_input_gradient_back() -> None:
    torch.manual_seed(0)
    model = ConvMixer(dim=32, depth=16, kernel_size=3, patch_size=4, num_classes=10)
    model = make_explainable(model)
    x = _images(32, seed=0)[:1]
    assert _input_gradient(model, x) < 1e-9  # the input is lost: every map is noise
    images = _images(32)
    assert calibrate_batchnorm(model, images) is model and not model.training
    assert _input_gradient(model, x) > 1e-3
    # The stem's BatchNorm holds the batch statistics of its input (cumulative average).
    stem_conv, stem_act, stem_norm = model.stem
    with torch.no_grad():
        features = stem_act(stem_conv(images))
    torch.testing.assert_close(stem_norm.running_mean, features.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(
        stem_norm.running_var, features.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6
    )
    assert stem_norm.momentum == 0.1  # the model's own momentum, put back


def test_efficientvit_mit_gradcam_is_constant_without_and_live_with() -> None:
    model = explainable_model("efficientvit_b0", num_classes=10)
    x = _images(96, seed=0)[:1]
    explainer = as_explainer("gradcam", model)
    before = explainer.explain_batch(x, [0])[0]
    assert before.max() == before.min()
    calibrate_batchnorm(model, _images(96))
    after = explainer.explain_batch(x, [0])[0]
    assert after.max() > after.min()


def test_models_without_batchnorm_or_a_failing_train_pass_are_left_as_found() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).train()
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    assert calibrate_batchnorm(plain, _images(8)) is plain and not plain.training
    assert all(torch.equal(v, state[k]) for k, v in plain.state_dict().items())

    class TrainFails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.norm(x)
            if self.training:
                raise RuntimeError("no train mode here")
            return x

    model = TrainFails()
    model.norm.running_mean.fill_(0.5)
    calibrate_batchnorm(model, _images(8))
    assert torch.equal(model.norm.running_mean, torch.full((3,), 0.5))
    assert model.norm.momentum == 0.1 and not model.training


def test_one_value_per_channel_is_a_failing_train_pass() -> None:
    """BatchNorm refuses train mode on one value per channel: stats left alone."""
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    calibrate_batchnorm(model, torch.randn(1, 3, 1, 1))
    assert torch.equal(model[1].running_var, torch.ones(2))


def test_statistics_that_make_the_output_non_finite_are_undone() -> None:
    """HaloNet's attention overflows with calibrated statistics: the model stays as found."""

    class Overflows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(3, eps=0.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Finite with the initial statistics (variance 1: the 1e-4 input stays
            # small), inf once the running variance is the batch's (1e-8: unit values).
            return torch.exp(self.norm(x) * 100)

    model = Overflows()
    calibrate_batchnorm(model, 1e-4 * _images(8))
    assert torch.equal(model.norm.running_var, torch.ones(3)) and not model.training
