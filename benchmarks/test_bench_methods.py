"""Every method on representative architectures, beside the limits and the peers.

For each architecture (random weights made explainable; batch 4 at its 224x224
input, CPU): the limits - a bare no-grad forward and a forward + full backward to the
input - then every registered method that applies (Integrated Gradients with 16 steps,
SmoothGrad with 8 samples, the many-forward methods at the small settings of
:data:`OPTIONS`; ScoreCAM and AblationCAM in test_bench_masked_forwards.py), and the
peers doing the same job:
pytorch-grad-cam GradCAM, torchcam GradCAM and Captum used by hand (LayerGradCam on a
CNN layer). ``benchmark.extra_info`` records each entry's role ("ours", "limit",
"peer") and method; ``benchmarks/report.py`` turns the JSON into the ratio table.

    make bench     # runs these and writes benchmarks/results/latest.json + README table
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache

import pytest
import timm
import torch
from torch import nn

from _harness import timed
from timmlens.adapters import get_adapter
from timmlens.interpretation.registry import as_explainer, methods, supports
from timmlens.testing import make_explainable

BATCH = 4
ARCHITECTURES = {
    "resnet": "resnet18",
    "efficientnet": "efficientnet_b0",
    "convnext": "convnext_atto",
    "vit": "vit_tiny_patch16_224",
    "deit": "deit_tiny_distilled_patch16_224",
    "swin": "swin_tiny_patch4_window7_224",
}
IG_STEPS, SG_SAMPLES = 16, 8
#: constructor options per method; every other registered method runs at its defaults.
#: The many-forward methods run at small settings (tens of forwards per image, not
#: thousands) so the whole file stays within minutes; their cost against the forward
#: limit at real settings is in test_bench_masked_forwards.py.
OPTIONS = {
    "ig": {"n_steps": IG_STEPS},
    "smoothgrad": {"n_samples": SG_SAMPLES},
    "rise": {"n_masks": 32},
    "occlusion": {"window": 56, "stride": 56},  # 4 x 4 windows
    "featureablation": {"grid": 4},
    "shapley": {"grid": 3, "n_samples": 1},
    "kernelshap": {"grid": 4, "n_samples": 16},
    "lime": {"grid": 4, "n_samples": 16},
}
#: Tens of passes per call: no warm-up round (keeps the file near 8 min on 2 cores).
MANY_PASSES = {*OPTIONS, "gradientshap", "deepliftshap"}
#: One masked copy per channel of the layer (512 to 1280 full forwards per image here,
#: minutes per call on a CPU): timed in test_bench_masked_forwards.py instead.
ELSEWHERE = {"scorecam", "ablationcam"}


@cache
def setup(family: str) -> tuple[nn.Module, torch.Tensor, list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = make_explainable(timm.create_model(ARCHITECTURES[family]))
    inputs = torch.randn(BATCH, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = model(inputs).argmax(1).tolist()
    return model, inputs, targets


def measure(
    benchmark, family: str, role: str, method: str, fn: Callable[[], object], **info: str
) -> None:
    group = f"{family} ({ARCHITECTURES[family]}, batch {BATCH}, 224px)"
    timed(
        benchmark,
        group,
        method,
        fn,
        rounds=2,
        # many-pass methods: the limits and one-pass methods before them warmed up the model
        warmup_rounds=0 if method in MANY_PASSES else 1,
        role=role,
        method=method,
        family=family,
        images=BATCH,
        **info,
    )


FAMILIES = list(ARCHITECTURES)


@pytest.mark.parametrize("family", FAMILIES)
def test_limit_forward(benchmark, family):
    model, inputs, _ = setup(family)

    def forward():
        with torch.no_grad():
            return model(inputs)

    measure(benchmark, family, "limit", "forward", forward)


@pytest.mark.parametrize("family", FAMILIES)
def test_limit_forward_backward(benchmark, family):
    model, inputs, targets = setup(family)
    index = torch.tensor(targets)

    def forward_backward():
        x = inputs.clone().requires_grad_(True)
        score = model(x).gather(1, index[:, None]).sum()
        return torch.autograd.grad(score, x)[0]

    measure(benchmark, family, "limit", "forward+backward", forward_backward)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", methods())
def test_timmlens(benchmark, family, method):
    model, inputs, targets = setup(family)
    if not supports(model, method):
        pytest.skip(f"{method} does not apply to {ARCHITECTURES[family]}")
    if method in ELSEWHERE:
        pytest.skip(f"{method} is timed in test_bench_masked_forwards.py")
    explainer = as_explainer(method, model, **OPTIONS.get(method, {}))
    if method == "rollout":  # the plain rollout, the entry the table has always shown
        measure(benchmark, family, "ours", method, lambda: explainer.attention_rollout(inputs))
    else:
        measure(benchmark, family, "ours", method, lambda: explainer(inputs, targets))


def _cnn_layer(model: nn.Module, family: str) -> nn.Module | None:
    if family in {"vit", "deit", "swin"}:
        return None  # the peers need reshape transforms for token layouts: CNNs only
    return get_adapter(model).resolve_layers()[0].module


@pytest.mark.parametrize("family", FAMILIES)
def test_peer_pytorch_grad_cam(benchmark, family):
    model, inputs, targets = setup(family)
    layer = _cnn_layer(model, family)
    if layer is None:
        pytest.skip("token/NHWC layouts need a user-written reshape_transform in this peer")
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = PeerGradCAM(model=model, target_layers=[layer])
    outputs = [ClassifierOutputTarget(t) for t in targets]
    measure(
        benchmark,
        family,
        "peer",
        "pytorch-grad-cam gradcam",
        lambda: cam(input_tensor=inputs, targets=outputs),
        versus="gradcam",
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_peer_torchcam(benchmark, family):
    model, inputs, targets = setup(family)
    layer = _cnn_layer(model, family)
    if layer is None:
        pytest.skip("torchcam needs NCHW layers")
    from torchcam.methods import GradCAM as TorchcamGradCAM

    name = next(n for n, m in model.named_modules() if m is layer)

    def run():
        with TorchcamGradCAM(model, target_layer=name) as extractor:
            scores = model(inputs)
            return extractor(targets, scores)

    measure(benchmark, family, "peer", "torchcam gradcam", run, versus="gradcam")


@pytest.mark.parametrize("family", FAMILIES)
def test_peer_captum_by_hand(benchmark, family):
    model, inputs, targets = setup(family)
    layer = _cnn_layer(model, family)
    if layer is None:
        pytest.skip("Captum's LayerGradCam needs an NCHW layer")
    from captum.attr import LayerAttribution, LayerGradCam

    engine = LayerGradCam(model, layer)

    def run():
        maps = engine.attribute(inputs, target=targets, relu_attributions=True)
        return LayerAttribution.interpolate(maps, (224, 224), "bilinear")

    measure(benchmark, family, "peer", "captum gradcam", run, versus="gradcam")
