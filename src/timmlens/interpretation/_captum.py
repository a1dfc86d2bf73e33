"""Every contact with Captum beyond its public classes and their ``attribute`` calls.

The input methods call Captum's public API (``captum.attr.Saliency(...).attribute``).
What Captum does *not* offer publicly, and timmlens relies on, lives here and nowhere
else, each with a test in ``tests/test_captum_adapter.py`` that fails if a Captum
release changes it (verified range: ``pyproject.toml``'s ``captum`` pin):

* **rule tables** (private modules): the module types DeepLift and LRP have rules for
  (`deeplift_nonlinear_types`, `lrp_rule_types`) and LRP's ``EpsilonRule``
  (`epsilon_rule`), read from Captum so a release that adds a rule is honoured;
* **module hygiene** (`hooks_left_clean`): Captum's hook methods need ``nn.ReLU``
  out of place and cannot hook a ReLU fed a constant; LRP leaves ``activations`` on
  modules and deletes a user's own ``rule``. The context restores both;
* **a module run twice** (`single_use_modules`): Captum's DeepLift and LRP keep one
  input per module and fail deep inside autograd where a module runs twice per
  forward. Which modules ran how often is counted here, so the refusal names them
  without reading Captum's error text;
* **LRP through pass-through modules** (`pass_through_rule`): ``nn.Identity`` and
  ``nn.Flatten`` get a rule that registers nothing, Captum's documented way to give a
  module a rule (a ``PropagationRule``), so relevance passes through them unchanged;
* **Captum's own hook warnings**, said on every call (`hooks_left_clean` hides them);
* **layer gradients** (`layer_gradients_and_eval`): the CAM engine's one forward and
  backward to several layers at once is Captum's private
  ``captum._utils.gradient.compute_layer_gradients_and_eval``, which ``LayerGradCam``
  itself runs on;
* **path quadrature** (`approximation_parameters`): the neuron conductance of
  `timmlens.analysis` takes Captum's step sizes and points from its private
  ``captum.attr._utils.approximation_methods``, so its paths equal Captum's.

Captum's ``NoiseTunnel`` draws its noise with ``torch.normal`` from the global
generator and one scale per input; SmoothGrad's per-image scale and private generator
come from `range_noise_tunnel`, which overrides its noise step (the one subclass of
a Captum internal, kept here).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import torch
from torch import nn

__all__ = [
    "CAPTUM_HOOK_WARNINGS",
    "deeplift_nonlinear_types",
    "epsilon_rule",
    "hooks_left_clean",
    "lrp_rule_types",
    "pass_through_rule",
    "range_noise_tunnel",
    "single_use_modules",
]

#: Captum's notices that it sets hooks (GuidedBackprop, Deconvolution, DeepLift), said
#: on every call: expected here, not news (a test checks Captum still says them).
CAPTUM_HOOK_WARNINGS = r"Setting (backward hooks on ReLU|forward, backward hooks)"


def leaves(model: nn.Module) -> Iterator[nn.Module]:
    """The modules of ``model`` without children (the ones Captum's rules attach to)."""
    return (m for m in model.modules() if next(m.children(), None) is None)


# ------------------------------------------------------------------ rule tables
@cache
def deeplift_nonlinear_types() -> frozenset[type]:
    """Module types Captum's DeepLift has a nonlinear rule for (ReLU, ELU, MaxPool, ...)."""
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    return frozenset(SUPPORTED_NON_LINEAR)


@cache
def lrp_rule_types() -> tuple[frozenset[type], frozenset[type]]:
    """``(types with a default LRP rule, nonlinear types LRP passes relevance through)``."""
    from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS

    return frozenset(SUPPORTED_LAYERS_WITH_RULES), frozenset(SUPPORTED_NON_LINEAR_LAYERS)


def epsilon_rule(epsilon: float) -> Any:
    """Captum's ``EpsilonRule(epsilon)`` for one module."""
    from captum.attr._utils.lrp_rules import EpsilonRule

    return EpsilonRule(epsilon=epsilon)


@cache
def _pass_through_rule_class() -> type:
    from captum.attr._utils.lrp_rules import PropagationRule

    class PassThroughRule(PropagationRule):
        """No hooks at all: the module's plain gradient carries the relevance through."""

        def forward_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
            return None

        def forward_hook_weights(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
            return None

        def forward_pre_hook_activations(self, module: nn.Module, inputs: Any) -> None:
            return None

        def _manipulate_weights(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
            return None

    return PassThroughRule


def pass_through_rule() -> Any:
    """A rule for modules that compute nothing (``nn.Identity``, ``nn.Flatten``)."""
    return _pass_through_rule_class()()


# ------------------------------------------------------------------ hygiene
def _constant_input_needs_grad(module: nn.Module, args: tuple) -> tuple | None:
    """A ReLU fed a constant (Swin V2's and relpos ViTs' position MLPs run on a buffer):
    Captum's ReLU rules hook its input's gradient, which a constant cannot take. A
    detached leaf copy can; nothing reaches the image through it either way."""
    del module
    first = args[0] if args else None
    if isinstance(first, torch.Tensor) and not first.requires_grad and torch.is_grad_enabled():
        return (first.detach().requires_grad_(), *args[1:])
    return None


@contextmanager
def hooks_left_clean(model: nn.Module) -> Iterator[None]:
    """ReLUs out of place during the block; flags and module attributes restored after.

    Attributes Captum adds to modules (DeepLift's ``input``/``output`` on failure,
    LRP's ``activations`` and ``rule``) are removed, and ones it deleted (a user's own
    LRP ``rule``) put back. Captum's hook notices are silenced inside.
    """
    inplace = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    before = {m: dict(vars(m)) for m in model.modules()}
    for module in inplace:
        module.inplace = False
    # Registered before Captum's hooks, so they run first.
    handles = [
        m.register_forward_pre_hook(_constant_input_needs_grad)
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=CAPTUM_HOOK_WARNINGS)
            yield
    finally:
        for handle in handles:
            handle.remove()
        for module in inplace:
            module.inplace = True
        for module, attributes in before.items():
            for name in set(vars(module)) - set(attributes):
                delattr(module, name)
            for name in set(attributes) - set(vars(module)):
                setattr(module, name, attributes[name])


@contextmanager
def single_use_modules(
    model: nn.Module, forward: nn.Module
) -> Iterator[Callable[[], list[nn.Module]]]:
    """Counts runs of ``model``'s leaves per run of ``forward`` during the block.

    Yields a function that gives the leaves that ran more often than ``forward`` did so
    far (modules used twice in one forward pass), so the caller can tell that cause of
    an error from any other without reading the error's text.
    """
    runs: Counter[nn.Module] = Counter()

    def count(module: nn.Module, _args: Any) -> None:
        runs[module] += 1

    modules = [forward, *leaves(model)]

    def reused() -> list[nn.Module]:
        passes = max(1, runs[forward])
        return [m for m in modules[1:] if runs[m] > passes]

    handles = [m.register_forward_pre_hook(count) for m in modules]
    try:
        yield reused
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------ private helpers
def layer_gradients_and_eval(
    forward: Callable[..., torch.Tensor],
    layers: list[nn.Module],
    inputs: torch.Tensor,
    additional_forward_args: tuple | None = None,
) -> tuple[Any, Any]:
    """``(gradients, activations)`` of ``layers`` for ``forward(inputs)``'s ``(B,)`` score.

    Captum's ``compute_layer_gradients_and_eval`` with several layers: both are lists, one
    tuple per layer (``((B, ...),)``), from one forward and one backward.
    """
    from captum._utils.gradient import compute_layer_gradients_and_eval

    return compute_layer_gradients_and_eval(
        forward, layers, inputs, additional_forward_args=additional_forward_args
    )


def approximation_parameters(method: str) -> tuple[Callable[[int], list], Callable[[int], list]]:
    """Captum's ``(step_sizes(n), alphas(n))`` of path quadrature ``method``
    (``"gausslegendre"``, ``"riemann_trapezoid"``, ...), as ``IntegratedGradients`` uses."""
    from captum.attr._utils.approximation_methods import approximation_parameters as params

    return params(method)


# ------------------------------------------------------------------ NoiseTunnel
def range_noise_tunnel(inner: Any, generator: torch.Generator) -> Any:
    """Captum's ``NoiseTunnel`` over ``inner`` with per-image noise scale and reproducible draws.

    ``stdevs`` must be a one-element tuple holding a ``(B,)`` tensor of per-image
    standard deviations. Noise for sample ``j`` is ``stdevs[b] * N_j`` where ``N_j`` is
    the ``j``-th ``(C, H, W)`` draw of ``generator``: draws happen sample by sample in
    order, so chunking (``nt_samples_batch_size``) does not change them. Made per call,
    with a freshly seeded generator, so calls share no state.
    """
    return _range_noise_tunnel_class()(inner, generator)


@cache
def _range_noise_tunnel_class() -> type:
    from captum.attr import NoiseTunnel  # Captum loads on first use

    class RangeNoiseTunnel(NoiseTunnel):
        def __init__(self, inner: Any, generator: torch.Generator) -> None:
            super().__init__(inner)
            self.generator = generator

        def _add_noise_to_inputs(  # type: ignore[override]
            self,
            nt_samples_partition: int,
            inputs: tuple[torch.Tensor, ...],
            stdevs: tuple[torch.Tensor, ...],
        ) -> tuple[torch.Tensor, ...]:
            noisy = []
            for x, stdev in zip(inputs, stdevs, strict=True):
                batch, *rest = x.shape
                draws = torch.stack(
                    [
                        torch.randn(rest, generator=self.generator, device=x.device)
                        for _ in range(nt_samples_partition)
                    ]
                ).to(x.dtype)  # (k, C, H, W)
                scale = stdev.to(device=x.device, dtype=x.dtype).view(batch, 1, *[1] * len(rest))
                noise = (scale * draws.unsqueeze(0)).reshape(batch * nt_samples_partition, *rest)
                sample = x.repeat_interleave(nt_samples_partition, dim=0) + noise
                noisy.append(sample.requires_grad_() if self.is_gradient_method else sample)
            return tuple(noisy)

    return RangeNoiseTunnel
