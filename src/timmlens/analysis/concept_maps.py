"""The concepts of a [`fit_concepts`][timmlens.analysis.concepts.fit_concepts] run on new
images, and the hook to the feature visualisation of one concept.

`concept_maps` gives each concept's heatmap on any image: the layer's activations,
shifted by the run's offset, encoded by the trained dictionary (its encoder, in eval
mode) or, for NMF, solved for non-negative codes against the fixed concepts (scikit-learn's
``non_negative_factorization`` with ``update_H=False``, what ``MiniBatchNMF.transform``
does). `visualize_concept` hands one concept's atom, as a direction objective
(``timmlens.analysis.objectives.direction``), to ``timmlens.analysis.visualize_feature``
when they are present (they are built separately); until then it says so.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..data import ImagesInput
from ..errors import ConceptInputError
from .activations import layer_activations

if TYPE_CHECKING:
    from .concepts import DatasetConcepts


def concept_codes(result: DatasetConcepts, rows: torch.Tensor) -> torch.Tensor:
    """``(n, K)`` codes of shifted rows ``(n, C)`` under ``result``'s fit (rows' device)."""
    components = (result.concepts - result.offset[None, :]).float()
    if result.dictionary is not None:
        dictionary = result.dictionary
        centre, scale = dictionary.timmlens_row_mean, dictionary.timmlens_row_scale
        with torch.no_grad():
            _, codes = dictionary.encode((rows.to(centre) - centre) / scale)
        return (codes * scale).to(rows.device)
    from .dff import sklearn_decomposition

    decomposition = sklearn_decomposition()
    codes, _, _ = decomposition.non_negative_factorization(
        rows.double().cpu().numpy(),
        H=np.maximum(components.double().cpu().numpy(), 0.0),
        n_components=components.shape[0],
        update_H=False,
        init=None,
    )
    return torch.from_numpy(codes).to(rows)


def concept_maps(
    result: DatasetConcepts, model: nn.Module, images: ImagesInput, upsample: bool = True
) -> torch.Tensor:
    """Each concept's heatmap on ``images``, from a `fit_concepts` result of this model.

    Args:
        result: what [`fit_concepts`][timmlens.analysis.concepts.fit_concepts] returned
            (any method) for ``model``.
        images: anything `prepare_images` accepts (paths, PIL, arrays, a tensor).
        upsample: resize the ``(h, w)`` maps to the model input's ``(H, W)``.

    Returns:
        ``(N, K, H, W)`` (or ``(N, K, h, w)``) non-negative codes on the model's device:
        how strongly each concept is present at each position.

    Raises:
        ConceptInputError: the layer's width differs from the concepts' (another model).
    """
    tapped = layer_activations(model, images, result.layer)
    activations = tapped.activations.float()
    n, channels, height, width = activations.shape
    if channels != result.concepts.shape[1]:
        raise ConceptInputError(
            f"layer '{result.layer}' gives {channels} channels but the concepts have "
            f"{result.concepts.shape[1]}: pass the model the concepts were fitted on."
        )
    offset = result.offset.to(activations)
    rows = (activations - offset[None, :, None, None]).clamp_min(0.0)
    rows = rows.permute(0, 2, 3, 1).reshape(-1, channels)
    codes = concept_codes(result, rows).reshape(n, height, width, -1).permute(0, 3, 1, 2)
    if not upsample:
        return codes
    from ..interpretation.cam.engine import upsample_maps

    k_count = codes.shape[1]
    full = upsample_maps(codes.reshape(n * k_count, height, width), tuple(tapped.input_hw))
    return full.reshape(n, k_count, *full.shape[-2:])


def concept_direction(result: DatasetConcepts, concept: int) -> torch.Tensor:
    """``(C,)`` concept ``concept``'s atom as a unit vector of the layer's channel space (the
    concept vector less the offset: NMF's component, a dictionary's atom)."""
    if isinstance(concept, bool) or not isinstance(concept, int):
        raise ConceptInputError(f"concept must be an int index, got {concept!r}.")
    if not 0 <= concept < result.n_concepts:
        raise ConceptInputError(
            f"concept {concept} does not exist: the run has concepts 0 to "
            f"{result.n_concepts - 1} (index from 0; 'concept 1' is index 0)."
        )
    atom = (result.concepts[concept] - result.offset).float()
    return atom / atom.norm().clamp_min(1e-12)


def visualize_concept(
    model: nn.Module,
    result: DatasetConcepts,
    concept: int,
    cossim_pow: float = 1.0,
    **options: Any,
) -> Any:
    """Feature visualisation of one concept: ``timmlens.analysis.visualize_feature`` with
    the objective ``objectives.direction(result.layer, atom, cossim_pow)`` (`concept_direction`;
    ``options`` such as ``steps``, ``size``, ``method``, ``seed`` passed on).

    Raises:
        NotImplementedError: the feature visualisation is not part of this installation.
    """
    atom = concept_direction(result, concept)
    # looked up at call time: the feature visualisation is built separately, and this
    # module must import and work without it
    package = __package__ or "timmlens.analysis"
    visualize = getattr(importlib.import_module(package), "visualize_feature", None)
    try:
        objectives = importlib.import_module(f"{package}.objectives")
    except ImportError:
        objectives = None
    if visualize is None or objectives is None:
        raise NotImplementedError(
            "visualize_concept draws a concept through timmlens.analysis.visualize_feature, "
            "which this installation does not have; show the concept by its top images "
            "(result.top_images, concepts.html) and concept_maps(result, model, image)."
        )
    objective = objectives.direction(result.layer, atom, cossim_pow=cossim_pow)
    return visualize(model, objective=objective, **options)
