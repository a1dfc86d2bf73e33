"""The ``timmlens`` command: help, explain, evaluate, layers, one-line user errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from timmlens.cli import main


def test_help_for_every_command(capsys):
    for argv in (
        ["--help"],
        ["explain", "--help"],
        ["evaluate", "--help"],
        ["report", "--help"],
        ["layers", "--help"],
    ):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0
    text = capsys.readouterr().out
    # choices show as METHOD in the usage; the help points to the listing, it does not
    # hold every method's blurb (issue 30: a 45-line paragraph)
    assert "--method METHOD" in text
    flat = " ".join(text.split())  # argparse's wrapping depends on the options' widths
    assert "options and costs: timmlens methods" in flat
    assert " gradcampp: " not in flat and " rollout: " not in flat
    assert "--metrics" in text and "image folder" in text
    assert "heatmap metrics: insertion, deletion" in flat


def test_explain_writes_figure_and_html(tmp_path, photos, capsys):
    path = tmp_path / "chelsea.png"
    Image.fromarray(photos["chelsea"]).save(path)
    code = main(
        [
            "explain",
            str(path),
            "--model",
            "bundled:efficientnet_lite0",
            "--out",
            str(tmp_path / "out"),
            "--html",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "tiger cat" in out
    assert (tmp_path / "out" / "chelsea_gradcam.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "chelsea_gradcam.html").exists()


def test_evaluate_on_a_folder(tmp_path, photos, capsys):
    folder = tmp_path / "photos"
    (folder / "282").mkdir(parents=True)
    Image.fromarray(photos["chelsea"]).save(folder / "282" / "chelsea.png")
    Image.fromarray(photos["coffee"]).save(folder / "coffee.png")
    code = main(
        [
            "evaluate",
            str(folder),
            "--model",
            "bundled:efficientnet_lite0",
            "--steps",
            "16",
            "--out",
            str(tmp_path / "results"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "2 images" in out and "gradcam" in out
    assert len((tmp_path / "results" / "rows.jsonl").read_text().splitlines()) == 2


def test_layers(capsys):
    assert main(["layers", "test_resnet"]) == 0
    assert "default CAM layer : backbone.layer4" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["layers", "resnet18x"], "Unknown timm architecture 'resnet18x'"),
        (["explain", "missing.png", "--model", "test_resnet"], "does not exist"),
        (["explain", "IMG", "--model", "test_resnet", "--target", "5000"], "out of range"),
        (["explain", "IMG", "--model", "test_resnet", "--target", "tabbby"], "Close matches"),
        (["evaluate", "no-such-folder", "--model", "test_resnet"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_with_status_2(tmp_path, argv, message):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    argv = [str(image) if a == "IMG" else a for a in argv]
    done = subprocess.run(
        [sys.executable, "-m", "timmlens.cli", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    errors = [
        line
        for line in done.stderr.splitlines()
        if "Warning" not in line and line.strip() and not line.startswith("  ")
    ]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in done.stderr


def test_method_aliases_are_accepted_at_the_edge_and_become_canonical():
    from timmlens.cli import _parser

    parser = _parser()
    assert parser.parse_args(["explain", "x.png", "--method", "gradcam++"]).method == "gradcampp"
    evaluate = parser.parse_args(["evaluate", "d", "--methods", "integrated_gradients", "gradcam"])
    assert evaluate.methods == ["ig", "gradcam"]
    with pytest.raises(SystemExit):
        parser.parse_args(["explain", "x.png", "--method", "gradcamm"])
