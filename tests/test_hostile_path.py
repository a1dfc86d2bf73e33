"""The researcher's path end to end, offline (issue 30, "Done when"): a trained model
saved as a ``.pth`` state dict and as an HF-layout folder (``config.json`` +
``model.safetensors``, as ``timm.models.save_for_hf`` writes it), images in class-name
folders -> explain, evaluate, benchmark, report, from the command line and from Python,
with the true labels and the class names in every output.

The model is ``bundled:gt-resnet`` (a ResNet-10-T created with options: channels,
stem width, output stride; trained at 64 px with mean = std = 0.5), so its ``.pth``
loads only with those options (``--model-arg``) and predicts right only with its own
preprocessing (``pretrained_cfg_overlay``)."""

from __future__ import annotations

import csv
import json

import pytest
import timm
import torch
from PIL import Image

from timmlens import load_model
from timmlens.cli import main
from timmlens.cli.listings import parse_model_args
from timmlens.groundtruth import CLASS_NAMES, generate
from timmlens.models.introspect import data_config
from timmlens.models.known_answer import RECIPES

OPTIONS = RECIPES["bundled:gt-resnet"].options
PREPROCESSING = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
MODEL_ARGS = [
    *("--model-arg", "channels=(24, 48, 96, 192)"),
    *("--model-arg", f"stem_width={OPTIONS['stem_width']}"),
    *("--model-arg", f"output_stride={OPTIONS['output_stride']}"),
    *("--model-arg", f"pretrained_cfg_overlay={PREPROCESSING!r}"),
]
QUICK = ["--methods", "gradcam", "--steps", "4"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``{"pth", "hf", "names", "data", "labels"}``: gt-resnet saved both ways, a names
    file, and 6 generated images in folders named by class (``red_circle/0.png``)."""
    root = tmp_path_factory.mktemp("hostile")
    net = load_model("bundled:gt-resnet").backbone
    assert dict(OPTIONS)["channels"] == (24, 48, 96, 192)  # what MODEL_ARGS spells out
    torch.save(net.state_dict(), root / "gt.pth")
    timm.models.save_for_hf(net, root / "hf", model_args=dict(OPTIONS), safe_serialization=True)
    (root / "names.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    images = generate(6, seed=11)
    labels = {}
    for index, (pixels, label) in enumerate(zip(images.images, images.labels, strict=True)):
        folder = root / "data" / CLASS_NAMES[label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{index}.png")
        labels[f"{folder.name}/{index}.png"] = CLASS_NAMES[label]
    return {
        "pth": root / "gt.pth",
        "hf": root / "hf",
        "names": root / "names.txt",
        "data": root / "data",
        "labels": labels,
    }


def _own(saved, how: str) -> list[str]:
    if how == "hf":
        return ["--model", str(saved["hf"])]
    weights = ["--weights", str(saved["pth"]), "--class-names", str(saved["names"])]
    return ["--model", "resnet10t", *weights, *MODEL_ARGS]


def _check_rows(rows, labels):
    assert {row["id"] for row in rows} == set(labels)
    for row in rows:
        assert row["label_name"] == row["target_name"] == labels[row["id"]]
        assert row["predicted_name"] == CLASS_NAMES[row["predicted"]]


def test_model_args_are_python_literals_and_bad_ones_say_how():
    assert parse_model_args(["img_size=384", "channels=(8, 16)", "act=relu"]) == {
        "img_size": 384,
        "channels": (8, 16),
        "act": "relu",
    }
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_model_args(["img_size"])
    with pytest.raises(ValueError, match="use --num-classes N for num_classes"):
        parse_model_args(["num_classes=5"])


def test_a_pth_of_a_model_created_with_options_says_to_pass_them(saved, tmp_path, capsys):
    image = next(iter(saved["data"].rglob("*.png")))
    argv = ["explain", str(image), "--model", "resnet10t", "--weights", str(saved["pth"])]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert "--model-arg img_size=384" in capsys.readouterr().err
    model = load_model(
        "resnet10t", weights=saved["pth"], **OPTIONS, pretrained_cfg_overlay=PREPROCESSING
    )
    assert data_config(model)["input_size"] == (3, 64, 64)


@pytest.mark.parametrize("how", ["pth", "hf"])
def test_cli_explain_evaluate_benchmark_report_name_the_true_classes(saved, tmp_path, capsys, how):
    own, data = _own(saved, how), str(saved["data"])
    first = sorted(saved["labels"])[0]
    image = str(saved["data"] / first)
    assert main(["explain", image, *own, "--out", str(tmp_path / "x")]) == 0
    # "<image>: blue circle (99.9%) -> ...": the prediction by its name, not "class 4"
    assert capsys.readouterr().out.split(": ", 1)[1].split(" (")[0] in CLASS_NAMES

    assert main(["evaluate", data, *own, *QUICK, "--out", str(tmp_path / "ev")]) == 0
    assert "6 of 6 images labelled (explained for their true class)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "ev" / "rows.jsonl").read_text().splitlines()]
    _check_rows(rows, saved["labels"])
    # the model predicts as trained (the .pth too: its options and preprocessing given)
    assert sum(row["predicted_name"] == row["label_name"] for row in rows) >= 5

    out = tmp_path / "bench"
    assert main(["benchmark", data, *own, *QUICK, "--no-reference", "--out", str(out)]) == 0
    capsys.readouterr()
    with (out / "leaderboard_rows.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    for row in table:
        row["predicted"] = int(row["predicted"])
    _check_rows(table, saved["labels"])

    report = tmp_path / "rep" / "report.html"
    assert main(["report", data, *own, "--out", str(report), "--max-examples", "1"]) == 0
    assert capsys.readouterr().out.startswith("6 labelled images: ")
    document = json.loads(report.with_suffix(".json").read_text())
    assert document["counts"]["labelled"] == 6
    per_class = {entry["name"]: entry["n"] for entry in document["per_class"] if entry["n"]}
    counts = {name: list(saved["labels"].values()).count(name) for name in per_class}
    assert per_class == counts and set(per_class) == set(saved["labels"].values())
    for error in document["errors"]:
        assert error["true_name"] == saved["labels"][error["id"]]


def test_python_path_from_the_hf_folder(saved, tmp_path):
    from timmlens.evaluation import benchmark, evaluate
    from timmlens.quick import quick_explain

    model = load_model(saved["hf"])
    assert model.class_names == list(CLASS_NAMES)  # the folder's label_names, one attribute
    first = sorted(saved["labels"])[0]
    result = quick_explain(model, saved["data"] / first, save_path=tmp_path / "x.png")
    assert result.class_name in CLASS_NAMES
    summary = evaluate(
        model, saved["data"], out=tmp_path / "ev", metric_options={"steps": 4}, progress=False
    )
    assert summary.n_labelled == 6
    _check_rows(
        [json.loads(line) for line in summary.rows_path.read_text().splitlines()], saved["labels"]
    )
    board = benchmark(
        {"mine": model},
        saved["data"],
        methods=["gradcam"],
        out=tmp_path / "b",
        steps=4,
        progress=False,
        plot=False,
        reference=False,
    )
    _check_rows(board.image_rows["mine"], saved["labels"])
