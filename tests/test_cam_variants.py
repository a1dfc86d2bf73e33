"""HiResCAM, XGradCAM, LayerCAM, EigenCAM, EigenGradCAM, RandomCAM: peers, conventions, real model.

Each method's raw layer-resolution map is compared with pytorch-grad-cam's class of the
same name on the same layer, inputs and targets, on a ResNet, a ConvNeXt and a ViT.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import timm
import torch
from torch import nn

from timmlens.interpretation.cam.variants import (
    EigenCAM,
    EigenGradCAM,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    XGradCAM,
    first_principal_component,
    randomcam_weights,
    xgradcam_weights,
)
from timmlens.interpretation.registry import METHODS
from timmlens.testing import make_explainable

Reshape = Callable[[torch.Tensor], torch.Tensor]


def _vit_tokens_to_nchw(tokens: torch.Tensor) -> torch.Tensor:
    patches = tokens[:, 1:]  # drop the class token; 64 / 16 = a 4x4 grid
    return patches.reshape(patches.shape[0], 4, 4, patches.shape[2]).permute(0, 3, 1, 2)


# name -> (timm name, timm kwargs, input side, CAM layer, pytorch-grad-cam reshape_transform)
FAMILIES: dict[str, tuple[str, dict, int, str, Reshape | None]] = {
    "resnet": ("test_resnet", {}, 96, "layer4", None),
    "convnext": ("test_convnext", {}, 96, "stages.3", None),
    "vit": ("test_vit", {"img_size": 64}, 64, "blocks.5.norm1", _vit_tokens_to_nchw),
}
PEER_NAMES = {
    HiResCAM: "HiResCAM",
    XGradCAM: "XGradCAM",
    LayerCAM: "LayerCAM",
    EigenCAM: "EigenCAM",
    EigenGradCAM: "EigenGradCAM",
    RandomCAM: "RandomCAM",
}
TARGETS = [2, 5, 9]


@cache
def family_model(family: str) -> nn.Module:
    name, kwargs, *_ = FAMILIES[family]
    torch.manual_seed(0)
    return make_explainable(timm.create_model(name, num_classes=10, **kwargs))


def family_input(family: str, batch: int = 3, seed: int = 0) -> torch.Tensor:
    side = FAMILIES[family][2]
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def peer_run(method: type, family: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """pytorch-grad-cam's map before its ReLU, resize and scaling, and the A, g it used.

    Returns ``(B, h, w)`` map, ``(B, C, h, w)`` activations and gradients (``None`` for
    EigenCAM, which takes none).
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = family_model(family)
    _, _, _, layer_name, reshape = FAMILIES[family]
    layer = model.get_submodule(layer_name)
    peer_cls = getattr(pytorch_grad_cam, PEER_NAMES[method])
    with peer_cls(model, [layer], reshape_transform=reshape) as cam:
        inputs = family_input(family)
        cam(inputs, [ClassifierOutputTarget(t) for t in TARGETS])  # their full pipeline
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients
        grads = grads[0].numpy() if grads else None
        theirs = cam.get_cam_image(inputs, layer, None, acts, grads, False)
    for parameter in model.parameters():
        parameter.grad = None  # pytorch-grad-cam leaves grads behind; the cache is shared
    return theirs, acts, grads


def ours_raw(method: type, family: str, **options) -> torch.Tensor:
    """Our map at the layer's resolution ``(B, h, w)``: no upsampling, no normalisation."""
    explainer = method(family_model(family), target_layer=FAMILIES[family][3], **options)
    return explainer.attribute_layer(family_input(family), TARGETS)


def assert_close_maps(ours: torch.Tensor, theirs: np.ndarray, rtol: float = 1e-4) -> float:
    """Equal up to ``rtol`` of the peer's largest value; returns the max abs difference."""
    theirs_t = torch.from_numpy(np.asarray(theirs, dtype=np.float32))
    assert ours.shape == theirs_t.shape
    assert ours.abs().max() > 0, "degenerate all-zero map: the test would prove nothing"
    scale = theirs_t.abs().max().clamp_min(1e-12)
    diff = (ours - theirs_t).abs().max().item()
    assert diff <= rtol * scale + 1e-9, f"max abs diff {diff:.3g} at scale {scale:.3g}"
    return diff


# ------------------------------------------------------------------------------ peers
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", [HiResCAM, LayerCAM])
def test_elementwise_maps_equal_pytorch_grad_cam(family: str, method: type) -> None:
    theirs, _, _ = peer_run(method, family)
    assert_close_maps(ours_raw(method, family), np.maximum(theirs, 0))
    assert_close_maps(ours_raw(method, family, relu=False), theirs)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_xgradcam_follows_the_paper_and_their_eps_is_the_only_difference(family: str) -> None:
    from pytorch_grad_cam import XGradCAM as PeerXGradCAM

    theirs, acts, grads = peer_run(XGradCAM, family)
    assert grads is not None
    # With their eps=1e-7 our weight function gives their weights (their own code here).
    peer_weights = PeerXGradCAM.get_cam_weights(None, None, None, None, acts, grads)
    acts_t, grads_t = torch.from_numpy(acts), torch.from_numpy(grads)
    with_eps = xgradcam_weights(acts_t, grads_t, eps=1e-7)
    torch.testing.assert_close(with_eps, torch.from_numpy(peer_weights).float())
    # The paper's weights (eps=0, the default) differ from theirs by eps only: the maps
    # agree to 1e-4 of their scale on these layers (sums of activations >> 1e-7).
    paper = xgradcam_weights(acts_t, grads_t)
    assert not torch.equal(paper, with_eps)
    assert_close_maps(ours_raw(XGradCAM, family), np.maximum(theirs, 0))


def _match_sign(ours: torch.Tensor, theirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Their projection with each image's sign flipped to ours, and the signs ``(B,)``."""
    signs = np.sign((ours.numpy() * theirs).reshape(len(theirs), -1).sum(axis=1))
    assert np.all(signs != 0)
    return theirs * signs[:, None, None], signs


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", [EigenCAM, EigenGradCAM])
def test_eigen_maps_equal_pytorch_grad_cam_up_to_the_sign(family: str, method: type) -> None:
    theirs, acts, grads = peer_run(method, family)
    raw = ours_raw(method, family, relu=False)
    signed, _ = _match_sign(raw, theirs)
    assert_close_maps(raw, signed, rtol=1e-3)  # an SVD in float32 on both sides
    assert_close_maps(ours_raw(method, family), np.maximum(signed, 0), rtol=1e-3)
    # Our sign: the map correlates positively with the channel sum of what is projected
    # (EigenCAM: the activations; EigenGradCAM: g * A, i.e. HiResCAM's map).
    projected = acts if method is EigenCAM else acts * grads
    channel_sum = torch.from_numpy(projected.sum(axis=1))
    centred = channel_sum - channel_sum.mean(dim=(1, 2), keepdim=True)
    assert torch.all((raw * centred).sum(dim=(1, 2)) > 0)


def test_the_sign_convention_holds_whichever_sign_the_svd_returns(monkeypatch) -> None:
    generator = torch.Generator().manual_seed(0)
    blob = torch.zeros(5, 6)
    blob[1:3, 2:5] = 1.0
    loadings = torch.rand(8, generator=generator) + 0.5  # every channel sees the blob
    features = loadings[None, :, None, None] * blob + 0.01 * torch.randn(
        2, 8, 5, 6, generator=generator
    )
    reference = first_principal_component(features)
    # The blob is high in the map, as it is in every channel: the convention, not luck.
    assert torch.all(reference[:, 1:3, 2:5].min() > reference[:, 3:, :].max())
    assert torch.all(first_principal_component(-features)[:, 1:3, 2:5] < 0)

    svd = torch.linalg.svd

    def flipped_svd(matrix: torch.Tensor, full_matrices: bool = True):
        u, s, vh = svd(matrix, full_matrices=full_matrices)
        return -u, s, -vh  # also a valid SVD; pytorch-grad-cam's map would flip with it

    monkeypatch.setattr(torch.linalg, "svd", flipped_svd)
    torch.testing.assert_close(first_principal_component(features), reference)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_randomcam_draws_like_pytorch_grad_cam_and_maps_alike(family: str, monkeypatch) -> None:
    """Their weights come from the global numpy RNG: we hand them ours and compare maps."""
    drawn: list[tuple] = []

    def uniform(low: float, high: float, size: tuple[int, int]) -> np.ndarray:
        drawn.append((low, high, size))
        return randomcam_weights(torch.tensor(TARGETS), size[1], seed=3).double().numpy()

    monkeypatch.setattr(np.random, "uniform", uniform)
    theirs, acts, _ = peer_run(RandomCAM, family)
    assert drawn == [(-1, 1, acts.shape[:2])] * 2  # their pipeline, then get_cam_image
    # Ours is signed by default: their map before the ReLU they always apply ...
    assert_close_maps(ours_raw(RandomCAM, family, seed=3), theirs)
    # ... and relu=True is their map.
    assert_close_maps(ours_raw(RandomCAM, family, seed=3, relu=True), np.maximum(theirs, 0))


def test_randomcam_is_signed_by_default_where_relu_would_zero_the_map() -> None:
    """Weights that read the activations' common mode negatively clip to an all-zero
    (constant) map with ReLU (seed 1, classes 2 and 9 on the ResNet's 3x3 map); the
    default signed map still ranks the positions."""
    model, layer, inputs = family_model("resnet"), FAMILIES["resnet"][3], family_input("resnet")
    signed = RandomCAM(model, target_layer=layer, seed=1).attribute_layer(inputs, TARGETS)
    clipped = RandomCAM(model, target_layer=layer, seed=1, relu=True).attribute_layer(
        inputs, TARGETS
    )
    torch.testing.assert_close(clipped, signed.clamp_min(0))
    assert clipped.flatten(1).amax(dim=1).tolist()[::2] == [0.0, 0.0]  # constant maps
    assert (signed.flatten(1).amax(dim=1) > signed.flatten(1).amin(dim=1)).all()


def test_randomcam_is_seeded_per_class_and_leaves_the_global_rng_alone() -> None:
    before = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    first = randomcam_weights(torch.tensor([4, 1, 4]), 16, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(first[0], first[2]) and not torch.equal(first[0], first[1])
    assert first.abs().max() <= 1 and first.min() < 0 < first.max()
    assert torch.equal(randomcam_weights(torch.tensor([1]), 16, seed=0)[0], first[1])
    assert not torch.equal(randomcam_weights(torch.tensor([4]), 16, seed=1)[0], first[0])
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        RandomCAM(family_model("resnet"), seed=-1)


def test_eigencam_is_class_agnostic_and_takes_no_gradients() -> None:
    model, inputs = family_model("resnet"), family_input("resnet")
    explainer = EigenCAM(model, target_layer="layer4")
    with torch.inference_mode():  # refused for gradient methods: proves no backward
        maps = explainer(inputs, target_class=[1, 2, 3])
    assert explainer.class_agnostic and not HiResCAM.class_agnostic
    torch.testing.assert_close(maps, explainer(inputs, target_class=[7, 7, 7]))


def test_registry_metadata() -> None:
    for name, cls in [
        ("hirescam", HiResCAM),
        ("xgradcam", XGradCAM),
        ("layercam", LayerCAM),
        ("eigencam", EigenCAM),
        ("eigengradcam", EigenGradCAM),
        ("randomcam", RandomCAM),
    ]:
        spec = METHODS[name]
        assert spec.cls is cls and cls.name == name and spec.kind == "cam" and spec.uses_layer
        assert spec.title and spec.paper and spec.formula and spec.cost and spec.summary
    assert "seed" in METHODS["randomcam"].options()
    assert "target_layer" in METHODS["randomcam"].options()


# ---------------------------------------------------------------------- real model
@pytest.mark.parametrize("method", list(PEER_NAMES))
def test_real_model_maps_are_finite_and_not_constant(real_model, photos, method) -> None:
    explainer = method(real_model)
    result = explainer.explain_full(photos["chelsea"])
    assert 281 <= int(result.targets[0]) <= 285  # one of ImageNet's cats
    raw = result.extras["layer_maps"][0]
    assert raw.shape == (1, 7, 7) and torch.isfinite(raw).all() and raw.std() > 0
    assert result.heatmap.shape == (1, 224, 224)
    assert result.heatmap.min() == 0 and result.heatmap.max() == 1
