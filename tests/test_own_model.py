"""The researcher's own model (issue 30): a fine-tuned 5-class timm ResNet saved as a
``.pth`` state dict and as a HF-layout folder, an image folder named by class, through
``load_model`` and every ``timmlens`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timmlens import ImageClassifier, load_model
from timmlens.cli import main
from timmlens.errors import ModelLoadError, WeightsMismatchError
from timmlens.models.introspect import class_name_of, label_resolver_for
from timmlens.models.weights_status import looks_untrained, weights_status

NAMES = ["ant", "bee", "cat", "dog", "eel"]


def _fine_tuned(seed: int = 0) -> torch.nn.Module:
    """A 5-class test_resnet whose norm layers moved off their initial values, as
    fine-tuning leaves them (random weights otherwise: only shapes and labels matter)."""
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=5)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``{"model", "pth", "folder", "names", "data"}``: the model, its .pth, its HF folder
    (with label_names), a names file, and a folder of images named by class."""
    root = tmp_path_factory.mktemp("own")
    model = _fine_tuned()
    pth = root / "finetuned.pth"
    torch.save({"state_dict": model.state_dict()}, pth)  # a training script's checkpoint
    folder = root / "hf"
    timm.models.save_for_hf(
        model, folder, model_config={"label_names": NAMES}, safe_serialization=True
    )
    names = root / "names.txt"
    names.write_text("# my classes\n" + "\n".join(NAMES) + "\n")
    data = root / "data"
    rng = np.random.default_rng(0)
    for name in NAMES[:2]:
        (data / name).mkdir(parents=True)
        for index in range(2):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / name / f"{index}.png")
    return {"model": model, "pth": pth, "folder": folder, "names": names, "data": data}


def test_checkpoint_head_size_is_read_from_the_state_dict(checkpoint):
    loaded = load_model("test_resnet", weights=checkpoint["pth"])
    assert loaded.num_classes == 5 and not loaded.has_new_head
    assert loaded.weights_status.trained
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), checkpoint["model"](x), atol=1e-6)


def test_a_wrong_num_classes_names_the_one_that_fits(checkpoint):
    with pytest.raises(WeightsMismatchError) as caught:
        ImageClassifier("test_resnet", weights=checkpoint["pth"], num_classes=1000)
    assert "The checkpoint has a 5-class head, the model 1000 classes: pass num_classes=5" in (
        str(caught.value)
    )
    assert "pass --num-classes 5" in caught.value.cli


def test_class_names_from_a_list_a_file_or_commas(checkpoint):
    for given in (NAMES, checkpoint["names"], ",".join(NAMES)):
        model = load_model("test_resnet", weights=checkpoint["pth"], class_names=given)
        assert model.class_names == NAMES
        assert class_name_of(model, 3) == "dog"
        assert label_resolver_for(model).resolve("eel") == 4
    json_file = checkpoint["names"].with_suffix(".json")
    json_file.write_text(json.dumps(NAMES))
    assert load_model("test_resnet", weights=checkpoint["pth"], class_names=json_file).class_names


def test_class_names_errors(checkpoint):
    with pytest.raises(ModelLoadError, match=r"has 2 names \(a, b\) but the model has 5") as c:
        load_model("test_resnet", weights=checkpoint["pth"], class_names=["a", "b"])
    assert c.value.cli.startswith("--class-names has 2 names")
    with pytest.raises(ModelLoadError, match="neither a file nor a comma-separated list"):
        load_model("test_resnet", weights=checkpoint["pth"], class_names="names.txt")
    with pytest.raises(ModelLoadError, match="repeat 'a'"):
        load_model("test_resnet", weights=checkpoint["pth"], class_names="a,a,b,c,d")


def test_hf_folder_brings_its_names_and_user_names_win(checkpoint):
    model = load_model(checkpoint["folder"])
    assert class_name_of(model, 1) == "bee"
    renamed = load_model(checkpoint["folder"], class_names="A,B,C,D,E")
    assert class_name_of(renamed, 1) == "B"


def test_weights_with_a_spec_that_brings_its_own_is_refused(checkpoint):
    with pytest.raises(ModelLoadError, match="brings its own weights") as caught:
        load_model(checkpoint["folder"], weights=checkpoint["pth"])
    assert "--model resnet18 --weights model.pth" in caught.value.cli


def test_a_model_the_user_built_without_weights_is_labelled_random():
    torch.manual_seed(0)
    built = timm.create_model("test_resnet", num_classes=5)
    assert looks_untrained(built) and weights_status(built).random
    wrapped = ImageClassifier(built)
    assert wrapped.weights_status.note == "random weights"
    vit = timm.create_model("test_vit", num_classes=5)
    assert looks_untrained(vit)
    # one trained norm is enough to count as trained: fine-tuned models are never flagged
    assert not looks_untrained(_fine_tuned())
    assert not ImageClassifier(_fine_tuned()).weights_status.random
    # a model without norm layers is not judged
    assert not looks_untrained(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1
    return lines[0]


def test_cli_hints_are_command_lines(checkpoint, tmp_path, capsys):
    image = str(checkpoint["data"] / "ant" / "0.png")
    out = ["--out", str(tmp_path / "out")]
    pth = str(checkpoint["pth"])
    assert main(["explain", image, "--model", pth, *out]) == 2
    line = _one_error_line(capsys)
    assert f"--model ARCHITECTURE --weights {pth}" in line and "load_model" not in line
    assert main(["explain", image, "--weights", pth, *out]) == 2
    assert "--weights needs the timm architecture" in _one_error_line(capsys)
    argv = ["explain", image, "--model", "test_resnet", "--weights", pth, "--num-classes", "7"]
    assert main([*argv, *out]) == 2
    assert "pass --num-classes 5" in _one_error_line(capsys)
    argv = ["explain", image, "--model", "test_resnet", "--weights", pth, "--class-names", "a,b"]
    assert main([*argv, *out]) == 2
    assert "--class-names has 2 names (a, b) but the model has 5 classes" in (
        _one_error_line(capsys)
    )


def test_cli_explain_and_layers_with_your_checkpoint(checkpoint, tmp_path, capsys):
    image = str(checkpoint["data"] / "ant" / "0.png")
    own = ["--model", "test_resnet", "--weights", str(checkpoint["pth"])]
    names = ["--class-names", str(checkpoint["names"])]
    assert main(["explain", image, *own, *names, "--out", str(tmp_path / "a")]) == 0
    # "data/ant/0.png: bee (28.3%) -> ...": the prediction by its name, not "class 1"
    named = capsys.readouterr().out.split(": ", 1)[1].split(" (")[0]
    assert named in NAMES
    folder = ["--model", str(checkpoint["folder"]), "--out", str(tmp_path / "b")]
    assert main(["explain", image, *folder]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1].split(" (")[0] == named
    assert main(["layers", "test_resnet", "--weights", str(checkpoint["pth"])]) == 0
    assert "backbone.layer4" in capsys.readouterr().out


# ------------------------------------------------------------ one label convention
def test_every_command_reads_class_name_folders_the_same_way(checkpoint, tmp_path):
    from timmlens.evaluation import evaluate
    from timmlens.evaluation.sources import count_labelled, source_for

    model = load_model("test_resnet", weights=checkpoint["pth"], class_names=NAMES)
    data = tmp_path / "data"
    for name in ("bee", "3"):  # a class name and a class index
        (data / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), "white").save(data / name / "a.png")
    Image.new("RGB", (40, 40), "black").save(data / "loose.png")  # no label
    samples = source_for(data, model)
    assert [s.label for s in samples] == [3, 1, None] and count_labelled(samples) == 2
    summary = evaluate(
        model, data, out=tmp_path / "ev", metric_options={"steps": 4}, progress=False
    )
    rows = [json.loads(line) for line in summary.rows_path.read_text().splitlines()]
    by_id = {row["id"]: row for row in rows}
    assert by_id["bee/a.png"]["label"] == by_id["bee/a.png"]["target"] == 1
    assert by_id["loose.png"]["label"] is None
    assert by_id["loose.png"]["target"] == by_id["loose.png"]["predicted"]
    assert summary.n_labelled == 2 and summary.to_dict()["n_labelled"] == 2
    assert "2 of 3 images labelled (explained for their true class); 1 explained for its " in (
        str(summary)
    )


def test_cli_benchmark_with_your_checkpoint_labels_its_rows(checkpoint, tmp_path, capsys):
    own = ["--model", "test_resnet", "--weights", str(checkpoint["pth"])]
    names = ["--class-names", ",".join(NAMES)]
    out = tmp_path / "bench"
    argv = ["benchmark", str(checkpoint["data"]), *own, *names, "--methods", "gradcam"]
    assert main([*argv, "--steps", "4", "--out", str(out), "--no-reference"]) == 0
    rows_file = out / "finetuned" / "rows.jsonl"
    labels = [json.loads(line)["label"] for line in rows_file.read_text().splitlines()]
    assert labels == [0, 0, 1, 1]  # ant/, bee/
    # two models and one checkpoint: said on one line
    argv = [*argv, "--model", "test_resnet", "test_vit", "--weights", str(checkpoint["pth"])]
    assert main([*argv, "--out", str(tmp_path / "b2")]) == 2
    assert "describe one model" in capsys.readouterr().err


def test_explain_the_prediction_instead_of_the_label(checkpoint, tmp_path, capsys):
    own = ["--model", "test_resnet", "--weights", str(checkpoint["pth"])]
    out = ["--out", str(tmp_path / "ev"), "--steps", "4"]
    argv = ["evaluate", str(checkpoint["data"]), *own, *out]
    # folders named by class need the names: the error says how to give them
    assert main(argv) == 2
    assert "--class-names FILE|a,b,c on the command line" in capsys.readouterr().err
    argv += ["--class-names", str(checkpoint["names"])]
    assert main([*argv, "--explain-prediction"]) == 0
    assert "4 of 4 images labelled; every image explained for its prediction" in (
        capsys.readouterr().out
    )
    rows = [json.loads(line) for line in (tmp_path / "ev" / "rows.jsonl").read_text().splitlines()]
    assert [row["label"] for row in rows] == [0, 0, 1, 1]
    assert all(row["target"] == row["predicted"] for row in rows)
    # the other choice is another run: refused, not mixed
    assert main(argv) == 2
    assert "explained class: prediction vs label" in capsys.readouterr().err


# ------------------------------------------------------------ the quick profile
def test_quick_profile_options_and_marks(checkpoint, tmp_path, capsys):
    from timmlens.evaluation.profiles import QUICK_NOTE, profile_options, quick_hint
    from timmlens.interpretation.registry import resolve_method

    methods, metrics = profile_options("quick", ["ig", "gradcam"], {"ig": {"n_steps": 8}}, {})
    assert metrics == {"steps": 16}
    assert methods["ig"] == {**resolve_method("ig").quick_options, "n_steps": 8}  # yours win
    assert profile_options("full", ["ig"], None, None) == ({}, {})
    with pytest.raises(ValueError, match="profile must be one of full, quick"):
        profile_options("fast", [], None, None)
    assert "try --quick" in quick_hint(9_021, {}) and quick_hint(9_021, {"steps": 8}) == ""
    assert quick_hint(100, {}) == ""

    own = ["--model", "test_resnet", "--weights", str(checkpoint["pth"])]
    names = ["--class-names", ",".join(NAMES)]
    data = str(checkpoint["data"])
    assert main(["evaluate", data, *own, *names, "--quick", "--out", str(tmp_path / "e")]) == 0
    assert QUICK_NOTE in capsys.readouterr().out
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["note"] == QUICK_NOTE and summary["profile"] == "quick"
    assert summary["run"]["metric_options"]["steps"] == 16
    argv = ["benchmark", data, *own, *names, "--methods", "gradcam", "--quick"]
    assert main([*argv, "--out", str(tmp_path / "b"), "--no-reference"]) == 0
    board = (tmp_path / "b" / "leaderboard.md").read_text()
    assert board.startswith("# Leaderboard\n\n**Quick profile (16 insertion/deletion steps")


# ------------------------------------------------------------ results fit for a paper
def test_leaderboard_paired_differences_clipped_intervals_and_exports(tmp_path):
    from timmlens.evaluation.leaderboard import build_leaderboard
    from timmlens.evaluation.paired import paired_difference

    rng = np.random.default_rng(0)
    base = rng.uniform(0.80, 1.0, 40)
    scores = {
        "gradcampp": base,
        "gradcam": base - rng.normal(0, 0.002, 40),  # the same up to noise
        "ig": base - 0.3,  # clearly worse
        "randomcam": rng.uniform(0.0, 0.5, 40),
    }
    rows = {
        "m": [
            {"id": f"{i}.png", "method": name, "label": 0, "insertion": float(values[i])}
            for name, values in scores.items()
            for i in range(40)
        ]
    }
    board = build_leaderboard(rows, list(scores), ["insertion"], reference=["randomcam"])
    assert board.best in ("gradcampp", "gradcam")
    other = "gradcam" if board.best == "gradcampp" else "gradcampp"
    assert other in board.tied_with_best and "ig" not in board.tied_with_best
    versus = board.versus("insertion")
    assert versus["ig"][board.best] == paired_difference(scores["ig"], scores[board.best])
    assert versus["ig"]["randomcam"].distinguishable
    text = board.markdown()
    assert f"`{other}` ≈ best" in text and "### Paired differences" in text
    # an interval that would pass 1.0 is clipped to the AUC's range
    wide = {"m": [{"id": str(i), "method": "x", "insertion": v} for i, v in enumerate([1, 1, 0.5])]}
    assert "[" in build_leaderboard(wide, ["x"], ["insertion"], reference=[]).markdown()
    assert "1.000]" in build_leaderboard(wide, ["x"], ["insertion"], reference=[]).markdown()
    # and a percentage below 0: Increase in Confidence is a share of images, in [0, 100]
    rare = [
        {"id": str(i), "method": "x", "increase_in_confidence": 100.0 * (i == 0)} for i in range(4)
    ]
    text = build_leaderboard(
        {"m": rare}, ["x"], ["increase_in_confidence"], reference=[]
    ).markdown()
    assert "25.000 [0.000, " in text
    board.write(tmp_path, plot=False)
    csv_lines = (tmp_path / "leaderboard_rows.csv").read_text().splitlines()
    assert csv_lines[0] == (
        "model,id,method,label,predicted,target,label_name,predicted_name,target_name,insertion"
    )
    assert len(csv_lines) == 1 + 4 * 40
    latex = (tmp_path / "leaderboard.tex").read_text()
    assert latex.startswith(r"\begin{tabular}") and r"\toprule" in latex
    assert r"\textit{randomcam}" in latex and r"$\approx$" in latex and r"\textbf{" in latex
    saved = json.loads((tmp_path / "leaderboard.json").read_text())
    assert saved["best"] == board.best and "ig" in saved["paired"]["insertion"]


# ------------------------------------------------------------ a reference that covers everything
def test_methods_and_metrics_commands_list_every_entry_with_options(capsys):
    from timmlens.interpretation.metrics.registry import metrics as metric_names
    from timmlens.interpretation.registry import methods

    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert all(f"\n{name} (" in f"\n{listing}" for name in methods())
    assert "ig (input): " in listing and "n_steps=50" in listing
    assert "--quick uses: n_steps=4" in listing and "--method-option NAME=VALUE" in listing
    assert main(["methods", "--kind", "cam"]) == 0
    assert "ig (input)" not in capsys.readouterr().out
    assert main(["metrics"]) == 0
    listing = capsys.readouterr().out
    assert all(f"\n{name} (" in f"\n{listing}" for name in metric_names())
    assert "deletion (lower is better; needs heatmap)" in listing and "blur_sigma=5.0" in listing


def test_method_options_from_the_command_line(checkpoint, tmp_path, capsys, monkeypatch):
    from timmlens.cli.listings import parse_method_options

    assert parse_method_options(["n_steps=8"], ["ig", "gradcam", "smoothgrad"]) == {
        "ig": {"n_steps": 8},
        "smoothgrad": {"n_steps": 8},
    }
    assert parse_method_options(["ig.baseline=0.5", "ig.signed=True"], ["gradcam"]) == {
        "ig": {"baseline": 0.5, "signed": True}
    }
    with pytest.raises(ValueError, match=r"gradcam takes no option 'n_step'; options: "):
        parse_method_options(["n_step=8"], ["gradcam"])
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_method_options(["n_steps"], ["ig"])
    own = ["--model", "test_resnet", "--weights", str(checkpoint["pth"])]
    image = str(checkpoint["data"] / "ant" / "0.png")
    out = ["--out", str(tmp_path / "o")]
    argv = ["explain", image, *own, "--method", "ig", "--method-option", "n_stepz=2", *out]
    assert main(argv) == 2
    assert "ig takes no option 'n_stepz'" in capsys.readouterr().err
    # explain --quick: the registry's quick options, with --method-option on top
    import timmlens.quick
    from timmlens.interpretation.registry import resolve_method

    seen = []
    original = timmlens.quick.quick_explain

    def spy(*args, **kwargs):
        seen.append(kwargs["method_options"])
        return original(*args, **kwargs)

    monkeypatch.setattr(timmlens.quick, "quick_explain", spy)
    argv = ["explain", image, *own, "--method", "smoothgrad", "--quick", *out]
    assert main([*argv, "--method-option", "n_steps=2"]) == 0
    quick = dict(resolve_method("smoothgrad").quick_options)
    assert quick and "n_steps" not in quick  # so the call shows both sources
    assert seen == [{**quick, "n_steps": 2}]
    capsys.readouterr()
    argv = ["evaluate", str(checkpoint["data"]), *own, "--class-names", ",".join(NAMES)]
    argv += ["--methods", "ig", "--method-option", "n_steps=2", "--steps", "4", *out]
    assert main(argv) == 0
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["methods"]["ig"]["options"]["n_steps"] == 2


# ------------------------------------------------------------ pictures for every result
def test_attention_maps_show_a_picture_and_a_short_repr(vit):
    from timmlens.interpretation import AttentionVisualizer

    maps = AttentionVisualizer(vit).get_attention_maps(torch.rand(2, 3, 32, 32))
    text = repr(maps)
    assert text.startswith(f"AttentionMaps({len(maps)} blocks, batch of 2, ")
    assert "tensor(" not in text and "patches)" in text
    assert maps._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


def test_describe_shows_once_in_a_notebook(monkeypatch, capsys):
    import sys
    import types

    from timmlens.adapters import describe

    model = timm.create_model("test_resnet")
    description = describe(model)  # a script: printed
    assert "default CAM layer" in capsys.readouterr().out
    shell = types.SimpleNamespace(get_ipython=lambda: object())
    monkeypatch.setitem(sys.modules, "IPython", shell)
    assert describe(model) == description and capsys.readouterr().out == ""
    printed: list[str] = []
    description._repr_pretty_(types.SimpleNamespace(text=printed.append), False)
    assert printed == [str(description)]  # the notebook shows the table, once


def test_cli_report_reads_the_same_class_name_folders(checkpoint, tmp_path, capsys):
    own = ["--model", "test_resnet", "--weights", str(checkpoint["pth"])]
    out = tmp_path / "rep" / "report.html"
    argv = ["report", str(checkpoint["data"]), *own, "--class-names", str(checkpoint["names"])]
    assert main([*argv, "--out", str(out), "--max-examples", "2"]) == 0
    assert "4 labelled images: " in capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["counts"]["labelled"] == 4 and report["num_classes"] == 5
    # the true classes come from the folders (ant/, bee/), named with --class-names
    assert [row["name"] for row in report["per_class"]] == ["ant", "bee"]
    assert all(pair["true_name"] in NAMES for pair in report["confusion_pairs"])
