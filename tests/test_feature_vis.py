"""Feature visualisation (issue 32): what the optimised images do to the model, the
parameterisations against horama, objectives, errors, determinism, the model's state."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timmlens.analysis import Robustness, layer_activations, visualize_feature
from timmlens.analysis import objectives as obj
from timmlens.analysis.feature_params import (
    MACO_SPECTRUM_PATH,
    fourier_image,
    fourier_scale,
    maco_image,
    maco_magnitude,
    transformed_copies,
)
from timmlens.errors import ChannelIndexError, ImageInputError, LayerResolutionError, TargetError
from timmlens.testing import explainable_model

QUIET = {"progress": False}


def _normalise_lite0(images: torch.Tensor) -> torch.Tensor:
    """Lite0's data config: mean = std = 0.5."""
    return (images - 0.5) / 0.5


def _resized(array: np.ndarray, size: int) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, size, size)`` in [0, 1]."""
    image = torch.from_numpy(array).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True)


# ------------------------------------------------------------------ the checks of issue 32
def test_channel_visualisation_beats_natural_images_and_survives_jitter(real_model, photos):
    """Real Lite0, ``blocks.4`` channel 0 at 128 px: the visualisation's channel mean is above
    the 99th percentile of the channel's activations (every position) over photos and
    known-answer images, and random shifts/zooms keep >= 80% of it."""
    from timmlens.groundtruth.generator import generate

    size, layer, channel = 128, "blocks.4", 0
    natural = [_resized(photo, size) for photo in photos.values()]
    natural += [_resized(image, size) for image in generate(12, size=size, seed=1).images]
    acts = layer_activations(real_model, _normalise_lite0(torch.cat(natural)), layer=layer)
    p99 = torch.quantile(acts.activations[:, channel].flatten(), 0.99)

    result = visualize_feature(
        real_model, layer=layer, channel=channel, steps=48, size=size, **QUIET
    )
    image = result.image.unsqueeze(0)
    value = layer_activations(real_model, _normalise_lite0(image), layer=layer).activations
    value = value[0, channel].mean()
    assert value > p99, (float(value), float(p99))
    assert result.final_score == pytest.approx(float(value), rel=1e-4)

    jitter = Robustness(copies=8, jitter=0.05, scale=(0.9, 1.1), degrees=0.0, noise=0.0)
    copies = transformed_copies(result.image, jitter, torch.Generator().manual_seed(123))
    moved = layer_activations(real_model, _normalise_lite0(copies), layer=layer).activations
    kept = moved[:, channel].mean(dim=(1, 2)) / value
    assert (kept >= 0.8).all(), kept


def _class_logit_check(method: str, classes: Sequence[int], steps: int) -> None:
    """gt-resnet (64 px): each class logit's visualisation is classified as that class."""
    from timmlens import ImageClassifier

    model = ImageClassifier("bundled:gt-resnet")
    for k in classes:
        result = visualize_feature(
            model, objective=obj.class_logit(k), steps=steps, size=64, method=method, **QUIET
        )
        with torch.no_grad():
            probabilities = model((result.image[None] - 0.5) / 0.5).softmax(-1)[0]
        assert int(probabilities.argmax()) == k, (k, probabilities)
        assert result.objective_trace[-1] > result.objective_trace[0]


@pytest.mark.parametrize("method", ["fourier", "maco"])
def test_class_logit_visualisation_is_the_top_class_of_the_known_answer_cnn(method):
    _class_logit_check(method, (0, 2, 4), steps=40)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fourier", "maco"])
def test_every_class_logit_visualisation_is_the_top_class(method):
    _class_logit_check(method, range(6), steps=128)


def test_vit_token_layer_through_the_spatial_tap(vit):
    result = visualize_feature(vit, layer="blocks.1", channel=3, steps=12, size=32, **QUIET)
    assert result.image.shape == (3, 32, 32)
    assert result.layers == {"blocks.1": "blocks.1"}
    assert float(result.image.min()) >= 0 and float(result.image.max()) <= 1
    assert result.objective_trace[-4:].mean() > result.objective_trace[:2].mean()


# ------------------------------------------------------------------ horama equality
def test_maco_and_fourier_maps_equal_horama(tmp_path, monkeypatch):
    from horama import fourier_fv, maco_fv

    generator = torch.Generator().manual_seed(0)
    size = 48
    # horama loads its spectrum from the working directory when present: give it ours.
    spectrum = np.load(MACO_SPECTRUM_PATH).astype(np.float32)
    monkeypatch.chdir(tmp_path)
    np.save(maco_fv.MACO_SPECTRUM_FILENAME, spectrum)
    theirs_magnitude, _ = maco_fv.init_maco_buffer((size, size))
    ours_magnitude = maco_magnitude(size)
    torch.testing.assert_close(ours_magnitude, theirs_magnitude)

    phase = torch.randn(3, size, size // 2 + 1, generator=generator)
    theirs = maco_fv.maco_preconditioner(theirs_magnitude, phase, (0.0, 1.0), "cpu")
    torch.testing.assert_close(maco_image(ours_magnitude, phase), theirs)

    scale = fourier_scale(size, 1.0)
    torch.testing.assert_close(scale, fourier_fv.get_fft_scale(size, size, 1.0))
    free = torch.complex(*torch.randn(2, 3, size, size // 2 + 1, generator=generator))
    theirs = fourier_fv.fourier_preconditionner(free, scale, (0.0, 1.0), "cpu")
    torch.testing.assert_close(fourier_image(free, scale), theirs)


def test_direction_objective_equals_horama_dot_cossim():
    from horama import dot_cossim

    generator = torch.Generator().manual_seed(0)
    activation = torch.randn(1, 16, 1, 1, generator=generator)
    vector = torch.randn(16, generator=generator)
    for power in (0.0, 1.0, 2.0):
        ours = obj.direction("x", vector, cossim_pow=power).score({"x": activation}, None)
        unit = (vector / vector.norm())[None]
        theirs = dot_cossim(activation.flatten(1), unit, cossim_pow=power)
        torch.testing.assert_close(ours, theirs.reshape(1))


# ------------------------------------------------------------------ objectives
def test_objectives_compose_linearly():
    generator = torch.Generator().manual_seed(0)
    maps = {"a": torch.randn(2, 4, 3, 3, generator=generator)}
    logits = torch.randn(2, 5, generator=generator)
    channel, neuron = obj.channel("a", 1), obj.neuron("a", 2, position=(0, 2))
    logit, direction = obj.class_logit(4), obj.direction("a", [1.0, 0, 0, 0], cossim_pow=0)
    combined = channel + 0.5 * logit - neuron + direction
    expected = (
        maps["a"][:, 1].mean((1, 2))
        + 0.5 * logits[:, 4]
        - maps["a"][:, 2, 0, 2]
        + maps["a"][:, 0].mean((1, 2))
    )
    torch.testing.assert_close(combined.score(maps, logits), expected)
    assert combined.layers == ("a",) and combined.needs_logits
    assert sum([channel, logit]).score(maps, logits).shape == (2,)
    # the default neuron is the grid's centre
    torch.testing.assert_close(obj.neuron("a", 0).score(maps, None), maps["a"][:, 0, 1, 1])


def test_direction_visualisation_raises_its_projection(small):
    vector = torch.linspace(-1, 1, 96)
    result = visualize_feature(
        small, objective=obj.direction("layer4", vector), steps=16, size=64, **QUIET
    )
    assert result.objective_trace[-4:].mean() > result.objective_trace[:2].mean()


# ------------------------------------------------------------------ errors
def test_bad_inputs_get_clear_errors(small):
    with pytest.raises(ChannelIndexError, match=r"96 channels \(valid: 0 to 95\)"):
        visualize_feature(small, layer="layer4", channel=96, steps=1, size=64, **QUIET)
    with pytest.raises(LayerResolutionError, match="Closest names: layer4"):
        visualize_feature(small, layer="layer9", channel=0, steps=1, size=64, **QUIET)
    with pytest.raises(TargetError, match=r"10 classes \(valid: 0 to 9\)"):
        visualize_feature(small, objective=obj.class_logit(10), steps=1, size=64, **QUIET)
    with pytest.raises(ChannelIndexError, match="2x2 grid"):
        objective = obj.neuron("layer4", 0, position=(2, 0))
        visualize_feature(small, objective=objective, steps=1, size=64, **QUIET)
    with pytest.raises(ChannelIndexError, match="length 96"):
        objective = obj.direction("layer4", torch.ones(5))
        visualize_feature(small, objective=objective, steps=1, size=64, **QUIET)
    with pytest.raises(ImageInputError, match="size must be an int >= 16"):
        visualize_feature(small, channel=0, steps=1, size=8, **QUIET)
    with pytest.raises(ValueError, match="not both"):
        visualize_feature(small, channel=0, objective=obj.class_logit(0), **QUIET)
    with pytest.raises(ValueError, match="nothing to visualise"):
        visualize_feature(small, **QUIET)
    with pytest.raises(ValueError, match="maco, fourier"):
        visualize_feature(small, channel=0, method="lucid", **QUIET)  # type: ignore[arg-type]


def test_a_size_a_strict_vit_cannot_take():
    import timm

    model = timm.create_model("test_vit", img_size=32, num_classes=10, dynamic_img_size=False)
    with pytest.raises(ImageInputError, match=r"cannot take a 48x48 image.*size=32"):
        visualize_feature(model, layer="blocks.1", channel=0, steps=1, size=48, **QUIET)


def test_a_unit_that_never_fires_warns(small):
    """A channel driven below zero by a large negative bias never gets a gradient."""
    model = explainable_model("test_resnet", seed=0, num_classes=10)
    with torch.no_grad():
        model.layer4[-1].bn2.bias[0] = -1e4
    with pytest.warns(RuntimeWarning, match="zero gradient at every step"):
        visualize_feature(model, layer="layer4", channel=0, steps=2, size=64, **QUIET)


# ------------------------------------------------------------------ determinism, state
def test_seeded_and_deterministic(small):
    options = {"layer": "layer3", "channel": 5, "steps": 6, "size": 48, **QUIET}
    first = visualize_feature(small, seed=3, **options)
    torch.manual_seed(99)  # the global RNG plays no part
    again = visualize_feature(small, seed=3, **options)
    other = visualize_feature(small, seed=4, **options)
    torch.testing.assert_close(first.image, again.image, rtol=0, atol=0)
    torch.testing.assert_close(first.objective_trace, again.objective_trace, rtol=0, atol=0)
    assert not torch.equal(first.image, other.image)
    fourier = visualize_feature(small, seed=3, method="fourier", **options)
    assert not torch.equal(first.image, fourier.image)


def test_model_left_as_found():
    model = explainable_model("test_resnet", seed=0, num_classes=10)
    model.train()
    model.fc.weight.requires_grad_(False)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    objective = obj.channel("layer3", 1) + obj.class_logit(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        visualize_feature(model, objective=objective, steps=3, size=48, **QUIET)
    assert all(m.training for m in model.modules())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_shipped_spectrum_is_small_and_natural():
    """The package array: (3, 224, 113) float16, a few hundred kB at most, and it falls
    with frequency as natural images' spectra do (about 1/f)."""
    assert MACO_SPECTRUM_PATH.stat().st_size < 300_000
    spectrum = np.load(MACO_SPECTRUM_PATH)
    assert spectrum.shape == (3, 224, 113) and spectrum.dtype == np.float16
    assert np.isfinite(spectrum).all() and (spectrum > 0).all()
    low, high = spectrum[:, 1:4, 1:4].mean(), spectrum[:, 100:110, 100:110].mean()
    assert low > 20 * high


# ------------------------------------------------------------------ CLI
def test_cli_visualize_writes_pngs_and_traces(tmp_path, capsys):
    import json

    from PIL import Image

    from timmlens.cli import main

    out = tmp_path / "vis"
    argv = ["visualize", "--model", "test_resnet", "--layer", "layer3", "--steps", "2"]
    assert main([*argv, "--channel", "0", "5", "--size", "48", "--out", str(out)]) == 0
    summary = json.loads((out / "visualize.json").read_text())
    assert set(summary["images"]) == {"layer3-0", "layer3-5"}
    assert len(summary["images"]["layer3-0"]["trace"]) == 2
    assert Image.open(out / "layer3-5.png").size == (48, 48)

    assert main([*argv, "--channel", "999", "--size", "48", "--out", str(out)]) == 2
    assert "valid: 0 to" in capsys.readouterr().err
