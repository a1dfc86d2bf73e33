"""The module to explain inside the wrappers people put around their models.

``torch.compile`` returns an ``OptimizedModule`` whose graph cannot be hooked layer by
layer (and which recompiles on every hook change), so timmlens explains the original
module it holds (``_orig_mod``; the same parameters, so the same logits) and says so.
``DataParallel`` and ``DistributedDataParallel`` only scatter a batch over devices and
(DDP) synchronise gradients in backward: the explanation runs on their ``.module``, on
its own device, with no collective call that other ranks would have to match.

``nn.Sequential(normalize, model)`` needs no unwrapping: it is run as it is (its
normalisation included), and the adapter finds the timm model or the spatial layer
inside it (`timmlens.adapters.adapter`).
"""

from __future__ import annotations

from torch import nn

from .._warnings import warn_caller


class CompiledModelWarning(UserWarning):
    """A ``torch.compile``d model is explained through the original module it wraps."""


def _is_compiled(model: nn.Module) -> bool:
    # torch._dynamo.eval_frame.OptimizedModule, without importing dynamo (slow, optional)
    return type(model).__name__ == "OptimizedModule" and isinstance(
        getattr(model, "_orig_mod", None), nn.Module
    )


def _is_data_parallel(model: nn.Module) -> bool:
    return isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) and isinstance(
        getattr(model, "module", None), nn.Module
    )


def unwrap_model(model: nn.Module, *, warn: bool = True) -> nn.Module:
    """The module timmlens explains for ``model``: wrappers peeled off, in any nesting.

    ``torch.compile(m)`` -> ``m`` (with a [`CompiledModelWarning`][] at the user's
    line when ``warn``), ``DataParallel(m)`` / ``DistributedDataParallel(m)`` -> ``m``;
    anything else is returned as it is.
    """
    if not isinstance(model, nn.Module):
        return model
    peeled: list[str] = []
    while True:
        if _is_compiled(model):
            peeled.append("compiled")
            model = model._orig_mod
        elif _is_data_parallel(model):
            peeled.append(type(model).__name__)
            model = model.module
        else:
            break
    if warn and "compiled" in peeled:
        warn_caller(
            f"The model is torch.compile'd: timmlens explains the original "
            f"{type(model).__name__} it wraps (model._orig_mod, the same weights and logits), "
            f"since a compiled graph cannot be hooked layer by layer. Your compiled model "
            f"is left unchanged.",
            CompiledModelWarning,
        )
    return model
