"""SESS: equal to pytorch-grad-cam 1.5.7's ``SESS`` side by side, batched per chunk.

Tolerance 1e-5 on maps in [0, 1]: both compute the same steps (torchvision's antialiased
resize of the image, the base CAM per window, OpenCV's bilinear resize of the pasted maps
= ``F.interpolate`` bilinear without antialias, OpenCV's 11x11 Gaussian blur); what is
left is float32 rounding and pytorch-grad-cam's ``1e-7`` in its min-max scaling.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from timmlens.interpretation.cam import SESS
from timmlens.interpretation.cam.sess import gaussian_blur, window_starts
from timmlens.testing import make_explainable

TOL = 1e-5


def _vit_tokens_to_nchw(tokens: torch.Tensor) -> torch.Tensor:
    patches = tokens[:, 1:]  # drop the class token; 64 / 16 = a 4x4 grid
    return patches.reshape(patches.shape[0], 4, 4, patches.shape[2]).permute(0, 3, 1, 2)


def _peer(model, layer: str, x, targets, base="GradCAM", reshape=None, **options) -> np.ndarray:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer_base = getattr(pytorch_grad_cam, base)
    module = model.get_submodule(layer)
    try:
        with pytorch_grad_cam.SESS(
            model, [module], reshape_transform=reshape, base_method=peer_base, **options
        ) as cam:
            return cam(x, [ClassifierOutputTarget(t) for t in targets])
    finally:
        for parameter in model.parameters():
            parameter.grad = None  # pytorch-grad-cam leaves .grad behind


def _max_diff(ours: torch.Tensor, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    assert (ours.flatten(-2).std(dim=-1) > 0.05).all(), "a flat map would prove nothing"
    return float(np.abs(ours.numpy() - theirs).max())


@pytest.mark.slow  # pytorch-grad-cam's SESS on the real model: ~40 s on 2 busy cores
def test_real_lite0_equals_pytorch_grad_cam(real_model, photos) -> None:
    from timmlens import prepare_images

    x = prepare_images([photos["chelsea"]], real_model).tensor
    explainer = SESS(real_model, num_scales=3)  # 224, 288, 352: 1 + 4 + 4 windows
    layer = explainer.layer_names[0]
    theirs = _peer(real_model, layer, x, [281], num_scales=3)
    result = explainer.explain_full(x, target_class=281)
    assert result.extras["windows"] == 9
    assert _max_diff(result.heatmap, theirs) < TOL


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return make_explainable(timm.create_model("test_resnet", num_classes=10)).eval()


OPTIONS = [
    {"smooth": False},
    {"pool": "max"},
    {"pre_filter_ratio": 0.5, "theta": 0.1},
    {"step_size": 40, "use_softmax_scores": False},
    {"scales": [64, 100], "window_size": 48},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o))
def test_options_equal_pytorch_grad_cam(resnet, options) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    options = {"num_scales": 2, **options}
    theirs = _peer(resnet, "layer3", x, [1, 8], **options)
    ours = SESS(resnet, target_layer="layer3", **options).explain(x, target_class=[1, 8])
    assert _max_diff(ours, theirs) < TOL


def test_another_base_method_equals_pytorch_grad_cam(resnet) -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    theirs = _peer(resnet, "layer3", x, [3], base="LayerCAM", num_scales=2)
    ours = SESS(resnet, "layer3", base_method="layercam", num_scales=2).explain(x, 3)
    assert _max_diff(ours, theirs) < TOL


def test_vit_equals_pytorch_grad_cam_with_a_reshape_transform() -> None:
    torch.manual_seed(0)
    vit = make_explainable(timm.create_model("test_vit", num_classes=10, img_size=64)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    layer = "blocks.5.norm1"
    theirs = _peer(vit, layer, x, [3], reshape=_vit_tokens_to_nchw, num_scales=3)
    ours = SESS(vit, target_layer=layer, num_scales=3).explain(x, target_class=3)
    assert _max_diff(ours, theirs) < TOL


def test_one_forward_and_backward_per_chunk_and_chunks_do_not_change_maps(resnet) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    calls = []
    handle = resnet.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    try:
        chunked = SESS(resnet, "layer3", num_scales=3, max_batch=8).explain(x, [1, 8])
    finally:
        handle.remove()
    # 2 images x 9 windows = 18 jobs in 3 chunks of 6, after 1 forward of the 2 images
    assert calls == [2, 6, 6, 6]
    whole = SESS(resnet, "layer3", num_scales=3).explain(x, [1, 8])
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


def test_blur_and_windows_equal_pytorch_grad_cam() -> None:
    import cv2
    from pytorch_grad_cam.sess import window_starts as peer_window_starts

    maps = torch.rand(2, 37, 50, generator=torch.Generator().manual_seed(4))
    theirs = np.stack([cv2.GaussianBlur(m.numpy(), (11, 11), 5.0, 0) for m in maps])
    torch.testing.assert_close(gaussian_blur(maps), torch.from_numpy(theirs), atol=1e-6, rtol=0)
    for length, step, window in [(224, 224, 224), (928, 224, 224), (100, 30, 48), (50, 7, 64)]:
        assert window_starts(length, step, window) == peer_window_starts(length, step, window)


def test_bad_options_are_refused(resnet) -> None:
    with pytest.raises(ValueError, match="pool must be 'mean' or 'max'"):
        SESS(resnet, pool="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"pre_filter_ratio .* in \[0, 1\)"):
        SESS(resnet, pre_filter_ratio=1.0)
    with pytest.raises(ValueError, match="runs a CAM method on each window"):
        SESS(resnet, base_method="ig")
    with pytest.raises(ValueError, match="fullgrad takes no target_layer"):
        SESS(resnet, target_layer="layer3", base_method="fullgrad")
    with pytest.raises(ValueError, match="at least the window size 64"):
        SESS(resnet, scales=[32, 64]).explain(torch.randn(3, 64, 64))


def test_a_callable_target_gives_the_maps_of_the_class_it_reads(resnet) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    explainer = SESS(resnet, "layer3", num_scales=2, use_softmax_scores=False)

    def logit_3(values: torch.Tensor) -> torch.Tensor:
        return values[:, 3]

    by_class = explainer.explain(x, target_class=3)
    by_callable = explainer.explain_full(x, target_class=logit_3)
    torch.testing.assert_close(by_callable.heatmap, by_class, atol=1e-6, rtol=0)
    assert "logit_3" in (by_callable.target_label or "")


def test_a_bfloat16_model_is_explained(resnet) -> None:
    """The antialiased resize has no bfloat16 kernel on CPU: SESS refused bfloat16 models."""
    import copy

    model = copy.deepcopy(resnet).to(torch.bfloat16)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    maps = SESS(model, "layer3", num_scales=2).explain(x.to(torch.bfloat16), target_class=1)
    assert maps.shape == (1, 64, 64) and maps.dtype == torch.float32 and maps.isfinite().all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch": 0}, "max_batch must be a positive number of windows or None"),
        ({"max_batch": 2.5}, "max_batch must be a positive number of windows or None"),
        ({"scales": ["a"]}, "scales must be positive sizes in pixels"),
        ({"num_scales": 2.5}, "num_scales must be a positive integer"),
    ],
)
def test_bad_numbers_are_refused_with_what_was_expected(resnet, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        SESS(resnet, **options)


def test_engine_options_go_to_the_base_method(resnet) -> None:
    """aug_smooth / eigen_smooth / layer_fusion were unknown options of SESS (TypeError)."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    built = SESS(resnet, "layer3", num_scales=1, eigen_smooth=True, aug_smooth=True)
    assert built.base.eigen_smooth and built.base.aug_smooth and "aug_smooth=True" in repr(built)
    at_call = SESS(resnet, "layer3", num_scales=1)(x, 2, eigen_smooth=True, aug_smooth=True)
    torch.testing.assert_close(at_call, built(x, 2))
    with pytest.raises(ValueError, match="KPCACAM does not take eigen_smooth"):
        SESS(resnet, base_method="kpcacam", eigen_smooth=True)
