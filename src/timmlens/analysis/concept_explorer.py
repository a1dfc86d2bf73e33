"""Which concepts explain one prediction: concept maps and each concept's share of the logit.

Deep feature factorization of one image's layer (`timmlens.analysis.dff`) splits the
layer into ``K`` concepts with a map each. Where the head is linear after global
average pooling of that layer, the predicted logit splits over the concepts exactly:

* the head reads the spatial mean ``f = mean_ij A[:, i, j]`` ``(C,)``;
* NMF gives ``A - offset ~= W H``, so ``f = W hbar + offset + r``, with ``hbar_k`` the
  mean loading of concept ``k`` over the image and ``r`` the mean NMF residual;
* the head's logit of class ``c`` is ``v_c . f + b_c`` (for a head with a norm after
  pooling, ``v_c`` and ``b_c`` are the norm's affine map at this image, see
  [`affine_head`][]), hence

``logit_c = sum_k contribution_k + floor + residual`` with
``contribution_k = hbar_k * (v_c . W_k)``, ``floor = v_c . offset + b_c`` and
``residual = v_c . r``. The figure draws each concept's map in its own colour, with a
legend giving its top classes and contribution (pytorch-grad-cam's
``show_factorization_on_image`` draws the same picture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..adapters import LayerSpec
from ..data import ImagesInput, denormalize, prepare_images
from ..errors import ImageInputError, TargetError
from ..interpretation._targets import TargetInput, validate_targets
from ..models.introspect import class_name_of
from .dff import ConceptFactorization, _pooled_head, deep_feature_factorization

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def affine_head(
    model: nn.Module, pooled: torch.Tensor, target: int
) -> tuple[torch.Tensor, torch.Tensor] | str:
    """The head's logit of ``target`` as an affine function of the pooled features.

    Returns ``(v, b)`` with ``logit = v . pooled + b`` exactly at ``pooled``: for a bare
    linear classifier its row and bias; after a ``BatchNorm1d`` (eval) the composed affine
    map; after a ``LayerNorm`` over the channels (a ViT's ``fc_norm``, ConvNeXt's
    ``head.norm``) the norm with its standard deviation held at this image's value (the
    only non-linear part), which makes it affine: ``u - mean(u)`` with
    ``u = w_c * gamma / sigma``. Any other norm gives a string saying why not.

    Args:
        model: a classifier whose head is linear after pooling.
        pooled: ``(C,)`` the pooled features of one image.
        target: the class.
    """
    norm, classifier = _pooled_head(model)
    pooled = pooled.to(classifier.weight)
    row = classifier.weight[target]
    bias = classifier.bias[target] if classifier.bias is not None else row.new_zeros(())
    if norm is None:
        return row, bias
    if isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (pooled.numel(),):
        sigma = torch.sqrt(pooled.var(unbiased=False) + norm.eps)
        gamma = norm.weight if norm.weight is not None else torch.ones_like(row)
        beta = norm.bias if norm.bias is not None else torch.zeros_like(row)
        u = row * gamma / sigma
        return u - u.mean(), row @ beta + bias
    if isinstance(norm, nn.BatchNorm1d) and not norm.training and norm.running_var is not None:
        scale = torch.rsqrt(norm.running_var + norm.eps)
        gamma = norm.weight if norm.weight is not None else torch.ones_like(scale)
        beta = norm.bias if norm.bias is not None else torch.zeros_like(scale)
        u = row * gamma * scale
        return u, row @ beta - u @ norm.running_mean + bias
    return (
        f"the norm after pooling ({type(norm).__name__}) has no affine form to split the "
        f"logit over concepts"
    )


@dataclass(frozen=True, eq=False)
class ConceptExplanation:
    """The concepts of one image and their contributions to one class's logit.

    Attributes:
        factorization: the [`ConceptFactorization`][timmlens.analysis.dff.ConceptFactorization]
            of the image (batch of one).
        target: the explained class (the predicted one unless given).
        target_label: its name.
        logit: the model's logit of ``target``.
        contributions: ``(K,)`` float32 each concept's share of the logit (see the module
            docstring), on CPU; ``None`` where `contributions_unavailable_reason` is set.
        floor: the head's value at the channel offsets, ``v . offset + b``.
        residual: the share of NMF's reconstruction residual, ``v . r``.
        contributions_unavailable_reason: why the logit does not split over concepts.
        picture: ``(3, H, W)`` the model input in pixel values [0, 1], on CPU (what the
            figure draws on).
    """

    factorization: ConceptFactorization
    target: int
    target_label: str
    logit: float
    contributions: torch.Tensor | None
    floor: float | None
    residual: float | None
    contributions_unavailable_reason: str | None
    picture: torch.Tensor

    def legend_labels(self, top_k: int = 2) -> list[str]:
        """One legend line per concept: ``"concept 1: tabby 41% / tiger cat 22% | +5.31"``
        (top classes with their probabilities, then the contribution to the logit)."""
        lines = self.factorization.legend_labels(top_k)
        if self.contributions is None:
            return lines
        return [
            f"{line} | {float(c):+.2f}" for line, c in zip(lines, self.contributions, strict=True)
        ]

    def figure(self, image_weight: float = 0.5, top_k: int = 2) -> Figure:
        """The concept maps in one colour each over the image, with a legend
        ([`plot_concepts`][timmlens.viz.concept_figure.plot_concepts])."""
        from ..viz.concept_figure import plot_concepts

        return plot_concepts(self, image_weight=image_weight, top_k=top_k)


def explain_concepts(
    model: nn.Module,
    image: ImagesInput,
    n_concepts: int = 5,
    layer: LayerSpec = None,
    target_class: TargetInput = None,
    seed: int = 0,
    top_k: int = 5,
) -> ConceptExplanation:
    """Factorize one image's layer into concepts and split a logit over them.

    Args:
        model: an ``ImageClassifier`` or a timm model.
        image: one image (PIL, path, array, ``(C, H, W)`` or ``(1, C, H, W)`` tensor).
        n_concepts: ``K``, the number of concepts.
        layer: the layer to factorize; ``None`` as in
            [`deep_feature_factorization`][timmlens.analysis.dff.deep_feature_factorization].
        target_class: the class whose logit is split (index or name); ``None``: the
            predicted class.
        seed: NMF's ``random_state``.
        top_k: classes kept per concept.

    Returns:
        A [`ConceptExplanation`][]; ``.figure()`` draws it.

    Raises:
        ImageInputError: more than one image.
        TargetError: a class the model does not have, or a callable target.
    """
    batch = prepare_images(image, model)
    if len(batch) != 1:
        raise ImageInputError(
            f"explain_concepts explains one image, got {len(batch)}; call it per image, or "
            f"use deep_feature_factorization for concepts shared by a batch."
        )
    result = deep_feature_factorization(model, batch.tensor, n_concepts, layer, seed, top_k)
    if result.logits is None:
        raise TargetError(
            "explain_concepts splits a class logit over concepts, but the model has no "
            "classifier (num_classes=0); use deep_feature_factorization for its concepts."
        )
    targets = validate_targets(target_class, 1, result.logits.shape[1], model, "explain_concepts")
    if targets is not None and not isinstance(targets, list):
        raise TargetError("explain_concepts needs a class index or name, not a callable target.")
    target = int(result.logits[0].argmax()) if targets is None else int(targets[0])
    logit = float(result.logits[0, target])
    contributions = floor = residual = None
    reason = result.labels_unavailable_reason
    if reason is None:
        with torch.no_grad():  # the classifier's parameters may require grad
            head = affine_head(model, result.mean_activations[0], target)
        if isinstance(head, str):
            reason = head
        else:
            # a few (C,) and (C, K) values: float64 on the CPU (MPS has no float64)
            v, b = (t.detach().cpu().double() for t in head)
            basis = result.basis.cpu().double()
            mean_loading = result.low_res_maps[0].mean(dim=(1, 2)).cpu().double()
            offset = result.offset.cpu().double()
            rest = result.mean_activations[0].cpu().double() - basis @ mean_loading - offset
            contributions = (mean_loading * (v @ basis)).float().cpu()
            floor, residual = float(v @ offset + b), float(v @ rest)
    return ConceptExplanation(
        factorization=result,
        target=target,
        target_label=class_name_of(model, target),
        logit=logit,
        contributions=contributions,
        floor=floor,
        residual=residual,
        contributions_unavailable_reason=reason,
        picture=denormalize(batch.tensor, model)[0].float().cpu(),
    )
