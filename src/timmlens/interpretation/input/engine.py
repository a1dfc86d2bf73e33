"""The input-attribution engine: one Captum wrapper with timm-aware defaults.

[`CaptumInputExplainer`][] runs a Captum attribution method on the input pixels; every
input method is one subclass of it (naming its Captum class, its arguments and, where
it has them, its refusals):

* the target score is `TargetScore`, the
  targets travelling through Captum's ``additional_forward_args`` (so any expansion
  order of Captum's is right); ``None`` resolves to each image's predicted class in one
  no-grad probe forward, which also measures the activation memory per sample
  (`forward_with_activation_bytes` in `scoring`);
* baselines are named (``"black"``, ``"blur"``, ``"noise"``, ``"uniform"``) or tensors in
  normalised input space
  (`make_baseline`);
* work is chunked by memory: `samples_per_chunk` of the budget from
  `memory_budget` (kind ``"backward"``);
* methods that hook modules (guided backprop, DeepLift, LRP) run inside the Captum
  adapter's hygiene (`timmlens.interpretation._captum`): the model is left as found,
  and a module run twice per forward is refused by name;
* the ``(B, C, H, W)`` attributions become a ``(B, H, W)`` heatmap
  (`attribution_heatmap`), and both are returned in an
  [`Explanation`][timmlens.interpretation.base.Explanation].

All tensors live in model-input (normalised) space, on the model's device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

import torch
from torch import nn

from ...adapters import get_adapter
from ...errors import UnsupportedModelError
from .. import _captum
from .._targets import CallableTargets, ResolvedTargets, TargetScore, target_rows
from ..base import Explainer, Explanation, normalize_maps
from ..scoring import (
    balanced_chunk,
    forward_with_activation_bytes,
    memory_budget,
    samples_per_chunk,
)
from .baselines import BaselineSpec, make_baseline, validate_baseline
from .checks import check_budget

__all__ = ["AttributionFactory", "CaptumInputExplainer", "attribution_heatmap", "refusal"]

#: ``forward_func -> attribution``: a Captum attribution class, or a factory of one.
AttributionFactory = Callable[[nn.Module], Any]
#: Set by ``attributions()``, which returns the raw tensor only: the heatmap, a pass over
#: the attributions Captum called by hand does not make, is skipped (per thread and task).
_RAW_ONLY: ContextVar[bool] = ContextVar("timmlens_raw_attributions_only", default=False)


def attribution_heatmap(attributions: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """Per-pixel maps from input attributions: ``(B, C, H, W)`` -> ``(B, H, W)``.

    ``signed=False``: absolute value summed over channels, min-max normalised to [0, 1].
    ``signed=True``: plain sum over channels (polarity kept), divided by each map's largest
    absolute value, so values lie in [-1, 1] with 0 meaning "no effect".
    """
    if not signed:
        return normalize_maps(attributions.abs().sum(dim=1))
    return scaled_to_unit(attributions.sum(dim=1))


def scaled_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` maps divided by each one's largest absolute value (all-zero maps stay 0)."""
    scale = maps.flatten(1).abs().amax(dim=1).view(-1, 1, 1)
    return torch.where(scale > 0, maps / scale.clamp_min(1e-30), torch.zeros_like(maps))


def positive_heatmap(relevance: torch.Tensor) -> torch.Tensor:
    """LRP's unsigned map: ``(B, C, H, W)`` -> ``(B, H, W)``, the positive part of the
    relevance summed over channels, divided by each map's maximum (0 stays "no evidence").

    Min-max scaling of the signed sum would lift every zero-relevance pixel to the level of
    the most negative one, so the background would show as evidence.
    """
    return scaled_to_unit(relevance.sum(dim=1).float().clamp_min(0))


def describe_modules(modules: list[nn.Module]) -> str:
    """``"GELU (x3), LayerNorm (x2)"``: module types and counts, sorted by name."""
    counts = Counter(type(m).__name__ for m in modules)
    return ", ".join(f"{name} (x{count})" for name, count in sorted(counts.items()))


def refusal(model: nn.Module, problem: str, alternative: str) -> str:
    """Why ``model`` is refused; callers put the method's name in front (``"lrp: ..."``)."""
    adapter = get_adapter(model)
    return (
        f"{adapter.architecture} (family '{adapter.family}') is not covered: {problem} "
        f"Try {alternative} instead."
    )


class CaptumInputExplainer(Explainer):
    """A Captum input-attribution method with timm-aware defaults (see the module docstring).

    Usable as is for methods without method-specific settings, e.g.
    ``CaptumInputExplainer(model, captum.attr.Saliency, abs=False)``; every registered
    input method subclasses it directly, naming its Captum class (`captum_class`) and
    passing its own arguments through [`run`][].

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        attribution: ``forward_func -> attribution``: a Captum class such as
            ``captum.attr.InputXGradient``; ``None``: ``captum.attr.<captum_class>``.
        baseline: ``None`` for methods without one, else a name or tensor (see
            `make_baseline`), passed to Captum as ``baselines``.
        memory_budget_bytes: budget for automatic chunking; ``None``: half the free CUDA
            memory, 2 GiB elsewhere (`memory_budget`).
        signed: heatmaps keep polarity (sum over channels, scaled to [-1, 1]) instead of
            absolute values min-max scaled to [0, 1].
        seed: seed of random baselines (and of noise, for methods that draw some).
        **options: further keyword arguments of the attribution's ``attribute``.
    """

    #: the ``captum.attr`` class this method runs (when no ``attribution`` is given)
    captum_class: ClassVar[str] = ""
    #: forward rows per image in one pass (DeepLift runs inputs and baselines together)
    rows_per_image: int = 1
    #: Captum puts hooks or attributes on the model's modules: run inside the adapter's
    #: hygiene (`hooks_left_clean`), which leaves the model as found
    hooks_modules: ClassVar[bool] = False
    #: Captum keeps one input per module (DeepLift, LRP): a module run twice per forward
    #: is refused by name
    single_use_modules: ClassVar[bool] = False
    constant_map_causes = (
        "every input gradient is zero: ReLUs that are off everywhere and pass no gradient, "
        "random weights, or a target whose score does not depend on the input"
    )

    def __init__(
        self,
        model: nn.Module,
        attribution: AttributionFactory | None = None,
        *,
        baseline: BaselineSpec | None = None,
        memory_budget_bytes: int | None = None,
        signed: bool = False,
        seed: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(model)
        self._attribution = attribution
        self._options = options
        # activation bytes per sample by input shape: measured by a one-image forward the
        # first time a shape is seen, not on every call (that probe cost a forward each)
        self._sample_bytes: dict[tuple[Any, ...], int] = {}
        self.baseline = None if baseline is None else validate_baseline(baseline)
        self.memory_budget_bytes = check_budget(memory_budget_bytes)
        self.signed = bool(signed)
        self.seed = int(seed)

    @classmethod
    def unavailable_reason(cls, model: nn.Module) -> str | None:
        """Why the method cannot explain ``model`` (``None``: it can)."""
        del model
        return None

    # ----------------------------------------------------------- toolkit
    def captum_method(self, forward_func: nn.Module, device: torch.device) -> Any:
        """The Captum attribution over ``forward_func``, made per call (no shared state)."""
        del device
        if self._attribution is not None:
            return self._attribution(forward_func)
        if not self.captum_class:
            raise TypeError(f"{type(self).__name__} was given no Captum attribution method.")
        import captum.attr  # loaded on first use: Captum is heavy

        return getattr(captum.attr, self.captum_class)(forward_func)

    def baselines_for(self, inputs: torch.Tensor) -> torch.Tensor:
        """The baselines ``(B, C, H, W)`` used for preprocessed ``inputs`` ``(B, C, H, W)``."""
        if self.baseline is None:
            raise TypeError(f"{type(self).__name__} has no baseline.")
        return make_baseline(self.baseline, inputs, self.model, self.seed)

    def targets_for(
        self, inputs: torch.Tensor, targets: ResolvedTargets, also: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
        """Targets ``(B,)`` of ``inputs`` ``(B, C, H, W)``, with the probe when it runs.

        ``targets=None`` (or a callable target, or ``also``, more inputs to score) runs
        one no-grad forward of ``inputs`` (and ``also``) that resolves the predicted
        classes of the *clean* inputs (reported for a callable, which has no class) and
        measures the activation bytes per sample.

        Returns:
            ``(targets (B,) or the callable, probe logits (B [+ len(also)], K) or None,
            bytes or None)``.
        """
        if targets is None or isinstance(targets, CallableTargets) or also is not None:
            probe = inputs if also is None else torch.cat([inputs, also])
            logits, per_sample = forward_with_activation_bytes(self.model, probe)
            if targets is None:
                return logits[: inputs.shape[0]].argmax(dim=1), logits, per_sample
            chosen = target_rows(targets, logits.device)
            return chosen, logits, per_sample  # type: ignore[return-value]
        return target_rows(targets, inputs.device), None, None  # type: ignore[return-value]

    def capacity(self, inputs: torch.Tensor, bytes_per_sample: int | None = None) -> int:
        """Forward+backward images per chunk within the memory budget (at least 1)."""
        key = (tuple(inputs.shape[1:]), inputs.dtype, inputs.device)
        if bytes_per_sample is None:
            bytes_per_sample = self._sample_bytes.get(key)
        if bytes_per_sample is None:
            _, bytes_per_sample = forward_with_activation_bytes(self.model, inputs[:1])
        self._sample_bytes[key] = bytes_per_sample
        budget = memory_budget(inputs.device, "backward", self.memory_budget_bytes)
        return max(1, samples_per_chunk(bytes_per_sample, budget) // self.rows_per_image)

    @contextmanager
    def captum_call(self, forward: nn.Module) -> Iterator[None]:
        """The guard of one Captum call over ``forward`` (a `TargetScore` of the model).

        Refuses a model the method cannot explain; for methods that hook modules, the
        adapter's hygiene; for single-use methods, a module run twice per forward pass
        becomes an ``UnsupportedModelError`` naming it.
        """
        reason = self.unavailable_reason(self.model)
        if reason is not None:
            raise UnsupportedModelError(f"{self.name}: {reason}")
        with ExitStack() as stack:
            if self.hooks_modules:
                stack.enter_context(_captum.hooks_left_clean(self.model))
            if not self.single_use_modules:
                yield
                return
            reused = stack.enter_context(_captum.single_use_modules(self.model, forward))
            try:
                yield
            except Exception as exc:
                twice = reused()
                if not twice:
                    raise
                raise UnsupportedModelError(
                    f"{self.name}: "
                    + refusal(
                        self.model,
                        f"a module runs more than once in a forward pass "
                        f"({describe_modules(twice)}), and Captum's rules keep one input "
                        f"per module.",
                        "'ig' (Integrated Gradients) or 'gradientshap'",
                    )
                ) from exc

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        """Captum's raw attributions ``(B, C, H, W)`` for ``inputs`` and ``targets`` ``(B,)``."""
        forward = TargetScore(self.model)
        method = self.captum_method(forward, inputs.device)
        with self.captum_call(forward):
            result = method.attribute(inputs, additional_forward_args=(targets,), **arguments)
        return result.detach()

    def explanation(
        self, attributions: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor | None
    ) -> Explanation:
        """The [`Explanation`][] of raw ``attributions`` ``(B, C, H, W)``."""
        batch = attributions.shape[0]
        if _RAW_ONLY.get():  # attributions(): nobody sees the heatmap
            heatmap = attributions.new_zeros((batch, 0, 0))
        else:
            heatmap = attribution_heatmap(attributions, self.signed)
        return Explanation(
            heatmap=heatmap,
            targets=targets,
            logits=None if logits is None else logits[:batch],
            attributions=attributions,
        )

    def attributions(self, images: Any, target_class: Any = None) -> torch.Tensor:
        """Captum's raw attributions ``(B, C, H, W)`` for ``images`` (always batched).

        The same as Captum's ``attribute`` on ``TargetScore(model)`` with this
        explainer's settings; `explain_full` gives them with heatmaps and targets.
        """
        token = _RAW_ONLY.set(True)
        try:
            result = self.explain_full(images, target_class).attributions
        finally:
            _RAW_ONLY.reset(token)
        assert result is not None  # every Captum input method returns them
        return result

    # ----------------------------------------------------------- default
    def attribute(
        self, inputs: torch.Tensor, targets: ResolvedTargets, **kwargs: Any
    ) -> Explanation:
        """Explanation of ``inputs`` ``(B, C, H, W)``, in chunks of images that fit memory."""
        if kwargs:
            raise TypeError(f"unexpected arguments for {type(self).__name__}: {sorted(kwargs)}.")
        inputs = inputs.detach()
        chosen, logits, per_sample = self.targets_for(inputs, targets)
        arguments = dict(self._options)
        if self.baseline is not None:
            arguments["baselines"] = self.baselines_for(inputs)
        # equal chunks (4 + 4, not 7 + 1): a chunk of one image runs slower per image
        chunk = balanced_chunk(self.capacity(inputs, per_sample), inputs.shape[0])
        # Inputs that already require grad: Captum's gradient methods warn otherwise.
        parts = [
            self.run(
                inputs[lo : lo + chunk].detach().requires_grad_(True),
                chosen[lo : lo + chunk],
                **{k: v[lo : lo + chunk] if k == "baselines" else v for k, v in arguments.items()},
            )
            for lo in range(0, inputs.shape[0], chunk)
        ]
        return self.explanation(torch.cat(parts), chosen, logits)
