"""Concepts over a whole dataset: deep feature factorization that streams, resumes and
runs under ``torchrun``.

[`deep_feature_factorization`][timmlens.analysis.dff.deep_feature_factorization] factorizes
one batch in memory. [`fit_concepts`][] does the same over a folder or a ``Dataset`` of any
size, in memory bounded by the batch size:

1. **Extract** (every rank): one no-grad forward per batch at the layer
   ([`layer_activations`][timmlens.analysis.activations.layer_activations]); each batch's
   activations, logits and per-channel minimum go to a shard file under ``out/shards``
   (`timmlens.analysis.concept_extract`, `timmlens.analysis.concept_store`). Under
   ``torchrun`` rank ``r`` extracts every ``world``-th pending batch and rank 0 writes the
   shards it gathers, as ``evaluate`` writes rows: the ranks need no shared disk. Shards
   are the resume unit.
2. **Offset**: the dataset's per-channel minimum (the minimum of the shards' minima) is
   subtracted so NMF sees non-negative values: pytorch-grad-cam's shift
   ([`shift_nonnegative`][timmlens.analysis.dff.shift_nonnegative]) over all images at once.
3. **Fit** (rank 0): the first shard is factorized exactly as the batch function does it
   ([`factorize_activations`][timmlens.analysis.dff.factorize_activations], pytorch-grad-cam's
   ``dff``). With one shard that *is* the answer, so a dataset that fits in one batch gives
   the batch function's concepts. With more, those concepts start scikit-learn's
   ``MiniBatchNMF`` (pixels as rows, ``X (N*h*w, C) ~= H @ components_``), which
   ``partial_fit`` refines over every shard for ``epochs`` passes (shards shuffled per pass).
   Starting from the exact fit of one batch reaches, in one to three passes, a
   reconstruction error within a few percent of NMF on all the data at once; a cold
   ``MiniBatchNMF`` needs tens of passes (measured on the real EfficientNet-Lite0).
4. **Rank** (rank 0, one more read of the shards): each image's maps (``transform``), each
   concept's top images (a heap of ``top_k_images`` per concept), its share of the
   activation energy, and the fit's relative error over the whole dataset.

Rank 0 writes ``concepts.json``, ``concepts.html`` (a self-contained gallery, with the
fit's quality figures and, with ``visualize_steps``, each concept's feature visualisation:
`timmlens.analysis.concept_visuals`), ``concepts.npz`` (the concept vectors and offset) and
one PNG strip per concept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._outputs import ensure_writable_dir
from ..adapters import LayerSpec
from ..errors import RunMismatchError
from ..evaluation.distributed import (
    broadcast_from_rank0,
    fail_together,
    init_from_environment,
    rank_and_world,
)
from ..evaluation.run_identity import (
    FORMAT,
    RUN_FILE,
    differences,
    images_identity,
    model_identity,
    read_identity,
    write_identity,
)
from ..evaluation.sources import source_for
from ..models.introspect import class_name_of, model_name_of
from .concept_dictionaries import (
    NMF_EPOCHS,
    check_dictionary_size,
    check_method,
    fit_steps,
    fit_with_quality,
    overcomplete_modules,
    resolve_sparsity,
)
from .concept_extract import extract_shards, probe_layer
from .concept_fit import rank_shards
from .concept_store import SHARD_DTYPES, ShardStore
from .dff import (
    check_concept_count,
    concept_class_scores,
    head_unavailable_reason,
    sklearn_decomposition,
)

JSON_FILE = "concepts.json"
HTML_FILE = "concepts.html"
VECTORS_FILE = "concepts.npz"
DICTIONARY_FILE = "dictionary.pt"
#: what run.json says made the folder (an ``evaluate`` folder has no ``kind``)
KIND = "concepts"
#: classes listed per concept
TOP_CLASSES = 5
_HOW_TO_PROCEED = (
    "use a new output folder (--out), or --overwrite (overwrite=True) to discard its shards"
)


# ----------------------------------------------------------------- the result
@dataclass
class DatasetConcepts:
    """Concepts found over a dataset by [`fit_concepts`][], and where they were written.

    Attributes:
        concepts: ``(K, C)`` concept vectors in activation units (NMF's components plus the
            offset, as pytorch-grad-cam's ``dff`` returns them), on the CPU.
        offset: ``(C,)`` the per-channel minimum subtracted before NMF.
        layer: the layer's full name.
        energy_share: ``(K,)`` each concept's share of the activation energy: the energy
            ``||h_k||^2 ||w_k||^2`` of its rank-one term over the sum of all terms'.
        relative_error: ``||X - H W||_F / ||X||_F`` over the whole (shifted) dataset.
        top_classes: per concept, its best classes ``{"index", "name", "score",
            "probability"}`` (head logits, softmax over them); empty when there are none.
        labels_unavailable_reason: why concepts have no classes, or ``None``.
        top_images: per concept, ``{"id", "index", "score", "predicted", "predicted_name"}``
            best
            first; ``score`` is the mean norm of the concept's term over the image's positions.
        n_images: images factorized (readable ones).
        skipped: unreadable images, id -> reason.
        fit: how the concepts were fitted (``"exact NMF (one batch)"`` or MiniBatchNMF's).
        out_dir: the output folder; ``json_path``, ``html_path``, ``vectors_path`` the files.
    """

    concepts: torch.Tensor
    offset: torch.Tensor
    layer: str
    energy_share: list[float]
    relative_error: float
    top_classes: list[list[dict[str, Any]]]
    labels_unavailable_reason: str | None
    top_images: list[list[dict[str, Any]]]
    n_images: int
    skipped: dict[str, str]
    fit: str
    out_dir: Path
    model: str = ""
    identity: dict[str, Any] = field(default_factory=dict)
    method: str = "nmf"
    #: R^2, dead codes, stability (`timmlens.analysis.concept_quality`); ``None``: not measured
    quality: dict[str, Any] | None = None
    #: the trained overcomplete model of a dictionary method (eval mode), else ``None``
    dictionary: nn.Module | None = None

    @property
    def n_concepts(self) -> int:
        return int(self.concepts.shape[0])

    @property
    def json_path(self) -> Path:
        return self.out_dir / JSON_FILE

    @property
    def html_path(self) -> Path:
        return self.out_dir / HTML_FILE

    @property
    def vectors_path(self) -> Path:
        return self.out_dir / VECTORS_FILE

    def to_dict(self) -> dict[str, Any]:
        """What ``concepts.json`` holds (plain JSON data)."""
        return {
            "model": self.model,
            "layer": self.layer,
            "n_concepts": self.n_concepts,
            "n_images": self.n_images,
            "fit": self.fit,
            "method": self.method,
            "quality": self.quality,
            "relative_error": round(self.relative_error, 6),
            "labels_unavailable_reason": self.labels_unavailable_reason,
            "concepts": [
                {
                    "index": k,
                    "name": f"concept {k + 1}",
                    "energy_share": round(self.energy_share[k], 6),
                    "top_classes": self.top_classes[k],
                    "top_images": self.top_images[k],
                }
                for k in range(self.n_concepts)
            ],
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped.items()],
            "files": {"html": HTML_FILE, "vectors": VECTORS_FILE, "shards": "shards"},
            "run": self.identity,
        }

    def __str__(self) -> str:
        lines = [
            f"{self.n_concepts} concepts of layer {self.layer} over {self.n_images} images "
            f"({self.fit}; relative error {self.relative_error:.3f})"
        ]
        for k in range(self.n_concepts):
            classes = ", ".join(
                f"{c['name']} ({c['probability']:.0%})" for c in self.top_classes[k][:3]
            )
            lines.append(
                f"  concept {k + 1}: {self.energy_share[k]:6.1%} of the energy; "
                f"{classes or 'no classes'}"
            )
        if self.quality is not None:
            from .concept_quality import quality_line

            lines.insert(1, "  " + quality_line(self.quality))
        if self.labels_unavailable_reason:
            lines.append(f"  no classes: {self.labels_unavailable_reason}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unreadable image(s)")
        return "\n".join(lines)


# ----------------------------------------------------------------- run identity
def _identity(model: nn.Module, samples: Any, options: dict[str, Any]) -> dict[str, Any]:
    from .._version import __version__

    return {
        "format": FORMAT,
        "kind": KIND,
        "timmlens": __version__,
        "model": model_identity(model),
        "images": images_identity(samples),
        "concepts": options,
    }


def _open_output(
    out_dir: Path, store: ShardStore, identity: dict[str, Any], overwrite: bool
) -> list[int]:
    """Check ``out_dir`` can take this run (rank 0); the batches still to extract.

    Raises:
        RunMismatchError: the folder holds another run's shards or another command's run.
    """
    ensure_writable_dir(out_dir, "--out folder")
    if overwrite:
        store.discard()
        for name in (RUN_FILE, JSON_FILE, HTML_FILE, VECTORS_FILE, DICTIONARY_FILE):
            (out_dir / name).unlink(missing_ok=True)
    old = read_identity(out_dir)
    if old is None and store.holds_any():
        raise RunMismatchError(
            f"'{out_dir}' holds activation shards but no {RUN_FILE}: cannot tell which model "
            f"and data made them; {_HOW_TO_PROCEED}."
        )
    if old is not None:
        if old.get("kind") != KIND:
            raise RunMismatchError(
                f"'{out_dir}' holds the output of another command (its {RUN_FILE} is not a "
                f"concepts run); {_HOW_TO_PROCEED}."
            )
        found = differences(old, identity)
        old_options, new_options = old.get("concepts") or {}, identity["concepts"]
        found += [
            f"{key} {old_options.get(key)} vs {new_options.get(key)}"
            for key in sorted(set(old_options) | set(new_options))
            if old_options.get(key) != new_options.get(key)
        ]
        if found:
            raise RunMismatchError(
                f"'{out_dir}' holds concepts of another run: {'; '.join(found)}; {_HOW_TO_PROCEED}."
            )
    write_identity(out_dir, identity)
    return store.pending()


# ----------------------------------------------------------------- the run
@dataclass
class _ConceptRun:
    """What one [`fit_concepts`][] call works on, settled before any dataset image is read."""

    samples: Any  # the images (`source_for`): len() and [index] -> Sample
    store: ShardStore
    out_dir: Path
    options: dict[str, Any]  # layer, n_concepts, batch_size, seed, epochs, dtype
    identity: dict[str, Any]  # what run.json records (the options included)
    shape: tuple[int, int, int]  # (C, h, w) of the layer's activations


def _check_arguments(
    batch_size: int,
    top_k_images: int,
    epochs: int | None,
    dtype: str,
    on_error: str,
    visualize_steps: int = 0,
) -> None:
    """Bad arguments, and a missing scikit-learn, fail now rather than after the extraction."""
    if isinstance(visualize_steps, bool) or not isinstance(visualize_steps, int):
        raise ValueError(f"visualize_steps must be an int >= 0, got {visualize_steps!r}.")
    if visualize_steps < 0:
        raise ValueError(
            f"visualize_steps must be >= 0 (0: no feature visualisation), got {visualize_steps}."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if top_k_images < 1:
        raise ValueError(f"top_k_images must be >= 1, got {top_k_images}.")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if dtype not in SHARD_DTYPES:
        raise ValueError(f"dtype must be one of {SHARD_DTYPES}, got {dtype!r}.")
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}.")
    sklearn_decomposition()


def _plan_run(
    model: nn.Module,
    data: Any,
    n_concepts: int,
    layer: LayerSpec,
    out_dir: Path,
    batch_size: int,
    seed: int,
    epochs: int | None,
    dtype: str,
    method: str = "nmf",
    sparsity: int | None = None,
    stability: bool = False,
) -> _ConceptRun:
    """The layer (probed on one blank image), ``n_concepts`` checked against its channels,
    the images, their shard store and the run's identity."""
    layer_name, channels, h, w = probe_layer(model, layer)
    dictionary = method != "nmf"
    samples = source_for(data, model)
    if method == "nmf":
        check_concept_count(n_concepts, channels, layer_name)
    else:
        check_dictionary_size(n_concepts, len(samples) * h * w, layer_name)
    store = ShardStore(out_dir, batch_size, len(samples))
    options = {
        "layer": layer_name,
        "n_concepts": n_concepts,
        "batch_size": batch_size,
        "seed": seed,
        "epochs": epochs,
        "dtype": dtype,
        # only dictionaries record these, so an NMF folder of an earlier version resumes
        **({"method": method, "sparsity": sparsity} if dictionary else {}),
        **({"stability": stability} if dictionary or stability else {}),
    }
    identity = _identity(model, samples, options)
    return _ConceptRun(samples, store, out_dir, options, identity, (channels, h, w))


def _extract_pending(
    model: nn.Module, run: _ConceptRun, overwrite: bool, on_error: str, show: bool
) -> None:
    """Pass 1 on every rank: rank 0 checks the folder and says which batches are missing,
    then every rank extracts its share of them (`timmlens.analysis.concept_extract`)."""
    rank, _ = rank_and_world()
    pending: list[int] | None = None
    with fail_together("opening the output folder"):
        if rank == 0:
            pending = _open_output(run.out_dir, run.store, run.identity, overwrite)
    pending = broadcast_from_rank0(pending) or []
    layer, dtype = run.options["layer"], run.options["dtype"]
    extract_shards(model, run.samples, run.store, pending, layer, run.shape, dtype, on_error, show)


def _classes(
    model: nn.Module, store: ShardStore, batches: list[int], concepts: torch.Tensor, layer: str
) -> tuple[list[list[dict[str, Any]]], str | None]:
    """Each concept's top classes from the model's head, or why there are none."""
    first = store.read(batches[0])
    device = next(model.parameters()).device
    logits = torch.from_numpy(first.logits).to(device) if first.logits.shape[1] else None
    activations = torch.from_numpy(first.activations.astype(np.float32)).to(device)
    reason = head_unavailable_reason(model, activations, logits, layer)
    if reason is not None:
        return [[] for _ in range(concepts.shape[0])], reason
    scores = concept_class_scores(model, concepts.to(device)).float().cpu()
    probabilities = scores.softmax(dim=1)
    top = probabilities.topk(min(TOP_CLASSES, scores.shape[1]), dim=1)
    return [
        [
            {
                "index": int(c),
                "name": class_name_of(model, int(c)),
                "score": round(float(scores[k, c]), 6),
                "probability": round(float(p), 6),
            }
            for c, p in zip(top.indices[k], top.values[k], strict=True)
        ]
        for k in range(scores.shape[0])
    ], None


def _method_options(
    method: Any, n_concepts: int, sparsity: int | None, epochs: int | None, stability: bool | None
) -> tuple[str, int | None, int | None, bool]:
    """The method checked, its sparsity and passes resolved, stability on for dictionaries;
    a missing overcomplete fails here, before the extraction."""
    method = check_method(method)
    sparsity = resolve_sparsity(method, n_concepts, sparsity)
    if method == "nmf":
        epochs = NMF_EPOCHS if epochs is None else epochs
    else:
        overcomplete_modules()
    return method, sparsity, epochs, bool(method != "nmf" if stability is None else stability)


# ----------------------------------------------------------------- the entry point
def fit_concepts(
    model: nn.Module,
    data: Any,
    n_concepts: int = 8,
    layer: LayerSpec = None,
    out: str | os.PathLike[str] = "concepts",
    *,
    batch_size: int = 32,
    top_k_images: int = 8,
    seed: int = 0,
    epochs: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    on_error: str = "skip",
    progress: bool = True,
    gallery: bool = True,
    method: str = "nmf",
    sparsity: int | None = None,
    stability: bool | None = None,
    visualize_steps: int = 0,
) -> DatasetConcepts:
    """Find ``n_concepts`` concepts a layer of ``model`` uses over a whole dataset.

    Deep feature factorization (Collins et al., 2018) over every image of ``data``,
    streamed in batches so memory does not grow with the number of images: the layer's
    activations go to shard files under ``out/shards`` (one forward per image), then NMF
    is fitted over the shards on rank 0 (see the module documentation for the passes).
    With one batch (``len(data) <= batch_size``) the concepts are exactly those of
    [`deep_feature_factorization`][timmlens.analysis.dff.deep_feature_factorization] on those
    images; with more, scikit-learn's ``MiniBatchNMF`` refines that batch fit over all
    shards.

    Negative activations are allowed: the dataset's per-channel minimum is subtracted
    before NMF and added back to the concept vectors, as pytorch-grad-cam's ``dff`` does
    for one batch ([`shift_nonnegative`][timmlens.analysis.dff.shift_nonnegative]).

    **Outputs** (rank 0): ``concepts.json`` (per concept its top classes from the model's
    head, or the reason there are none; its energy share; its top images with scores),
    ``concepts.html`` (a self-contained gallery: each concept's top images with its map
    overlaid), ``concepts.npz`` (``concepts (K, C)``, ``offset (C,)``) and
    ``concept_<n>.png`` strips. Concepts are shown numbered from 1 ("concept 1" is row 0 of
    ``concepts``; the JSON gives both its ``index`` and its ``name``).

    **Resume and run identity**, as in [`evaluate`][timmlens.evaluation.evaluate]:
    ``out/run.json`` records the model (state-dict hash, preprocessing), the images, the
    layer, ``n_concepts``, ``batch_size``, ``seed``, ``epochs`` and ``dtype``. Run again
    with the same arguments, it extracts only the batches whose shard is missing or damaged
    (a file cut by a kill fails its checksums and is computed again); another model, layer,
    K or data raises
    [`RunMismatchError`][timmlens.errors.RunMismatchError] naming what differs, unless
    ``overwrite``. ``KeyboardInterrupt`` keeps every finished shard.

    **Progress**: the cost (forwards, shard size on disk) is printed first, then a bar
    counts forwards (with an ETA), then one counts the fit's shard reads.

    **torchrun**: each rank extracts every ``world``-th pending batch; rank 0 gathers and
    writes the shards, fits, ranks and writes the files; every rank returns the result.
    The other ranks wait for the fit in a collective: for long fits raise
    ``TIMMLENS_DIST_TIMEOUT`` (seconds, default 1800).

    Args:
        model: an ``ImageClassifier`` or timm model (on the device to use).
        data: an image folder, a map-style ``Dataset`` yielding ``image`` or
            ``(image, label)``, or a ``DataLoader`` (its dataset); labels are not used.
        n_concepts: ``K``, concepts to find (1 to the layer's channel count).
        layer: a dotted name or module; ``None`` takes
            [`default_activation_layer`][timmlens.analysis.activations.default_activation_layer].
        out: the output folder.
        batch_size: images per forward and per shard (part of the run identity).
        top_k_images: images kept per concept.
        seed: NMF's ``random_state`` (and the shard order of the streaming passes).
        epochs: passes over the shards: ``MiniBatchNMF``'s (unused with one shard; ``None``:
            3), or a dictionary's training passes (``None``: about 1000 optimizer steps).
        dtype: ``"float32"`` or ``"float16"`` (half the disk; rounds activations to ~1e-3).
        overwrite: discard the shards and files already in ``out`` and start afresh.
        on_error: an unreadable image: ``"skip"`` (warn, leave it out, list it) or ``"fail"``.
        progress: print the cost and show progress bars (rank 0).
        gallery: write ``concepts.html`` and the PNG strips (they re-read the top images).
        method: ``"nmf"`` (deep feature factorization, above) or a sparse dictionary trained
            by ``overcomplete`` (`timmlens.analysis.concept_dictionaries`): ``"sae-topk"``,
            ``"sae-batchtopk"``, ``"sae-jumprelu"``, ``"archetypal"``. A dictionary may be
            overcomplete (``n_concepts`` above the channels, up to the dataset's positions);
            it trains on 4 images of 5 and reports its R^2 on the fifth.
        sparsity: codes kept per position by the top-k methods (default ``max(1, K // 10)``).
        stability: fit a second time with ``seed + 1`` and report the mean cosine of the two
            dictionaries matched by the Hungarian assignment (default: on for dictionaries,
            off for NMF). The figures are in ``result.quality``, ``concepts.json`` and
            ``concepts.html``.
        visualize_steps: with ``gallery``, show each concept's feature visualisation
            (`visualize_concept`, MACO, this many steps, the model's input size) beside its
            top images; 0 (default): none. Each costs ``visualize_steps`` forward and
            backward passes; they are kept in ``out/feature_vis`` and reused by a rerun.

    Returns:
        [`DatasetConcepts`][] (on every rank).

    Raises:
        ConceptInputError: an unknown ``method`` (the message lists them); ``n_concepts``
            below 1 or above the layer's channels (NMF) or the dataset's positions
            (dictionaries), checked before any dataset image is read; a ``sparsity`` out of
            range; NaN/inf activations.
        LayerResolutionError: an unknown layer, or one without a spatial map.
        RunMismatchError: ``out`` holds another run's shards (one line: what differs).
        OptionalDependencyError: scikit-learn (or, for dictionaries, overcomplete) is not
            installed.
    """
    _check_arguments(batch_size, top_k_images, epochs, dtype, on_error, visualize_steps)
    method, sparsity, epochs, stability = _method_options(
        method, n_concepts, sparsity, epochs, stability
    )
    init_from_environment()
    rank, _ = rank_and_world()
    run = _plan_run(
        model, data, n_concepts, layer, Path(out), batch_size, seed, epochs, dtype,
        method, sparsity, stability,
    )  # fmt: skip
    show = progress and rank == 0
    _extract_pending(model, run, overwrite, on_error, show)
    result: DatasetConcepts | None = None
    with fail_together("fitting the concepts"):
        if rank == 0:
            result = _fit_and_write(model, run, top_k_images, show, gallery, visualize_steps)
    return broadcast_from_rank0(result)


def _fit_and_write(
    model: nn.Module, run: _ConceptRun, top_k: int, show: bool, gallery: bool, visualize: int
) -> DatasetConcepts:
    """Rank 0: offset, fit, ranking, classes; the files."""
    samples, store, options, out_dir = run.samples, run.store, run.options, run.out_dir
    batches: list[int] = []
    skipped: dict[str, str] = {}
    n_images = 0
    for batch in range(store.n_batches):
        meta = store.read_fields(batch, "ids", "skipped_ids", "skipped_reasons")
        n_images += int(meta["ids"].shape[0])
        if meta["ids"].shape[0]:
            batches.append(batch)
        reasons = zip(meta["skipped_ids"].tolist(), meta["skipped_reasons"].tolist(), strict=True)
        skipped.update(reasons)
    if not batches:
        raise ValueError("no image of the dataset could be read; nothing to factorize.")
    offset = store.offset()
    layer, method = options["layer"], options.get("method", "nmf")
    stability = bool(options.get("stability", False))
    steps = fit_steps(method, options["epochs"], len(batches), stability) + len(batches)
    device = next(model.parameters()).device
    with tqdm(total=steps, desc="fit", unit="step", disable=not show) as bar:
        fitted, quality = fit_with_quality(
            store, batches, offset, n_images, {**options, "stability": stability}, device, bar
        )
        concepts = torch.from_numpy(fitted.components + offset[None, :])
        ranked = rank_shards(
            store, batches, offset, fitted, top_k, lambda c: class_name_of(model, c), bar
        )
    top_classes, reason = _classes(model, store, batches, concepts, layer)
    result = DatasetConcepts(
        concepts=concepts,
        offset=torch.from_numpy(offset),
        layer=layer,
        energy_share=ranked["energy_share"],
        relative_error=ranked["relative_error"],
        top_classes=top_classes,
        labels_unavailable_reason=reason,
        top_images=ranked["top_images"],
        n_images=n_images,
        skipped=skipped,
        fit=fitted.description,
        out_dir=out_dir,
        model=model_name_of(model),
        identity=run.identity,
        method=method,
        quality=quality,
        dictionary=getattr(fitted, "model", None),
    )
    maps = [[item.pop("map") for item in images] for images in result.top_images]
    sizes = [[item.pop("input_hw") for item in images] for images in result.top_images]
    np.savez(
        out_dir / VECTORS_FILE,
        concepts=concepts.numpy(),
        offset=offset,
        energy_share=np.asarray(result.energy_share),
    )
    if result.dictionary is not None:  # the trained encoder and dictionary, for new images
        torch.save(result.dictionary.state_dict(), out_dir / DICTIONARY_FILE)
    if gallery:
        from .concept_visuals import write_concept_gallery

        write_concept_gallery(model, samples, result, maps, sizes, visualize, show)
    (out_dir / JSON_FILE).write_text(
        json.dumps(result.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    return result
