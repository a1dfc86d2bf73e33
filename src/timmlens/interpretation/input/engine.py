"""The input-attribution engine: one Captum wrapper with timm-aware defaults.

[`CaptumInputExplainer`][] runs a Captum attribution method on the input pixels:

* the target score is `TargetScore`, the
  targets travelling through Captum's ``additional_forward_args`` (so any expansion
  order of Captum's is right); ``None`` resolves to each image's predicted class in one
  no-grad probe forward, which also measures the activation memory per sample;
* baselines are named (``"black"``, ``"blur"``, ``"noise"``, ``"uniform"``) or tensors in
  normalised input space (`make_baseline`);
* work is chunked by memory: `samples_per_chunk` of the budget from
  `memory_budget` (kind ``"backward"``);
* the ``(B, C, H, W)`` attributions become a ``(B, H, W)`` heatmap
  (`attribution_heatmap`), and both are returned in an
  [`Explanation`][timmlens.interpretation.base.Explanation].

The functions here are the toolkit IG and SmoothGrad share. All tensors live in
model-input (normalised) space, on the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args

import torch
import torchvision.transforms.functional as TF
from torch import nn

from ...data import normalization
from .._targets import CallableTargets, ResolvedTargets, TargetScore, target_rows
from ..base import Explainer, Explanation, normalize_maps
from ..scoring import memory_budget

BaselineName = Literal["black", "blur", "noise", "uniform"]
BaselineSpec = BaselineName | torch.Tensor
BASELINE_NAMES: tuple[str, ...] = get_args(BaselineName)

#: A backward pass keeps roughly every forward activation plus its gradient alive.
ACTIVATION_BYTES_FACTOR = 2.0
#: "blur" baseline: Gaussian sigma as a fraction of the shorter image side (28 px at 224).
BLUR_SIGMA_FRACTION = 1 / 8
#: "noise" baseline: pixel values ~ N(0.5, 0.25^2), clipped to [0, 1].
NOISE_PIXEL_MEAN, NOISE_PIXEL_STD = 0.5, 0.25
#: ``forward_func -> attribution``: a Captum attribution class, or a factory of one.
AttributionFactory = Callable[[nn.Module], Any]


def attribution_heatmap(attributions: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """Per-pixel maps from input attributions: ``(B, C, H, W)`` -> ``(B, H, W)``.

    ``signed=False``: absolute value summed over channels, min-max normalised to [0, 1].
    ``signed=True``: plain sum over channels (polarity kept), divided by each map's largest
    absolute value, so values lie in [-1, 1] with 0 meaning "no effect".
    """
    if not signed:
        return normalize_maps(attributions.abs().sum(dim=1))
    maps = attributions.sum(dim=1)
    scale = maps.flatten(1).abs().amax(dim=1).view(-1, 1, 1)
    return torch.where(scale > 0, maps / scale.clamp_min(1e-30), torch.zeros_like(maps))


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (list, tuple)):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)


@torch.no_grad()
def forward_with_activation_bytes(
    model: nn.Module, inputs: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """One no-grad forward that also measures activation memory.

    Forward hooks on every leaf module add up the bytes of their outputs; that is close
    to what autograd keeps for the backward pass (an overestimate where modules work in
    place, an underestimate for fused kernels, which `ACTIVATION_BYTES_FACTOR`
    covers).

    Returns:
        The model's output for ``inputs`` ``(B, K)`` and the activation bytes per sample.
    """
    total = 0

    def count(_module: nn.Module, _args: Any, output: Any) -> None:
        nonlocal total
        total += sum(t.numel() * t.element_size() for t in _tensors(output))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        logits = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    per_sample = inputs[0].numel() * inputs.element_size() + total // inputs.shape[0]
    return logits, max(1, per_sample)


def samples_per_chunk(bytes_per_sample: int, budget_bytes: int) -> int:
    """How many forward+backward samples fit the budget (at least 1).

    ``budget_bytes`` comes from `memory_budget`
    (kind ``"backward"``).

    Rule: ``budget // (ACTIVATION_BYTES_FACTOR * bytes_per_sample)``, with
    ``bytes_per_sample`` from `forward_with_activation_bytes`.
    """
    return max(1, int(budget_bytes // (ACTIVATION_BYTES_FACTOR * bytes_per_sample)))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with reflect padding (torchvision): ``(B, C, H, W)`` -> same shape.

    The kernel spans ``+-3 sigma`` (odd size), cut to ``2 * min(H, W) - 1`` so reflect
    padding stays valid. Blur and per-channel normalisation commute (the kernel sums to
    one), so normalised inputs may be blurred directly.
    """
    height, width = images.shape[-2:]
    radius = min(math.ceil(3 * sigma), min(height, width) - 1)
    if sigma <= 0 or radius < 1:
        return images.clone()
    size = 2 * radius + 1
    return TF.gaussian_blur(images, [size, size], [sigma, sigma])


def validate_baseline(baseline: Any) -> BaselineSpec:
    """Check a baseline spec at construction time (names and tensor ranks)."""
    if isinstance(baseline, torch.Tensor):
        if not baseline.is_floating_point():
            raise ValueError(
                f"baseline tensor has dtype {baseline.dtype}; expected a float tensor in the "
                f"model's normalised input space (shape (C, H, W), (1, C, H, W) or (B, C, H, W))."
            )
        if baseline.ndim > 4 or baseline.numel() == 0:
            raise ValueError(
                f"baseline tensor of shape {tuple(baseline.shape)} cannot broadcast to a "
                f"(B, C, H, W) batch; expected (C, H, W), (1, C, H, W), (B, C, H, W) or "
                f"(C, 1, 1)."
            )
        if not torch.isfinite(baseline).all():
            raise ValueError("baseline tensor contains NaN or inf.")
        return baseline
    if not isinstance(baseline, str) or baseline not in BASELINE_NAMES:
        raise ValueError(
            f"unknown baseline {baseline!r}; expected one of {', '.join(BASELINE_NAMES)} or a "
            f"tensor in normalised input space broadcastable to (B, C, H, W). Try 'black'."
        )
    return baseline


def make_baseline(
    baseline: BaselineSpec, inputs: torch.Tensor, model: nn.Module, seed: int = 0
) -> torch.Tensor:
    """The IG start point for ``inputs`` ``(B, C, H, W)``, in normalised input space.

    * ``"black"``: the black picture (pixel 0), i.e. ``(0 - mean) / std`` per channel.
    * ``"blur"``: the input blurred with sigma ``min(H, W) / 8`` (`gaussian_blur`).
    * ``"noise"``: pixels ~ ``N(0.5, 0.25^2)`` clipped to [0, 1], then normalised.
    * ``"uniform"``: pixels ~ ``U[0, 1]``, then normalised.
    * a tensor: taken as normalised input, broadcast to the batch.

    Random baselines are drawn from a generator seeded with ``seed`` on the inputs'
    device, one ``(1, C, H, W)`` picture shared by the batch, so an image gets the same
    baseline alone or inside any batch.

    Returns:
        A contiguous ``(B, C, H, W)`` tensor on ``inputs``' device and dtype.
    """
    baseline = validate_baseline(baseline)
    if isinstance(baseline, torch.Tensor):
        try:
            shape = torch.broadcast_shapes(baseline.shape, inputs.shape)
        except RuntimeError:
            shape = None
        if shape != inputs.shape:
            raise ValueError(
                f"baseline tensor of shape {tuple(baseline.shape)} does not broadcast to the "
                f"input batch {tuple(inputs.shape)}; expected (C, H, W) = "
                f"{tuple(inputs.shape[1:])}, (1, C, H, W) or (B, C, H, W). Build it at the "
                f"model's input size, or use baseline='black'."
            )
        out = baseline.to(device=inputs.device, dtype=inputs.dtype).expand(inputs.shape)
        return out.contiguous()
    if baseline == "blur":
        sigma = min(inputs.shape[-2:]) * BLUR_SIGMA_FRACTION
        return gaussian_blur(inputs.detach(), sigma)
    mean, std = normalization(model, inputs)
    one = (1, *inputs.shape[1:])
    if baseline == "black":
        pixels = torch.zeros(one, device=inputs.device, dtype=inputs.dtype)
    else:
        generator = torch.Generator(device=inputs.device).manual_seed(seed)
        if baseline == "noise":
            draw = torch.randn(one, generator=generator, device=inputs.device)
            pixels = (NOISE_PIXEL_MEAN + NOISE_PIXEL_STD * draw).clamp(0, 1)
        else:  # "uniform"
            pixels = torch.rand(one, generator=generator, device=inputs.device)
        pixels = pixels.to(inputs.dtype)
    return ((pixels - mean) / std).expand(inputs.shape).contiguous()


def check_positive_int(value: Any, name: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}. {hint}")
    return value


def check_budget(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"memory_budget_bytes must be a positive integer number of bytes or None (auto), "
            f"got {value!r}. Try 2 * 2**30 for 2 GiB."
        )
    return value


class CaptumInputExplainer(Explainer):
    """A Captum input-attribution method with timm-aware defaults (see the module docstring).

    Usable as is for methods without method-specific chunking, e.g.
    ``CaptumInputExplainer(model, captum.attr.Saliency, abs=False)``; IG and SmoothGrad
    subclass it and pass their own arguments through [`run`][].

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        attribution: ``forward_func -> attribution``: a Captum class such as
            ``captum.attr.InputXGradient`` (subclasses may override [`captum_method`][]).
        baseline: ``None`` for methods without one, else a name or tensor (see
            `make_baseline`), passed to Captum as ``baselines``.
        memory_budget_bytes: budget for automatic chunking; ``None``: half the free CUDA
            memory, 2 GiB elsewhere (`memory_budget`).
        signed: heatmaps keep polarity (sum over channels, scaled to [-1, 1]) instead of
            absolute values min-max scaled to [0, 1].
        seed: seed of random baselines (and of noise, for methods that draw some).
        **options: further keyword arguments of the attribution's ``attribute``.
    """

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

    # ----------------------------------------------------------- toolkit
    def captum_method(self, forward_func: nn.Module, device: torch.device) -> Any:
        """The Captum attribution over ``forward_func``, made per call (no shared state)."""
        del device
        if self._attribution is None:
            raise TypeError(f"{type(self).__name__} was given no Captum attribution method.")
        return self._attribution(forward_func)

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
        """Forward+backward samples per chunk within the memory budget (at least 1)."""
        key = (tuple(inputs.shape[1:]), inputs.dtype, inputs.device)
        if bytes_per_sample is None:
            bytes_per_sample = self._sample_bytes.get(key)
        if bytes_per_sample is None:
            _, bytes_per_sample = forward_with_activation_bytes(self.model, inputs[:1])
        self._sample_bytes[key] = bytes_per_sample
        budget = memory_budget(inputs.device, "backward", self.memory_budget_bytes)
        return samples_per_chunk(bytes_per_sample, budget)

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        """Captum's raw attributions ``(B, C, H, W)`` for ``inputs`` and ``targets`` ``(B,)``."""
        method = self.captum_method(TargetScore(self.model), inputs.device)
        return method.attribute(inputs, additional_forward_args=(targets,), **arguments).detach()

    def explanation(
        self, attributions: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor | None
    ) -> Explanation:
        """The [`Explanation`][] of raw ``attributions`` ``(B, C, H, W)``."""
        batch = attributions.shape[0]
        return Explanation(
            heatmap=attribution_heatmap(attributions, self.signed),
            targets=targets,
            logits=None if logits is None else logits[:batch],
            attributions=attributions,
        )

    def attributions(self, images: Any, target_class: Any = None) -> torch.Tensor:
        """Captum's raw attributions ``(B, C, H, W)`` for ``images`` (always batched).

        The same as Captum's ``attribute`` on ``TargetScore(model)`` with this
        explainer's settings; `explain_full` gives them with heatmaps and targets.
        """
        result = self.explain_full(images, target_class).attributions
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
        chunk = self.capacity(inputs, per_sample)
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
