"""Concurrent explanations of one model: every call succeeds, the model ends as found.

Each test starts 2-4 threads on one *train-mode* model behind a barrier, so their
calls overlap, and then compares every flag, buffer, hook table and result with a
snapshot and a serial run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from timmlens import ImageClassifier, model_lock
from timmlens._model_state import explaining
from timmlens.interpretation import (
    AttentionVisualizer,
    GradCAM,
    GradCAMPlusPlus,
    IntegratedGradients,
)
from timmlens.interpretation.metrics import ExplanationMetrics
from timmlens.testing import explainable_model

ROUNDS = 3


def model_state(model: nn.Module) -> dict[str, Any]:
    """Everything an explanation may touch, as plain values to compare."""
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {name: p.grad is None for name, p in model.named_parameters()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "buffers": {name: b.detach().clone() for name, b in model.named_buffers()},
        "fused_attn": {
            name: m.__dict__.get("fused_attn", "<class default>")
            for name, m in model.named_modules()
            if hasattr(m, "fused_attn")
        },
        "hooks": {
            name: (
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(getattr(m, "_backward_pre_hooks", {})),
            )
            for name, m in model.named_modules()
        },
    }


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in ("training", "requires_grad", "grads", "fused_attn", "hooks"):
        assert after[key] == before[key], key
    for key in ("params", "buffers"):
        assert after[key].keys() == before[key].keys()
        for name, value in before[key].items():
            assert torch.equal(after[key][name], value), f"{key} {name} changed"


def run_in_threads(calls: list[Callable[[], torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Run each call ``ROUNDS`` times in its own thread, all started together."""
    barrier = threading.Barrier(len(calls))
    results: list[list[torch.Tensor]] = [[] for _ in calls]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            for _ in range(ROUNDS):
                results[index].append(calls[index]())
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def train_mode_cnn() -> nn.Module:
    # BatchNorm in train mode would update its running statistics on any forward that
    # escaped eval mode: the buffers in the snapshot catch that.
    return explainable_model("test_resnet").train()


@pytest.fixture
def train_mode_vit() -> nn.Module:
    return explainable_model("test_vit", img_size=64).train()


def test_gradcam_from_four_threads_on_a_train_mode_cnn(train_mode_cnn: nn.Module) -> None:
    model = train_mode_cnn
    images = torch.randn(4, 2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    before = model_state(model)
    explainers = [GradCAM(model), GradCAMPlusPlus(model), GradCAM(model), GradCAMPlusPlus(model)]
    expected = [explainer(images[i], target_class=[1, 2]) for i, explainer in enumerate(explainers)]
    assert_same_state(before, model_state(model))

    calls = [
        (lambda e=explainer, x=images[i]: e(x, target_class=[1, 2]))
        for i, explainer in enumerate(explainers)
    ]
    results = run_in_threads(calls)
    for index, maps in enumerate(results):
        for heatmap in maps:
            assert torch.allclose(heatmap, expected[index], atol=1e-6)
    assert_same_state(before, model_state(model))


def test_one_explainer_shared_by_threads_and_a_wrapper_of_the_same_model(
    train_mode_cnn: nn.Module,
) -> None:
    model = train_mode_cnn
    wrapped = ImageClassifier(model)  # shares the lock of the timm model it wraps
    assert model_lock(wrapped) is model_lock(model)
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    before = model_state(model)
    shared = GradCAM(model)
    ig = IntegratedGradients(wrapped, n_steps=4)
    expected_cam = shared(images, target_class=3)
    expected_ig = ig(images, target_class=3)
    results = run_in_threads(
        [
            lambda: shared(images, target_class=3),
            lambda: shared(images, target_class=3),
            lambda: ig(images, target_class=3),
        ]
    )
    for heatmap in results[0] + results[1]:
        assert torch.allclose(heatmap, expected_cam, atol=1e-6)
    for heatmap in results[2]:
        assert torch.allclose(heatmap, expected_ig, atol=1e-5)
    assert_same_state(before, model_state(model))


def test_rollout_and_attention_maps_from_threads_on_a_train_mode_vit(
    train_mode_vit: nn.Module,
) -> None:
    model = train_mode_vit
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    before = model_state(model)
    visualizer = AttentionVisualizer(model)
    plain = visualizer.attention_rollout(images)
    weighted = visualizer.attention_rollout(images, target_class=[4, 5])
    last_block = visualizer.get_attention_maps(images)[-1]
    cam = GradCAM(model)
    cam_expected = cam(images, target_class=1)
    results = run_in_threads(
        [
            lambda: visualizer.attention_rollout(images),
            lambda: visualizer.attention_rollout(images, target_class=[4, 5]),
            lambda: visualizer.get_attention_maps(images)[-1],
            lambda: cam(images, target_class=1),
        ]
    )
    for expected, maps in zip((plain, weighted, last_block, cam_expected), results, strict=True):
        for heatmap in maps:
            assert torch.allclose(heatmap, expected, atol=1e-6)
    assert_same_state(before, model_state(model))


def test_metrics_from_threads_leave_a_train_mode_model_as_found(
    train_mode_cnn: nn.Module,
) -> None:
    model = train_mode_cnn
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    heatmaps = torch.rand(2, 96, 96, generator=torch.Generator().manual_seed(4))
    before = model_state(model)
    metrics = ExplanationMetrics(model, steps=8)
    expected = metrics.deletion(images, heatmaps, target_class=[0, 1]).per_image
    results = run_in_threads(
        [lambda: metrics.deletion(images, heatmaps, target_class=[0, 1]).per_image] * 2
        + [lambda: GradCAM(model)(images, target_class=0)]
    )
    for per_image in results[0] + results[1]:
        assert torch.allclose(per_image, expected, atol=1e-6)
    assert_same_state(before, model_state(model))


def test_the_lock_is_re_entrant_and_per_model() -> None:
    first, second = nn.Linear(2, 2), nn.Linear(2, 2)
    assert model_lock(first) is model_lock(first)
    assert model_lock(first) is not model_lock(second)
    with explaining(first), explaining(first):  # nested calls in one thread do not deadlock
        acquired = threading.Event()

        def other_model() -> None:
            with explaining(second):
                acquired.set()

        thread = threading.Thread(target=other_model)
        thread.start()
        thread.join(timeout=10)
        assert acquired.is_set(), "a different model must not wait for this one"
