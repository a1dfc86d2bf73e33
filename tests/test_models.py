"""Model loading: specs, the bundled real weights, hub cache offline, weight files, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import ImageNetInfo

import timmlens
from timmlens import (
    HubUnavailableError,
    ImageClassifier,
    ModelLoadError,
    WeightsMismatchError,
    load_model,
)
from timmlens.models import RandomWeightsWarning, UntrainedHeadWarning
from timmlens.models.bundled import convert_positional_state_dict


def top(model, image, k=3):
    batch = timmlens.prepare_images(image, model)
    with torch.no_grad():
        probs = model(batch.tensor).softmax(-1)[0]
    values, indices = probs.topk(k)
    return [(int(i), float(v)) for v, i in zip(values, indices, strict=True)]


def test_bundled_model_classifies_the_photos(real_model, photos):
    info = ImageNetInfo()
    cat = top(real_model, photos["chelsea"])
    assert cat[0][0] == 282 and info.index_to_description(282) == "tiger cat"
    assert all(281 <= idx <= 285 for idx, _ in cat)
    espresso = top(real_model, photos["coffee"])
    assert espresso[0][0] == 967 and espresso[0][1] > 0.9
    assert info.index_to_description(967) == "espresso"


def test_bundled_model_is_timm_tf_efficientnet_lite0(real_model):
    assert real_model.backbone.pretrained_cfg["architecture"] == "tf_efficientnet_lite0"
    assert real_model.num_classes == 1000 and not real_model.has_new_head
    assert isinstance(real_model.head, torch.nn.Linear)
    assert real_model.head is real_model.backbone.classifier
    cfg = timmlens.data.data_config(real_model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)


def test_positional_conversion_refuses_any_shape_mismatch():
    model = timm.create_model("test_resnet")
    source = OrderedDict((f"src.{k}", v.clone()) for k, v in model.state_dict().items())
    assert list(convert_positional_state_dict(source, model)) == list(model.state_dict())
    key = next(k for k, v in source.items() if v.ndim == 4)
    source[key] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(WeightsMismatchError, match=key.replace(".", r"\.")):
        convert_positional_state_dict(source, model)
    source.popitem()
    with pytest.raises(WeightsMismatchError, match="tensors but"):
        convert_positional_state_dict(source, model)


def test_image_classifier_keeps_the_head_inside_the_unchanged_timm_model():
    torch.manual_seed(0)
    timm_model = timm.create_model("test_resnet").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = timm_model(x)
    wrapped = ImageClassifier(backbone=timm_model)
    with torch.no_grad():
        assert torch.equal(wrapped(x), expected)
        assert torch.equal(timm_model(x), expected)
    assert wrapped.head is timm_model.fc and isinstance(timm_model.fc, torch.nn.Linear)
    assert wrapped.get_submodule("backbone.layer4") is timm_model.layer4


def test_random_weights_and_new_head_are_warned():
    with pytest.warns(RandomWeightsWarning, match="random weights"):
        model = ImageClassifier(backbone="test_resnet")
    assert model.num_classes == model.pretrained_num_classes
    with pytest.warns(UntrainedHeadWarning, match="untrained"):
        model = ImageClassifier(backbone=timm.create_model("test_resnet").eval(), num_classes=10)
    assert model.num_classes == 10 and model.head.out_features == 10
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(ModelLoadError, match=r"Did you mean: .*resnet18"):
        load_model("resnet18x")


def _save_hf_folder(model, folder: Path) -> Path:
    from timm.models import save_for_hf

    save_for_hf(model, folder, safe_serialization=True)
    return folder


def test_local_hf_folder_and_weights_file(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", num_classes=7).eval()
    folder = _save_hf_folder(source, tmp_path / "model")
    assert json.loads((folder / "config.json").read_text())["architecture"] == "test_resnet"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = source(x)
        assert torch.allclose(load_model(folder)(x), expected, atol=1e-6)
        assert torch.allclose(load_model(str(folder))(x), expected, atol=1e-6)
    weights = tmp_path / "w.pth"
    torch.save(source.state_dict(), weights)
    loaded = ImageClassifier("test_resnet", weights=weights, num_classes=7)
    assert loaded.num_classes == 7 and not loaded.has_new_head
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, atol=1e-6)


def test_weights_file_errors(tmp_path):
    torch.manual_seed(1)
    other = timm.create_model("test_resnet", num_classes=5)
    weights = tmp_path / "other.safetensors"
    save_file(other.state_dict(), str(weights))
    # without num_classes the head is built with the checkpoint's 5 classes
    assert load_model("test_resnet", weights=weights).num_classes == 5
    # a wrong num_classes names the one that fits, for Python and for the command
    with pytest.raises(WeightsMismatchError, match=r"fc\.weight: checkpoint \(5, ") as caught:
        load_model("test_resnet", weights=weights, num_classes=7)
    assert "The checkpoint has a 5-class head, the model 7 classes: pass num_classes=5" in str(
        caught.value
    )
    assert "pass --num-classes 5" in caught.value.cli
    with pytest.raises(WeightsMismatchError, match="missing"):
        load_model("test_vit", weights=weights)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("test_resnet", weights=tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="Cannot read weights file"):
        load_model("test_resnet", weights=corrupt)
    with pytest.raises(ModelLoadError, match="name its architecture"):
        load_model(str(weights))
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(tmp_path)


def test_pickled_code_is_refused(tmp_path):
    malicious = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(1), "obj": Path("x")}, malicious)
    with pytest.raises(ModelLoadError, match="refused for safety"):
        load_model("test_resnet", weights=malicious)


def _build_hf_cache(cache: Path, repo_id: str, model) -> None:
    """A local HF cache laid out as huggingface_hub writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _save_hf_folder(model, repo / "snapshots" / commit)


def test_hf_hub_model_loads_offline_from_a_local_cache(tmp_path):
    torch.manual_seed(2)
    source = timm.create_model("resnet18").eval()
    _build_hf_cache(tmp_path / "hub", "timm/resnet18.a1_in1k", source)
    torch.save(source.fc.weight.detach()[:3].clone(), tmp_path / "fc_rows.pt")
    script = (
        "import torch, timm, warnings\n"
        "from timmlens import ImageClassifier\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    m = ImageClassifier(backbone='hf-hub:timm/resnet18.a1_in1k', num_classes=10)\n"
        "assert any('untrained' in str(w.message) for w in caught)\n"
        "assert m.num_classes == 10 and m.pretrained_num_classes == 1000\n"
        "src = timm.create_model('resnet18')\n"
        f"expected = torch.load({str(tmp_path / 'fc_rows.pt')!r})\n"
        "print('OK', m.backbone.conv1.weight.shape, m(torch.zeros(1, 3, 64, 64)).shape)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout and "(1, 10)" in done.stdout.replace(
        "torch.Size([1, 10])", "(1, 10)"
    )
    # The backbone weights are the cached ones, not random: check in-process with cache_dir.
    model = load_model("hf-hub:timm/resnet18.a1_in1k", cache_dir=tmp_path / "hub")
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(model.head.weight, source.fc.weight)


def test_hf_hub_missing_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(
        HubUnavailableError, match=r"resnet18.a1_in1k.*HF_HUB_OFFLINE.*copy a folder"
    ):
        load_model("hf-hub:timm/resnet18.a1_in1k", cache_dir=tmp_path)
    assert time.perf_counter() - start < 5


def test_hf_hub_unreachable_fails_fast(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from timmlens.models import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://unreachable.invalid")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="did not answer"):
        hub.resolve_hub_folder("timm/resnet18.a1_in1k", cache_dir=tmp_path)
    assert time.perf_counter() - start < hub.CONNECT_TIMEOUT_S + 5
