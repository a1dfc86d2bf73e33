"""Quantitative evaluation of explanations, batched on the model's device.

* insertion / deletion curves (RISE, Petsiuk et al., BMVC 2018),
* sensitivity-n (Ancona et al., ICLR 2018),
* max-sensitivity and infidelity through Captum (Yeh et al., NeurIPS 2019),
* ROAD, MoRF and LeRF with noisy linear imputation (Rong et al., ICML 2022),
* Average Drop and Increase in Confidence (Chattopadhay et al., WACV 2018) and AOPC
  (Samek et al., IEEE TNNLS 2017),
* the pointing game on boxes or masks (Zhang et al., ECCV 2016).

Each metric is registered by name ([`register_metric`][], listed by [`metrics`][]);
[`ExplanationMetrics`][] is the front that prepares images, heatmaps and targets and
runs them.

Example::

    metrics = ExplanationMetrics(model, steps=50)  # any option a metric declares
    insertion = metrics.insertion(image, heatmap, target_class=0)  # higher is better
    deletion = metrics.deletion(image, heatmap, target_class=0)    # lower is better
    road = metrics.run("road_morf", image, heatmap, target_class=0)  # any metric by name
    print(f"{insertion:.4f} {deletion:.4f} {road:.4f}")
"""

from ._inputs import TiedHeatmapWarning, prepare_heatmaps
from .context import MetricContext
from .curves import CURVE_METRICS, DEFAULT_STEPS, pixel_ranks, step_counts, trapezoid_auc
from .evaluator import ExplanationMetrics
from .options import ENGINE_OPTIONS, MetricOption
from .pointing import PointingResult, pointing_game
from .registry import (
    Metric,
    MetricSpec,
    metrics,
    register_metric,
    resolve_metric,
    scoped_metric_registry,
    unregister_metric,
)
from .results import MetricResult
from .road import DEFAULT_PERCENTILES, NEIGHBOUR_WEIGHTS, impute, neighbour_matrix
from .sensitivity import patch_features, pearson, random_subsets, subset_size
from .substrates import make_substrate, rise_blur, rise_kernel

__all__ = [
    "CURVE_METRICS",
    "DEFAULT_PERCENTILES",
    "DEFAULT_STEPS",
    "ENGINE_OPTIONS",
    "NEIGHBOUR_WEIGHTS",
    "ExplanationMetrics",
    "Metric",
    "MetricContext",
    "MetricOption",
    "MetricResult",
    "MetricSpec",
    "PointingResult",
    "TiedHeatmapWarning",
    "impute",
    "make_substrate",
    "metrics",
    "neighbour_matrix",
    "patch_features",
    "pearson",
    "pixel_ranks",
    "pointing_game",
    "prepare_heatmaps",
    "random_subsets",
    "register_metric",
    "resolve_metric",
    "rise_blur",
    "rise_kernel",
    "scoped_metric_registry",
    "step_counts",
    "subset_size",
    "trapezoid_auc",
    "unregister_metric",
]
