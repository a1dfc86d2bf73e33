"""Leave the user's model exactly as it was found, also when threads share it.

An explanation changes shared state of the model while it runs: every module's
``training`` flag, every parameter's ``requires_grad``, the ``fused_attn`` flags of
attention blocks, and the forward hooks of the tapped layers. Two threads doing this
at once on one model would save each other's temporary state as "the original", see
each other's hooks, and run forwards in the wrong mode. So `explaining` holds a
re-entrant lock per model for the whole call: calls on one model run one after
another (calls on different models still run in parallel), and each ends with the
model exactly as found.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .errors import GradientsDisabledError

_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def _lock_owner(model: nn.Module) -> nn.Module:
    """The module whose lock guards ``model``.

    An ``ImageClassifier`` shares the lock of the timm model it wraps, so explaining
    the wrapper in one thread and the bare timm model in another is serialised too.
    """
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises explanations of ``model`` (created on first use).

    It is held by `explaining`; take it yourself only to make a longer sequence
    of calls atomic (the lock is re-entrant, so explanations inside still run).
    """
    owner = _lock_owner(model)
    with _locks_guard:
        lock = _locks.get(owner)
        if lock is None:
            lock = _locks[owner] = threading.RLock()
    return lock


def require_gradients(what: str) -> None:
    """Refuse to start a gradient-based explanation under ``torch.inference_mode()``.

    Tensors made in inference mode can never join an autograd graph, so the failure
    would surface deep inside Captum with a message about a layer or a tensor. Plain
    ``torch.no_grad()`` is fine: timmlens enables gradients where it needs them.
    """
    if torch.is_inference_mode_enabled():
        raise GradientsDisabledError(
            f"{what} needs gradients, but it was called inside torch.inference_mode(), "
            f"where no tensor can take part in autograd. Call it outside inference_mode "
            f"(torch.no_grad() around it is fine), or use a gradient-free method such as "
            f"attention maps or attention rollout without a target class."
        )


@contextmanager
def explaining(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration of an explanation.

    Holds [`model_lock`][] for the whole block, so concurrent explanations of one
    model run one at a time. On exit (also after an exception) every module's
    ``training`` flag, every parameter's ``requires_grad`` and ``.grad`` are restored.
    Parameters are frozen during the call so gradients flow only to activations and
    inputs, and nothing is accumulated on the user's parameters.
    """
    with model_lock(model):
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
