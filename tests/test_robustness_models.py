"""The user's model stays theirs when wrapped; malformed model folders and specs fail clearly."""

from __future__ import annotations

import copy
import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from timmlens import ImageClassifier, ModelLoadError, load_model
from timmlens.cli import main as cli_main
from timmlens.interpretation import GradCAM
from timmlens.models import BUNDLED_SPECS, UntrainedHeadWarning


def _user_model(name: str = "test_resnet", **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def _snapshot(model: nn.Module) -> dict[str, object]:
    """Everything wrapping could change: structure, module types and ids, flags, tensors."""
    return {
        "modules": [(name, type(m), id(m), m.training) for name, m in model.named_modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "num_classes": getattr(model, "num_classes", None),
        "classifier": id(model.get_classifier()),
    }


def _assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert after["modules"] == before["modules"]
    assert after["num_classes"] == before["num_classes"]
    assert after["classifier"] == before["classifier"]
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())


# ------------------------------------------------------------ item 5: the user's model
@pytest.mark.parametrize(
    ("name", "kwargs", "classifier", "side"),
    [
        ("test_resnet", {}, "fc", 32),
        ("test_vit", {"img_size": 32}, "head", 32),
        ("test_convnext", {}, "head.fc", 32),  # the classifier nested in a head block
        ("test_efficientnet", {}, "classifier", 32),
    ],
)
def test_wrapping_leaves_the_users_model_and_its_logits_unchanged(name, kwargs, classifier, side):
    model = _user_model(name, **kwargs)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    before = _snapshot(model)

    wrapped = ImageClassifier(model)

    _assert_same(before, _snapshot(model))
    with torch.no_grad():
        assert torch.equal(model(x), logits)  # still logits, not pooled features
        assert torch.equal(wrapped(x), logits)
    assert wrapped.backbone is model
    assert wrapped.head is model.get_submodule(classifier)
    assert wrapped.get_submodule(f"backbone.{classifier}") is model.get_submodule(classifier)
    # The wrapper's state dict is the model's under "backbone." (no separate "head.*").
    assert list(wrapped.state_dict()) == [f"backbone.{k}" for k in model.state_dict()]


def test_wrapping_keeps_the_users_training_flags():
    model = _user_model().train()
    model.layer1.eval()  # a mixed state must survive as it is
    flags = {name: m.training for name, m in model.named_modules()}
    wrapped = ImageClassifier(model)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert wrapped.backbone.training
    # An explanation runs in eval mode and hands the flags back as found.
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(GradCAM(wrapped, target_layer="backbone.layer4")(x, 0)).all()
    assert {name: m.training for name, m in model.named_modules()} == flags


def test_a_model_loaded_by_name_is_in_eval_mode():
    with pytest.warns(UserWarning):  # random weights, and a new head
        model = ImageClassifier("test_resnet", num_classes=4)
    assert not any(m.training for m in model.modules())
    assert model.head.out_features == 4 and model.has_new_head


def test_another_num_classes_puts_the_new_head_on_a_copy():
    model = _user_model()
    before = _snapshot(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with pytest.warns(UntrainedHeadWarning, match="Your model is left unchanged; the wrapper"):
        wrapped = ImageClassifier(model, num_classes=4)

    _assert_same(before, _snapshot(model))
    assert wrapped.backbone is not model
    assert wrapped.head is wrapped.backbone.fc and wrapped.head is not model.fc
    assert (wrapped.num_classes, wrapped.pretrained_num_classes) == (4, 1000)
    with torch.no_grad():
        assert wrapped(x).shape == (2, 4) and model(x).shape == (2, 1000)
    # The copy has the model's trained body (equal values, its own tensors) and its mode.
    assert torch.equal(wrapped.backbone.layer4[0].conv1.weight, model.layer4[0].conv1.weight)
    assert wrapped.backbone.layer4[0].conv1.weight is not model.layer4[0].conv1.weight
    assert not any(m.training for m in wrapped.modules())


def test_a_model_with_two_classifiers_is_wrapped_whole():
    # Distilled DeiT: get_classifier() is a (head, head_dist) tuple.
    model = _user_model("deit_tiny_distilled_patch16_224", img_size=32, depth=1, num_classes=5)
    assert isinstance(model.get_classifier(), tuple)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    before = _snapshot(model)
    wrapped = ImageClassifier(model)
    _assert_same(before, _snapshot(model))
    assert isinstance(wrapped.head, nn.Identity)
    with torch.no_grad():
        assert torch.equal(wrapped(x), model(x))
    assert wrapped(x).shape == (2, 5)


def test_head_cannot_be_replaced_on_the_wrapper():
    model = _user_model()
    wrapped = ImageClassifier(model)
    with pytest.raises(AttributeError, match=r"num_classes=N"):
        wrapped.head = nn.Linear(96, 3)
    assert wrapped.head is model.fc and "head" not in dict(wrapped.named_children())


def test_a_copy_of_a_wrapper_is_independent():
    wrapped = ImageClassifier(_user_model())
    clone = copy.deepcopy(wrapped)
    assert clone.head is clone.backbone.fc and clone.head is not wrapped.head


# ------------------------------------------------------ item 7: malformed model folders
@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory) -> Path:
    from timm.models import save_for_hf

    folder = tmp_path_factory.mktemp("saved") / "model"
    save_for_hf(_user_model(num_classes=7), folder, safe_serialization=True)
    return folder


def _folder_with(saved: Path, tmp_path: Path, config: str | dict) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text)
    return folder


def _config(saved: Path) -> dict:
    return json.loads((saved / "config.json").read_text())


def _edited(saved: Path, path: str, value: object) -> dict:
    config = _config(saved)
    *parents, leaf = path.split(".")
    section = config
    for parent in parents:
        section = section[parent]
    section[leaf] = value
    return config


BAD_CONFIGS = {
    "not JSON": ("{", r"is not valid JSON: Expecting property name .* at line 1, column 2\."),
    "empty object": ("{}", r"required field 'architecture' is missing"),
    "array": ("[1, 2]", r"holds a JSON array \(\[1, 2\]\); expected a JSON object"),
    "null": ("null", r"holds null; expected a JSON object"),
    "string": ('"resnet18"', r"holds a JSON string \(\"resnet18\"\); expected a JSON object"),
}
BAD_FIELDS = {
    "num_classes text": ("num_classes", "abc", r"field 'num_classes' is a JSON string \(\"abc\"\)"),
    "num_classes negative": ("num_classes", -1, r"field 'num_classes' is a JSON number \(-1\)"),
    "architecture number": ("architecture", 5, r"field 'architecture' is a JSON number \(5\)"),
    "architecture unknown": ("architecture", "resnet_nope", r"'resnet_nope', which is not a timm"),
    "pretrained_cfg array": ("pretrained_cfg", [1], r"field 'pretrained_cfg' is a JSON array"),
    "model_args string": ("model_args", "x", r"field 'model_args' is a JSON string"),
    "mean null": ("pretrained_cfg.mean", None, r"field 'pretrained_cfg.mean' is null"),
    "input_size short": ("pretrained_cfg.input_size", [3, 32], r"'pretrained_cfg.input_size'"),
    "img_size text": ("model_args.img_size", "big", r"field 'model_args.img_size' is a JSON str"),
}


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_malformed_config_json_names_the_file(saved_folder, tmp_path, text, message):
    folder = _folder_with(saved_folder, tmp_path, text)
    with pytest.raises(
        ModelLoadError, match=re.escape(str(folder / "config.json")) + ".*" + message
    ):
        load_model(folder)


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_wrong_config_field_names_the_file_field_and_value(
    saved_folder, tmp_path, field, value, message
):
    folder = _folder_with(saved_folder, tmp_path, _edited(saved_folder, field, value))
    with pytest.raises(
        ModelLoadError, match=re.escape(str(folder / "config.json")) + ".*" + message
    ):
        load_model(folder)


def test_valid_configs_still_load(saved_folder, tmp_path):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = load_model(saved_folder)(x)
    # The legacy flat layout: the object is the pretrained config plus "architecture".
    config = _config(saved_folder)
    flat = {**config["pretrained_cfg"], "architecture": config["architecture"]}
    with torch.no_grad():
        assert torch.equal(load_model(_folder_with(saved_folder, tmp_path, flat))(x), expected)


def test_malformed_config_in_the_hub_cache_names_the_cached_file(saved_folder, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--timm--test_resnet.broken"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(saved_folder, snapshot)
    (snapshot / "config.json").write_text(json.dumps(_edited(saved_folder, "num_classes", "abc")))
    with pytest.raises(ModelLoadError, match=re.escape(str(snapshot / "config.json"))):
        load_model("hf-hub:timm/test_resnet.broken", cache_dir=tmp_path / "hub")


def test_cli_reports_a_malformed_config_in_one_line(saved_folder, tmp_path, capsys):
    folder = _folder_with(saved_folder, tmp_path, _edited(saved_folder, "num_classes", "abc"))
    assert cli_main(["layers", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(folder / "config.json") in err[0] and "'num_classes'" in err[0]


# ------------------------------------------------------------ item 7: weights= and bundled:
def test_a_directory_as_weights_says_what_to_pass(saved_folder, tmp_path):
    with pytest.raises(
        ModelLoadError, match=r"is a directory; weights= expects a file.*as the spec"
    ):
        load_model("test_resnet", weights=saved_folder)
    only_weights = tmp_path / "ckpt"
    only_weights.mkdir()
    torch.save(_user_model().state_dict(), only_weights / "best.pth")
    with pytest.raises(ModelLoadError, match=r"it holds best\.pth: pass one, e\.g\. weights="):
        load_model("test_resnet", weights=only_weights)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"'.*empty' is a directory; weights= expects a file"):
        load_model("test_resnet", weights=empty)


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("bundled:nope", ""),
        ("bundled:efficientnet_lite", "Did you mean 'bundled:efficientnet_lite0'"),
    ],
)
def test_unknown_bundled_spec_lists_the_bundled_specs(spec, hint):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to a random-weights timm model
        with pytest.raises(ModelLoadError, match=re.escape(hint) or None) as caught:
            load_model(spec)
    message = str(caught.value)
    assert f"Unknown bundled model '{spec}'" in message
    assert all(known in message for known in BUNDLED_SPECS)


def test_checkpoints_of_the_old_wrapper_with_a_separate_head_still_load():
    from timmlens.testing import explainable_model

    source = ImageClassifier(explainable_model("test_resnet", seed=0))
    old_layout = {
        key.replace("backbone.fc.", "head.", 1): value for key, value in source.state_dict().items()
    }
    assert "head.weight" in old_layout and "backbone.fc.weight" not in old_layout
    target = ImageClassifier(explainable_model("test_resnet", seed=1))
    assert not torch.equal(target.head.weight, source.head.weight)
    target.load_state_dict(old_layout)  # strict: every key placed
    assert torch.equal(target.head.weight, source.head.weight)
    assert torch.equal(target.backbone.fc.bias, source.backbone.fc.bias)


# ------------------------------------------------ issue 26: empty, missing and hub specs
SPEC_FORMS = ("resnet18.a1_in1k", "hf-hub:timm/", "config.json", "weights=", "bundled:")


@pytest.mark.parametrize("spec", ["", "   ", "\t\n"])
def test_an_empty_spec_says_so_and_lists_what_a_spec_can_be(spec):
    with pytest.raises(ModelLoadError, match="model spec is empty") as caught:
        load_model(spec)
    message = str(caught.value)
    assert "'.' is a folder" not in message
    assert all(form in message for form in SPEC_FORMS)


@pytest.mark.parametrize(
    "spec",
    ["./nope/model.safetensors", "missing_dir", "./nope", "nope/", "~/nope-timmlens.pth"],
)
def test_a_missing_path_says_no_such_file_or_folder(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if spec == "missing_dir":
        spec = str(tmp_path / "missing_dir")  # an absolute path
    with pytest.raises(ModelLoadError, match="No such file or folder") as caught:
        load_model(spec)
    message = str(caught.value)
    assert "Unknown timm architecture" not in message and "name its architecture" not in message
    looked_at = Path(spec).expanduser().absolute()
    assert str(looked_at) in message  # what was looked for, resolved
    assert all(form in message for form in SPEC_FORMS)


def test_an_owner_slash_name_hints_at_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"No such file or folder.*'hf-hub:timm/resnet18'"):
        load_model("timm/resnet18")


def test_a_missing_weights_file_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="No such weights file") as caught:
        load_model("test_resnet", weights="missing.pth")
    assert str(tmp_path / "missing.pth") in str(caught.value)
    with pytest.raises(ModelLoadError, match="weights= is empty"):
        load_model("test_resnet", weights="")


def test_the_hub_error_keeps_the_revision(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as caught:
        load_model("hf-hub:timm/resnet18.a1_in1k@v1.0", cache_dir=tmp_path)
    message = str(caught.value)
    assert "'hf-hub:timm/resnet18.a1_in1k@v1.0'" in message and "HF_HUB_OFFLINE" in message
