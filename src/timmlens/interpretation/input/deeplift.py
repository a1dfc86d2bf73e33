"""Captum's reference methods on the input pixels: DeepLift and the SHAP estimators.

* ``deeplift``: the Rescale rule against a baseline (black pixels by default);
* ``deepliftshap``: DeepLift averaged over a seeded distribution of baselines (the
  baseline and noisy copies of it, `reference_distribution`);
* ``gradientshap``: expected gradients over random points between the input and
  baselines drawn from that distribution.

DeepLift has rules for some module types only: a model with others is refused up front
([`UnsupportedModelError`][timmlens.errors.UnsupportedModelError] naming the method, the
family, the modules and an alternative), because Captum would treat them as linear and
return wrong attributions without a word.

Randomness (``gradientshap``): Captum draws from the global torch and numpy generators;
each image's call runs inside ``torch.random.fork_rng`` and a saved numpy state, seeded
with ``seed``, so the global state is left as found and an image gets the same
attributions alone or inside any batch (one Captum call per image).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _captum
from ..registry import register_method
from .baselines import BaselineSpec, reference_distribution, validate_baseline
from .checks import check_positive_int
from .engine import CaptumInputExplainer, describe_modules, refusal

__all__ = ["DeepLift", "DeepLiftShap", "GradientShap", "baseline_distribution", "deeplift_reason"]

#: Modules that compute nothing: relevance and multipliers pass unchanged.
PASS_THROUGH = (nn.Identity, nn.Flatten)
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
    *PASS_THROUGH,
)


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


_DEEPLIFT_APPLIES_TO = (
    "CNNs of ReLU/ELU/Sigmoid/Tanh/MaxPool modules (ResNet, VGG, RegNet); refuses "
    "GELU/SiLU/LayerNorm families (ViT, ConvNeXt, EfficientNet, Swin)"
)


def deeplift_reason(model: nn.Module) -> str | None:
    """Why DeepLift cannot explain ``model``: modules Captum has no rule for and that are
    not linear at eval time (``None``: it can)."""
    nonlinear = _captum.deeplift_nonlinear_types()
    bad = [
        m for m in _captum.leaves(model) if type(m) not in nonlinear and not isinstance(m, _LINEAR)
    ]
    if not bad:
        return None
    return refusal(
        model,
        f"Captum's DeepLift has rules for ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, "
        f"MaxPool and Softmax modules and would treat these as linear, giving wrong "
        f"attributions: {describe_modules(bad)}.",
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
class DeepLift(CaptumInputExplainer):
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
    hooks_modules = single_use_modules = True

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
        return deeplift_reason(model)


def baseline_distribution(
    explainer: CaptumInputExplainer, baseline: BaselineSpec, n_baselines: int, noise: float
) -> tuple[BaselineSpec, int, float]:
    """Checked ``(baseline, n_baselines, baseline_noise)`` of a method over a seeded
    distribution of baselines (`reference_distribution`)."""
    baseline = validate_baseline(baseline)
    if isinstance(baseline, str) and baseline == "blur":
        raise ValueError(
            f"{type(explainer).__name__} needs baselines shared by the batch, and 'blur' is "
            f"one per image; use 'black', 'noise', 'uniform' or a (k, C, H, W) tensor."
        )
    n_baselines = check_positive_int(n_baselines, "n_baselines", "Try 8.")
    if not isinstance(noise, (int, float)) or not 0 <= noise < float("inf"):
        raise ValueError(
            f"baseline_noise must be a finite number >= 0 (pixel std), got {noise!r}. Try 0.1."
        )
    return baseline, n_baselines, float(noise)


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
class DeepLiftShap(CaptumInputExplainer):
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
    hooks_modules = single_use_modules = True

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
        super().__init__(model, signed=signed, seed=seed)
        self.reference, self.n_baselines, self.baseline_noise = baseline_distribution(
            self, baseline, n_baselines, baseline_noise
        )
        self.rows_per_image = 2 * self.n_baselines

    @classmethod
    def unavailable_reason(cls, model: nn.Module) -> str | None:
        return deeplift_reason(model)

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        references = reference_distribution(
            self.reference, inputs, self.model, self.n_baselines, self.baseline_noise, self.seed
        )
        return super().run(inputs, targets, baselines=references, **arguments)


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
class GradientShap(CaptumInputExplainer):
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
        super().__init__(model, signed=signed, seed=seed)
        self.reference, self.n_baselines, self.baseline_noise = baseline_distribution(
            self, baseline, n_baselines, baseline_noise
        )
        self.n_samples = check_positive_int(n_samples, "n_samples", "Try 16.")
        if not isinstance(stdevs, (int, float)) or not 0 <= stdevs < float("inf"):
            raise ValueError(f"stdevs must be a finite number >= 0, got {stdevs!r}. Try 0.0.")
        self.stdevs = float(stdevs)

    def run(self, inputs: torch.Tensor, targets: torch.Tensor, **arguments: Any) -> torch.Tensor:
        references = reference_distribution(
            self.reference, inputs, self.model, self.n_baselines, self.baseline_noise, self.seed
        )
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
