"""Dataset-level evaluation: rows, summary, resume, CSV, and torchrun equality."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import TensorDataset

from timmlens.evaluation import evaluate
from timmlens.evaluation.summary import summarise, t_critical_975

SETUP = """
import timm, torch, warnings
from torch.utils.data import TensorDataset
from timmlens.testing import make_explainable

def setup():
    torch.set_num_threads(1)  # torchrun's ranks run one thread each: same float sums
    torch.manual_seed(0)
    model = make_explainable(timm.create_model("test_resnet", num_classes=10), seed=0)
    images = torch.randn(7, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    return model, TensorDataset(images, labels)
"""
OPTIONS = {"metric_options": {"steps": 8}, "progress": False}
exec(SETUP)


def _rows(path):
    return sorted(
        (json.loads(line) for line in path.read_text().splitlines()),
        key=lambda row: (row["id"], row["method"]),
    )


def test_rows_and_summary(tmp_path):
    model, dataset = setup()  # noqa: F821 - defined by exec(SETUP)
    summary = evaluate(
        model,
        dataset,
        methods=["gradcam", "gradcampp"],
        metrics=["insertion", "deletion"],
        out=tmp_path,
        batch_size=3,
        **OPTIONS,
    )
    rows = _rows(tmp_path / "rows.jsonl")
    assert len(rows) == 14 and summary.n_images == 7
    assert {row["method"] for row in rows} == {"gradcam", "gradcampp"}
    assert all(row["target"] == row["label"] == int(row["id"]) for row in rows)
    insertion = [row["insertion"] for row in rows if row["method"] == "gradcam"]
    stat = summary.table["gradcam"]["insertion"]
    assert stat.mean == pytest.approx(np.mean(insertion))
    assert stat.ci95 == pytest.approx(t_critical_975(6) * np.std(insertion, ddof=1) / 7**0.5)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["methods"]["gradcam"]["insertion"]["n"] == 7


def test_resume_skips_rows_already_written(tmp_path):
    model, dataset = setup()  # noqa: F821
    evaluate(model, dataset, out=tmp_path, **OPTIONS)
    # A run stopped after 4 images: its first 4 rows (the resume must be the same run).
    first = "".join((tmp_path / "rows.jsonl").read_text().splitlines(keepends=True)[:4])
    (tmp_path / "rows.jsonl").write_text(first)
    calls = []
    hook = model.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    try:
        evaluate(model, dataset, out=tmp_path, batch_size=8, **OPTIONS)
    finally:
        hook.remove()
    rows = _rows(tmp_path / "rows.jsonl")
    assert (tmp_path / "rows.jsonl").read_text().startswith(first)
    assert [row["id"] for row in rows] == [str(i) for i in range(7)]
    assert calls[0] == 3, "only the 3 images not yet written are run"


def test_image_folder_csv_and_labels(tmp_path):
    model, _ = setup()  # noqa: F821
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "3").mkdir(parents=True)
    for name in ("data/3/a.png", "data/b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    summary = evaluate(model, tmp_path / "data", out=tmp_path / "out", rows_format="csv", **OPTIONS)
    text = (tmp_path / "out" / "rows.csv").read_text().splitlines()
    names = "label_name,predicted_name,target_name"
    assert text[0] == f"id,method,label,predicted,target,{names},insertion,deletion"
    assert text[1].startswith("3/a.png,gradcam,3,") and text[2].startswith("b.png,gradcam,,")
    assert summary.n_images == 2


def test_summary_statistics():
    assert t_critical_975(10) == pytest.approx(2.228, abs=0.005)
    assert t_critical_975(30) == pytest.approx(2.042, abs=0.003)
    stat = summarise([1.0, 2.0, 3.0, float("nan")])
    assert stat.n == 3 and stat.mean == 2.0


def test_bad_arguments(tmp_path):
    model, dataset = setup()  # noqa: F821
    with pytest.raises(ValueError, match="unknown method 'gradcm'"):
        evaluate(model, dataset, methods=["gradcm"], out=tmp_path, **OPTIONS)
    with pytest.raises(ValueError, match="Unknown metric"):
        evaluate(model, dataset, metrics=["accuracy"], out=tmp_path, **OPTIONS)
    with pytest.raises(FileNotFoundError):
        evaluate(model, tmp_path / "missing", out=tmp_path, **OPTIONS)


def test_torchrun_two_ranks_equal_one_process(tmp_path, torchrun):
    script = torchrun(
        SETUP
        + textwrap.dedent("""
        import sys
        from timmlens.evaluation import evaluate
        model, dataset = setup()
        summary = evaluate(model, dataset, methods=["gradcam"],
                           metrics=["insertion", "deletion", "sensitivity"],
                           out=sys.argv[1], batch_size=1, metric_options={"steps": 8},
                           progress=False)
        with open(f"{sys.argv[1]}.rank{this_rank()}", "w") as file:
            file.write(str(summary.n_images))
    """),
        tmp_path / "dist",
    )
    ranks = [(tmp_path / f"dist.rank{rank}").read_text() for rank in range(2)]
    assert ranks == ["7", "7"]
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "single")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    rows = _rows(tmp_path / "dist" / "rows.jsonl")
    assert len(rows) == 7 and all(np.isfinite(row["insertion"]) for row in rows)

    def comparable(rows):  # NaN != NaN: compare their text
        return [{k: repr(v) for k, v in row.items()} for row in rows]

    assert comparable(rows) == comparable(_rows(tmp_path / "single" / "rows.jsonl"))
    dist_summary = json.loads((tmp_path / "dist" / "summary.json").read_text())
    single_summary = json.loads((tmp_path / "single" / "summary.json").read_text())
    dist_summary.pop("rows"), single_summary.pop("rows")
    assert repr(dist_summary) == repr(single_summary)


def test_unlabelled_tensor_dataset_explains_the_predictions(tmp_path):
    model, dataset = setup()  # noqa: F821
    images = dataset.tensors[0][:3]
    summary = evaluate(model, TensorDataset(images), metrics=["deletion"], out=tmp_path, **OPTIONS)
    rows = _rows(tmp_path / "rows.jsonl")
    assert summary.n_images == 3 and [row["label"] for row in rows] == [None] * 3
    predicted = model.eval()(images).argmax(dim=1).tolist()
    assert [row["target"] for row in rows] == predicted
