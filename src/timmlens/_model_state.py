"""Leave the user's model exactly as it was found."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def explaining(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration of an explanation.

    On exit (also after an exception) every module's ``training`` flag, every
    parameter's ``requires_grad`` and ``.grad`` are restored. Parameters are frozen
    during the call so gradients flow only to activations and inputs, and nothing is
    accumulated on the user's parameters.
    """
    training = {module: module.training for module in model.modules()}
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for module, was_training in training.items():
            module.training = was_training
        for p, flag, grad in zip(params, requires_grad, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
