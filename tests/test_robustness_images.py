"""Every image format: bit depths, PIL modes, numpy dtypes and shapes, hostile files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from timmlens import ImageInputError, prepare_images
from timmlens.cli import EXIT_USER_ERROR, main
from timmlens.data import ImageScalingWarning, data_config, denormalize

# An 8-bit grey ramp holding every value 0..255 (so a min-max stretch is the identity).
GREY = (np.arange(40 * 64).reshape(40, 64) % 256).astype(np.uint8)
ONE_LEVEL = 1 / 255 + 1e-6


@pytest.fixture(scope="module")
def model():
    return timm.create_model("test_resnet").eval()


@pytest.fixture(scope="module")
def pixels_of(model):
    """What the model sees of an input, as pixels in [0, 1]; unexpected scaling warnings fail."""

    def see(image, *, expect_scaling: bool = False) -> torch.Tensor:
        with warnings.catch_warnings():
            if not expect_scaling:  # else left to the caller's pytest.warns
                warnings.simplefilter("error", ImageScalingWarning)
            return denormalize(prepare_images(image, model).tensor, model)

    return see


def _raw(mode: str, values: np.ndarray, dtype: str) -> Image.Image:
    """A PIL image of ``mode`` holding exactly ``values`` (PIL's own convert clips I;16B/L/N)."""
    height, width = values.shape
    return Image.frombytes(mode, (width, height), values.astype(dtype).tobytes())


DEEP_GREYS = {
    "I;16": lambda: Image.fromarray(GREY.astype(np.uint16) * 257),
    "I;16B": lambda: _raw("I;16B", GREY.astype(np.uint16) * 257, ">u2"),
    "I;16L": lambda: _raw("I;16L", GREY.astype(np.uint16) * 257, "<u2"),
    "I;16N": lambda: _raw("I;16N", GREY.astype(np.uint16) * 257, "=u2"),
    "F": lambda: Image.fromarray(GREY.astype(np.float32) / 255),
}


@pytest.mark.parametrize("mode", sorted(DEEP_GREYS))
def test_deep_pil_modes_match_their_8_bit_version(mode, pixels_of):
    image = DEEP_GREYS[mode]()
    assert image.mode == mode
    expected = pixels_of(Image.fromarray(GREY))
    assert torch.allclose(pixels_of(image), expected, atol=ONE_LEVEL)


def test_mode_i_is_read_as_16_bit_and_says_so(pixels_of):
    image = Image.fromarray(GREY.astype(np.int32) * 257)
    assert image.mode == "I"
    with pytest.warns(ImageScalingWarning, match=r"PIL mode I\).*read as 16-bit"):
        seen = pixels_of(image, expect_scaling=True)
    assert torch.allclose(seen, pixels_of(Image.fromarray(GREY)), atol=ONE_LEVEL)


def test_float_image_beyond_0_1_is_stretched_with_a_warning(pixels_of):
    hounsfield = GREY.astype(np.float32) * 8 - 1000  # a CT-like range, [-1000, 1040]
    with pytest.warns(ImageScalingWarning, match=r"\[-1000, 1040\].*min-max"):
        seen = pixels_of(Image.fromarray(hounsfield), expect_scaling=True)
    assert torch.allclose(seen, pixels_of(Image.fromarray(GREY)), atol=ONE_LEVEL)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_and_float_files_match_their_8_bit_version(suffix, tmp_path, pixels_of):
    expected = pixels_of(Image.fromarray(GREY))
    deep = tmp_path / f"grey16{suffix}"
    Image.fromarray(GREY.astype(np.uint16) * 257).save(deep)
    assert Image.open(deep).mode.startswith("I")
    assert torch.allclose(pixels_of(deep), expected, atol=ONE_LEVEL)
    if suffix == ".tif":
        floats = tmp_path / "grey_float.tif"
        Image.fromarray(GREY.astype(np.float32) / 255).save(floats)
        assert Image.open(floats).mode == "F"
        assert torch.allclose(pixels_of(floats), expected, atol=ONE_LEVEL)


def _colour() -> Image.Image:
    ys, xs = np.mgrid[0:40, 0:64]
    rgb = np.stack([ys * 6, xs * 4, 255 - xs * 3], -1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.mark.parametrize(
    ("mode", "levels"),
    [("CMYK", 0), ("RGBX", 0), ("YCbCr", 4), ("HSV", 8), ("LAB", 32), ("RGBA", 0)],
)
def test_colour_spaces_are_converted_not_read_as_rgb(mode, levels, pixels_of):
    image = _colour().convert(mode)
    assert image.mode == mode
    diff = (pixels_of(image) - pixels_of(_colour())).abs()
    assert float(diff.max()) <= levels / 255 + 1e-6
    assert float(diff.mean()) <= 2 / 255


def _transparent_red(mode: str) -> Image.Image:
    rgba = Image.new("RGBA", (30, 20), (255, 0, 0, 0))
    if mode == "La":
        return rgba.convert("LA").convert("La")
    if mode == "P":
        image = Image.new("P", (30, 20), 1)
        image.putpalette([0, 0, 0, 255, 0, 0])
        image.info["transparency"] = 1
        return image
    return rgba.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "RGBa", "LA", "La", "PA", "P"])
def test_transparent_pixels_are_white_in_every_alpha_mode(mode, pixels_of):
    image = _transparent_red(mode)
    assert image.mode == mode
    white = pixels_of(Image.new("RGB", image.size, "white"))
    assert float(white.min()) == 1.0
    assert torch.allclose(pixels_of(image), white, atol=ONE_LEVEL)


def test_mode_1_and_palette_images_become_their_rgb(pixels_of):
    bits = Image.fromarray(GREY >= 128).convert("1")
    assert bits.mode == "1"
    assert torch.allclose(
        pixels_of(bits), pixels_of(Image.fromarray((GREY >= 128).astype(np.uint8) * 255))
    )
    palette = _colour().convert("P")
    assert torch.allclose(pixels_of(palette), pixels_of(palette.convert("RGB")))


GREY_HWC = GREY[..., None]
ARRAYS_LIKE_GREY = {
    "uint16": (GREY.astype(np.uint16) * 257, None),
    "uint16 big-endian": ((GREY.astype(np.uint16) * 257).astype(">u2"), None),
    "uint16 RGB": (np.repeat(GREY_HWC, 3, -1).astype(np.uint16) * 257, None),
    "uint16 grey + alpha": (
        np.concatenate(
            [GREY_HWC.astype(np.uint16) * 257, np.full_like(GREY_HWC, 65535, np.uint16)], -1
        ),
        None,
    ),
    "float32 0-1": (GREY.astype(np.float32) / 255, None),
    "float64 0-1 RGBA": (
        np.concatenate([np.repeat(GREY_HWC, 3, -1) / 255, np.ones_like(GREY_HWC, float)], -1),
        None,
    ),
    "float16 0-1": (GREY.astype(np.float16) / 255, None),
    "int32 16-bit": (GREY.astype(np.int32) * 257, "read as 16-bit"),
    "int64 8-bit": (GREY.astype(np.int64), "read as 8-bit"),
    "float32 0-255": (GREY.astype(np.float32), "min-max"),
    "int8": ((GREY.astype(np.int16) - 128).astype(np.int8), "min-max"),
    "uint8 HW1": (GREY_HWC, None),
}


@pytest.mark.parametrize("name", sorted(ARRAYS_LIKE_GREY))
def test_arrays_of_every_depth_match_their_8_bit_version(name, pixels_of):
    array, warning = ARRAYS_LIKE_GREY[name]
    expected = pixels_of(Image.fromarray(GREY))
    if warning is None:
        seen = pixels_of(array)
    else:
        with pytest.warns(ImageScalingWarning, match=warning):
            seen = pixels_of(array, expect_scaling=True)
    assert torch.allclose(seen, expected, atol=ONE_LEVEL)


def test_bool_arrays_are_black_and_white(pixels_of):
    mask = GREY >= 128
    assert torch.equal(pixels_of(mask), pixels_of(mask.astype(np.uint8) * 255))


def test_a_constant_out_of_range_image_is_black_with_a_warning(pixels_of):
    with pytest.warns(ImageScalingWarning, match=r"\[7, 7\]"):
        seen = pixels_of(np.full((8, 8, 3), 7.0), expect_scaling=True)
    assert float(seen.abs().max()) == 0.0


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 40, 50), np.uint8), r"channels-first.*transpose\(1, 2, 0\)"),
        (np.zeros((1, 40, 50), np.float32), r"channels-first"),
        (np.zeros((2, 40, 50, 3), np.uint8), r"list of HWC arrays"),
        (np.zeros(50, np.uint8), r"shape \(50,\).*reshape"),
        (np.zeros((40, 50, 5), np.uint16), r"1, 2, 3 or 4 channels"),
        (np.zeros((40, 50), np.complex64), r"complex64 does not hold pixel values"),
        (np.full((4, 4), np.inf), r"NaN or inf.*nan_to_num"),
        (np.zeros((0, 5, 3), np.uint16), r"empty"),
    ],
)
def test_arrays_that_are_no_image_get_clear_errors(array, message, model):
    with pytest.raises(ImageInputError, match=message):
        prepare_images(array, model)


def test_nan_in_a_float_pil_image_is_an_error(model):
    values = GREY.astype(np.float32) / 255
    values[3, 3] = np.nan
    with pytest.raises(ImageInputError, match=r"PIL mode F\).*NaN or inf"):
        prepare_images(Image.fromarray(values), model)


def test_decompression_bomb_is_an_image_input_error(tmp_path, model, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(GREY).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 2560 pixels > twice the limit
    with pytest.raises(ImageInputError, match=r"big\.png.*2560 pixels.*MAX_IMAGE_PIXELS"):
        prepare_images(path, model)


def test_directory_is_named_as_a_directory(tmp_path, model):
    with pytest.raises(ImageInputError, match=r"is a directory, not an image file.*evaluate"):
        prepare_images(tmp_path, model)


@pytest.mark.parametrize("picture", [Image.fromarray(GREY), GREY])
def test_list_mixing_pictures_and_tensors_is_an_error(picture, model):
    tensor = torch.zeros(3, 160, 160)
    for items in ([picture, tensor], [tensor, picture]):
        with pytest.raises(ImageInputError, match=r"mixes tensors.*only pictures.*or only"):
            prepare_images(items, model)


def test_cli_reports_bombs_and_directories_without_a_traceback(tmp_path, monkeypatch, capsys):
    path = tmp_path / "big.png"
    Image.fromarray(GREY).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    empty = tmp_path / "empty"
    empty.mkdir()
    # a folder is explained image by image (so its bomb is reported); an empty one is an error
    for target, message in (
        (path, "decompression bomb"),
        (tmp_path, "decompression bomb"),
        (empty, "No image files"),
    ):
        argv = ["explain", str(target), "--model", "test_resnet", "--out", str(tmp_path / "o")]
        assert main(argv) == EXIT_USER_ERROR
        assert message in capsys.readouterr().err


# --- fuzzing: any input either works or is an ImageInputError -----------------------------

DTYPES = [
    np.bool_,
    np.uint8,
    np.int8,
    np.uint16,
    np.int16,
    np.int32,
    np.uint32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
]
SHAPES = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 5)),  # HWC
    st.tuples(st.integers(1, 4), st.integers(1, 7), st.integers(5, 9)),  # CHW
    st.tuples(st.just(1), st.integers(1, 300)),  # very thin
)
ARRAYS = st.builds(
    lambda dtype, shape, data: data.draw(hnp.arrays(dtype, shape)),
    st.sampled_from(DTYPES),
    SHAPES,
    st.data(),
)


@st.composite
def pil_images(draw: st.DrawFn) -> Image.Image:
    mode = draw(st.sampled_from(sorted(Image.MODES)))
    size = (draw(st.integers(0, 6)), draw(st.integers(0, 6)))
    length = len(Image.new(mode, size).tobytes())
    if length == 0:
        return Image.new(mode, size)
    return Image.frombytes(mode, size, draw(st.binary(min_size=length, max_size=length)))


def _works_or_says_why(image, model) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageScalingWarning)
        warnings.simplefilter("error", RuntimeWarning)  # numpy overflow = garbage pixels
        try:
            tensor = prepare_images(image, model).tensor
        except ImageInputError as exc:
            assert str(exc)
            return
    assert tuple(tensor.shape) == (1, *data_config(model)["input_size"])
    assert bool(torch.isfinite(tensor).all())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=ARRAYS)
@example(array=np.array([[-1e308, 1e308]]))  # a span that overflows float64
@example(array=np.array([[0.0, 5e-324]]))  # a span that underflows to zero
def test_fuzzed_arrays_work_or_raise_image_input_error(array, model):
    _works_or_says_why(array, model)


@settings(max_examples=60, deadline=None)
@given(image=pil_images())
def test_fuzzed_pil_images_work_or_raise_image_input_error(image, model):
    _works_or_says_why(image, model)
