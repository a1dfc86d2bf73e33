"""Long runs tell the user where they are: the forwards a run costs, progress per chunk,
``--device``."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import timmlens.evaluation.evaluator as evaluator_module
from timmlens.cli import main
from timmlens.devices import resolve_device
from timmlens.errors import DeviceError
from timmlens.evaluation import evaluate
from timmlens.evaluation.cost import ForwardCounter
from timmlens.interpretation.input.center_prior import CenterPrior, center_gaussian
from timmlens.testing import explainable_model

METRIC_OPTIONS = {"steps": 4, "n_samples": 3}


@pytest.fixture(scope="module")
def model():
    # timm's test ResNet fed 64 px images (its data config says 160): fast forwards
    small = {"input_size": (3, 64, 64)}
    return explainable_model("test_resnet", num_classes=10, pretrained_cfg_overlay=small)


def _dataset(n: int = 5) -> TensorDataset:
    images = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return TensorDataset(images, torch.arange(n))


class _Recorder:
    """Counts what reaches the model with a plain forward hook: calls and images."""

    def __init__(self, model):
        self.calls, self.images = 0, 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, _module, args, _output):
        self.calls += 1
        self.images += args[0].shape[0]


def _announced(stderr: str) -> int:
    match = re.search(r"evaluate: .*?: ([\d,]+) forwards", stderr)
    assert match, stderr
    return int(match.group(1).replace(",", ""))


def _run(model, tmp_path, capsys, methods, metrics, **kwargs):
    recorder = _Recorder(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate(
                model,
                _dataset(),
                methods=methods,
                metrics=metrics,
                out=tmp_path,
                batch_size=2,
                metric_options=METRIC_OPTIONS,
                **kwargs,
            )
    finally:
        recorder.handle.remove()
    return recorder, capsys.readouterr().err


def test_the_announced_forwards_are_the_forwards_made(model, tmp_path, capsys):
    methods = ["gradcam", "randomcam", "centerprior"]
    metrics = ["insertion", "deletion", "sensitivity"]
    recorder, err = _run(model, tmp_path, capsys, methods, metrics)
    # 5 predictions + 1 memory probe + 5 x (gradcam 1 + randomcam 1 + centerprior 0)
    # + 5 x 3 methods x (insertion 5 + deletion 5 + sensitivity (3 subsets + 1 original))
    assert _announced(err) == recorder.images == 5 + 1 + 10 + 15 * 14
    assert "5 images x 3 methods x 3 metrics: 226 forwards" in err
    # a resumed run has nothing left to do, and says so
    recorder, err = _run(model, tmp_path, capsys, methods, metrics)
    assert _announced(err) == recorder.images == 0


def test_progress_advances_per_chunk_to_its_total(model, tmp_path, capsys, monkeypatch):
    bars = []

    class RecordingBar(evaluator_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.steps: list[int] = []
            bars.append(self)

        def update(self, n=1):
            self.steps.append(n)
            return super().update(n)

    monkeypatch.setattr(evaluator_module, "tqdm", RecordingBar)
    recorder, _ = _run(model, tmp_path, capsys, ["gradcam"], ["insertion", "deletion"])
    (bar,) = bars
    assert bar.total == sum(bar.steps) == recorder.images == 5 + 1 + 5 + 5 * 10
    # one update per forward call (each chunk), far more than the 3 batches of images
    assert len(bar.steps) == recorder.calls > 3
    assert bar.unit == "fwd" and bar.format_dict["total"] == bar.total  # tqdm's ETA has a total


def test_an_unknown_cost_is_measured_on_the_first_batch(model, tmp_path, capsys, monkeypatch):
    bars = []

    class RecordingBar(evaluator_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.first_total = self.total
            bars.append(self)

    monkeypatch.setattr(evaluator_module, "tqdm", RecordingBar)
    monkeypatch.setattr(CenterPrior, "forwards_per_image", None)  # as if not known
    recorder, err = _run(model, tmp_path, capsys, ["centerprior"], ["deletion"])
    assert "plus centerprior (explain): measured on the first batch" in err
    # measured 0 forwards per image: the total stays what the run makes
    assert bars[0].first_total == bars[0].total == recorder.images == 5 + 1 + 5 * 5


def test_forward_counter_leaves_no_hook(model):
    before = len(model._forward_hooks)
    with ForwardCounter(model) as counter:
        model(torch.zeros(3, 3, 32, 32))
        assert len(model._forward_hooks) == before + 1
    assert (counter.images, counter.calls) == (3, 1) and len(model._forward_hooks) == before


def test_center_prior_is_the_gaussian_and_costs_no_forward(model):
    recorder = _Recorder(model)
    try:
        maps = CenterPrior(model, sigma=0.25).explain_batch(torch.randn(2, 3, 40, 30), [1, 2])
    finally:
        recorder.handle.remove()
    ys, xs = np.meshgrid(np.arange(40) - 19.5, np.arange(30) - 14.5, indexing="ij")
    gauss = np.exp(-(ys**2) / (2 * 10.0**2) - xs**2 / (2 * 7.5**2))
    expected = (gauss - gauss.min()) / (gauss.max() - gauss.min())
    assert recorder.images == 0
    np.testing.assert_allclose(maps[0].numpy(), expected, atol=1e-6)
    assert torch.equal(maps[0], maps[1])
    # 4 x 4 with sigma = 1 pixel: the four centre pixels sit half a pixel off in y and x
    peak = center_gaussian(4, 4, 0.25, torch.device("cpu")).max().item()
    assert peak == pytest.approx(np.exp(-0.25), abs=1e-6)
    with pytest.raises(ValueError, match="sigma must be a positive number, got 0"):
        CenterPrior(model, sigma=0)


# ------------------------------------------------------------------ --device
def test_resolve_device():
    assert resolve_device(None) is None
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"'gpu0' is not a device; expected cpu, cuda"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(DeviceError, match=r"device 'cuda' is not available on this machine"):
        resolve_device("cuda")


def _folder(tmp_path, photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee"):
        Image.fromarray(photos[name][::8, ::8]).save(folder / f"{name}.png")
    return folder


def test_cli_evaluate_device_cpu_works_and_cuda_is_refused(tmp_path, photos, capsys):
    folder = _folder(tmp_path, photos)
    argv = ["evaluate", str(folder), "--model", "test_resnet", "--steps", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, constant maps
        assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    captured = capsys.readouterr()
    assert "2 images x 1 method x 2 metrics: " in captured.err
    assert (tmp_path / "cpu" / "rows.jsonl").exists()
    if not torch.cuda.is_available():
        assert main([*argv, "--device", "cuda", "--out", str(tmp_path / "gpu")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("timmlens evaluate: error: device 'cuda' is not available")
        assert not (tmp_path / "gpu" / "rows.jsonl").exists()
