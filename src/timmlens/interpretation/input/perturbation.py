"""Captum's perturbation methods on the input pixels, with timm-aware windows and features.

Each method scores the target class on perturbed copies of the image, where a window
or a feature (a group of pixels) is replaced by the baseline (black pixels by default,
as in IG: `make_baseline`):

* ``occlusion``: a sliding window (Zeiler & Fergus 2014). Default window: the model's
  patch for plain patch models (ViT, DeiT, BEiT, EVA, hybrids: the pixels per token),
  else 1/14 of the input side (CNNs, and Swin/PiT, whose tokens merge stage by stage);
  the stride is half the window.
* ``featureablation``, ``shapley`` (Shapley value sampling), ``kernelshap``, ``lime``:
  over a feature mask, ``"cells"`` (default: the token grid of patch models, else 14x14
  cells) or ``"slic"`` superpixels of the de-normalised image (scikit-image).

The raw ``(B, C, H, W)`` attributions are Captum's own (`attributions`); the
heatmap is their absolute value summed over channels, min-max scaled (``signed=True``:
the plain sum scaled to [-1, 1], which keeps "occluding this raises the score").

Randomness: Captum draws its samples (permutations, coalitions) from the global CPU
generator. Each call seeds it with ``seed`` inside `torch.random.fork_rng`, which
restores it afterwards, so the caller's random state is untouched. Random methods run
image by image whenever the draws would otherwise depend on the batch (LIME and
KernelSHAP always, Shapley sampling over per-image superpixels), so an image gets the
same map alone or in any batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ...errors import ImageInputError
from .._targets import ResolvedTargets
from ..base import Explanation
from ..registry import register_method
from ..scoring import chunk_size_for
from .baselines import BaselineSpec
from .checks import check_positive_int
from .engine import CaptumInputExplainer
from .features import (
    CNN_CELLS,
    FeatureMask,
    FeatureMaskKind,
    cell_feature_mask,
    optional_import,
    pair,
    patch_pixels,
    slic_feature_mask,
)

__all__ = [
    "FeatureAblation",
    "FeatureMask",
    "KernelShap",
    "Lime",
    "Occlusion",
    "ShapleyValueSampling",
    "attribute_by_perturbation",
    "cell_feature_mask",
    "patch_pixels",
    "slic_feature_mask",
]

_PERTURBATION_APPLIES_TO = "every model (forwards only: no gradients, no layer)"


def _needs_sklearn(method: str) -> None:
    # Captum fits LIME's and KernelSHAP's surrogate with scikit-learn.
    optional_import("sklearn", "scikit-learn", method, "Captum fits its linear surrogate with it")


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """The global CPU generator seeded with ``seed``, and restored on exit.

    Captum's samplers (``randperm``, ``bernoulli``, ``randn``) all draw on the CPU, so
    CUDA generators are neither seeded nor forked.
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


def _checked_per_eval(perturbations_per_eval: int | None) -> int | None:
    if perturbations_per_eval is not None:
        check_positive_int(
            perturbations_per_eval, "perturbations_per_eval", "Or None to size it from memory."
        )
    return perturbations_per_eval


def attribute_by_perturbation(
    explainer: Any, inputs: torch.Tensor, targets: ResolvedTargets, **kwargs: Any
) -> Explanation:
    """The explanation of preprocessed ``inputs`` ``(B, C, H, W)`` by a perturbation method.

    Baselines and targets as the engine's; ``perturbations_per_eval`` sized from the
    forward memory budget; each Captum call seeded (`seeded_cpu_rng`), image by image
    where the draws would depend on the batch (`runs_per_image`).
    """
    if kwargs:
        raise TypeError(f"unexpected arguments for {type(explainer).__name__}: {sorted(kwargs)}.")
    inputs = inputs.detach()
    chosen, logits, _ = explainer.targets_for(inputs, targets)
    baselines = explainer.baselines_for(inputs)
    step = 1 if runs_per_image(explainer) else inputs.shape[0]
    per_eval = explainer.per_eval(inputs, step)
    parts = []
    for lo in range(0, inputs.shape[0], step):
        part = slice(lo, lo + step)
        with seeded_cpu_rng(explainer.seed):
            parts.append(
                explainer.run(
                    inputs[part],
                    chosen[part],
                    baselines=baselines[part],
                    perturbations_per_eval=per_eval,
                    **explainer.arguments(inputs[part]),
                )
            )
    return explainer.explanation(torch.cat(parts), chosen, logits)


def _per_eval(explainer: Any, inputs: torch.Tensor, rows: int) -> int:
    """Perturbed copies per image and forward: ``rows`` images' copies fit the budget."""
    if explainer.perturbations_per_eval is not None:
        return explainer.perturbations_per_eval
    limit = chunk_size_for(
        explainer.model,
        inputs[:1],
        n_jobs=2**31,
        memory_budget_bytes=explainer.memory_budget_bytes,
    )
    return max(1, limit // rows)


def runs_per_image(explainer: Any) -> bool:
    """Whether to call Captum image by image (so the draws do not depend on the batch):
    always for LIME and KernelSHAP (one surrogate per image), and for Shapley sampling
    over superpixels (batched, it draws permutations over the batch's largest count)."""
    mask = getattr(explainer, "mask", None)
    superpixels = mask is not None and mask.kind == "slic"
    return explainer.per_image or (explainer.random and superpixels)


def _features(self: Any, inputs: torch.Tensor) -> torch.Tensor:
    """Feature ids of ``inputs`` ``(b, C, H, W)``: ``(1, 1, H, W)`` cells or ``(b, 1, H, W)``
    superpixels (`FeatureMask.features`)."""
    return self.mask.features(self.model, inputs)


def _feature_arguments(self: Any, inputs: torch.Tensor) -> dict[str, Any]:
    arguments: dict[str, Any] = {"feature_mask": self.features(inputs)}
    if self.random:
        arguments["n_samples"] = self.n_samples
    return arguments


#: Why a perturbation method's map may come out constant (`DegenerateMapWarning`).
_PERTURBATION_CAUSES = (
    "removing regions does not change the target's score (random weights, or regions "
    "too small to matter: a coarser grid or larger window), or too few samples for a "
    "fit (raise n_samples: LIME's Lasso sets every weight to zero when the score varies "
    "little between samples, and KernelSHAP needs more samples than features)"
)


def _check_samples(n_samples: int) -> int:
    return check_positive_int(n_samples, "n_samples", "More samples give less noisy attributions.")


@register_method(
    "occlusion",
    title="Occlusion",
    kind="input",
    compared_by_default=False,
    summary="score drop when a sliding window is blacked out (forwards only, any model)",
    paper="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014",
    formula="a(p) = mean over windows w containing p of f(x) - f(x with w set to the baseline)",
    cost="one forward per window position, ((H - w) / s + 1)^2: 729 at 224 px (w=16, s=8)",
    applies_to=_PERTURBATION_APPLIES_TO,
    quick_options={"window": 32},
)
class Occlusion(CaptumInputExplainer):
    """Occlusion via ``captum.attr.Occlusion``.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        window: ``(h, w)`` pixels (or one int) of the occluded window. ``None``: the
            model's patch for plain patch models (`patch_pixels`), else
            ``round(side / 14)``.
        stride: window step; ``None``: half the window (at least 1).
        baseline: what a removed pixel becomes (``"black"`` by default, see
            `make_baseline`), as every perturbation method.
        perturbations_per_eval: perturbed copies per forward (``None``: sized from the
            forward memory budget).
        memory_budget_bytes: that budget (``None``: the default of `scoring`).
        signed: heatmaps keep polarity instead of ``|.|``.
        seed: the seed of the random draws.
    """

    captum_class = "Occlusion"
    needs_gradients = False
    attribute = attribute_by_perturbation
    constant_map_causes = _PERTURBATION_CAUSES
    per_eval = _per_eval
    per_image = random = False

    def __init__(
        self,
        model: nn.Module,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        *,
        baseline: BaselineSpec = "black",
        perturbations_per_eval: int | None = None,
        memory_budget_bytes: int | None = None,
        signed: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            baseline=baseline,
            memory_budget_bytes=memory_budget_bytes,
            signed=signed,
            seed=seed,
        )
        self.perturbations_per_eval = _checked_per_eval(perturbations_per_eval)
        self.window = None if window is None else pair(window, "window")
        self.stride = None if stride is None else pair(stride, "stride")

    def window_and_stride(self, height: int, width: int) -> tuple[tuple[int, int], ...]:
        """The ``(h, w)`` window and stride used for ``height x width`` inputs."""
        window = self.window or patch_pixels(self.model)
        if window is None:
            window = (max(1, round(height / CNN_CELLS)), max(1, round(width / CNN_CELLS)))
        stride = self.stride or (max(1, window[0] // 2), max(1, window[1] // 2))
        return window, stride

    def arguments(self, inputs: torch.Tensor) -> dict[str, Any]:
        """Captum's window and stride for ``inputs`` ``(b, C, H, W)``."""
        window, stride = self.window_and_stride(*inputs.shape[-2:])
        channels = inputs.shape[1]
        return {"sliding_window_shapes": (channels, *window), "strides": (channels, *stride)}


@register_method(
    "featureablation",
    title="Feature Ablation",
    kind="input",
    compared_by_default=False,
    aliases=("feature_ablation",),
    summary="score drop when each patch cell (or superpixel) is blacked out, one at a time",
    paper="Captum FeatureAblation (Kokhlikyan et al., 2020); occlusion over a feature mask",
    formula="a(p) = f(x) - f(x with the feature of p set to the baseline)",
    cost="one forward per feature: 196 for 14x14 cells, the token count for ViTs",
    applies_to=_PERTURBATION_APPLIES_TO,
    quick_options={"grid": 4},
)
class FeatureAblation(CaptumInputExplainer):
    """Feature ablation via ``captum.attr.FeatureAblation`` over `FeatureMask` features.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        feature_mask: ``"cells"`` (default) or ``"slic"`` (see `FeatureMask`).
        grid: ``(rows, cols)`` cells (or one int) of ``"cells"``; ``None``: the token grid
            of plain patch models, else 14x14.
        n_segments: SLIC's target number of superpixels.
        baseline: what a removed pixel becomes (``"black"`` by default, see
            `make_baseline`), as every perturbation method.
        perturbations_per_eval: perturbed copies per forward (``None``: sized from the
            forward memory budget).
        memory_budget_bytes: that budget (``None``: the default of `scoring`).
        signed: heatmaps keep polarity instead of ``|.|``.
        seed: the seed of the random draws.
    """

    captum_class = "FeatureAblation"
    needs_gradients = False
    attribute = attribute_by_perturbation
    constant_map_causes = _PERTURBATION_CAUSES
    per_eval = _per_eval
    features = _features
    arguments = _feature_arguments
    per_image = False
    random = False

    def __init__(
        self,
        model: nn.Module,
        feature_mask: FeatureMaskKind = "cells",
        grid: int | tuple[int, int] | None = None,
        n_segments: int = 50,
        *,
        baseline: BaselineSpec = "black",
        perturbations_per_eval: int | None = None,
        memory_budget_bytes: int | None = None,
        signed: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            baseline=baseline,
            memory_budget_bytes=memory_budget_bytes,
            signed=signed,
            seed=seed,
        )
        self.perturbations_per_eval = _checked_per_eval(perturbations_per_eval)
        self.mask = FeatureMask.checked(self.name, feature_mask, grid, n_segments)


@register_method(
    "shapley",
    title="Shapley Value Sampling",
    kind="input",
    compared_by_default=False,
    aliases=("shapleyvaluesampling", "shapley_value_sampling"),
    summary="Shapley values of patch cells (or superpixels) from random feature orderings",
    paper="Castro et al., Polynomial calculation of the Shapley value based on sampling, 2009",
    formula="a(i) = mean over n_samples permutations of f(S + i) - f(S), S the features before i",
    cost="n_samples x (features + 1) forwards (n_samples=25: 4925 for 14x14 cells)",
    applies_to=_PERTURBATION_APPLIES_TO,
    quick_options={"grid": 4, "n_samples": 2},
)
class ShapleyValueSampling(CaptumInputExplainer):
    """Shapley value sampling via ``captum.attr.ShapleyValueSampling``.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        n_samples: random feature orderings (Captum's default, 25).
        feature_mask: ``"cells"`` (default) or ``"slic"`` (see `FeatureMask`).
        grid: ``(rows, cols)`` cells (or one int) of ``"cells"``; ``None``: the token grid
            of plain patch models, else 14x14.
        n_segments: SLIC's target number of superpixels.
        baseline: what a removed pixel becomes (``"black"`` by default, see
            `make_baseline`), as every perturbation method.
        perturbations_per_eval: perturbed copies per forward (``None``: sized from the
            forward memory budget).
        memory_budget_bytes: that budget (``None``: the default of `scoring`).
        signed: heatmaps keep polarity instead of ``|.|``.
        seed: the seed of the random draws.
    """

    captum_class = "ShapleyValueSampling"
    needs_gradients = False
    attribute = attribute_by_perturbation
    constant_map_causes = _PERTURBATION_CAUSES
    per_eval = _per_eval
    features = _features
    arguments = _feature_arguments
    per_image = False
    random = True

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 25,
        *,
        feature_mask: FeatureMaskKind = "cells",
        grid: int | tuple[int, int] | None = None,
        n_segments: int = 50,
        baseline: BaselineSpec = "black",
        perturbations_per_eval: int | None = None,
        memory_budget_bytes: int | None = None,
        signed: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            baseline=baseline,
            memory_budget_bytes=memory_budget_bytes,
            signed=signed,
            seed=seed,
        )
        self.perturbations_per_eval = _checked_per_eval(perturbations_per_eval)
        self.mask = FeatureMask.checked(self.name, feature_mask, grid, n_segments)
        self.n_samples = _check_samples(n_samples)


@register_method(
    "kernelshap",
    title="KernelSHAP",
    kind="input",
    compared_by_default=False,
    aliases=("kernel_shap",),
    summary="SHAP values of patch cells (or superpixels) by weighted linear regression",
    paper="Lundberg & Lee, A Unified Approach to Interpreting Model Predictions, NeurIPS 2017",
    formula="a = argmin_w sum_z pi(z) (f(h(z)) - w.z)^2, pi the Shapley kernel",
    cost="n_samples forwards per image (n_samples=256) and a least-squares fit (scikit-learn)",
    applies_to=_PERTURBATION_APPLIES_TO,
    quick_options={"grid": 4, "n_samples": 16},
)
class KernelShap(CaptumInputExplainer):
    """KernelSHAP via ``captum.attr.KernelShap`` (scikit-learn's linear regression).

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        n_samples: sampled coalitions per image (256; at least the feature count for a
            determined fit).
        feature_mask: ``"cells"`` (default) or ``"slic"`` (see `FeatureMask`).
        grid: ``(rows, cols)`` cells (or one int) of ``"cells"``; ``None``: the token grid
            of plain patch models, else 14x14.
        n_segments: SLIC's target number of superpixels.
        baseline: what a removed pixel becomes (``"black"`` by default, see
            `make_baseline`), as every perturbation method.
        perturbations_per_eval: perturbed copies per forward (``None``: sized from the
            forward memory budget).
        memory_budget_bytes: that budget (``None``: the default of `scoring`).
        signed: heatmaps keep polarity instead of ``|.|``.
        seed: the seed of the random draws.
    """

    captum_class = "KernelShap"
    needs_gradients = False
    attribute = attribute_by_perturbation
    constant_map_causes = _PERTURBATION_CAUSES
    per_eval = _per_eval
    features = _features
    per_image = True
    random = True

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 256,
        *,
        feature_mask: FeatureMaskKind = "cells",
        grid: int | tuple[int, int] | None = None,
        n_segments: int = 50,
        baseline: BaselineSpec = "black",
        perturbations_per_eval: int | None = None,
        memory_budget_bytes: int | None = None,
        signed: bool = False,
        seed: int = 0,
    ) -> None:
        _needs_sklearn(type(self).__name__)
        super().__init__(
            model,
            baseline=baseline,
            memory_budget_bytes=memory_budget_bytes,
            signed=signed,
            seed=seed,
        )
        self.perturbations_per_eval = _checked_per_eval(perturbations_per_eval)
        self.mask = FeatureMask.checked(self.name, feature_mask, grid, n_segments)
        self.n_samples = _check_samples(n_samples)

    def arguments(self, inputs: torch.Tensor) -> dict[str, Any]:
        """Features and samples; at least two features (the Shapley kernel weighs
        coalitions of 1 to n - 1 of the n features: none for one)."""
        arguments = _feature_arguments(self, inputs)
        count = int(arguments["feature_mask"].max()) + 1
        if count < 2:
            height, width = inputs.shape[-2:]
            raise ImageInputError(
                f"kernelshap needs at least 2 features to weigh coalitions of, and the "
                f"{height}x{width} input gives {count} ({self.mask.kind}). Pass images of at "
                f"least 2x2 pixels with at least 2 cells (grid=(2, 2) or more; the default is "
                f"14x14 or the token grid), or a larger n_segments for 'slic'."
            )
        return arguments


@register_method(
    "lime",
    title="LIME",
    kind="input",
    compared_by_default=False,
    summary="a sparse linear surrogate over patch cells (or superpixels), fit to random masks",
    paper="Ribeiro et al., 'Why Should I Trust You?', KDD 2016",
    formula="a = Lasso(alpha=0.01) fit of f(h(z)) on z, weighted exp(-cos_dist(x, h(z))^2 / 2)",
    cost="n_samples forwards per image (n_samples=256) and a Lasso fit (scikit-learn)",
    applies_to=_PERTURBATION_APPLIES_TO,
    quick_options={"grid": 3, "n_samples": 16},  # grid 4: all-zero fits on small test models
)
class Lime(CaptumInputExplainer):
    """LIME via ``captum.attr.Lime`` with Captum's defaults (Lasso, exponential cosine kernel).

    Captum's ``Lasso(alpha=0.01)`` is not scale-free: where masking moves the class
    score by less than about ``alpha`` (a random-weight model whose logits span 0.03, or
    a score read as a small probability) it selects no feature and the map is constant.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        n_samples: random feature subsets per image (256).
        feature_mask: ``"cells"`` (default) or ``"slic"`` (see `FeatureMask`).
        grid: ``(rows, cols)`` cells (or one int) of ``"cells"``; ``None``: the token grid
            of plain patch models, else 14x14.
        n_segments: SLIC's target number of superpixels.
        baseline: what a removed pixel becomes (``"black"`` by default, see
            `make_baseline`), as every perturbation method.
        perturbations_per_eval: perturbed copies per forward (``None``: sized from the
            forward memory budget).
        memory_budget_bytes: that budget (``None``: the default of `scoring`).
        signed: heatmaps keep polarity instead of ``|.|``.
        seed: the seed of the random draws.
    """

    captum_class = "Lime"
    needs_gradients = False
    attribute = attribute_by_perturbation
    constant_map_causes = _PERTURBATION_CAUSES
    per_eval = _per_eval
    features = _features
    arguments = _feature_arguments
    per_image = True
    random = True

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 256,
        *,
        feature_mask: FeatureMaskKind = "cells",
        grid: int | tuple[int, int] | None = None,
        n_segments: int = 50,
        baseline: BaselineSpec = "black",
        perturbations_per_eval: int | None = None,
        memory_budget_bytes: int | None = None,
        signed: bool = False,
        seed: int = 0,
    ) -> None:
        _needs_sklearn(type(self).__name__)
        super().__init__(
            model,
            baseline=baseline,
            memory_budget_bytes=memory_budget_bytes,
            signed=signed,
            seed=seed,
        )
        self.perturbations_per_eval = _checked_per_eval(perturbations_per_eval)
        self.mask = FeatureMask.checked(self.name, feature_mask, grid, n_segments)
        self.n_samples = _check_samples(n_samples)
