"""SESS (Tyagi et al., ECCV 2022): a scale ensemble of any CAM method over sliding windows.

The image is resized to several scales (the shorter side to each of ``scales``); a window
of the model's input size slides over each; the base CAM of every window is weighted by
the window's target score (softmax probability, divided by the image's best window),
pasted back where it was taken and resized to the image; the pasted maps are fused by a
per-pixel mean over the windows where they exceed ``theta`` (or by a max), then
Gaussian-blurred. This is pytorch-grad-cam 1.5.7's ``SESS`` step by step.

Batching: the windows of all images are jobs, built on the fly a chunk at a time from
the resized images; each chunk is one call of the base method, i.e. one forward and one
backward for the whole chunk (its logits give the window scores too), with the chunk
sized from the memory budget of a backward pass (`scoring`) or ``max_batch``. Only a
pre-filter (``pre_filter_ratio > 0``) takes a separate scoring pass first, in no-grad
chunks, as it must know the scores before choosing the windows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...adapters import LayerSpec
from .._targets import CallableTargets, ResolvedTargets, target_rows
from ..base import Explainer, Explanation, normalize_maps, predict
from ..registry import create_explainer, register_method, resolve_method
from ..scoring import (
    balanced_chunk,
    chunk_size_for,
    forward_with_activation_bytes,
    memory_budget,
    samples_per_chunk,
    score_in_chunks,
    target_scores,
)

__all__ = ["SESS", "gaussian_blur", "resize_antialiased", "sess_scales", "window_starts"]

Pool = Literal["mean", "max"]
#: pytorch-grad-cam's smoothing of the fused map: cv2.GaussianBlur((11, 11), sigma 5)
BLUR_SIZE, BLUR_SIGMA = 11, 5.0
#: pasted maps resized per call of F.interpolate (bounds the canvases' memory)
PASTE_CHUNK = 16


def sess_scales(window: int, num_scales: int, step_ratio: float) -> list[int]:
    """The default scales: ``window + round(window * step_ratio) * i``, ``i < num_scales``."""
    step = round(window * step_ratio)
    return [window + step * i for i in range(num_scales)]


def window_starts(length: int, step: int, window: int) -> list[int]:
    """Window starts along one side; the last is shifted back inside (pytorch-grad-cam)."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(H, W)`` with the shorter side resized to ``short_side`` (torchvision's rule)."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def resize_antialiased(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's resize (bilinear, antialiased), as pytorch-grad-cam calls it:
    ``(B, C, H, W)`` -> ``(B, C, *size)`` in the images' dtype.

    The antialiased kernel has no half-precision version on every device (none on CPU),
    so half-precision images are resized in float32 and cast back.
    """
    half = images.dtype in (torch.float16, torch.bfloat16)
    resized = F.interpolate(
        images.float() if half else images,
        size=size,
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return resized.to(images.dtype)


def gaussian_blur(
    maps: torch.Tensor, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA
) -> torch.Tensor:
    """OpenCV's ``GaussianBlur`` (reflect-101 borders): ``(B, H, W)`` -> ``(B, H, W)``."""
    offsets = torch.arange(size, device=maps.device, dtype=maps.dtype) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    half = size // 2
    x = F.pad(maps[:, None], (half, half, half, half), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))[:, 0]


@register_method(
    "sess",
    title="SESS",
    kind="cam",
    compared_by_default=False,
    summary="scale ensemble: a CAM method over sliding windows at several scales, fused",
    paper="Tyagi et al., SESS: Saliency Enhancing with Scaling and Sliding, ECCV 2022",
    formula="blur(mean over windows w with M_w > theta of M_w), "
    "M_w = paste(s_w / max s * CAM(window w))",
    cost="1 forward + 1 backward per chunk of windows (about 120 windows per image with "
    "the 12 default scales); + 1 no-grad pass with a pre-filter",
    quick_options={"num_scales": 2},
)
class SESS(Explainer):
    """SESS (Tyagi et al. 2022) over a base CAM method, as pytorch-grad-cam's ``SESS``.

    ``aug_smooth``, ``eigen_smooth``, ``layer_fusion``: the base method's CAM engine options,
    applied to every window (pytorch-grad-cam's SESS hands ``eigen_smooth`` to its base);
    ``aug_smooth`` / ``eigen_smooth`` can also be given per call.

    Args:
        model: an ``ImageClassifier`` or a bare timm model.
        target_layer: the base method's layer (``None``: the family's default).
        base_method: a registered CAM method name (``"gradcam"``, ``"layercam"``, ...).
        base_options: other constructor options of the base method.
        scales: sizes the image's shorter side is resized to; ``None``: ``num_scales``
            scales from the window size in steps of ``scale_step_ratio * window``
            (224, 288, ..., 928 for 224 pixels, as the paper). Each at least the window.
        num_scales: how many default scales.
        scale_step_ratio: the default scales' step, as a fraction of the window.
        window_size: the square window; ``None``: the input's shorter side (so the
            smallest scale is the image itself).
        step_size: the window's stride; ``None``: the window size (no overlap).
        pre_filter_ratio: the fraction of lowest-scoring windows left out, in ``[0, 1)``.
        theta: pasted values at or below it do not enter the ``"mean"`` fusion.
        pool: ``"mean"`` (per-pixel mean over the windows that cover it) or ``"max"``.
        smooth: Gaussian blur (11 x 11, sigma 5) of the fused map.
        use_softmax_scores: window scores are target probabilities (the paper); ``False``
            uses the target logits clipped at 0.
        normalize: min-max normalise each heatmap to ``[0, 1]``.
        max_batch: windows per forward/backward; ``None`` sizes chunks from memory.
    """

    constant_map_causes = (
        "the base method's map is constant (usually all zero after its ReLU) on every window, "
        "or every window's target score is 0: untrained weights, a layer too coarse for "
        "the window (a 1x1 map), or a target whose score does not depend on the image"
    )

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        base_method: str = "gradcam",
        base_options: Mapping[str, Any] | None = None,
        scales: list[int] | None = None,
        num_scales: int = 12,
        scale_step_ratio: float = 2.0 / 7.0,
        window_size: int | None = None,
        step_size: int | None = None,
        pre_filter_ratio: float = 0.0,
        theta: float = 0.0,
        pool: Pool = "mean",
        smooth: bool = True,
        use_softmax_scores: bool = True,
        normalize: bool = True,
        max_batch: int | None = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        layer_fusion: str = "mean",
    ) -> None:
        super().__init__(model)
        engine = {"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth}
        engine = {**engine, "layer_fusion": layer_fusion}
        chosen = {k: v for k, v in engine.items() if v is not False and v != "mean"}
        base_options = {**chosen, **(base_options or {})}  # defaults stay the base's
        _check_options(
            pool, pre_filter_ratio, num_scales, scales, window_size, step_size, max_batch
        )
        self.base = _base_explainer(self.model, base_method, target_layer, base_options)
        #: the base's engine options (what every window's call uses)
        self.aug_smooth: bool = getattr(self.base, "aug_smooth", False)
        self.eigen_smooth: bool = getattr(self.base, "eigen_smooth", False)
        self.layer_fusion: str = getattr(self.base, "layer_fusion", "mean")
        self.needs_gradients = self.base.needs_gradients
        self.scales = None if scales is None else [int(s) for s in scales]
        self.num_scales = int(num_scales)
        self.scale_step_ratio = float(scale_step_ratio)
        self.window_size, self.step_size = window_size, step_size
        self.pre_filter_ratio, self.theta = float(pre_filter_ratio), float(theta)
        self.pool: Pool = pool
        self.smooth, self.use_softmax_scores = smooth, use_softmax_scores
        self.normalize, self.max_batch = normalize, max_batch

    @classmethod
    def supports_eigen_smooth(cls) -> bool:
        """Whether the default base (GradCAM) takes ``eigen_smooth``; another base checks
        its own when SESS builds it."""
        return True

    @property
    def layer_names(self) -> list[str]:
        """The base method's layers."""
        return list(getattr(self.base, "layer_names", []))

    def __repr__(self) -> str:
        return (
            f"SESS(base={self.base!r}, scales={self.scales or self.num_scales}, pool={self.pool!r}"
            f"{', aug_smooth=True' if self.aug_smooth else ''})"
        )

    def windows(self, height: int, width: int) -> tuple[int, list[tuple[int, int, int]]]:
        """The window size and every window ``(scale index, x1, y1)`` of an image."""
        window = self.window_size or min(height, width)
        step = self.step_size or window
        scales = self.scales or sess_scales(window, self.num_scales, self.scale_step_ratio)
        if min(scales) < window:
            raise ValueError(
                f"every SESS scale must be at least the window size {window}, got "
                f"{min(scales)}; give larger scales or a smaller window_size."
            )
        jobs = []
        for index, scale in enumerate(scales):
            rows, cols = resized_size(height, width, scale)
            for y1 in window_starts(rows, step, window):
                jobs.extend((index, x1, y1) for x1 in window_starts(cols, step, window))
        return window, jobs

    def attribute(
        self, inputs: torch.Tensor, targets: ResolvedTargets, **kwargs: Any
    ) -> Explanation:
        """SESS maps of ``inputs`` ``(B, C, H, W)``: heatmap ``(B, H, W)``.

        ``aug_smooth`` / ``eigen_smooth`` (keyword) go to the base method's every call.
        """
        engine = {k: kwargs.pop(k) for k in ("aug_smooth", "eigen_smooth") if k in kwargs}
        if kwargs:
            raise TypeError(
                f"unexpected arguments for SESS: {sorted(kwargs)}; a call takes "
                f"target_class, aug_smooth and eigen_smooth."
            )
        inputs = inputs.detach()
        batch, _, height, width = inputs.shape
        window, windows = self.windows(height, width)
        scales = self.scales or sess_scales(window, self.num_scales, self.scale_step_ratio)
        logits = predict(self.model, inputs)
        rows = target_rows(targets, inputs.device)
        chosen = logits.argmax(dim=1) if rows is None else rows
        resized = [resize_antialiased(inputs, resized_size(height, width, s)) for s in scales]
        per_image = len(windows)

        def make(jobs: torch.Tensor) -> torch.Tensor:
            crops = []
            for job in jobs.tolist():
                index, x1, y1 = windows[job % per_image]
                image = resized[index][job // per_image]
                crops.append(image[:, y1 : y1 + window, x1 : x1 + window])
            return torch.stack(crops)

        jobs = torch.arange(batch * per_image, device=inputs.device)
        job_targets = chosen.repeat_interleave(per_image)
        if self.pre_filter_ratio > 0:
            jobs = self._kept_after_pre_filter(make, jobs, job_targets, batch)
        maps, scores = self._window_maps(make, jobs, job_targets, engine)
        fused = self._fuse(maps, scores, jobs, windows, resized, (height, width), batch)
        return Explanation(
            heatmap=normalize_maps(fused) if self.normalize else fused,
            targets=chosen,  # a callable: explain_batch_full reports its label
            logits=logits,
            extras={"windows": per_image, "scales": scales},
        )

    def _score_kind(self) -> str:
        return "probability" if self.use_softmax_scores else "logit"

    def _kept_after_pre_filter(
        self, make: Any, jobs: torch.Tensor, job_targets: Any, batch: int
    ) -> torch.Tensor:
        """The jobs of the windows that survive the pre-filter, per image, lowest first."""
        sample = make(jobs[:1])
        chunk = chunk_size_for(self.model, sample, jobs.numel(), self.max_batch)
        scores = score_in_chunks(
            self.model, lambda lo, hi: make(jobs[lo:hi]), job_targets, chunk, self._score_kind()
        ).clamp_min(0)
        per_image = jobs.numel() // batch
        drop = int(per_image * self.pre_filter_ratio)
        order = scores.view(batch, per_image).argsort(dim=1, stable=True)[:, drop:]
        offsets = torch.arange(batch, device=jobs.device)[:, None] * per_image
        return (order + offsets).flatten()

    def _window_maps(
        self, make: Any, jobs: torch.Tensor, job_targets: Any, engine: Mapping[str, bool]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The base method's normalised maps ``(N, w, w)`` and scores ``(N,)`` of ``jobs``,
        one base call (forward + backward) per chunk."""
        sample = make(jobs[:1])
        if self.max_batch is not None:
            limit = self.max_batch
        else:
            _, per_sample = forward_with_activation_bytes(self.model, sample)
            limit = samples_per_chunk(per_sample, memory_budget(sample.device, "backward"))
        chunk = balanced_chunk(limit, jobs.numel())
        maps, scores = [], []
        for lo in range(0, jobs.numel(), chunk):
            part = jobs[lo : lo + chunk]
            wanted = job_targets[part]
            base_targets = wanted if isinstance(wanted, CallableTargets) else wanted.tolist()
            result = self.base.attribute(make(part), base_targets, **engine)
            maps.append(result.heatmap.float())
            assert result.logits is not None
            scores.append(target_scores(result.logits, wanted, self._score_kind()).float())
        return torch.cat(maps), torch.cat(scores).clamp_min(0)

    def _fuse(
        self,
        maps: torch.Tensor,
        scores: torch.Tensor,
        jobs: torch.Tensor,
        windows: list[tuple[int, int, int]],
        resized: list[torch.Tensor],
        size: tuple[int, int],
        batch: int,
    ) -> torch.Tensor:
        """Weight, paste, resize and fuse the window maps: ``(N, w, w)`` -> ``(B, H, W)``."""
        per_image, window = len(windows), maps.shape[-1]
        image_of = jobs // per_image
        best = scores.new_zeros(batch).scatter_reduce(0, image_of, scores, "amax")
        weights = torch.where(best[image_of] > 0, scores / best[image_of].clamp_min(1e-30), 1)
        total = maps.new_zeros(batch, *size)
        counts = maps.new_zeros(batch, *size)
        for b in range(batch):
            mine = (image_of == b).nonzero().flatten().tolist()
            by_scale: dict[int, list[int]] = {}
            for i in mine:
                by_scale.setdefault(windows[int(jobs[i]) % per_image][0], []).append(i)
            for scale, members in by_scale.items():
                rows, cols = resized[scale].shape[-2:]
                for lo in range(0, len(members), PASTE_CHUNK):
                    part = members[lo : lo + PASTE_CHUNK]
                    canvas = maps.new_zeros(len(part), rows, cols)
                    for k, i in enumerate(part):
                        _, x1, y1 = windows[int(jobs[i]) % per_image]
                        canvas[k, y1 : y1 + window, x1 : x1 + window] = maps[i] * weights[i]
                    pasted = F.interpolate(
                        canvas[:, None], size=size, mode="bilinear", align_corners=False
                    )[:, 0]
                    if self.pool == "max":
                        total[b] = torch.maximum(total[b], pasted.amax(dim=0))
                    else:
                        above = pasted > self.theta
                        total[b] += torch.where(above, pasted, 0).sum(dim=0)
                        counts[b] += above.sum(dim=0)
        fused = (
            total if self.pool == "max" else torch.where(counts > 0, total / counts.clamp_min(1), 0)
        )
        return gaussian_blur(fused) if self.smooth else fused


def _check_options(
    pool: str,
    pre_filter_ratio: float,
    num_scales: int,
    scales: list[int] | None,
    window_size: int | None,
    step_size: int | None,
    max_batch: int | None,
) -> None:
    if pool not in ("mean", "max"):
        raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}.")
    if not 0.0 <= pre_filter_ratio < 1.0:
        raise ValueError(
            f"pre_filter_ratio is the fraction of windows left out, in [0, 1); got "
            f"{pre_filter_ratio}."
        )
    if not _is_positive_int(num_scales):
        raise ValueError(f"num_scales must be a positive integer, got {num_scales!r}; e.g. 12.")
    if scales is not None and not scales:
        raise ValueError("SESS needs at least one scale (num_scales >= 1, or scales=[...]).")
    for name, value in (("window_size", window_size), ("step_size", step_size)):
        if value is not None and not _is_positive_int(value):
            raise ValueError(f"{name} must be a positive number of pixels or None, got {value!r}.")
    if max_batch is not None and not _is_positive_int(max_batch):
        raise ValueError(
            f"max_batch must be a positive number of windows or None (sized from memory), "
            f"got {max_batch!r}."
        )
    if scales is not None and not all(
        isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s >= 1
        for s in scales
    ):
        raise ValueError(
            f"scales must be positive sizes in pixels, got {scales!r}; e.g. [224, 288]."
        )


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _base_explainer(
    model: nn.Module,
    base_method: str,
    target_layer: LayerSpec,
    base_options: Mapping[str, Any] | None,
) -> Explainer:
    """The base CAM explainer, built with normalised maps (SESS weights maps in [0, 1])."""
    spec = resolve_method(base_method)
    if spec.kind != "cam" or spec.name == "sess":
        raise ValueError(
            f"SESS runs a CAM method on each window; base_method={base_method!r} is a "
            f"{spec.kind} method{' (SESS itself)' if spec.name == 'sess' else ''}. Use e.g. "
            f"'gradcam', 'gradcampp', 'layercam' or 'scorecam'."
        )
    options = dict(base_options or {})
    if target_layer is not None:
        if not spec.uses_layer:
            raise ValueError(f"{spec.name} takes no target_layer; leave it None for SESS.")
        options["target_layer"] = target_layer
    if "normalize" in spec.options():
        options["normalize"] = True  # pytorch-grad-cam scales each window's map to [0, 1]
    return create_explainer(spec.name, model, **options)
