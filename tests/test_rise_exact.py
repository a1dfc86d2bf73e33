"""Insertion and deletion equal RISE's own ``evaluation.py`` on the real EfficientNet-Lite0.

``CausalMetric``, ``gkern`` and ``auc`` below follow Petsiuk et al.'s ``evaluation.py``
(github.com/eclique/RISE) line by line, with ``.cuda()`` dropped, the image area a
parameter (``HW``) and the plotting removed; the model is wrapped in a softmax as in
RISE's notebooks. The one liberty: ``np.argsort(..., kind="stable")`` where RISE uses
numpy's default (unstable) sort, whose order among equal values depends on the numpy
build; with distinct heatmap values the two agree, and ties are covered by
``tie_order="rise"``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from timmlens.data import prepare_images
from timmlens.interpretation import GradCAM
from timmlens.interpretation.metrics import ExplanationMetrics, rise_kernel

PHOTOS = ("chelsea", "coffee")  # benchmarks/rise_exact.py runs all four at RISE's 224 steps
STEP = 224 * 224 // 4  # 12544 pixels per step: 4 steps, in RISE's step parameterisation


# -- RISE's evaluation.py ----------------------------------------------------------------


def gkern(klen, nsig):
    """Returns a Gaussian kernel array.
    Convolution with it results in image blurring."""
    # create nxn zeros
    inp = np.zeros((klen, klen))
    # set element at the middle to one, a dirac delta
    inp[klen // 2, klen // 2] = 1
    # gaussian-smooth the dirac, resulting in a gaussian filter mask
    k = gaussian_filter(inp, nsig)
    kern = np.zeros((3, 3, klen, klen))
    kern[0, 0] = k
    kern[1, 1] = k
    kern[2, 2] = k
    return torch.from_numpy(kern.astype("float32"))


def auc(arr):
    """Returns normalized Area Under Curve of the array."""
    return (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)


class CausalMetric:
    def __init__(self, model, mode, step, substrate_fn, HW, stable=False):
        assert mode in ["del", "ins"]
        self.model = model
        self.mode = mode
        self.step = step
        self.substrate_fn = substrate_fn
        self.HW = HW
        self.kind = "stable" if stable else None

    def single_run(self, img_tensor, explanation):
        HW = self.HW
        pred = self.model(img_tensor)
        _top, c = torch.max(pred, 1)
        c = c.cpu().numpy()[0]
        n_steps = (HW + self.step - 1) // self.step

        if self.mode == "del":
            start = img_tensor.clone()
            finish = self.substrate_fn(img_tensor)
        elif self.mode == "ins":
            start = self.substrate_fn(img_tensor)
            finish = img_tensor.clone()

        scores = np.empty(n_steps + 1)
        # Coordinates of pixels in order of decreasing saliency
        salient_order = np.flip(
            np.argsort(explanation.reshape(-1, HW), axis=1, kind=self.kind), axis=-1
        )
        for i in range(n_steps + 1):
            pred = self.model(start)
            scores[i] = pred[0, c]
            if i < n_steps:
                coords = salient_order[:, self.step * i : self.step * (i + 1)]
                start.cpu().numpy().reshape(1, 3, HW)[0, :, coords] = (
                    finish.cpu().numpy().reshape(1, 3, HW)[0, :, coords]
                )
        return scores


# -- the check ---------------------------------------------------------------------------


def test_rise_kernel_is_scipy_gkern():
    for size, sigma in ((11, 5.0), (5, 1.0), (7, 3.0)):
        expected = gkern(size, sigma)[0, 0].double()
        torch.testing.assert_close(rise_kernel(size, sigma), expected, atol=1e-7, rtol=0)
    # RISE's kernel keeps the reflected tails: its border weight is far from a truncated
    # Gaussian's renormalised one (torchvision's, "blur_reflect")
    assert rise_kernel(11, 5.0).sum().item() == pytest.approx(1.0, abs=1e-12)


def _rise_curves(model, image, heatmap, stable, step=STEP):
    softmax_model = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    kern = gkern(11, 5)

    def blur(x):
        return nn.functional.conv2d(x, kern, padding=11 // 2)

    curves = {}
    with torch.no_grad():
        for mode, name, substrate in (("ins", "insertion", blur), ("del", "deletion", None)):
            metric = CausalMetric(
                softmax_model, mode, step, substrate or torch.zeros_like, 224 * 224, stable
            )
            curves[name] = metric.single_run(image.clone(), heatmap.numpy().copy())
    return curves


@pytest.fixture(scope="module")
def batch(real_model, photos):
    return prepare_images([photos[name] for name in PHOTOS], real_model)


@pytest.mark.parametrize("case", ["gradcam_rise_ties", "distinct_values_default_order"])
def test_insertion_and_deletion_equal_rise(real_model, batch, case):
    images = batch.tensor
    if case == "gradcam_rise_ties":
        # real maps, with ties (GradCAM's zeros): RISE's reversed order among equal values
        heatmaps = GradCAM(real_model).explain_batch(images, None).detach()
        metrics = ExplanationMetrics(real_model, pixels_per_step=STEP, tie_order="rise")
        stable = True
    else:
        images = images[:1]
        heatmaps = torch.rand(1, 224, 224, generator=torch.Generator().manual_seed(0))
        metrics = ExplanationMetrics(real_model, pixels_per_step=STEP)
        stable = False
    results = metrics.compute(images, heatmaps)
    for b in range(len(images)):
        reference = _rise_curves(real_model, images[b : b + 1], heatmaps[b], stable)
        for name, ref_curve in reference.items():
            ours = results[name].y[b].double().numpy()
            np.testing.assert_allclose(ours, ref_curve, atol=1e-6, rtol=0)
            assert results[name].per_image[b].item() == pytest.approx(auc(ref_curve), abs=1e-6)
