"""Class names in every row (issue 30): ``evaluate`` and ``benchmark`` rows (JSONL, CSV,
the leaderboard's per-image CSV, the Python objects, saved maps) name each class they hold
as the model names it, and a folder of an older timmlens (rows without names) resumes."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from PIL import Image

from timmlens import load_explanation, load_model
from timmlens.evaluation import benchmark, evaluate
from timmlens.evaluation import evaluator as evaluator_module
from timmlens.evaluation.summary import FIXED_KEYS, NAME_KEYS, ROW_KEYS, RowStore
from timmlens.groundtruth import CLASS_NAMES, generate

NAMES = list(CLASS_NAMES)
FAST = {"steps": 4}


@pytest.fixture(scope="module")
def gt_model():
    return load_model("bundled:gt-resnet")


@pytest.fixture(scope="module")
def named_folder(tmp_path_factory):
    """6 known-answer images in folders named by class ("red_circle/0.png", ...)."""
    root = tmp_path_factory.mktemp("named")
    images = generate(6, seed=3)
    for index, (pixels, label) in enumerate(zip(images.images, images.labels, strict=True)):
        folder = root / NAMES[label].replace(" ", "_")
        folder.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return root, [NAMES[label] for label in images.labels]


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_named(rows, names):
    for row in rows:
        folder = row["id"].split("/")[0].replace("_", " ")
        assert row["label_name"] == folder == names[row["label"]]
        assert row["target_name"] == names[row["target"]] == folder  # the true class
        assert row["predicted_name"] == names[row["predicted"]]


@pytest.fixture(scope="module")
def runs(gt_model, named_folder, tmp_path_factory):
    """One evaluate run per rows format over the named folder (the JSONL one keeps maps)."""
    data, _ = named_folder
    out = tmp_path_factory.mktemp("runs")
    return {
        fmt: evaluate(
            gt_model,
            data,
            out=out / fmt,
            rows_format=fmt,
            metric_options=FAST,
            progress=False,
            save_maps=fmt == "jsonl",
        )
        for fmt in ("jsonl", "csv")
    }


def _read_csv(path):
    with path.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    for row in table:
        for key in ROW_KEYS[2:]:
            row[key] = int(row[key]) if row[key] else None
    return table


@pytest.mark.parametrize("rows_format", ["jsonl", "csv"])
def test_evaluate_rows_name_every_class(runs, rows_format):
    summary = runs[rows_format]
    if rows_format == "jsonl":
        rows = _jsonl(summary.rows_path)
        assert list(rows[0])[: len(FIXED_KEYS)] == list(FIXED_KEYS)
    else:
        rows = _read_csv(summary.rows_path)
        assert list(rows[0]) == [*FIXED_KEYS, "insertion", "deletion"]
    assert len(rows) == 6
    _check_named(rows, NAMES)
    # the rows the store reads back (what benchmark and a resume use) hold the names too
    _check_named(RowStore(summary.rows_path, []).read(), NAMES)


def test_benchmark_rows_csv_and_objects_name_every_class(gt_model, named_folder, tmp_path):
    data, _ = named_folder
    board = benchmark(
        {"gt": gt_model},
        data,
        methods=["gradcam"],
        out=tmp_path,
        steps=4,
        progress=False,
        plot=False,
        reference=False,
    )
    _check_named(board.image_rows["gt"], NAMES)
    table = _read_csv(board.paths["rows_csv"])
    assert list(table[0])[:9] == ["model", *FIXED_KEYS]
    _check_named(table, NAMES)


def test_a_model_without_names_falls_back_to_the_index_as_text(tmp_path):
    torch.manual_seed(0)
    model = load_model("test_resnet", num_classes=5)
    data = tmp_path / "data"
    for folder in ("3", "1"):
        (data / folder).mkdir(parents=True)
        Image.new("RGB", (40, 40), "white").save(data / folder / "a.png")
    Image.new("RGB", (40, 40), "black").save(data / "loose.png")  # no label
    summary = evaluate(model, data, out=tmp_path / "ev", metric_options=FAST, progress=False)
    by_id = {row["id"]: row for row in _jsonl(summary.rows_path)}
    assert by_id["3/a.png"]["label_name"] == by_id["3/a.png"]["target_name"] == "class 3"
    assert by_id["1/a.png"]["label_name"] == "class 1"
    assert by_id["loose.png"]["label"] is None and by_id["loose.png"]["label_name"] is None
    predicted = by_id["loose.png"]["predicted"]
    assert by_id["loose.png"]["predicted_name"] == f"class {predicted}"
    assert by_id["loose.png"]["target_name"] == f"class {predicted}"


def _strip_names(path, rows_format):
    """Rewrite a rows file as an older timmlens wrote it: no name columns."""
    if rows_format == "jsonl":
        rows = _jsonl(path)
        lines = [{k: v for k, v in row.items() if k not in NAME_KEYS.values()} for row in rows]
        path.write_text("".join(json.dumps(row) + "\n" for row in lines))
        return
    with path.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    columns = [k for k in table[0] if k not in NAME_KEYS.values()]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)


@pytest.mark.parametrize("rows_format", ["jsonl", "csv"])
def test_an_older_rows_file_without_names_resumes_and_gets_them(
    gt_model, named_folder, runs, tmp_path, monkeypatch, rows_format
):
    data, _ = named_folder
    first = runs[rows_format]
    out = tmp_path / "old"
    shutil.copytree(first.rows_path.parent, out)
    rows_path = out / first.rows_path.name
    _strip_names(rows_path, rows_format)
    assert "label_name" not in rows_path.read_text()

    def no_work(*args, **kwargs):
        raise AssertionError("resumed rows were computed again")

    options = {"rows_format": rows_format, "metric_options": FAST, "progress": False}
    with monkeypatch.context() as patch:
        patch.setattr(evaluator_module, "_run_batch", no_work)
        again = evaluate(gt_model, data, out=out, **options)  # every row done: resumed
    assert again.table == first.table
    rows = RowStore(rows_path, []).read()
    assert len(rows) == 6
    _check_named(rows, NAMES)
    if rows_format == "csv":
        # a metric added on an old CSV: its header widens and the names come with it
        _strip_names(rows_path, rows_format)
        metrics = ["insertion", "deletion", "sensitivity"]
        wider = evaluate(gt_model, data, out=out, metrics=metrics, **options)
        rows = _read_csv(wider.rows_path)
        assert list(rows[0]) == [*FIXED_KEYS, *metrics] and len(rows) == 6
        _check_named(rows, NAMES)


def test_names_follow_the_models_names_on_resume(tmp_path):
    """Names given on a resume (--class-names added) rename the rows already there."""
    torch.manual_seed(0)
    plain = load_model("test_resnet", num_classes=5)
    data = tmp_path / "data"
    (data / "2").mkdir(parents=True)
    Image.new("RGB", (40, 40), "white").save(data / "2" / "a.png")
    evaluate(plain, data, out=tmp_path / "ev", metric_options=FAST, progress=False)
    plain.class_names = ["ant", "bee", "cat", "dog", "eel"]
    summary = evaluate(plain, data, out=tmp_path / "ev", metric_options=FAST, progress=False)
    (row,) = _jsonl(summary.rows_path)
    assert row["label_name"] == "cat" and row["predicted_name"] in plain.class_names


def test_saved_maps_name_their_classes(runs):
    summary = runs["jsonl"]
    row = _jsonl(summary.rows_path)[0]
    saved = load_explanation(summary.rows_path.parent / "maps" / "gradcam" / f"{row['id']}.npz")
    assert saved.target_name == row["target_name"] == saved.metadata["label_name"]
    assert saved.metadata["predicted_name"] == row["predicted_name"]
