"""evaluate / ``timmlens evaluate``: run identity on resume, crash-safe rows, clean stops."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timmlens import errors
from timmlens.cli import main
from timmlens.evaluation import evaluate
from timmlens.testing import make_explainable

STEPS = {"steps": 4}
QUIET = {"progress": False}


def _model(seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_explainable(timm.create_model("test_resnet", num_classes=10, **kwargs), seed=seed)


def _folder(root, count: int = 4):
    """``count`` small random PNGs, the first two in class folder ``3``."""
    rng = np.random.default_rng(0)
    (root / "3").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"3/img{i}.png" if i < 2 else f"img{i}.png"
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name)
    return root


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _jsonl(path) -> list[dict]:
    return [_strict_json(line) for line in path.read_text().splitlines()]


def _run(model, data, out, **kwargs):
    kwargs = {"metric_options": STEPS, **QUIET, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant-heatmap warnings of the random model
        return evaluate(model, data, out=out, **kwargs)


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        ("model", r"model differs: ResNet \(sha256 \w{12}\) vs ResNet \(sha256 \w{12}\)"),
        ("steps", "metric option steps: 4 vs 6"),
        ("method options", "method gradcam option relu: True vs False"),
        ("data", "image list differs: 4 vs 5 images"),
    ],
)
def test_resume_of_another_run_stops_and_names_the_difference(tmp_path, change, difference):
    model, data, out = _model(), _folder(tmp_path / "data"), tmp_path / "out"
    _run(model, data, out)
    rows_before = (out / "rows.jsonl").read_text()
    second = {}
    if change == "model":
        model = _model(seed=1)
    elif change == "steps":
        second["metric_options"] = {"steps": 6}
    elif change == "method options":
        second["method_options"] = {"gradcam": {"relu": False}}
    else:
        _folder(data, count=5)
    with pytest.raises(errors.RunMismatchError, match=difference) as caught:
        _run(model, data, out, **second)
    message = str(caught.value)
    assert "\n" not in message and "--overwrite" in message and "--out" in message
    assert (out / "rows.jsonl").read_text() == rows_before, "the earlier rows are untouched"

    summary = _run(model, data, out, overwrite=True, **second)
    assert summary.table["gradcam"]["insertion"].n == (5 if change == "data" else 4)
    assert summary.identity == _strict_json((out / "run.json").read_text())


def test_same_run_resumes_and_a_different_batch_size_is_the_same_run(tmp_path):
    model, data, out = _model(), _folder(tmp_path / "data"), tmp_path / "out"
    _run(model, data, out, batch_size=4)
    summary = _run(model, data, out, batch_size=3, metric_options={**STEPS, "max_batch": 2})
    assert summary.table["gradcam"]["insertion"].n == 4
    assert len(_jsonl(out / "rows.jsonl")) == 4


@pytest.mark.parametrize("rows_format", ["jsonl", "csv"])
def test_metric_added_on_resume_is_computed_for_the_old_rows(tmp_path, rows_format):
    model, data, out = _model(), _folder(tmp_path / "data"), tmp_path / "out"
    first = _run(model, data, out, metrics=["insertion"], rows_format=rows_format)
    summary = _run(model, data, out, metrics=["insertion", "deletion"], rows_format=rows_format)
    for metric in ("insertion", "deletion"):
        stat = summary.table["gradcam"][metric]
        assert stat.n == 4 and np.isfinite(stat.mean) and np.isfinite(stat.ci95)
    assert summary.table["gradcam"]["insertion"].mean == pytest.approx(
        first.table["gradcam"]["insertion"].mean
    )
    path = out / f"rows.{rows_format}"
    if rows_format == "csv":
        with path.open(newline="") as handle:
            table = list(csv.reader(handle))
        names = ["label_name", "predicted_name", "target_name"]
        head = ["id", "method", "label", "predicted", "target", *names, "insertion", "deletion"]
        assert table[0] == head
        assert len(table) == 5 and all(len(line) == 10 for line in table)
    else:
        rows = _jsonl(path)
        assert len(rows) == 4 and all({"insertion", "deletion"} <= set(row) for row in rows)


@pytest.mark.parametrize("rows_format", ["jsonl", "csv"])
@pytest.mark.parametrize("cut", ["mid-line", "newline only"])
def test_a_last_line_cut_by_a_kill_is_dropped_with_a_warning(tmp_path, rows_format, cut):
    model, data, out = _model(), _folder(tmp_path / "data"), tmp_path / "out"
    _run(model, data, out, rows_format=rows_format)
    path = out / f"rows.{rows_format}"
    data_bytes = path.read_bytes()
    path.write_bytes(data_bytes[:-12] if cut == "mid-line" else data_bytes[:-1])
    line = 5 if rows_format == "csv" else 4  # the CSV header is line 1
    with pytest.warns(RuntimeWarning, match=rf"rows\.{rows_format}:{line}: the last line is"):
        summary = evaluate(
            model, data, out=out, rows_format=rows_format, metric_options=STEPS, **QUIET
        )
    assert summary.table["gradcam"]["insertion"].n == 4
    assert path.read_bytes().endswith(b"\n")
    if rows_format == "jsonl":
        assert len(_jsonl(path)) == 4
    else:
        with path.open(newline="") as handle:
            table = list(csv.reader(handle))
        assert len(table) == 5 and all(len(line) == 10 for line in table)
    # and the file stays good for the next resume
    assert _run(model, data, out, rows_format=rows_format).table["gradcam"]["deletion"].n == 4


def test_summary_json_is_strict_and_records_the_run(tmp_path):
    model, data, out = _model(), _folder(tmp_path / "data", count=1), tmp_path / "out"
    summary = _run(model, data, out)
    assert np.isnan(summary.table["gradcam"]["insertion"].ci95)  # one image: no interval
    written = _strict_json((out / "summary.json").read_text())
    assert written["methods"]["gradcam"]["insertion"]["ci95"] is None
    assert written["run"]["model"]["sha256"] == summary.identity["model"]["sha256"]
    assert written["run"]["metric_options"]["steps"] == 4
    assert "run: model ResNet (sha256 " in str(summary)


def test_unreadable_image_is_skipped_and_counted_or_fails_on_request(tmp_path):
    model, data, out = _model(), _folder(tmp_path / "data"), tmp_path / "out"
    (data / "3" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(RuntimeWarning, match=r"skipped image '3/broken\.png': .*broken\.png"):
        summary = evaluate(model, data, out=out, metric_options=STEPS, **QUIET)
    assert summary.n_images == 4 and list(summary.skipped) == ["3/broken.png"]
    written = _strict_json((out / "summary.json").read_text())
    assert written["skipped"] == 1 and written["skipped_images"][0]["id"] == "3/broken.png"
    assert "skipped 1 unreadable image(s): 3/broken.png" in str(summary)

    with pytest.raises(
        errors.ImageInputError, match=r"image '3/broken\.png' cannot be read.*on-error"
    ):
        _run(model, data, tmp_path / "out2", on_error="fail")


def test_a_model_in_train_mode_predicts_in_eval_mode(tmp_path):
    model = _model(drop_rate=0.5)
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.eval()(images).argmax(dim=1).tolist()
    model.train()
    dataset = torch.utils.data.TensorDataset(images, torch.arange(6))
    _run(model, dataset, tmp_path, batch_size=6)
    rows = sorted(_jsonl(tmp_path / "rows.jsonl"), key=lambda row: int(row["id"]))
    assert [row["predicted"] for row in rows] == expected
    assert model.training, "the model's mode is left as it was"


def _cli(tmp_path, *extra):
    _folder(tmp_path / "data")
    torch.manual_seed(0)  # test_resnet without weights is drawn at random: the same draw
    argv = ["evaluate", str(tmp_path / "data"), "--model", "test_resnet", "--steps", "4"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return main([*argv, "--out", str(tmp_path / "out"), *extra])
        except KeyboardInterrupt:  # escaping main would stop pytest itself
            return "KeyboardInterrupt escaped main()"


def test_cli_ctrl_c_exits_130_with_one_line_and_keeps_rows(tmp_path, monkeypatch, capsys):
    from timmlens.evaluation import evaluator

    real = evaluator._rows_for_batch
    calls = []

    def interrupted_after_first_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluator, "_rows_for_batch", interrupted_after_first_batch)
    assert _cli(tmp_path, "--batch-size", "2") == 130
    err = capsys.readouterr().err.strip().splitlines()
    rows = tmp_path / "out" / "rows.jsonl"
    assert err[-1] == (
        f"timmlens evaluate: interrupted; 2 rows kept in {rows}, rerun the same command to resume"
    )
    assert len(_jsonl(rows)) == 2

    monkeypatch.setattr(evaluator, "_rows_for_batch", real)
    assert _cli(tmp_path, "--batch-size", "2") == 0
    assert len(_jsonl(rows)) == 4
    assert "4 images" in capsys.readouterr().out


def test_cli_resume_of_another_run_is_one_line_with_status_2(tmp_path, capsys):
    assert _cli(tmp_path) == 0
    capsys.readouterr()
    assert _cli(tmp_path, "--metrics", "deletion", "--steps", "6") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # the random-weights warning of test_resnet is a line of its own; the error is one line
    err = [line for line in lines if not line.startswith("timmlens evaluate: warning: ")]
    assert len(err) == 1 and err[0].startswith("timmlens evaluate: error: ")
    assert "metric option steps: 4 vs 6" in err[0] and "--overwrite" in err[0]
    assert _cli(tmp_path, "--steps", "6", "--overwrite") == 0


def test_explainer_instances_with_other_settings_are_another_run(tmp_path):
    from timmlens.interpretation import GradCAM

    model, data = _model(), _folder(tmp_path / "data")
    _run(model, data, tmp_path / "out", methods=[GradCAM(model, target_layer="layer4")])
    again = _run(model, data, tmp_path / "out", methods=[GradCAM(model, target_layer="layer4")])
    assert again.n_images == 4  # the same settings resume
    with pytest.raises(errors.RunMismatchError, match=r"method gradcam option layer_names"):
        _run(model, data, tmp_path / "out", methods=[GradCAM(model, target_layer="layer3")])


def test_resume_runs_only_the_methods_that_are_missing(tmp_path):
    model, data = _model(), _folder(tmp_path / "data")
    _run(model, data, tmp_path, methods=["gradcam"])
    from timmlens.interpretation import GradCAM, GradCAMPlusPlus

    calls = {"gradcam": 0, "gradcampp": 0}
    originals = {cls: cls.explain_batch for cls in (GradCAM, GradCAMPlusPlus)}

    def counting(cls, name):
        def explain_batch(self, *args, **kwargs):
            calls[name] += 1
            return originals[cls](self, *args, **kwargs)

        return explain_batch

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GradCAM, "explain_batch", counting(GradCAM, "gradcam"))
        patch.setattr(GradCAMPlusPlus, "explain_batch", counting(GradCAMPlusPlus, "gradcampp"))
        summary = _run(model, data, tmp_path, methods=["gradcam", "gradcampp"])
    assert calls == {"gradcam": 0, "gradcampp": 1}
    assert summary.table["gradcampp"]["insertion"].n == 4


class _BrokenItems(torch.utils.data.Dataset):
    """Items 1 and 2 fail the way PIL and torchvision fail on damaged files."""

    def __init__(self) -> None:
        self.images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        if index == 1:
            from PIL import Image

            raise Image.DecompressionBombError("Image size (2e9 pixels) exceeds limit")
        if index == 2:
            raise RuntimeError("Invalid data found when processing input")
        return self.images[index], index


def test_dataset_items_that_fail_to_decode_are_skipped(tmp_path):
    with pytest.warns(RuntimeWarning, match="skipped image"):
        summary = evaluate(_model(), _BrokenItems(), out=tmp_path, metric_options=STEPS, **QUIET)
    assert summary.n_images == 2 and sorted(summary.skipped) == ["1", "2"]


def test_csv_cut_after_its_header_widens_on_resume(tmp_path):
    model, data = _model(), _folder(tmp_path / "data")
    _run(model, data, tmp_path, rows_format="csv", metrics=["insertion"])
    path = tmp_path / "rows.csv"
    header, first, *_ = path.read_text().splitlines(keepends=True)
    path.write_text(header + first[:10])  # killed while writing the first row
    with pytest.warns(RuntimeWarning, match=r"rows\.csv:2"):
        evaluate(
            model,
            data,
            out=tmp_path,
            rows_format="csv",
            metrics=["insertion", "deletion"],
            metric_options=STEPS,
            **QUIET,
        )
    lines = path.read_text().splitlines()
    assert lines[0].split(",")[-2:] == ["insertion", "deletion"]
    assert {len(line.split(",")) for line in lines} == {len(lines[0].split(","))}
    again = _run(model, data, tmp_path, rows_format="csv", metrics=["insertion", "deletion"])
    assert again.table["gradcam"]["deletion"].n == 4


# ----------------------------------------------------------------- issue 26: runs
def _unreadable_only(root):
    """A folder whose one image is no image."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "broken.png").write_bytes(b"not a png")
    return root


def test_a_folder_with_no_readable_image_is_an_error_naming_it_and_its_files(tmp_path):
    data = _unreadable_only(tmp_path / "data")
    with (
        pytest.warns(RuntimeWarning, match="skipped image 'broken.png'"),
        pytest.raises(errors.ImageInputError) as caught,
    ):
        evaluate(_model(), data, out=tmp_path / "out", metric_options=STEPS, **QUIET)
    message = str(caught.value)
    assert message.startswith(f"no image of '{data}' could be read: 1 of 1 skipped (broken.png: ")
    assert "\n" not in message and "fix or remove" in message
    assert not (tmp_path / "out" / "summary.json").exists(), "no empty leaderboard or summary"


def test_benchmark_on_a_folder_with_no_readable_image_is_an_error(tmp_path):
    import timmlens

    data = _unreadable_only(tmp_path / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(errors.ImageInputError, match=r"no image of '.*data' could be read"):
            timmlens.benchmark(
                {"a": _model()}, data, methods=["gradcam"], out=tmp_path / "b", progress=False
            )
    assert not (tmp_path / "b" / "leaderboard.md").exists()


@pytest.mark.parametrize("command", ["evaluate", "benchmark", "concepts", "report"])
def test_cli_no_readable_image_exits_2_in_every_command(tmp_path, capsys, command):
    data = tmp_path / "data"
    _unreadable_only(data / "3")  # in a class folder: report reads labelled images only
    argv = [command, str(data), "--model", "test_resnet", "--out", str(tmp_path / "out")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 2
    errors_ = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors_) == 1 and errors_[0].startswith(f"timmlens {command}: error: ")
    expected = {  # report stops at the first unreadable image; concepts says it its own way
        "evaluate": f"no image of '{data}' could be read: 1 of 1 skipped (3/broken.png: ",
        "benchmark": f"no image of '{data}' could be read: 1 of 1 skipped (3/broken.png: ",
        "concepts": "no image of the dataset could be read",
        "report": "broken.png",
    }
    assert expected[command] in errors_[0]


def test_jsonl_and_csv_runs_in_one_folder_are_refused(tmp_path):
    model, data, out = _model(), _folder(tmp_path / "data"), tmp_path / "out"
    _run(model, data, out)
    summary = (out / "summary.json").read_text()
    with pytest.raises(errors.RunMismatchError) as caught:
        _run(model, data, out, rows_format="csv")
    assert str(caught.value) == (
        f"'{out}' holds the rows of a jsonl run (rows.jsonl); this run writes csv and its "
        f"summary.json would replace that run's: resume it with --format jsonl "
        f"(rows_format='jsonl'), use a new output folder (--out), or --overwrite "
        f"(overwrite=True) to discard its rows."
    )
    assert (out / "summary.json").read_text() == summary and not (out / "rows.csv").exists()
    again = _run(model, data, out, rows_format="csv", overwrite=True)
    assert again.rows_path == out / "rows.csv" and not (out / "rows.jsonl").exists()


def test_cli_random_weights_model_by_spec_resumes(tmp_path, capsys):
    """``--model test_resnet`` draws its random weights from a fixed seed: a rerun (another
    process, here the same one after drawing other random numbers) resumes its rows."""
    _folder(tmp_path / "data")
    argv = ["evaluate", str(tmp_path / "data"), "--model", "test_resnet", "--steps", "4"]
    argv += ["--out", str(tmp_path / "out")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(1)
        assert main(argv) == 0
        state = torch.get_rng_state()
        assert main(argv) == 0, capsys.readouterr().err
        assert torch.equal(torch.get_rng_state(), state), "the caller's random state is kept"
    assert len(_jsonl(tmp_path / "out" / "rows.jsonl")) == 4


def test_random_weights_that_differ_say_why(tmp_path):
    from timmlens.models import load_model

    data, out = _folder(tmp_path / "data"), tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        first = load_model("test_resnet")
        torch.manual_seed(1)
        second = load_model("test_resnet")
    _run(first, data, out)
    with pytest.raises(errors.RunMismatchError) as caught:
        _run(second, data, out)
    message = str(caught.value)
    assert message.startswith(
        f"'{out}' holds rows of another run: the model's weights differ: test_resnet has "
        f"random weights (no trained weights were loaded), drawn anew when it was created "
        f"(sha256 "
    )
    assert "load_model_seeded('test_resnet')" in message and "--overwrite" in message
    assert "\n" not in message
    # seeded, the same spec is the same model in every load: the run resumes
    from timmlens.evaluation import load_model_seeded

    out2 = tmp_path / "seeded"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _run(load_model_seeded("test_resnet"), data, out2)
        again = _run(load_model_seeded("test_resnet"), data, out2)
    assert again.table["gradcam"]["insertion"].n == 4
