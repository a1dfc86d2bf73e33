"""Deep feature factorization: activation extraction at the forward limit, NMF beside
pytorch-grad-cam's ``dff``.

The real ImageNet EfficientNet-Lite0 (``bundled:efficientnet_lite0``), a batch of 8 at
224x224 on the CPU (the four scikit-image photos and their mirror images), its default
concept layer ``bn2`` (1280 channels, 7x7).

* ``concepts-extract``: ``layer_activations`` (one no-grad forward with the layer tapped)
  against the plain forward ``model(x)`` under ``no_grad``, the limit; the ratio should
  be about 1.
* ``concepts-nmf``: our ``factorize_activations`` against pytorch-grad-cam's ``dff`` on
  the same activations and K (both scikit-learn's NMF; the results are equal), and the
  whole ``deep_feature_factorization`` call against pytorch-grad-cam's
  ``DeepFeatureFactorization`` with its classifier on the concepts. Run with::

    pytest benchmarks/test_bench_concepts.py --benchmark-group-by=group -s
"""

from __future__ import annotations

import warnings
from functools import cache

import torch
from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (
    DeepFeatureFactorization,
    dff,
)
from skimage import data
from torch import nn

from _harness import print_summary, timed
from timmlens import load_model
from timmlens.analysis import deep_feature_factorization, factorize_activations, layer_activations
from timmlens.data import prepare_images

EXTRACT = "concepts-extract-lite0-b8-224-cpu"
NMF = "concepts-nmf-lite0-b8-k8-cpu"
BATCH, K = 8, 8
FORWARD = "forward (no grad)"
PGC_DFF = "pytorch-grad-cam dff"

warnings.filterwarnings("ignore", module="sklearn")  # NMF's max_iter notice, both sides


@cache
def model_and_batch() -> tuple[nn.Module, torch.Tensor]:
    model = load_model("bundled:efficientnet_lite0")
    photos = [getattr(data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket")]
    batch = prepare_images(photos, model).tensor
    return model, torch.cat([batch, batch.flip(-1)])


@cache
def activations() -> torch.Tensor:
    model, batch = model_and_batch()
    return layer_activations(model, batch).activations


# ------------------------------------------------------------------ extraction
def test_forward(benchmark) -> None:
    model, batch = model_and_batch()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(batch)

    timed(benchmark, EXTRACT, FORWARD, forward, images=BATCH, role="limit", method="forward")


def test_layer_activations(benchmark) -> None:
    model, batch = model_and_batch()
    timed(
        benchmark,
        EXTRACT,
        "layer_activations (bn2)",
        lambda: layer_activations(model, batch),
        images=BATCH,
        role="ours",
        method="layer_activations",
    )


def test_extract_summary() -> None:
    """Print extraction time relative to the plain forward (run with -s)."""
    print_summary(EXTRACT, FORWARD, images=BATCH)


# ------------------------------------------------------------------ NMF
def test_pgc_dff(benchmark) -> None:
    numpy_activations = activations().numpy()
    timed(
        benchmark,
        NMF,
        PGC_DFF,
        lambda: dff(numpy_activations.copy(), n_components=K),
        images=BATCH,
        role="peer",
        method="dff",
    )


def test_factorize_activations(benchmark) -> None:
    tapped = activations()
    timed(
        benchmark,
        NMF,
        "factorize_activations",
        lambda: factorize_activations(tapped, K),
        images=BATCH,
        role="ours",
        method="dff",
    )


def test_pgc_deep_feature_factorization(benchmark) -> None:
    model, batch = model_and_batch()
    backbone = model.backbone
    pgc = DeepFeatureFactorization(
        model, target_layer=backbone.bn2, computation_on_concepts=backbone.classifier
    )
    try:
        timed(
            benchmark,
            NMF,
            "pytorch-grad-cam DeepFeatureFactorization (forward + NMF + head)",
            lambda: pgc(batch, n_components=K),
            images=BATCH,
            role="peer",
            method="dff-full",
        )
    finally:
        pgc.activations_and_grads.release()  # its hooks stay on the shared model otherwise


def test_deep_feature_factorization(benchmark) -> None:
    model, batch = model_and_batch()
    timed(
        benchmark,
        NMF,
        "deep_feature_factorization (forward + NMF + head)",
        lambda: deep_feature_factorization(model, batch, n_concepts=K),
        images=BATCH,
        role="ours",
        method="dff-full",
    )


def test_nmf_summary() -> None:
    """Print the NMF times relative to pytorch-grad-cam's dff (run with -s)."""
    print_summary(NMF, PGC_DFF, images=BATCH)
