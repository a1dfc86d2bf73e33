"""The examples run end to end (tiny settings) and label random weights."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "huggingface" / "hf_interpretation.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("hf_interpretation", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_random_weights_models_are_skipped_unless_asked(example, capsys):
    assert example.load("test_resnet", random_weights=False) is None
    assert "pass --random-weights" in capsys.readouterr().out
    loaded = example.load("test_resnet", random_weights=True)
    assert loaded is not None and loaded.note == "random weights"
    # No pretrained tag in the names of an untrained model.
    assert loaded.slug == "test_resnet_random-weights"
    assert loaded.name == "test_resnet"
    assert example.architecture_of("hf-hub:timm/resnet18.a1_in1k") == "resnet18"
    assert example.architecture_of("hf-hub:someone/custom") is None


def test_example_writes_every_kind_of_output(example, tmp_path, capsys, monkeypatch):
    # The smallest settings: this checks the plumbing, not the quality of the numbers.
    monkeypatch.setattr(
        example, "METHOD_OPTIONS", {"ig": {"n_steps": 2}, "smoothgrad": {"n_samples": 2}}
    )
    monkeypatch.setattr(example, "CURVE_STEPS", 4)
    monkeypatch.setattr(example, "SENSITIVITY_SAMPLES", 4)
    out = tmp_path / "demo"
    code = example.main(
        ["--models", "test_vit", "--images", "chelsea", "--out", str(out), "--random-weights"]
    )
    assert code == 0
    slug = "test_vit_random-weights"
    expected = [
        "architectures/chelsea.png",
        f"heatmaps/{slug}.png",
        f"layers/{slug}.png",
        f"quick/{slug}.png",
        f"methods/{slug}.png",
        f"methods/{slug}_curves.png",
        f"attention/{slug}_blocks.png",
        f"attention/{slug}_rollout.png",
        f"interactive/{slug}.html",
        "known_answers/gt-vit.png",
        "metrics.csv",
        "metrics.md",
    ]
    for name in expected:
        assert (out / name).is_file(), name
    with (out / "metrics.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["method"] for row in rows} == {
        "GradCAM",
        "GradCAM++",
        "Integrated Gradients",
        "SmoothGrad",
        "Attention rollout",
    }
    assert all(row["weights"] == "random weights" for row in rows)
    assert "random weights" in (out / "interactive" / f"{slug}.html").read_text(encoding="utf-8")
    printed = capsys.readouterr().out
    assert "metrics.csv" in printed and "| model |" in printed


TRUST = Path(__file__).parents[1] / "examples" / "debugging" / "trust_checks.py"


@pytest.fixture(scope="module")
def trust_example():
    spec = importlib.util.spec_from_file_location("trust_checks", TRUST)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_trust_example_writes_report_layers_and_sanity(trust_example, tmp_path, monkeypatch):
    # Two units and two IG steps: this checks the plumbing, the real run is in the docs.
    monkeypatch.setattr(trust_example, "SANITY_LAYERS", ["head", "backbone.blocks.6"])
    out = tmp_path / "trust"
    code = trust_example.main(["--out", str(out), "--vit", "test_vit", "--ig-steps", "2"])
    assert code == 0
    for name in [
        "report.html",
        "report.json",
        "layers/efficientnet_lite0.png",
        "layers/test_vit_random-weights.png",  # untrained: said in the file name
        "sanity/randomization.txt",
        "sanity/gradcam.png",
        "sanity/ig.png",
    ]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert summary["counts"]["images"] == 12 and summary["counts"]["errors"] > 0
    table = (out / "sanity" / "randomization.txt").read_text(encoding="utf-8")
    assert "backbone.blocks.6" in table and "ig" in table
