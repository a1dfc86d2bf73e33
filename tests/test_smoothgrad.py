"""SmoothGrad / SmoothGrad² / VarGrad: agreement with a direct implementation, seeding, errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from timmlens import ImageClassifier
from timmlens.data import data_config
from timmlens.interpretation import IntegratedGradients, SmoothGrad
from timmlens.testing import explainable_model


def _model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    return explainable_model(name, seed=seed, num_classes=10, **kwargs)


def _inputs(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _direct_sample_gradients(
    model: torch.nn.Module, x: torch.Tensor, targets: list[int], n: int, level: float, seed: int
) -> torch.Tensor:
    """Gradients of the target logit at ``n`` noisy copies: ``(B, n, C, H, W)``.

    Noise for sample j of image b: ``level * range(x_b) * N_j``, ``N_j`` the j-th (C, H, W)
    draw of a generator seeded with ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    draws = torch.stack([torch.randn(x.shape[1:], generator=generator) for _ in range(n)])
    stdev = level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    noisy = (x[:, None] + stdev.view(-1, 1, 1, 1, 1) * draws[None]).flatten(0, 1)
    noisy.requires_grad_(True)
    index = torch.tensor(targets).repeat_interleave(n)
    (grads,) = torch.autograd.grad(model(noisy).gather(1, index[:, None]).sum(), noisy)
    model.zero_grad(set_to_none=True)
    return grads.view(x.shape[0], n, *x.shape[1:])


def test_matches_direct_implementation_for_every_nt_type(small):
    x, targets = _inputs(2), [3, 8]
    grads = _direct_sample_gradients(small, x, targets, n=6, level=0.2, seed=5)
    expected = {
        "smoothgrad": grads.mean(1),
        "smoothgrad_sq": (grads**2).mean(1),
        "vargrad": (grads**2).mean(1) - grads.mean(1) ** 2,
    }
    for nt_type, reference in expected.items():
        explainer = SmoothGrad(small, nt_type=nt_type, n_samples=6, noise_level=0.2, seed=5)
        result = explainer.explain_full(x, target_class=targets)
        heatmap = result.heatmap
        assert result.attributions.shape == (2, 3, 32, 32)
        scale = reference.abs().max()
        assert torch.allclose(result.attributions, reference, atol=1e-5 * scale)
        assert heatmap.shape == (2, 32, 32) and heatmap.min() >= 0 and heatmap.max() <= 1


def test_chunking_and_batching_do_not_change_the_map(small):
    x = _inputs(3)
    targets = [1, 4, 9]
    reference = SmoothGrad(small, n_samples=5, nt_samples_batch_size=5)(x, target_class=targets)
    for chunk in (1, 2, None):
        maps = SmoothGrad(small, n_samples=5, nt_samples_batch_size=chunk)(x, targets)
        assert torch.allclose(maps, reference, atol=1e-5)
    tiny_budget = SmoothGrad(small, n_samples=5, memory_budget_bytes=1)
    assert torch.allclose(tiny_budget(x, targets), reference, atol=1e-5)
    alone = SmoothGrad(small, n_samples=5)
    for i, target in enumerate(targets):
        assert torch.allclose(alone(x[i], target_class=target), reference[i], atol=1e-5)


def test_seeded_without_touching_the_global_rng(small):
    x = _inputs(2)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = SmoothGrad(small, n_samples=4, seed=1)(x, 0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.allclose(SmoothGrad(small, n_samples=4, seed=1)(x, 0), first)
    assert not torch.allclose(SmoothGrad(small, n_samples=4, seed=2)(x, 0), first)


def test_zero_noise_is_the_gradient_and_ig_base_is_ig(small):
    x = _inputs(2)
    explainer = SmoothGrad(small, n_samples=2, noise_level=0.0)
    attributions = explainer.explain_full(x, target_class=[2, 5]).attributions
    grads = _direct_sample_gradients(small, x, [2, 5], n=1, level=0.0, seed=0)[:, 0]
    assert torch.allclose(attributions, grads, atol=1e-6)
    smooth_ig = SmoothGrad(small, n_samples=2, noise_level=0.0, base="ig", n_steps=8)
    smoothed = smooth_ig.explain_full(x, target_class=[2, 5]).attributions
    ig = IntegratedGradients(small, n_steps=8).attribute_full(x, [2, 5])
    assert torch.allclose(smoothed, ig.attributions, rtol=1e-4, atol=1e-7)
    noisy_ig = SmoothGrad(small, n_samples=3, base="ig", n_steps=4, nt_type="vargrad")
    assert noisy_ig(x, target_class=None).shape == (2, 32, 32)


def test_predicted_class_of_the_clean_image(small):
    x = _inputs(2)
    explainer = SmoothGrad(small, n_samples=3, noise_level=0.5)
    result = explainer.explain_full(x)
    with torch.no_grad():
        predicted = small(x).argmax(1)
    assert torch.equal(result.targets, predicted)
    assert torch.allclose(result.heatmap, explainer(x, target_class=predicted), atol=1e-6)


@pytest.mark.parametrize("wrap", [False, True], ids=["timm", "ImageClassifier"])
def test_vit_single_and_batch(vit, wrap):
    model = ImageClassifier(vit) if wrap else vit
    x = _inputs(2)
    explainer = SmoothGrad(model, n_samples=3, signed=True)
    batch = explainer(x, target_class=[1, 7])
    single = explainer(x[1], target_class=7)
    assert batch.shape == (2, 32, 32) and single.shape == (32, 32)
    assert torch.allclose(single, batch[1], atol=1e-5)
    assert batch.min() < 0 < batch.max() and batch.abs().max() <= 1 + 1e-6


def test_pil_image_and_model_left_as_found(photos):
    model = _model("test_resnet").train()
    flags = [p.requires_grad for p in model.parameters()]
    heatmap = SmoothGrad(model, n_samples=2)(Image.fromarray(photos["coffee"]))
    assert heatmap.shape == tuple(data_config(model)["input_size"][1:])
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_raise_clear_errors(small):
    with pytest.raises(ValueError, match=r"unknown nt_type 'smooth'.*smoothgrad, smoothgrad_sq"):
        SmoothGrad(small, nt_type="smooth")
    with pytest.raises(ValueError, match=r"noise_level must be a finite number >= 0.*-0.1"):
        SmoothGrad(small, noise_level=-0.1)
    with pytest.raises(ValueError, match=r"n_samples must be an integer >= 1, got 0"):
        SmoothGrad(small, n_samples=0)
    with pytest.raises(ValueError, match=r"unknown base 'gradcam'"):
        SmoothGrad(small, base="gradcam")
    with pytest.raises(ValueError, match=r"nt_samples_batch_size must be an integer >= 1"):
        SmoothGrad(small, nt_samples_batch_size=0)
    with pytest.raises(ValueError, match=r"unknown baseline 'white'"):
        SmoothGrad(small, base="ig", baseline="white")
