"""Integrated Gradients: completeness, agreement with Captum, shapes, targets, hygiene, errors."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from PIL import Image

from timmlens import ImageClassifier
from timmlens.data import data_config, denormalize
from timmlens.interpretation import IGResult, IntegratedGradients
from timmlens.interpretation.input.integrated_gradients import gaussian_blur, make_baseline
from timmlens.testing import explainable_model


def _model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    return explainable_model(name, seed=seed, num_classes=10, **kwargs)


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    return _model("resnet18")


def _inputs(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _black(model: torch.nn.Module, like: torch.Tensor) -> torch.Tensor:
    config = data_config(model)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    return ((0 - mean) / std).expand_as(like).contiguous()


def test_completeness_holds_and_improves_with_steps(resnet):
    x = _inputs(2, 48)
    coarse = IntegratedGradients(resnet, n_steps=8).attribute_full(x)
    fine = IntegratedGradients(resnet, n_steps=64).attribute_full(x)
    assert isinstance(fine, IGResult)
    assert fine.attributions.shape == (2, 3, 48, 48) and fine.heatmap.shape == (2, 48, 48)
    # Definition: delta = sum(attributions) - (f(x) - f(baseline)).
    total = fine.attributions.flatten(1).double().sum(1)
    expected = total - (fine.score - fine.baseline_score).double()
    assert torch.allclose(fine.convergence_delta, expected, atol=1e-6)
    with torch.no_grad():
        logits = resnet(torch.cat([x, _black(resnet, x)]))
    picked = logits.gather(1, fine.targets.repeat(2)[:, None])[:, 0]
    assert torch.equal(fine.targets, logits[:2].argmax(1))
    assert torch.allclose(fine.score, picked[:2], atol=1e-5)
    assert torch.allclose(fine.baseline_score, picked[2:], atol=1e-5)

    def aggregate(result: IGResult) -> float:
        gap = (result.score - result.baseline_score).abs().sum()
        return (result.convergence_delta.abs().sum() / gap).item()

    assert aggregate(fine) < 0.05
    assert aggregate(fine) < aggregate(coarse) / 3
    assert fine.relative_delta.shape == (2,)
    assert torch.allclose(
        fine.relative_delta,
        fine.convergence_delta.abs() / (fine.score - fine.baseline_score).abs().double(),
    )


def test_matches_captum_by_hand_and_its_convergence_delta(small):
    x = _inputs(3)
    targets = [4, 0, 7]
    ours = IntegratedGradients(small, n_steps=12).attribute_full(x, targets)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return small(inputs)

    baseline = _black(small, x)
    attributions, delta = CaptumIG(forward).attribute(
        x, baselines=baseline, target=targets, n_steps=12, return_convergence_delta=True
    )
    assert torch.allclose(ours.attributions, attributions, rtol=1e-5, atol=1e-7)
    assert torch.allclose(ours.convergence_delta.float(), delta.float(), atol=1e-5)
    assert ours.targets.tolist() == targets


def test_chunking_from_memory_budget_does_not_change_results(small):
    x = _inputs(2)
    whole = IntegratedGradients(small, n_steps=10, internal_batch_size=20).attribute_full(x, 1)
    tiny_budget = IntegratedGradients(small, n_steps=10, memory_budget_bytes=1)
    chunked = IntegratedGradients(small, n_steps=10, internal_batch_size=6)
    for explainer in (tiny_budget, chunked):
        result = explainer.attribute_full(x, 1)
        assert torch.allclose(result.attributions, whole.attributions, rtol=1e-4, atol=1e-7)


def test_shapes_single_batch_and_signed(small):
    x = _inputs(2)
    explainer = IntegratedGradients(small, n_steps=6)
    single = explainer(x[0], target_class=2)
    batch = explainer(x, target_class=2)
    assert single.shape == (32, 32) and batch.shape == (2, 32, 32)
    assert torch.allclose(single, batch[0], atol=1e-6)
    assert (
        batch.min() >= 0 and batch.max() <= 1 and torch.allclose(batch.amax((1, 2)), torch.ones(2))
    )
    signed = IntegratedGradients(small, n_steps=6, signed=True)(x, target_class=2)
    assert signed.min() < 0 < signed.max()
    assert torch.allclose(signed.abs().amax((1, 2)), torch.ones(2))


def test_per_image_targets_match_one_by_one(small):
    x = _inputs(3)
    for baseline in ("black", "noise"):
        explainer = IntegratedGradients(small, n_steps=6, baseline=baseline)
        result = explainer.explain_full(x, target_class=[1, 5, 9])
        batch = result.heatmap
        assert result.targets.tolist() == [1, 5, 9]
        for i, target in enumerate([1, 5, 9]):
            assert torch.allclose(explainer(x[i], target_class=target), batch[i], atol=1e-5)


def test_predicted_class_resolved_before_the_path(small):
    x = _inputs(2)
    explainer = IntegratedGradients(small, n_steps=6)
    result = explainer.explain_full(x)
    with torch.no_grad():
        predicted = small(x).argmax(1)
    assert torch.equal(result.targets, predicted)
    assert torch.allclose(result.heatmap, explainer(x, target_class=predicted), atol=1e-6)


@pytest.mark.parametrize("wrap", [False, True], ids=["timm", "ImageClassifier"])
def test_vit_bare_and_wrapped(vit, wrap):
    model = ImageClassifier(vit) if wrap else vit
    x = _inputs(2, 32)
    result = IntegratedGradients(model, n_steps=16).attribute_full(x, [3, 6])
    assert result.heatmap.shape == (2, 32, 32)
    assert result.relative_delta.max() < 0.05
    assert result.heatmap.flatten(1).std(1).min() > 0


def test_cnn_wrapped_in_image_classifier_matches_bare(small):
    x = _inputs(2)
    bare = IntegratedGradients(small, n_steps=6)(x, target_class=[1, 2])
    wrapped = IntegratedGradients(ImageClassifier(_model("test_resnet")), n_steps=6)
    assert torch.allclose(wrapped(x, target_class=[1, 2]), bare, atol=1e-5)


def test_pil_image_through_preprocessing(small, photos):
    heatmap = IntegratedGradients(small, n_steps=4)(Image.fromarray(photos["chelsea"]))
    assert heatmap.shape == tuple(data_config(small)["input_size"][1:])


def test_model_left_as_found():
    model = _model("test_resnet").train()
    model.fc.weight.requires_grad_(True)
    next(model.parameters()).requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    IntegratedGradients(model, n_steps=4).attribute_full(_inputs(2), None)
    assert all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_baselines(small):
    x = _inputs(2)
    black = make_baseline("black", x, small)
    assert torch.allclose(denormalize(black, small), torch.zeros_like(x), atol=1e-6)
    for name in ("noise", "uniform"):
        first, again = make_baseline(name, x, small, seed=3), make_baseline(name, x, small, seed=3)
        assert torch.equal(first, again) and torch.equal(first[0], first[1])
        assert not torch.equal(first, make_baseline(name, x, small, seed=4))
        pixels = first * 0.5 + 0.5  # test_resnet: mean = std = 0.5
        assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.std() > 0.1
    blurred = make_baseline("blur", x, small)
    assert blurred.shape == x.shape and blurred.std() < x.std() / 3
    assert torch.allclose(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.15)
    assert torch.allclose(gaussian_blur(torch.ones(1, 3, 20, 20), 4.0), torch.ones(1, 3, 20, 20))
    custom = torch.full((3, 32, 32), 0.25)
    assert torch.equal(make_baseline(custom, x, small), custom.expand(2, 3, 32, 32))
    for name in ("blur", "uniform", custom[None]):
        result = IntegratedGradients(small, n_steps=4, baseline=name).attribute_full(x, 0)
        assert torch.equal(result.baselines, make_baseline(name, x, small))


def test_bad_arguments_raise_clear_errors(small):
    with pytest.raises(ValueError, match=r"n_steps must be an integer >= 1, got 0"):
        IntegratedGradients(small, n_steps=0)
    with pytest.raises(ValueError, match=r"unknown baseline 'gray'.*black, blur, noise, uniform"):
        IntegratedGradients(small, baseline="gray")
    with pytest.raises(ValueError, match=r"unknown IG method 'simpson'"):
        IntegratedGradients(small, method="simpson")
    with pytest.raises(ValueError, match=r"internal_batch_size must be an integer >= 1"):
        IntegratedGradients(small, internal_batch_size=0)
    with pytest.raises(ValueError, match=r"memory_budget_bytes must be a positive integer"):
        IntegratedGradients(small, memory_budget_bytes=-5)
    with pytest.raises(ValueError, match=r"cannot broadcast to a \(B, C, H, W\) batch"):
        IntegratedGradients(small, baseline=torch.zeros(1, 1, 3, 8, 8))
    wrong = IntegratedGradients(small, n_steps=2, baseline=torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"\(3, 16, 16\) does not broadcast.*\(2, 3, 32, 32\)"):
        wrong(_inputs(2))
    with pytest.raises(ValueError, match="out of range"):
        IntegratedGradients(small, n_steps=2)(_inputs(1), target_class=10)
