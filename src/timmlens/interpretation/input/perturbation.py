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

import importlib
import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn

from ...adapters import get_adapter
from ...data import normalization
from ..base import Explanation
from ..registry import register_method
from ..scoring import chunk_size_for
from .engine import BaselineSpec, CaptumInputExplainer, check_positive_int

__all__ = [
    "FeatureAblation",
    "KernelShap",
    "Lime",
    "Occlusion",
    "ShapleyValueSampling",
    "cell_feature_mask",
    "patch_pixels",
    "slic_feature_mask",
]

FeatureMaskKind = Literal["cells", "slic"]
FEATURE_MASKS: tuple[str, ...] = get_args(FeatureMaskKind)
#: Cells per side of CNNs' default feature grid and occlusion window (1/14 of the side).
CNN_CELLS = 14
#: SLIC's compactness (scikit-image's default): colour vs space in the superpixel distance.
SLIC_COMPACTNESS = 10.0
_PERTURBATION_APPLIES_TO = "every model (forwards only: no gradients, no layer)"


def patch_pixels(model: nn.Module) -> tuple[int, int] | None:
    """Pixels per token side of a plain patch model (ViT, DeiT, hybrids), else ``None``.

    Read from ``patch_embed``'s ``img_size / grid_size`` (a hybrid's CNN stem counts).
    Models whose tokens merge later (Swin, PiT: the last reduction is not the patch)
    and CNNs get ``None``: a 4-pixel Swin patch is no useful perturbation unit.
    """
    timm_model = get_adapter(model).timm_model
    embed = getattr(timm_model, "patch_embed", None)
    img_size, grid = getattr(embed, "img_size", None), getattr(embed, "grid_size", None)
    if img_size is None or grid is None:
        return None
    patch = (int(img_size[0]) // int(grid[0]), int(img_size[1]) // int(grid[1]))
    info = getattr(timm_model, "feature_info", None) or []
    last = info[-1].get("reduction") if info and isinstance(info[-1], dict) else None
    if last is not None and int(last) != max(patch):
        return None
    return patch


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair)
    ):
        raise ValueError(
            f"{name} must be a positive integer or a (height, width) pair of them, got "
            f"{value!r}. Or pass None for the model's default."
        )
    return int(pair[0]), int(pair[1])


def cell_feature_mask(
    height: int, width: int, grid: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """Feature ids of a ``grid`` of near-equal cells: ``(1, 1, H, W)`` long, row-major.

    Pixel ``(y, x)`` is in cell ``(y * gh // H, x * gw // W)``: with ``H`` a multiple of
    ``gh`` the cells are exactly the ``H / gh`` pixel patches (a ViT's tokens).
    """
    rows = torch.arange(height, device=device) * grid[0] // height
    cols = torch.arange(width, device=device) * grid[1] // width
    return (rows[:, None] * grid[1] + cols[None, :]).view(1, 1, height, width)


def _optional(module: str, package: str, what: str, instead: str) -> Any:
    """``import module``, or an ImportError saying how to install ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs {package}, which is not installed. Install it with: pip install "
            f"{package}  ({instead})."
        ) from exc


def _skimage_slic() -> Any:
    return _optional(
        "skimage.segmentation",
        "scikit-image",
        "feature_mask='slic'",
        "or use feature_mask='cells', which needs nothing",
    ).slic


def slic_feature_mask(
    inputs: torch.Tensor, model: nn.Module, n_segments: int, compactness: float = SLIC_COMPACTNESS
) -> torch.Tensor:
    """SLIC superpixels of each image: ``(B, C, H, W)`` -> ``(B, 1, H, W)`` long ids.

    SLIC runs on the de-normalised pixels (``x * std + mean``, clipped to [0, 1]), where
    its colour distance means something; ids are renumbered ``0..n-1`` per image.
    """
    slic = _skimage_slic()
    mean, std = normalization(model, inputs)
    pixels = (inputs.detach() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().double()
    masks = []
    for image in pixels.numpy():
        labels = slic(image, n_segments=n_segments, compactness=compactness, start_label=0)
        ids = torch.as_tensor(labels, dtype=torch.long).flatten()
        masks.append(torch.unique(ids, return_inverse=True)[1].view(labels.shape))
    return torch.stack(masks)[:, None].to(inputs.device)


def _needs_sklearn(method: str) -> None:
    # Captum fits LIME's and KernelSHAP's surrogate with scikit-learn.
    _optional("sklearn", "scikit-learn", method, "Captum fits its linear surrogate with it")


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """The global CPU generator seeded with ``seed``, and restored on exit.

    Captum's samplers (``randperm``, ``bernoulli``, ``randn``) all draw on the CPU, so
    CUDA generators are neither seeded nor forked.
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


def _full_signature(init: Any, parent_init: Any) -> inspect.Signature:
    """``init``'s own parameters, then its parent's (keyword-only) instead of ``**options``.

    The registry checks options and lists them in the docs from the constructor's
    signature: this way it sees every option a subclass forwards to its parent.
    """
    own = [p for p in inspect.signature(init).parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = {p.name for p in own}
    inherited = [
        p.replace(kind=p.KEYWORD_ONLY)
        for p in list(inspect.signature(parent_init).parameters.values())[2:]
        if p.name not in names and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return inspect.Signature(own + inherited)


class PerturbationExplainer(CaptumInputExplainer):
    """The shared part of Captum's perturbation methods (see the module docstring).

    Subclasses name their Captum class (`captum_name`) and give their
    method-specific arguments (`arguments`); this class adds baselines, targets,
    the memory-sized ``perturbations_per_eval``, seeding and per-image runs.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        baseline: what a removed pixel becomes: ``"black"`` (default), ``"blur"``,
            ``"noise"``, ``"uniform"`` or a tensor (see `make_baseline`).
        perturbations_per_eval: perturbed copies per image in one forward (Captum's
            argument); ``None`` sizes it from the forward memory budget.
        memory_budget_bytes: budget for automatic chunking; ``None``: a quarter of the
            free CUDA memory, 512 MiB elsewhere.
        signed: heatmaps keep polarity (sum over channels, scaled to [-1, 1]).
        seed: seed of the random draws (and of random baselines).
    """

    needs_gradients = False
    constant_map_causes = (
        "removing regions does not change the target's score (random weights, or regions "
        "too small to matter: a coarser grid or larger window), or too few samples for a "
        "fit (raise n_samples: LIME's Lasso sets every weight to zero when the score varies "
        "little between samples, and KernelSHAP needs more samples than features)"
    )
    #: the ``captum.attr`` class
    captum_name: ClassVar[str] = ""
    #: Captum fits one model per image (LIME, KernelSHAP): always run image by image
    per_image: ClassVar[bool] = False
    #: Captum draws random samples
    random: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
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
        if perturbations_per_eval is not None:
            check_positive_int(
                perturbations_per_eval, "perturbations_per_eval", "Or None to size it from memory."
            )
        self.perturbations_per_eval = perturbations_per_eval

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            init.__signature__ = _full_signature(init, cls.__mro__[1].__init__)

    def captum_method(self, forward_func: nn.Module, device: torch.device) -> Any:
        del device
        return getattr(importlib.import_module("captum.attr"), self.captum_name)(forward_func)

    def arguments(self, inputs: torch.Tensor) -> dict[str, Any]:
        """Method-specific ``attribute`` arguments for ``inputs`` ``(b, C, H, W)``."""
        del inputs
        return {}

    def runs_per_image(self) -> bool:
        """Whether to call Captum image by image (so the draws do not depend on the batch)."""
        return self.per_image

    def per_eval(self, inputs: torch.Tensor, rows: int) -> int:
        """Perturbed copies per image and forward: ``rows`` images' copies fit the budget."""
        if self.perturbations_per_eval is not None:
            return self.perturbations_per_eval
        limit = chunk_size_for(
            self.model, inputs[:1], n_jobs=2**31, memory_budget_bytes=self.memory_budget_bytes
        )
        return max(1, limit // rows)

    def attribute(
        self, inputs: torch.Tensor, targets: list[int] | None, **kwargs: Any
    ) -> Explanation:
        """The explanation of preprocessed ``inputs`` ``(B, C, H, W)``."""
        if kwargs:
            raise TypeError(f"unexpected arguments for {type(self).__name__}: {sorted(kwargs)}.")
        inputs = inputs.detach()
        chosen, logits, _ = self.targets_for(inputs, targets)
        baselines = self.baselines_for(inputs)
        step = 1 if self.runs_per_image() else inputs.shape[0]
        per_eval = self.per_eval(inputs, step)
        parts = []
        for lo in range(0, inputs.shape[0], step):
            part = slice(lo, lo + step)
            with seeded_cpu_rng(self.seed):
                parts.append(
                    self.run(
                        inputs[part],
                        chosen[part],
                        baselines=baselines[part],
                        perturbations_per_eval=per_eval,
                        **self.arguments(inputs[part]),
                    )
                )
        return self.explanation(torch.cat(parts), chosen, logits)


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
)
class Occlusion(PerturbationExplainer):
    """Occlusion via ``captum.attr.Occlusion``.

    Args:
        window: ``(h, w)`` pixels (or one int) of the occluded window. ``None``: the
            model's patch for plain patch models (`patch_pixels`), else
            ``round(side / 14)``.
        stride: window step; ``None``: half the window (at least 1).
        **options: see `PerturbationExplainer` (``baseline``, ``signed``, ...).
    """

    captum_name = "Occlusion"

    def __init__(
        self,
        model: nn.Module,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.window = None if window is None else _pair(window, "window")
        self.stride = None if stride is None else _pair(stride, "stride")

    def window_and_stride(self, height: int, width: int) -> tuple[tuple[int, int], ...]:
        """The ``(h, w)`` window and stride used for ``height x width`` inputs."""
        window = self.window or patch_pixels(self.model)
        if window is None:
            window = (max(1, round(height / CNN_CELLS)), max(1, round(width / CNN_CELLS)))
        stride = self.stride or (max(1, window[0] // 2), max(1, window[1] // 2))
        return window, stride

    def arguments(self, inputs: torch.Tensor) -> dict[str, Any]:
        window, stride = self.window_and_stride(*inputs.shape[-2:])
        channels = inputs.shape[1]
        return {"sliding_window_shapes": (channels, *window), "strides": (channels, *stride)}


class FeatureMaskExplainer(PerturbationExplainer):
    """A perturbation method over features: patch cells or SLIC superpixels.

    Args:
        feature_mask: ``"cells"`` (default) or ``"slic"`` (scikit-image superpixels of
            the de-normalised image; ``pip install scikit-image``).
        grid: ``(rows, cols)`` cells (or one int) of ``"cells"``; ``None``: the token grid
            of plain patch models, else 14x14.
        n_segments: SLIC's target number of superpixels.
        **options: see `PerturbationExplainer`.
    """

    def __init__(
        self,
        model: nn.Module,
        feature_mask: FeatureMaskKind = "cells",
        grid: int | tuple[int, int] | None = None,
        n_segments: int = 50,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        if feature_mask not in FEATURE_MASKS:
            raise ValueError(
                f"unknown feature_mask {feature_mask!r} for {self.name}; expected 'cells' "
                f"(a grid of patches) or 'slic' (superpixels, needs scikit-image)."
            )
        if feature_mask == "slic":
            _skimage_slic()  # fail at construction, not in the middle of a run
        self.feature_mask: FeatureMaskKind = feature_mask
        self.grid = None if grid is None else _pair(grid, "grid")
        self.n_segments = check_positive_int(n_segments, "n_segments", "Try 50.")

    def cells(self, height: int, width: int) -> tuple[int, int]:
        """The ``(rows, cols)`` grid used for ``height x width`` inputs."""
        if self.grid is not None:
            return self.grid
        patch = patch_pixels(self.model)
        if patch is None:
            return (min(CNN_CELLS, height), min(CNN_CELLS, width))
        return (math.ceil(height / patch[0]), math.ceil(width / patch[1]))

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Feature ids: ``(1, 1, H, W)`` for cells, ``(b, 1, H, W)`` for superpixels."""
        height, width = inputs.shape[-2:]
        if self.feature_mask == "slic":
            return slic_feature_mask(inputs, self.model, self.n_segments)
        return cell_feature_mask(height, width, self.cells(height, width), inputs.device)

    def runs_per_image(self) -> bool:
        # Batched Shapley draws permutations over the batch's largest feature count.
        return self.per_image or (self.random and self.feature_mask == "slic")

    def arguments(self, inputs: torch.Tensor) -> dict[str, Any]:
        return {"feature_mask": self.features(inputs)}


class SampledFeatureExplainer(FeatureMaskExplainer):
    """A random feature method with ``n_samples`` (see `FeatureMaskExplainer`)."""

    random = True

    def __init__(self, model: nn.Module, n_samples: int = 25, **options: Any) -> None:
        super().__init__(model, **options)
        self.n_samples = check_positive_int(
            n_samples, "n_samples", "More samples give less noisy attributions."
        )

    def arguments(self, inputs: torch.Tensor) -> dict[str, Any]:
        return {**super().arguments(inputs), "n_samples": self.n_samples}


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
)
class FeatureAblation(FeatureMaskExplainer):
    """Feature ablation via ``captum.attr.FeatureAblation`` (see `FeatureMaskExplainer`)."""

    captum_name = "FeatureAblation"


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
)
class ShapleyValueSampling(SampledFeatureExplainer):
    """Shapley value sampling via ``captum.attr.ShapleyValueSampling``.

    Args:
        n_samples: random feature orderings (Captum's default, 25).
        **options: see `FeatureMaskExplainer`.
    """

    captum_name = "ShapleyValueSampling"


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
)
class KernelShap(SampledFeatureExplainer):
    """KernelSHAP via ``captum.attr.KernelShap`` (scikit-learn's linear regression).

    Args:
        n_samples: sampled coalitions per image (256; at least the feature count for a
            determined fit).
        **options: see `FeatureMaskExplainer`.
    """

    captum_name = "KernelShap"
    per_image = True

    def __init__(self, model: nn.Module, n_samples: int = 256, **options: Any) -> None:
        _needs_sklearn(type(self).__name__)
        super().__init__(model, n_samples, **options)


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
)
class Lime(SampledFeatureExplainer):
    """LIME via ``captum.attr.Lime`` with Captum's defaults (Lasso, exponential cosine kernel).

    Captum's ``Lasso(alpha=0.01)`` is not scale-free: where masking moves the class
    score by less than about ``alpha`` (a random-weight model whose logits span 0.03, or
    a score read as a small probability) it selects no feature and the map is constant.

    Args:
        n_samples: random feature subsets per image (256).
        **options: see `FeatureMaskExplainer`.
    """

    captum_name = "Lime"
    per_image = True

    def __init__(self, model: nn.Module, n_samples: int = 256, **options: Any) -> None:
        _needs_sklearn(type(self).__name__)
        super().__init__(model, n_samples, **options)
