"""Captum's gradient and reference attribution methods on the input pixels.

Each method is a small subclass of
[`CaptumInputExplainer`][timmlens.interpretation.input.engine.CaptumInputExplainer]
naming its Captum class; the engine supplies targets (through ``additional_forward_args``), named
baselines, memory-sized chunks of images and the heatmap.

* gradient methods: ``saliency`` (``dy/dx``), ``inputxgradient`` (``x * dy/dx``),
  ``guidedbackprop`` and ``deconvolution`` (ReLU backward replaced), ``guidedgradcam``
  (guided backprop times the upsampled GradCAM of the adapter's layer, on its spatial
  tap);
* reference methods: ``deeplift`` (Rescale rule against a baseline, black pixels by
  default), ``deepliftshap`` (DeepLift averaged over a seeded distribution of baselines:
  the baseline and noisy copies of it), ``gradientshap`` (expected gradients over random
  points between the input and baselines drawn from that distribution);
* ``lrp``: Captum's epsilon-LRP, where Captum has a rule for every module.

``explainer.attributions(images, target_class)`` gives Captum's raw ``(B, C, H, W)``
attributions, equal to Captum called directly on ``TargetScore(model)`` with the same
settings. **Heatmap reduction**: by default the absolute value summed over colour
channels, min-max scaled to [0, 1] per image; ``signed=True`` keeps the polarity (plain
sum over channels, divided by the largest absolute value, in [-1, 1])
(`attribution_heatmap`).

Model hygiene: guided backprop, deconvolution, DeepLift and LRP put hooks on modules.
During a call ``nn.ReLU(inplace=True)`` modules are switched to ``inplace=False`` (their
hooks need the input kept), attributes Captum leaves on modules are removed, and both
are restored afterwards, under the model lock of the explanation guard. DeepLift and
LRP only have rules for some module types: a model with others is refused up front
([`UnsupportedModelError`][timmlens.errors.UnsupportedModelError] naming the method, the family, the
modules and an alternative), because Captum would treat them as linear and return
wrong attributions without a word.

Randomness (``gradientshap``): Captum draws from the global torch and numpy generators;
each image's call runs inside ``torch.random.fork_rng`` and a saved numpy state, seeded
with ``seed``, so the global state is left as found and an image gets the same
attributions alone or inside any batch (one Captum call per image).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..._warnings import warn_caller
from ...adapters import LayerSpec, get_adapter, spatial_tap
from ...errors import LayerResolutionError, UnsupportedModelError
from .._targets import TargetScore
from ..cam.engine import InterpolationMode
from ..registry import register_method
from .engine import (
    BaselineSpec,
    CaptumInputExplainer,
    check_positive_int,
    make_baseline,
    validate_baseline,
)

__all__ = [
    "LRP",
    "Deconvolution",
    "DeepLift",
    "DeepLiftShap",
    "GradientShap",
    "GuidedBackprop",
    "GuidedGradCam",
    "InputXGradient",
    "Saliency",
    "reference_distribution",
]

#: Captum's warnings that it sets hooks (on every call): expected here, not news.
_CAPTUM_HOOK_WARNINGS = r"Setting (backward hooks on ReLU|forward, backward hooks)"
#: Modules that compute nothing LRP has to redistribute: relevance passes unchanged.
_PASS_THROUGH = (nn.Identity, nn.Flatten)
#: Modules linear in their input at eval time: DeepLift's plain gradient is exact there.
_LINEAR = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.dropout._DropoutNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.ZeroPad2d,
    nn.Unflatten,
    *_PASS_THROUGH,
)


def _leaves(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if next(m.children(), None) is None)


def _describe(modules: list[nn.Module]) -> str:
    counts = Counter(type(m).__name__ for m in modules)
    return ", ".join(f"{name} (x{count})" for name, count in sorted(counts.items()))


def _refusal(model: nn.Module, problem: str, alternative: str) -> str:
    """Why ``model`` is refused; callers put the method's name in front (``"lrp: ..."``)."""
    adapter = get_adapter(model)
    return (
        f"{adapter.architecture} (family '{adapter.family}') is not covered: {problem} "
        f"Try {alternative} instead."
    )


def reference_distribution(
    baseline: BaselineSpec,
    inputs: torch.Tensor,
    model: nn.Module,
    count: int,
    noise: float,
    seed: int,
) -> torch.Tensor:
    """A seeded distribution of ``count`` baselines ``(count, C, H, W)`` for ``inputs``.

    A named baseline (one picture for the whole batch, see
    `make_baseline`) and ``count - 1`` copies
    of it plus Gaussian pixel noise of std ``noise`` (pixel units, then normalised),
    drawn from a generator seeded with ``seed`` on the inputs' device. A tensor
    ``(k, C, H, W)`` is the distribution itself.
    """
    if isinstance(baseline, torch.Tensor) and baseline.ndim == 4:
        return baseline.to(device=inputs.device, dtype=inputs.dtype)
    base = make_baseline(baseline, inputs[:1], model, seed)
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    shape = (count - 1, *inputs.shape[1:])
    draws = torch.randn(shape, generator=generator, device=inputs.device).to(inputs.dtype)
    from ...data import normalization

    _, std = normalization(model, inputs)
    return torch.cat([base, base + noise * draws / std])


@contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Global torch (CPU and ``device``) and numpy generators seeded, restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            index = device.index if device.index is not None else torch.cuda.current_device()
            torch.cuda.default_generators[index].manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


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
def _hooks_left_clean(model: nn.Module) -> Iterator[None]:
    """ReLUs out of place during the block; flags and module attributes restored after."""
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
            warnings.filterwarnings("ignore", message=_CAPTUM_HOOK_WARNINGS)
            yield
    finally:
        for handle in handles:
            handle.remove()
        for module in inplace:
            module.inplace = True
        for module, attributes in before.items():
            for name in set(vars(module)) - set(attributes):  # Captum's input/output, rules
                delattr(module, name)
            for name in set(attributes) - set(vars(module)):  # LRP deletes a user's rules
                setattr(module, name, attributes[name])


class _CaptumMethod(CaptumInputExplainer):
    """A Captum class by name, with the hook hygiene and refusals of the module docstring."""

    #: the ``captum.attr`` class this method runs
    captum_class: ClassVar[str] = ""
    #: forward rows per image in one pass (DeepLift runs inputs and baselines together)
    rows_per_image: int = 1

    def __init__(self, model: nn.Module, *, signed: bool = False, **options: Any) -> None:
        super().__init__(model, signed=signed, **options)

    @classmethod
    def unavailable_reason(cls, model: nn.Module) -> str | None:
        """Why the method cannot explain ``model`` (``None``: it can)."""
        del model
        return None

    def captum_method(self, forward_func: nn.Module, device: torch.device) -> Any:
        import captum.attr

        return getattr(captum.attr, self.captum_class)(forward_func)

    def capacity(self, inputs: torch.Tensor, bytes_per_sample: int | None = None) -> int:
        return max(1, super().capacity(inputs, bytes_per_sample) // self.rows_per_image)

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        reason = self.unavailable_reason(self.model)
        if reason is not None:
            raise UnsupportedModelError(f"{self.name}: {reason}")
        with _hooks_left_clean(self.model):
            try:
                return super().run(inputs, targets, **arguments)
            except RuntimeError as exc:
                if "more than once" not in str(exc) and "does not contain some" not in str(exc):
                    raise
                raise UnsupportedModelError(
                    f"{self.name}: "
                    + _refusal(
                        self.model,
                        "one of its modules runs more than once in a forward pass, and "
                        "Captum's rules keep one input per module.",
                        "'ig' (Integrated Gradients) or 'gradientshap'",
                    )
                ) from exc


# ------------------------------------------------------------------ gradient methods
@register_method(
    "saliency",
    title="Saliency",
    kind="input",
    compared_by_default=False,
    aliases=("gradient", "vanilla_gradient"),
    summary="input gradient of the class score (pixel-level, any model, 1 backward)",
    paper="Simonyan et al., Deep Inside Convolutional Networks, ICLR workshop 2014",
    formula="dy/dx (signed; the heatmap takes |.| summed over channels)",
    cost="1 forward + 1 backward",
)
class Saliency(_CaptumMethod):
    """The input gradient ``dy/dx`` via ``captum.attr.Saliency(abs=False)``.

    Raw attributions keep the sign (Captum's ``abs=False``); the default heatmap takes
    the absolute value, as the paper does.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        signed: heatmaps keep polarity instead of ``|.|`` summed over channels.
    """

    captum_class = "Saliency"

    def __init__(self, model: nn.Module, *, signed: bool = False) -> None:
        super().__init__(model, signed=signed, abs=False)


@register_method(
    "inputxgradient",
    title="Input x Gradient",
    kind="input",
    compared_by_default=False,
    aliases=("input_x_gradient", "gradientxinput"),
    summary="input times its gradient (pixel-level, any model, 1 backward)",
    paper="Shrikumar et al., Not Just a Black Box, 2016",
    formula="x * dy/dx",
    cost="1 forward + 1 backward",
)
class InputXGradient(_CaptumMethod):
    """``x * dy/dx`` via ``captum.attr.InputXGradient`` (``x`` in normalised input space).

    Args: as `Saliency`.
    """

    captum_class = "InputXGradient"


class _ReluRuleMethod(_CaptumMethod):
    """A method whose rule replaces the backward of ``nn.ReLU`` modules (Captum's hook).

    Where no ``nn.ReLU`` module runs (ReLU6 in EfficientNet-Lite and MobileNetV2, SiLU,
    GELU), the rule changes nothing and the map equals saliency's: that is said once, at
    construction, rather than handing back a saliency map under another name.
    """

    def __init__(self, model: nn.Module, *, signed: bool = False, **options: Any) -> None:
        super().__init__(model, signed=signed, **options)
        if not any(isinstance(module, nn.ReLU) for module in self.model.modules()):
            others = sorted(
                {
                    type(module).__name__
                    for module in self.model.modules()
                    if isinstance(module, (nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish))
                }
            )
            found = f" (its activations: {', '.join(others)})" if others else ""
            warn_caller(
                f"{self.name}: this model has no nn.ReLU module{found}, and Captum's "
                f"{self.captum_class} rule replaces the backward of nn.ReLU only, so the "
                f"result equals 'saliency'. Use a ReLU network for this method, or "
                f"'saliency' / 'ig' for this one."
            )


@register_method(
    "guidedbackprop",
    title="Guided Backprop",
    kind="input",
    compared_by_default=False,
    aliases=("guided_backprop", "guided_backpropagation"),
    summary="gradient with only positive signals through each ReLU (sharp edges)",
    paper="Springenberg et al., Striving for Simplicity, ICLR workshop 2015",
    formula="dy/dx with ReLU backward g -> ReLU(g) * [x > 0]",
    cost="1 forward + 1 backward",
    applies_to=(
        "every model; where no nn.ReLU module runs (GELU in ViTs, ReLU6 in "
        "EfficientNet-Lite) it equals saliency, and a warning says so"
    ),
)
class GuidedBackprop(_ReluRuleMethod):
    """Guided backpropagation via ``captum.attr.GuidedBackprop``.

    Captum overrides the backward of ``nn.ReLU`` modules only; functional ReLUs and other
    activations keep their plain gradient.

    Args: as `Saliency`.
    """

    captum_class = "GuidedBackprop"


@register_method(
    "deconvolution",
    title="Deconvolution",
    kind="input",
    compared_by_default=False,
    aliases=("deconvnet",),
    summary="backward pass with ReLU applied to the gradient, not gated by the input",
    paper="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014",
    formula="dy/dx with ReLU backward g -> ReLU(g)",
    cost="1 forward + 1 backward",
    applies_to=(
        "every model; where no nn.ReLU module runs (GELU in ViTs, ReLU6 in "
        "EfficientNet-Lite) it equals saliency, and a warning says so"
    ),
)
class Deconvolution(_ReluRuleMethod):
    """Deconvnet attribution via ``captum.attr.Deconvolution`` (``nn.ReLU`` modules).

    Args: as `Saliency`.
    """

    captum_class = "Deconvolution"


@register_method(
    "guidedgradcam",
    title="Guided GradCAM",
    kind="input",
    compared_by_default=False,
    aliases=("guided_gradcam",),
    summary="guided backprop times the upsampled GradCAM of the adapter's layer",
    paper="Selvaraju et al., Grad-CAM, ICCV 2017",
    formula="GuidedBackprop(x) * upsample(ReLU(sum_k mean_ij(g_kij) A_k))",
    cost="2 forwards + 2 backwards (GradCAM, guided backprop)",
    uses_layer=True,
)
class GuidedGradCam(_CaptumMethod):
    """Guided GradCAM via ``captum.attr.GuidedGradCam`` on the adapter's spatial tap.

    The GradCAM layer is seen as ``(B, C, h, w)`` whatever the family's layout (the
    same tap as [`GradCAM`][timmlens.interpretation.cam.gradcam.GradCAM]), so Captum's own
    ``GuidedGradCam`` runs on CNNs, ViTs and Swin alike: the element-wise product of
    guided backprop and the ReLU'd GradCAM upsampled to the input.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        target_layer: one layer (dotted name or module); ``None``: the family's default
            CAM layer.
        interpolate: GradCAM upsampling mode; ``"bilinear"`` as in the paper (Captum's
            default is ``"nearest"``).
        signed: heatmaps keep polarity instead of ``|.|`` summed over channels.
    """

    captum_class = "GuidedGradCam"
    rows_per_image = 2

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        interpolate: InterpolationMode = "bilinear",
        *,
        signed: bool = False,
    ) -> None:
        super().__init__(model, signed=signed)
        self.adapter = get_adapter(model)
        with self.adapter.layer_errors_of(self.name):
            layers = self.adapter.resolve_layers(target_layer)
        if len(layers) != 1:
            raise LayerResolutionError(
                f"guidedgradcam takes one layer, got {len(layers)} "
                f"({', '.join(layer.name for layer in layers)}); pass one name, e.g. "
                f"{self.adapter.recommended_layers[0]!r}."
            )
        self.layer = layers[0]
        self.interpolate: InterpolationMode = interpolate

    @property
    def layer_names(self) -> list[str]:
        """The GradCAM layer's dotted name."""
        return [self.layer.name]

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        from captum.attr import GuidedGradCam as CaptumGuidedGradCam

        layer = self.layer
        with (
            self.adapter.layer_errors_of(self.name),
            spatial_tap(self.model, layer.module, layer.name, self.adapter.layout_for) as view,
            _hooks_left_clean(self.model),
        ):
            method = CaptumGuidedGradCam(TargetScore(self.model), view)
            return method.attribute(
                inputs,
                additional_forward_args=(targets,),
                interpolate_mode=self.interpolate,
                **arguments,
            ).detach()


# ----------------------------------------------------------------- reference methods
_DEEPLIFT_APPLIES_TO = (
    "CNNs of ReLU/ELU/Sigmoid/Tanh/MaxPool modules (ResNet, VGG, RegNet); refuses "
    "GELU/SiLU/LayerNorm families (ViT, ConvNeXt, EfficientNet, Swin)"
)


def _deeplift_reason(model: nn.Module) -> str | None:
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    bad = [
        m
        for m in _leaves(model)
        if type(m) not in SUPPORTED_NON_LINEAR and not isinstance(m, _LINEAR)
    ]
    if not bad:
        return None
    return _refusal(
        model,
        f"Captum's DeepLift has rules for ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, "
        f"MaxPool and Softmax modules and would treat these as linear, giving wrong "
        f"attributions: {_describe(bad)}.",
        "'ig' (Integrated Gradients, the same baseline idea with exact gradients) or "
        "'gradientshap'",
    )


@register_method(
    "deeplift",
    title="DeepLift",
    kind="input",
    compared_by_default=False,
    summary="Rescale-rule contributions against a baseline (black), one backward",
    paper="Shrikumar et al., Learning Important Features Through Propagating "
    "Activation Differences, ICML 2017",
    formula="(x - x') * m, m: Rescale multipliers dy/dx with (f(a) - f(a')) / (a - a') "
    "at each nonlinearity",
    cost="1 forward + 1 backward of 2B rows (inputs and baselines)",
    applies_to=_DEEPLIFT_APPLIES_TO,
)
class DeepLift(_CaptumMethod):
    """DeepLift (Rescale rule) via ``captum.attr.DeepLift``.

    Args:
        model: an ``ImageClassifier`` or a bare timm model with modules DeepLift covers.
        baseline: ``"black"`` (default), ``"blur"``, ``"noise"``, ``"uniform"`` or a
            tensor (see `make_baseline`).
        signed: heatmaps keep polarity instead of ``|.|`` summed over channels.
        seed: seed of random baselines.
    """

    captum_class = "DeepLift"
    rows_per_image = 2

    def __init__(
        self,
        model: nn.Module,
        baseline: BaselineSpec = "black",
        *,
        signed: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(model, baseline=baseline, signed=signed, seed=seed)

    @classmethod
    def unavailable_reason(cls, model: nn.Module) -> str | None:
        return _deeplift_reason(model)


class _ShapMethod(_CaptumMethod):
    """A method over a seeded distribution of baselines (`reference_distribution`)."""

    def __init__(
        self,
        model: nn.Module,
        baseline: BaselineSpec,
        n_baselines: int,
        baseline_noise: float,
        *,
        signed: bool,
        seed: int,
    ) -> None:
        super().__init__(model, signed=signed, seed=seed)
        baseline = validate_baseline(baseline)
        if isinstance(baseline, str) and baseline == "blur":
            raise ValueError(
                f"{type(self).__name__} needs baselines shared by the batch, and 'blur' is one "
                f"per image; use 'black', 'noise', 'uniform' or a (k, C, H, W) tensor."
            )
        self.reference = baseline
        self.n_baselines = check_positive_int(n_baselines, "n_baselines", "Try 8.")
        if not isinstance(baseline_noise, (int, float)) or not 0 <= baseline_noise < float("inf"):
            raise ValueError(
                f"baseline_noise must be a finite number >= 0 (pixel std), got "
                f"{baseline_noise!r}. Try 0.1."
            )
        self.baseline_noise = float(baseline_noise)

    def references(self, inputs: torch.Tensor) -> torch.Tensor:
        """The baseline distribution ``(k, C, H, W)`` for ``inputs`` ``(B, C, H, W)``."""
        return reference_distribution(
            self.reference, inputs, self.model, self.n_baselines, self.baseline_noise, self.seed
        )


@register_method(
    "deepliftshap",
    title="DeepLiftShap",
    kind="input",
    compared_by_default=False,
    aliases=("deeplift_shap",),
    summary="DeepLift averaged over a seeded distribution of baselines (SHAP values)",
    paper="Lundberg & Lee, A Unified Approach to Interpreting Model Predictions, NeurIPS 2017",
    formula="mean_k DeepLift(x; x'_k), x'_k = black + N(0, 0.1^2) pixels (k = 8)",
    cost="1 forward + 1 backward of 2 k B rows",
    applies_to=_DEEPLIFT_APPLIES_TO,
    quick_options={"n_baselines": 2},
)
class DeepLiftShap(_ShapMethod):
    """DeepLiftShap via ``captum.attr.DeepLiftShap`` over `references`.

    Args:
        model: as `DeepLift`.
        baseline: centre of the distribution: ``"black"`` (default), ``"noise"``,
            ``"uniform"``, or a ``(k, C, H, W)`` tensor used as the distribution itself.
        n_baselines: ``k``, the baseline itself and ``k - 1`` noisy copies.
        baseline_noise: pixel std of the copies' Gaussian noise.
        signed: heatmaps keep polarity instead of ``|.|`` summed over channels.
        seed: seed of the distribution.
    """

    captum_class = "DeepLiftShap"

    def __init__(
        self,
        model: nn.Module,
        baseline: BaselineSpec = "black",
        n_baselines: int = 8,
        baseline_noise: float = 0.1,
        *,
        signed: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(model, baseline, n_baselines, baseline_noise, signed=signed, seed=seed)
        self.rows_per_image = 2 * self.n_baselines

    @classmethod
    def unavailable_reason(cls, model: nn.Module) -> str | None:
        return _deeplift_reason(model)

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        return super().run(inputs, targets, baselines=self.references(inputs), **arguments)


@register_method(
    "gradientshap",
    title="GradientShap",
    kind="input",
    compared_by_default=False,
    aliases=("gradient_shap", "expected_gradients"),
    summary="expected gradients at random points between noisy input and random baselines",
    paper="Lundberg & Lee, A Unified Approach to Interpreting Model Predictions, NeurIPS 2017",
    formula="mean_j (x - x'_j) * dy/dx(x'_j + a_j (x + e_j - x'_j)), a ~ U[0,1], "
    "e ~ N(0, stdevs^2), x'_j from the baselines",
    cost="n_samples forwards + n_samples backwards per image (n_samples=16)",
    quick_options={"n_samples": 4, "n_baselines": 2},
)
class GradientShap(_ShapMethod):
    """GradientShap via ``captum.attr.GradientShap``, seeded per image.

    Captum draws the baselines, the path points and the noise from the global numpy and
    torch generators; each image runs in its own call under `_seeded_global_rng`
    (seed ``seed``; global state restored), so results are reproducible and the same
    alone or in any batch.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        n_samples: random points per image.
        stdevs: std of Captum's Gaussian input noise (normalised input units).
        baseline: the baseline distribution's centre, as `DeepLiftShap`.
        n_baselines: baselines drawn per image, as `DeepLiftShap`.
        baseline_noise: the spread of the drawn baselines, as `DeepLiftShap`.
        signed: heatmaps keep polarity instead of ``|.|`` summed over channels.
        seed: seed of the distribution and of Captum's draws.
    """

    captum_class = "GradientShap"

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 16,
        stdevs: float = 0.0,
        baseline: BaselineSpec = "black",
        n_baselines: int = 8,
        baseline_noise: float = 0.1,
        *,
        signed: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(model, baseline, n_baselines, baseline_noise, signed=signed, seed=seed)
        self.n_samples = check_positive_int(n_samples, "n_samples", "Try 16.")
        if not isinstance(stdevs, (int, float)) or not 0 <= stdevs < float("inf"):
            raise ValueError(f"stdevs must be a finite number >= 0, got {stdevs!r}. Try 0.0.")
        self.stdevs = float(stdevs)

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        references = self.references(inputs)
        parts = []
        for i in range(inputs.shape[0]):
            with _seeded_global_rng(self.seed, inputs.device):
                parts.append(
                    super().run(
                        inputs[i : i + 1],
                        targets[i : i + 1],
                        baselines=references,
                        n_samples=self.n_samples,
                        stdevs=self.stdevs,
                        **arguments,
                    )
                )
        return torch.cat(parts)


# ---------------------------------------------------------------------------- LRP
@cache
def _lrp_class() -> type:
    from captum.attr import LRP as CaptumLRP  # Captum loads on first use

    class PassThroughLRP(CaptumLRP):
        """Captum's LRP without rules on pass-through modules (relevance goes through)."""

        def _get_layers(self, model: nn.Module) -> None:
            super()._get_layers(model)
            self.layers = [m for m in self.layers if not isinstance(m, _PASS_THROUGH)]

        def _forward_fn_wrapper(self, *inputs: Any) -> torch.Tensor:
            # Captum's ``input + 0`` (a workaround for pytorch#35802) on tensors only, so
            # a callable target travels through additional_forward_args as it is.
            adjusted = (x + 0 if isinstance(x, torch.Tensor) else x for x in inputs)
            return self.model(*adjusted)

    return PassThroughLRP


@register_method(
    "lrp",
    title="LRP (epsilon)",
    kind="input",
    compared_by_default=False,
    aliases=("layerwise_relevance_propagation",),
    summary="layer-wise relevance propagation with Captum's epsilon rules",
    paper="Bach et al., On Pixel-Wise Explanations by Layer-Wise Relevance Propagation, "
    "PLoS ONE 2015",
    formula="R_i = sum_j a_i w_ij / (z_j + eps sign(z_j)) R_j, from R = y at the output "
    "(eps = 0.25)",
    cost="2 forwards + 1 backward",
    applies_to="models of Conv2d, Linear, BatchNorm2d, pooling, ReLU, Dropout, Tanh modules "
    "(ResNet, VGG); refuses the others",
)
class LRP(_CaptumMethod):
    """Epsilon-LRP via ``captum.attr.LRP`` and its default rules.

    Captum's rules cover ``Conv2d``, ``Linear``, ``BatchNorm2d``, max/average pooling,
    ``ReLU``, ``Dropout`` and ``Tanh`` (a module may also carry its own ``rule``).
    Every covered module without a ``rule`` of its own gets ``EpsilonRule(epsilon)``
    for the call: ``epsilon=0.25`` by default (LRP-epsilon as recommended for middle
    layers by Montavon et al. 2019); Captum's own default, ``1e-9``, is LRP-0, which
    explodes where a BatchNorm output is near zero (relevances of 1e5 on a random-init
    ResNet, and a batch no longer equal to its images one by one). ``epsilon=1e-9``
    reproduces Captum's default rules exactly.
    ``nn.Identity`` and ``nn.Flatten`` compute nothing, so they get no rule and
    relevance passes through them unchanged (Captum itself rejects them). Other modules
    are refused up front, as are modules with parameters of their own besides children
    (e.g. timm's ``BatchNormAct2d``, a ViT's position embedding), whose arithmetic no
    rule covers.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        epsilon: the stabiliser of the epsilon rule (> 0).
        signed: heatmaps keep polarity instead of ``|.|`` summed over channels.
    """

    captum_class = "LRP"

    def __init__(self, model: nn.Module, epsilon: float = 0.25, *, signed: bool = False) -> None:
        super().__init__(model, signed=signed)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
            raise ValueError(
                f"epsilon must be a number > 0, got {epsilon!r}. Try 0.25 (LRP-epsilon), or "
                f"1e-9 for Captum's default rules."
            )
        self.epsilon = float(epsilon)

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES
        from captum.attr._utils.lrp_rules import EpsilonRule

        with _hooks_left_clean(self.model):  # takes the rules off again
            for module in _leaves(self.model):
                if type(module) in SUPPORTED_LAYERS_WITH_RULES and not hasattr(module, "rule"):
                    module.rule = EpsilonRule(epsilon=self.epsilon)
            return super().run(inputs, targets, **arguments)

    @classmethod
    def unavailable_reason(cls, model: nn.Module) -> str | None:
        from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS

        covered = (*SUPPORTED_LAYERS_WITH_RULES, *SUPPORTED_NON_LINEAR_LAYERS)
        bad = [
            m
            for m in _leaves(model)
            if type(m) not in covered
            and not isinstance(m, _PASS_THROUGH)
            and not hasattr(m, "rule")
        ]
        bad += [
            m
            for m in model.modules()
            if next(m.children(), None) is not None and next(m.parameters(False), None) is not None
        ]
        if not bad:
            return None
        return _refusal(
            model,
            f"Captum's LRP has rules for Conv2d, Linear, BatchNorm2d, pooling, ReLU, Dropout "
            f"and Tanh modules only, not for {_describe(bad)}.",
            "'ig' (Integrated Gradients) or 'inputxgradient'",
        )

    def captum_method(self, forward_func: nn.Module, device: torch.device) -> Any:
        return _lrp_class()(forward_func)
