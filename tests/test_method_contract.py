"""The contract every registered method keeps, checked for each one on a CNN and a ViT.

Parametrised over the method registry, so a new ``@register_method`` class is checked
here with no edit: output shape, finite values in [0, 1], targets honoured, a batch
equal to its images one by one, and the model left as found. A method's own formula
is tested in its own file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from timmlens.interpretation.registry import as_explainer, methods, resolve_method, supports
from timmlens.testing import explainable_model

SIDE, CLASSES = 64, 10
MODELS = {
    "cnn": ("test_resnet", {}),
    "vit": ("test_vit", {"img_size": SIDE}),
}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {
        key: explainable_model(name, num_classes=CLASSES, **kwargs)
        for key, (name, kwargs) in MODELS.items()
    }


def _case(models: dict[str, nn.Module], family: str, method: str) -> tuple[nn.Module, Any]:
    model = models[family]
    if not supports(model, method):
        pytest.skip(f"{method} does not apply to {MODELS[family][0]}")
    # each method's own cheap settings (its spec's quick_options): the file runs in seconds
    return model, as_explainer(method, model, **resolve_method(method).quick_options)


def _inputs(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


CASES = pytest.mark.parametrize(
    ("family", "method"), [(family, method) for method in methods() for family in MODELS]
)


@CASES
def test_shapes_and_values(models, family, method):
    _, explainer = _case(models, family, method)
    x = _inputs(2)
    batch = explainer(x, target_class=[1, 2])
    single = explainer(x[0], target_class=1)
    assert batch.shape == (2, SIDE, SIDE) and single.shape == (SIDE, SIDE)
    for maps in (batch, single):
        assert torch.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1


@CASES
def test_targets_are_honoured(models, family, method):
    _, explainer = _case(models, family, method)
    x = _inputs(3, seed=1)
    first = explainer(x, target_class=3)
    result = explainer.explain_full(x, target_class=7)
    second = result.heatmap
    if explainer.class_agnostic:  # by design (EigenCAM): the class is reported, not used
        assert torch.equal(first, second) and result.targets.tolist() == [7] * 3
        return
    assert not torch.allclose(first, second, atol=1e-4), (
        f"{method} gives the same maps for classes 3 and 7"
    )


@CASES
def test_a_batch_equals_its_images_one_by_one(models, family, method):
    _, explainer = _case(models, family, method)
    x, targets = _inputs(3, seed=2), [0, 5, 9]
    together = explainer(x, target_class=targets)
    alone = torch.stack([explainer(x[i], target_class=t) for i, t in enumerate(targets)])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def _hook_counts(model: nn.Module) -> list[int]:
    kinds = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_state_dict_hooks",
    )
    return [len(getattr(m, kind, {})) for m in model.modules() for kind in kinds]


@contextmanager
def _frozen_first_half(model: nn.Module) -> Iterator[None]:
    """Train mode and half the parameters frozen: a state the explainer must not reset."""
    params = list(model.parameters())
    model.train()
    for p in params[: len(params) // 2]:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        model.eval()


@CASES
def test_the_model_is_left_as_found(models, family, method):
    model, explainer = _case(models, family, method)
    x = _inputs(2, seed=3)
    original = x.clone()
    with _frozen_first_half(model):
        flags = [m.training for m in model.modules()]
        requires = [p.requires_grad for p in model.parameters()]
        hooks = _hook_counts(model)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        explainer(x, target_class=[4, 6])
        explainer(x)  # the predicted classes take another path in some methods
        assert [m.training for m in model.modules()] == flags
        assert [p.requires_grad for p in model.parameters()] == requires
        assert all(p.grad is None for p in model.parameters())
        assert _hook_counts(model) == hooks
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), f"{method} changed {key}"
    assert torch.equal(x, original) and not x.requires_grad
