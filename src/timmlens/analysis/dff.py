"""Deep feature factorization (Collins et al., ECCV 2018): concepts a layer has learned.

Non-negative matrix factorization of one layer's activations over a batch,
``A (C, B*h*w) ~= W (C, K) @ H (K, B*h*w)``, gives ``K`` *concepts*: each column of ``W``
is a direction in the layer's channel space, and its row of ``H`` is where (and how
strongly) each image shows it, a ``(h, w)`` map per image. Where the model's head is
linear after global pooling, the head applied to a concept vector names its classes.

The factorization is pytorch-grad-cam's ``dff`` on the same activations: the same
per-channel shift (`shift_nonnegative`) and scikit-learn's ``NMF(init="random",
random_state=seed)``, so the concepts and maps are equal to its own. scikit-learn is an
optional dependency: ``pip install "timmlens[concepts]"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from ..adapters import LayerSpec
from ..data import ImagesInput
from ..errors import ConceptInputError, ConceptLabelError, OptionalDependencyError
from ..interpretation.cam.engine import upsample_maps
from ..models.introspect import class_name_of, timm_model_of
from .activations import layer_activations

#: logits and the head applied to the layer's spatial mean must agree this closely
#: (relative to the largest logit) for the head to count as "linear after pooling"
_HEAD_MATCH_RTOL = 1e-3


def sklearn_decomposition() -> ModuleType:
    """``sklearn.decomposition``, or an
    [`OptionalDependencyError`][timmlens.errors.OptionalDependencyError] saying how to
    install it."""
    try:
        from sklearn import decomposition
    except ImportError as exc:
        raise OptionalDependencyError(
            "Concept analyses factorize activations with scikit-learn's NMF, which is not "
            'installed. Install it with: pip install "timmlens[concepts]"  (or: pip install '
            "scikit-learn)."
        ) from exc
    return decomposition


# ------------------------------------------------------------------ the factorization
def shift_nonnegative(activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-negative matrix NMF factorizes, as pytorch-grad-cam's ``dff`` builds it.

    NMF needs non-negative input, and a layer's output may be signed (a convolution
    before its norm, a transformer block's tokens). Each channel's minimum over the whole
    batch is subtracted, so every channel's smallest value becomes 0. pytorch-grad-cam
    subtracts the minimum also when it is positive, and so do we, so the two
    factorizations see the same matrix; for post-ReLU activations that reach 0 somewhere
    (the paper's setting) the offset is 0 and nothing changes.

    Args:
        activations: ``(B, C, h, w)`` a layer's output.

    Returns:
        ``(matrix, offset)``: ``matrix`` ``(C, B*h*w)``, column ``b*h*w + i*w + j`` holds
        position ``(i, j)`` of image ``b``; ``offset`` ``(C,)`` the subtracted minima.
    """
    channels = activations.shape[1]
    matrix = activations.transpose(0, 1).reshape(channels, -1)
    offset = matrix.min(dim=1).values
    return matrix - offset[:, None], offset


def check_concept_count(n_concepts: int, channels: int, layer: str) -> None:
    """Refuse a number of concepts NMF cannot find in ``channels`` channels.

    Raises:
        ConceptInputError: ``n_concepts`` is not an integer, is below 1, or exceeds
            ``channels``.
    """
    if isinstance(n_concepts, bool) or not isinstance(n_concepts, int):
        raise ConceptInputError(
            f"n_concepts must be an integer (the number of concepts to find), got "
            f"{type(n_concepts).__name__} {n_concepts!r}."
        )
    if n_concepts < 1:
        raise ConceptInputError(
            f"n_concepts={n_concepts}: at least 1 concept is needed. Try n_concepts=8."
        )
    if n_concepts > channels:
        raise ConceptInputError(
            f"n_concepts={n_concepts} is more than the {channels} channels of layer "
            f"'{layer}'; NMF finds at most one concept per channel. Use n_concepts <= "
            f"{channels}, or a layer with more channels."
        )


def check_finite(activations: torch.Tensor, layer: str) -> None:
    """Refuse NaN/inf activations (pytorch-grad-cam's ``dff`` silently zeroes NaN).

    Raises:
        ConceptInputError: some activation is NaN or infinite.
    """
    bad = int((~torch.isfinite(activations)).sum())
    if bad:
        raise ConceptInputError(
            f"The activations of layer '{layer}' hold {bad} NaN or infinite values; NMF "
            f"needs finite values. Check the model's weights and the inputs, or pick "
            f"another layer."
        )


@dataclass(frozen=True, eq=False)
class Factors:
    """The NMF of one batch of activations (see [`factorize_activations`][]).

    Attributes:
        basis: ``(C, K)`` NMF's ``W`` in the shifted space: ``A - offset ~= basis @ H``.
        loadings: ``(B, K, h, w)`` NMF's ``H``, one map per image and concept.
        offset: ``(C,)`` the per-channel shift (`shift_nonnegative`).
        relative_error: ``||A' - W H||_F / ||A'||_F`` with ``A'`` the shifted matrix.
    """

    basis: torch.Tensor
    loadings: torch.Tensor
    offset: torch.Tensor
    relative_error: float

    @property
    def concepts(self) -> torch.Tensor:
        """``(K, C)`` the concept vectors in activation units: ``basis.T + offset``.

        pytorch-grad-cam's ``dff`` returns ``W + offset`` (transposed here), the point a
        unit loading of the concept reaches; with a zero offset it is NMF's ``W``.
        """
        return self.basis.T + self.offset


def factorize_activations(
    activations: torch.Tensor, n_concepts: int, seed: int = 0, layer: str = "the layer"
) -> Factors:
    """NMF of ``activations`` exactly as pytorch-grad-cam's ``dff`` computes it.

    The matrix of [`shift_nonnegative`][] goes to scikit-learn's
    ``NMF(n_components=n_concepts, init="random", random_state=seed)`` (its defaults
    otherwise: coordinate descent, Frobenius loss, 200 iterations at most), in float32 as
    pytorch-grad-cam passes it.

    Args:
        activations: ``(B, C, h, w)`` a layer's output (any device).
        n_concepts: ``K``, the number of concepts.
        seed: NMF's ``random_state`` (pytorch-grad-cam uses 0).
        layer: the layer's name, for messages.

    Returns:
        [`Factors`][] on the activations' device.

    Raises:
        ConceptInputError: ``n_concepts`` out of range, or NaN/inf activations.
        OptionalDependencyError: scikit-learn is not installed.
    """
    if activations.ndim != 4:
        raise ConceptInputError(
            f"activations must be (B, C, h, w), got shape {tuple(activations.shape)}."
        )
    batch, channels, height, width = activations.shape
    check_concept_count(n_concepts, channels, layer)
    check_finite(activations, layer)
    decomposition = sklearn_decomposition()
    matrix, offset = shift_nonnegative(activations.float())
    numpy_matrix = matrix.cpu().numpy()
    nmf = decomposition.NMF(n_components=n_concepts, init="random", random_state=seed)
    basis_np = nmf.fit_transform(numpy_matrix)
    device = activations.device
    basis = torch.from_numpy(basis_np).to(device)
    components = torch.from_numpy(nmf.components_).to(device)
    # in float32 on the device (MPS has no float64); the norm of B*h*w*C values is exact
    # enough for a ratio
    residual = torch.linalg.norm(matrix - basis @ components)
    total = torch.linalg.norm(matrix)
    relative = float(residual / total) if total > 0 else 0.0
    loadings = components.reshape(n_concepts, batch, height, width).transpose(0, 1)
    return Factors(basis, loadings.contiguous(), offset, relative)


# ------------------------------------------------------------------ the head
def _pooled_head(model: nn.Module) -> tuple[nn.Module | None, nn.Linear]:
    """The norm (or ``None``) and the linear classifier the pooled features go through.

    Raises:
        ConceptLabelError: no classifier, or one that is not a single ``nn.Linear`` after
            pooling (an MLP head, a convolutional head, two heads).
    """
    timm_model = timm_model_of(model)
    getter = getattr(timm_model, "get_classifier", None)
    classifier = getter() if callable(getter) else None
    if not isinstance(classifier, nn.Linear):
        kind = "none" if classifier is None else type(classifier).__name__
        raise ConceptLabelError(
            f"The model's classifier (get_classifier()) is {kind}, not one nn.Linear layer "
            f"after pooling, so a concept vector cannot be put through it to get classes."
        )
    parent_name = next(
        (n.rpartition(".")[0] for n, m in timm_model.named_modules() if m is classifier), ""
    )
    parent = timm_model.get_submodule(parent_name) if parent_name else timm_model
    pre_logits = getattr(parent, "pre_logits", None) if parent_name else None
    if isinstance(pre_logits, nn.Module) and not isinstance(pre_logits, nn.Identity):
        raise ConceptLabelError(
            f"The model's head has a hidden layer before its classifier "
            f"({type(pre_logits).__name__}), so it is not linear after pooling and a concept "
            f"vector has no class scores of its own."
        )
    # ViTs with average pooling: ``fc_norm``; ConvNeXt-style heads: ``head.norm``.
    norm = getattr(parent, "norm", None) if parent_name else getattr(timm_model, "fc_norm", None)
    if not isinstance(norm, nn.Module) or isinstance(norm, nn.Identity):
        norm = None
    return norm, classifier


def _apply_norm(norm: nn.Module | None, vectors: torch.Tensor) -> torch.Tensor:
    """A post-pooling norm on ``(N, C)`` vectors (2-D norms see them as ``(N, C, 1, 1)``)."""
    if norm is None:
        return vectors
    try:
        return norm(vectors)
    except (RuntimeError, ValueError):
        return norm(vectors[:, :, None, None]).flatten(1)


def concept_class_scores(model: nn.Module, concepts: torch.Tensor) -> torch.Tensor:
    """The model's own head applied to concept vectors: ``(K, C)`` -> ``(K, num_classes)``.

    A concept vector is read as a pooled feature vector: it goes through what follows
    global pooling, the classifier (one ``nn.Linear``, timm's ``get_classifier()``),
    after the post-pooling norm where the family has one (a ViT's ``fc_norm``, a ConvNeXt
    ``head.norm``). The result is logits, not probabilities. The scores mean something
    only for concepts of the layer whose spatial average the head reads;
    [`deep_feature_factorization`][] checks that.

    Args:
        model: an ``ImageClassifier`` or a timm model with a linear classifier.
        concepts: ``(K, C)`` concept vectors in activation units.

    Returns:
        ``(K, num_classes)`` logits on the classifier's device.

    Raises:
        ConceptLabelError: no linear classifier after pooling, or concepts whose width is
            not the classifier's input width.
    """
    norm, classifier = _pooled_head(model)
    if concepts.ndim != 2 or concepts.shape[1] != classifier.in_features:
        raise ConceptLabelError(
            f"The classifier reads {classifier.in_features} features, but the concepts have "
            f"shape {tuple(concepts.shape)}; concept labels need (K, "
            f"{classifier.in_features}) vectors from the layer whose average the head reads."
        )
    weight = classifier.weight
    with torch.no_grad():
        return classifier(_apply_norm(norm, concepts.to(weight.device, weight.dtype)))


def head_unavailable_reason(
    model: nn.Module,
    activations: torch.Tensor,
    logits: torch.Tensor | None,
    layer: str,
) -> str | None:
    """Why concepts of ``layer`` get no class scores, or ``None`` when they do.

    They do when the head is linear after pooling *of this layer*: the classifier (after
    its norm) applied to each image's spatial mean of ``activations`` reproduces the
    ``logits`` of the same forward. That one check covers every family: a ViT reading its
    class token, a Swin norm between the last stage and the pooling, or a layer earlier
    than the pooled one all fail it, and the reason says which.

    Args:
        model: the classifier.
        activations: ``(B, C, h, w)`` the layer's output.
        logits: ``(B, num_classes)`` of the same forward, ``None`` for a headless model.
        layer: the layer's name.
    """
    if logits is None:
        return "the model has no classifier (num_classes=0), so concepts have no classes"
    try:
        scores = concept_class_scores(model, activations.mean(dim=(2, 3)))
    except ConceptLabelError as exc:
        return str(exc)
    scale = float(logits.abs().max().clamp_min(1e-6))
    gap = float((scores.to(logits) - logits).abs().max())
    if gap <= _HEAD_MATCH_RTOL * scale:
        return None
    from ..adapters import get_adapter

    reads = (
        "the classifier reads the class token, not an average of the patch tokens"
        if get_adapter(model).readout == "class"
        else "layers between it and the pooling (or a pooling other than the average) change "
        "what the classifier reads"
    )
    return (
        f"The head is not linear after pooling of layer '{layer}': the classifier applied to "
        f"the layer's spatial average differs from the logits by {gap:.3g} ({reads}). Concept "
        f"labels need the layer whose average the classifier reads (the last one before "
        f"global average pooling)."
    )


# ------------------------------------------------------------------ the result
@dataclass(frozen=True, eq=False)
class ConceptFactorization:
    """Deep feature factorization of a batch: concepts, their maps and their classes.

    Attributes:
        concepts: ``(K, C)`` concept vectors in activation units (NMF's ``W`` plus the
            channel offset, as pytorch-grad-cam returns them), on the model's device.
        maps: ``(B, K, H, W)`` each concept's loading in each image, upsampled
            (bilinear) to the model input: NMF's ``H``, not normalised.
        low_res_maps: ``(B, K, h, w)`` the same at the layer's resolution.
        offset: ``(C,)`` the per-channel shift subtracted before NMF
            ([`shift_nonnegative`][]).
        mean_activations: ``(B, C)`` each image's spatial mean of the layer (what an
            average-pooling head reads).
        logits: ``(B, num_classes)`` the model's logits for the batch; ``None`` headless.
        class_scores: ``(K, num_classes)`` the head applied to each concept
            ([`concept_class_scores`][]); ``None`` when `labels_unavailable_reason` is set.
        top_classes: ``(K, top_k)`` long, each concept's best classes by class score.
        top_probabilities: ``(K, top_k)`` their softmax probabilities over the class
            scores (pytorch-grad-cam's legend shows the same).
        top_labels: per concept, the names of its top classes.
        labels_unavailable_reason: why there are no class scores, or ``None``.
        relative_error: ``||A' - W H||_F / ||A'||_F`` of the shifted activations ``A'``.
        layer: the factorized layer's full name.
        seed: NMF's ``random_state``.
    """

    concepts: torch.Tensor
    maps: torch.Tensor
    low_res_maps: torch.Tensor
    offset: torch.Tensor
    mean_activations: torch.Tensor
    logits: torch.Tensor | None
    class_scores: torch.Tensor | None
    top_classes: torch.Tensor | None
    top_probabilities: torch.Tensor | None
    top_labels: list[list[str]]
    labels_unavailable_reason: str | None
    relative_error: float
    layer: str
    seed: int

    @property
    def n_concepts(self) -> int:
        return int(self.concepts.shape[0])

    @property
    def basis(self) -> torch.Tensor:
        """``(C, K)`` NMF's ``W`` in the shifted space (``concepts.T - offset``)."""
        return self.concepts.T - self.offset[:, None]

    def legend_labels(self, top_k: int = 2) -> list[str]:
        """One line per concept: ``"concept 1: tabby 41% / tiger cat 22%"`` (its top
        classes and their probabilities; ``"concept 1"`` where there are no classes)."""
        lines = []
        for k in range(self.n_concepts):
            line = f"concept {k + 1}"
            if self.top_labels and self.top_probabilities is not None:
                names = [
                    f"{name} {float(self.top_probabilities[k, j]):.0%}"
                    for j, name in enumerate(self.top_labels[k][:top_k])
                ]
                line += ": " + " / ".join(names)
            lines.append(line)
        return lines

    def normalized_maps(self, across_batch: bool = False) -> torch.Tensor:
        """``(B, K, H, W)`` the maps min-max scaled to ``[0, 1]`` at the layer's resolution,
        then upsampled.

        Args:
            across_batch: ``False`` scales each image's map of each concept on its own:
                pytorch-grad-cam's ``DeepFeatureFactorization`` explanations (equal to
                them), where a concept absent from an image still spans ``[0, 1]`` there.
                ``True`` scales each concept by its range over the whole batch, so maps of
                one concept compare across images and an absent concept stays dark.
        """
        low = self.low_res_maps
        dims = (0, 2, 3) if across_batch else (2, 3)
        lo = low.amin(dim=dims, keepdim=True)
        hi = (low - lo).amax(dim=dims, keepdim=True)
        scaled = (low - lo) / (hi + 1e-7)
        batch, k = scaled.shape[:2]
        size = tuple(self.maps.shape[-2:])
        return upsample_maps(scaled.flatten(0, 1), size).view(batch, k, *size)


def deep_feature_factorization(
    model: nn.Module,
    images: ImagesInput,
    n_concepts: int = 8,
    layer: LayerSpec = None,
    seed: int = 0,
    top_k: int = 5,
) -> ConceptFactorization:
    """Find ``n_concepts`` concepts in a layer of ``model`` over ``images`` (DFF).

    One no-grad forward taps the layer through the adapter (CNNs, NHWC models, ViTs
    without their prefix tokens: always ``(B, C, h, w)``); NMF factorizes the activations
    as pytorch-grad-cam's ``dff`` does (equal results on equal activations). Negative
    activations are allowed: each channel's minimum is subtracted first
    ([`shift_nonnegative`][]), as pytorch-grad-cam does. Where the head is linear after
    pooling of this layer ([`head_unavailable_reason`][]), each concept is labelled by
    the head applied to it ([`concept_class_scores`][]).

    Args:
        model: an ``ImageClassifier``, a timm model or any image classifier.
        images: a preprocessed ``(B, C, H, W)`` tensor or anything
            [`prepare_images`][timmlens.data.prepare_images] accepts.
        n_concepts: ``K``, the number of concepts (1 to the layer's channel count).
        layer: a dotted name or module; ``None`` takes
            [`default_activation_layer`][timmlens.analysis.activations.default_activation_layer]
            (the CAM layer, or the norm + activation after it).
        seed: NMF's ``random_state``.
        top_k: classes kept per concept.

    Returns:
        A [`ConceptFactorization`][] on the model's device.

    Raises:
        ConceptInputError: ``n_concepts`` below 1 or above the channel count; NaN/inf
            activations.
        LayerResolutionError: an unknown layer, or one without a spatial map.
        OptionalDependencyError: scikit-learn is not installed.
    """
    tapped = layer_activations(model, images, layer)
    activations = tapped.activations
    factors = factorize_activations(activations, n_concepts, seed=seed, layer=tapped.layer)
    batch, k, _, _ = factors.loadings.shape
    maps = upsample_maps(factors.loadings.flatten(0, 1), tapped.input_hw)
    maps = maps.view(batch, k, *tapped.input_hw)
    reason = head_unavailable_reason(model, activations, tapped.logits, tapped.layer)
    scores = top_classes = top_probabilities = None
    labels: list[list[str]] = []
    if reason is None:
        scores = concept_class_scores(model, factors.concepts)
        top = torch.softmax(scores.float(), dim=1).topk(min(top_k, scores.shape[1]), dim=1)
        top_classes, top_probabilities = top.indices, top.values
        labels = [[class_name_of(model, int(c)) for c in row] for row in top_classes]
    return ConceptFactorization(
        concepts=factors.concepts,
        maps=maps,
        low_res_maps=factors.loadings,
        offset=factors.offset,
        mean_activations=activations.mean(dim=(2, 3)),
        logits=tapped.logits,
        class_scores=scores,
        top_classes=top_classes,
        top_probabilities=top_probabilities,
        top_labels=labels,
        labels_unavailable_reason=reason,
        relative_error=factors.relative_error,
        layer=tapped.layer,
        seed=seed,
    )
