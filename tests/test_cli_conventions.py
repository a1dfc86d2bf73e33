"""The CLI behaves like its neighbours: --version, defaults in --help, folders for
explain, one output root, the default model named, --device on every command."""

from __future__ import annotations

import warnings

import pytest
from PIL import Image

import timmlens
from timmlens.cli import OUTPUT_ROOT, _parser, main

COMMANDS = ("explain", "evaluate", "report", "layers")


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"timmlens {timmlens.__version__}"


def test_help_shows_defaults_and_device_on_every_command(capsys) -> None:
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # unwrapped
        assert "--device DEVICE" in text and "(default: cpu)" in text, command
        assert "(default: bundled:efficientnet_lite0" in text, command
        assert "(default: None)" not in text and "(default: False)" not in text, command
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 8)" in text and "(default: jsonl)" in text


def test_one_default_output_root() -> None:
    parser = _parser()
    outs = {
        "explain": parser.parse_args(["explain", "x.jpg"]).out,
        "evaluate": parser.parse_args(["evaluate", "data"]).out,
        "report": parser.parse_args(["report", "data"]).out,
    }
    assert outs == {
        "explain": str(OUTPUT_ROOT / "explain"),
        "evaluate": str(OUTPUT_ROOT / "evaluate"),
        "report": str(OUTPUT_ROOT / "report" / "report.html"),
    }
    assert str(OUTPUT_ROOT) == "outputs"


def test_device_that_is_missing_is_a_one_line_error(tmp_path, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command, rest in (
        ("explain", ["x.jpg", "--out", str(tmp_path / "e")]),
        ("evaluate", [str(tmp_path), "--out", str(tmp_path / "v")]),
        ("report", [str(tmp_path), "--out", str(tmp_path / "r.html")]),
        ("layers", ["test_resnet"]),
    ):
        assert main([command, *rest, "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"timmlens {command}: error: device 'cuda' is not available on this machine: "
            f"this torch ({torch.__version__}) finds no CUDA device. Use 'cpu', or 'auto' for "
            f"the best device present."
        )
    assert main(["layers", "test_resnet", "--device", "gpu"]) == 2
    assert "'gpu' is not a device; expected cpu, cuda, cuda:N, mps or auto" in (
        capsys.readouterr().err
    )
    assert not list(tmp_path.iterdir())  # nothing written, no model loaded


def test_explain_takes_folders(tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 90, 10)).save(folder / "a.png")
    Image.new("RGB", (30, 40), (10, 90, 200)).save(folder / "more" / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    argv = ["explain", str(folder), "--model", "test_resnet", "--out", str(out)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        str(folder / "a.png"),
        str(folder / "more" / "b.jpg"),
    ]
    assert sorted(p.name for p in out.iterdir()) == [  # test_resnet has random weights
        "a_gradcam_random-weights.png",
        "b_gradcam_random-weights.png",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["explain", str(empty), "--out", str(out)]) == 2
    assert "No image files" in capsys.readouterr().err


def test_the_default_model_is_named(capsys) -> None:
    assert main(["layers"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(
        "timmlens layers: using bundled:efficientnet_lite0 (EfficientNet-Lite0, real ImageNet "
        "weights shipped with timmlens); choose another with --model"
    )
    assert "tf_efficientnet_lite0" in captured.out


def test_layers_prints_no_random_weights_warning(capsys) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping main() fails the test
        assert main(["layers", "test_resnet"]) == 0
    captured = capsys.readouterr()
    assert "default CAM layer" in captured.out
    assert "random weights" not in captured.err and "Warning" not in captured.err
    assert "using bundled" not in captured.err  # a model was named


def test_cli_warnings_are_one_line(tmp_path, capsys) -> None:
    picture = tmp_path / "cat.png"
    Image.new("RGB", (40, 40), (120, 80, 40)).save(picture)
    argv = ["explain", str(picture), "--model", "test_resnet", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "timmlens explain: warning: 'test_resnet' is created with random weights" in err
    assert "(RandomWeightsWarning)" in err and ".py:" not in err  # no file:line of code
