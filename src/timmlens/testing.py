"""Helpers for tests and benchmarks: random-init timm models that give non-trivial maps.

timm's random init often makes explanations trivially zero: ResNets zero-initialise
the last norm of each residual block, ConvNeXt scales branches by 1e-6, some heads
start at zero. `make_explainable` re-draws those parameters so every block
contributes and classes differ, which is what a method test needs.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def make_explainable(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw norm affines, layer scales and linear heads of ``model`` in place (seeded).

    Returns the same model, in eval mode, for chaining, marked as having random weights
    (`timmlens.models.mark_random_weights`), so its figures say so.
    """
    from .models.weights_status import mark_random_weights

    generator = torch.Generator().manual_seed(seed)

    def draw(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return torch.empty(shape).uniform_(low, high, generator=generator)

    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))
        if (
            leaf.startswith("gamma")  # layer scales: gamma, gamma_1 (CaiT), gamma1
            or (leaf == "weight" and is_norm)
            or "layer_scale" in name
            or leaf == "scale"
        ):
            param.copy_(draw(param.shape, 0.5, 1.5).to(param))
        elif leaf == "bias" and is_norm:
            param.copy_(draw(param.shape, -0.1, 0.1).to(param))
        elif isinstance(module, nn.Linear) and leaf == "weight" and param.abs().max() == 0:
            param.copy_((draw(param.shape, -1, 1) / param.shape[1] ** 0.5).to(param))
    return mark_random_weights(model.eval())


def explainable_model(name: str, seed: int = 0, **timm_kwargs: object) -> nn.Module:
    """``timm.create_model(name)`` with random weights (seeded, warnings silenced), made
    explainable by `make_explainable`; ``timm_kwargs`` go to ``create_model``."""
    import warnings

    import timm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
    return make_explainable(model, seed=seed)


def calibrate_batchnorm(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of ``model`` on ``inputs`` (B, 3, H, W).

    Random weights leave BatchNorm at mean 0 / variance 1, which normalises nothing: deep
    random nets (ConvMixer's 32 blocks) then lose the input on the way, their logits move
    by 1e-14 with the image and every gradient map is noise. One train-mode pass with a
    cumulative average (``momentum=None``) normalises each channel to the batch, the
    data-dependent initialisation of random nets. Returns ``model`` in eval mode; models
    without BatchNorm, whose train-mode forward fails, or whose eval-mode output on
    ``inputs`` is no longer finite with the new statistics (HaloNet's attention
    overflows), are returned unchanged.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    try:
        with torch.no_grad():
            model.train()(inputs)
            output = model.eval()(inputs)
        if not all(torch.isfinite(t).all() for t in _tensors(output)):
            raise FloatingPointError("non-finite output with the new statistics")
    except Exception:  # leave the model as it was
        for norm, (_, state) in zip(norms, saved, strict=True):
            norm.load_state_dict(state)
    finally:
        for norm, (momentum, _) in zip(norms, saved, strict=True):
            norm.momentum = momentum
    return model.eval()


def _tensors(output: object) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or a tuple / list / dict of them)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []
