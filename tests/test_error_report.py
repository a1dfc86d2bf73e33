"""Error-analysis report: counts, confusion pairs, maps, HTML, JSON, folder labels, torchrun."""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from timmlens.analysis.error_report import ErrorReport, error_report, explain_errors
from timmlens.cli import main
from timmlens.data import prepare_images
from timmlens.errors import LabelNameError
from timmlens.evaluation.sources import ImageFolderSource, as_source
from timmlens.interpretation.cam import GradCAM
from timmlens.models.introspect import LabelResolver, label_resolver_for
from timmlens.testing import explainable_model

SCRIPT = "<script>alert(1)</script>"
QUOTED = 'a & b "quoted"'
ERROR_KEYS = {
    "id",
    "true",
    "true_name",
    "predicted",
    "predicted_name",
    "p_true",
    "p_predicted",
    "true_rank",
}


class Items(Dataset):
    """A map-style dataset over a list of (image, label) pairs."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def small_photos(photos, size=(48, 40)):
    return {name: np.asarray(Image.fromarray(array).resize(size)) for name, array in photos.items()}


def set_class_names(model, names):
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": list(names)}


def sources_of_html(page):
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)


@pytest.fixture(scope="module")
def tiny(photos, tmp_path_factory):
    """A 10-class test_resnet, a dataset built around its predictions, and one report.

    Images A, B, C (photos) are repeated so their predictions pA, pB, pC are known; the
    labels make 2 images of class x predicted as pA and 2 of class y predicted as pB.
    """
    model = explainable_model("test_resnet", num_classes=10, seed=3)
    small = small_photos(photos)
    a, b, c = small["chelsea"], small["coffee"], small["rocket"]
    with torch.no_grad():
        logits = model(prepare_images([a, b, c], model).tensor)
    pa, pb, pc = logits.argmax(1).tolist()
    x, y = sorted(set(range(10)) - {pa, pb, pc})[:2]
    names = [f"class-{i}" for i in range(10)]
    names[x], names[y] = SCRIPT, QUOTED
    set_class_names(model, names)
    items = [(a, pa), (a, x), (a, x), (b, y), (b, y), (c, pc), (b, None)]
    out = tmp_path_factory.mktemp("tiny") / "report.html"
    report = error_report(
        model, Items(items), out, batch_size=3, max_examples=None, keep_heatmaps=True
    )
    ranks = {
        "x": int((logits[0] > logits[0, x]).sum()) + 1,
        "y": int((logits[1] > logits[1, y]).sum()) + 1,
    }
    probs = logits.softmax(1)
    return {
        "model": model,
        "items": items,
        "report": report,
        "classes": {"pa": pa, "pb": pb, "pc": pc, "x": x, "y": y},
        "names": names,
        "ranks": ranks,
        "probs": probs,
    }


def test_counts_and_confusion_pairs_match_a_hand_count(tiny):
    report: ErrorReport = tiny["report"]
    k = tiny["classes"]
    pa, pb, pc, x, y = k["pa"], k["pb"], k["pc"], k["x"], k["y"]
    assert (report.n_images, report.n_labelled, report.n_unlabelled) == (7, 6, 1)
    assert (report.n_correct, report.n_errors) == (2, 4)
    assert report.accuracy == pytest.approx(2 / 6) and report.top_k[1] == report.accuracy
    in_top5 = 2 + 2 * (tiny["ranks"]["x"] <= 5) + 2 * (tiny["ranks"]["y"] <= 5)
    assert report.top_k[5] == pytest.approx(in_top5 / 6)
    pairs = [(p.true, p.predicted, p.count, p.ids) for p in report.confusion_pairs]
    assert pairs == [(x, pa, 2, ("1", "2")), (y, pb, 2, ("3", "4"))]
    assert [e.id for e in report.errors] == ["1", "2", "3", "4"]
    first = report.errors[0]
    assert (first.true, first.predicted, first.true_rank) == (x, pa, tiny["ranks"]["x"])
    assert first.true_name == SCRIPT and first.predicted_name == tiny["names"][pa]
    assert first.p_true == pytest.approx(float(tiny["probs"][0, x]), abs=1e-5)
    assert first.p_predicted == pytest.approx(float(tiny["probs"][0, pa]), abs=1e-5)
    assert report.errors[2].true_rank == tiny["ranks"]["y"] >= 2

    expected: dict[int, list] = {x: [2, 0, pa, 2], y: [2, 0, pb, 2]}
    for cls in (pa, pc):  # the two correct images (pa may equal pc)
        row = expected.setdefault(cls, [0, 0, None, 0])
        row[0], row[1] = row[0] + 1, row[1] + 1
    got = {
        row.index: [row.n, row.correct, row.confused_with, row.confused_count]
        for row in report.per_class
    }
    assert got == expected
    assert [row.index for row in report.per_class] == sorted(expected)
    assert all(row.accuracy == row.correct / row.n for row in report.per_class)


def test_maps_are_those_of_the_predicted_and_the_true_class(tiny):
    report, items, model = tiny["report"], tiny["items"], tiny["model"]
    assert sorted(report.heatmaps) == ["1", "2", "3", "4"]
    images = [items[int(error.id)][0] for error in report.errors]
    direct_predicted = GradCAM(model)(images, target_class=[e.predicted for e in report.errors])
    direct_true = GradCAM(model)(images, target_class=[e.true for e in report.errors])
    informative = 0
    for k, error in enumerate(report.errors):
        predicted_map, true_map = report.heatmaps[error.id]
        torch.testing.assert_close(predicted_map, direct_predicted[k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(true_map, direct_true[k], atol=1e-5, rtol=1e-4)
        informative += int(predicted_map.std() > 0) + int(true_map.std() > 0)
    assert informative > 0, "at least one map is not constant"


def test_explain_errors_is_one_call_on_the_doubled_batch(tiny):
    model = tiny["model"]
    batch = prepare_images([tiny["items"][1][0], tiny["items"][3][0]], model)
    calls = []
    hook = model.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    try:
        predicted, true = explain_errors(GradCAM(model), batch.tensor, [1, 2], [3, 4])
    finally:
        hook.remove()
    assert calls == [4] and predicted.shape == true.shape == (2, 160, 160)
    direct = GradCAM(model)(batch.tensor, target_class=[3, 4])
    torch.testing.assert_close(true, direct, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="one of each per input"):
        explain_errors(GradCAM(model), batch.tensor, [1], [3, 4])


def test_html_is_escaped_and_self_contained(tiny):
    page = tiny["report"].html_path.read_text(encoding="utf-8")
    assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert QUOTED not in page and "a &amp; b &quot;quoted&quot;" in page
    links = sources_of_html(page)
    assert links and all(link.startswith(("data:image/", "#")) for link in links)
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert page.count('<div class="card">') == 4
    assert page.count("data:image/jpeg;base64,") == 12  # photo + 2 maps per error
    assert "1 image(s) without a label were skipped" in page
    # the gallery groups by pair, most frequent first: x -> pA before y -> pB
    assert page.index("&lt;script&gt;alert(1)&lt;/script&gt; &rarr;") < page.index(
        "a &amp; b &quot;quoted&quot; &rarr;"
    )


def test_paths_and_folder_names_are_escaped(tiny, tmp_path):
    folder = tmp_path / "data" / QUOTED  # a folder named by the model's class name
    folder.mkdir(parents=True)
    Image.fromarray(tiny["items"][0][0]).save(folder / "<img src=x onerror=alert(1)>.png")
    report = error_report(tiny["model"], tmp_path / "data", tmp_path, progress=False)
    assert [(e.true, e.predicted) for e in report.errors] == [
        (tiny["classes"]["y"], tiny["classes"]["pa"])
    ]
    page = report.html_path.read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.png" in page
    assert QUOTED not in page
    assert all(link.startswith(("data:image/", "#")) for link in sources_of_html(page))


def test_json_summary_schema(tiny):
    report = tiny["report"]
    assert report.json_path == report.html_path.with_suffix(".json")
    summary = json.loads(report.json_path.read_text(encoding="utf-8"))
    assert set(summary) == {
        "model",
        "weights",
        "method",
        "data",
        "num_classes",
        "counts",
        "accuracy",
        "top_k",
        "confusion_pairs",
        "per_class",
        "errors",
        "gallery",
        "html",
    }
    assert summary["method"] == "gradcam" and summary["model"] == "test_resnet"
    # An untrained model's page says so in its title and heading.
    assert summary["weights"] == "random weights"
    page = report.html_path.read_text(encoding="utf-8")
    assert "<title>Error analysis: test_resnet [random weights]</title>" in page
    assert summary["data"] == "Items, 7 items" and summary["html"] == "report.html"
    assert summary["counts"] == {
        "images": 7,
        "labelled": 6,
        "unlabelled": 1,
        "correct": 2,
        "errors": 4,
    }
    assert set(summary["top_k"]) == {"1", "5"}
    assert all(set(error) == ERROR_KEYS for error in summary["errors"])
    assert [e["id"] for e in summary["errors"]] == ["1", "2", "3", "4"]
    assert summary["errors"][0]["true_name"] == SCRIPT
    assert set(summary["confusion_pairs"][0]) == {
        "true",
        "true_name",
        "predicted",
        "predicted_name",
        "count",
        "ids",
    }
    assert set(summary["per_class"][0]) == {
        "class",
        "name",
        "n",
        "correct",
        "accuracy",
        "confused_with",
        "confused_with_name",
        "confused_count",
    }
    assert summary["gallery"] == {"shown": 4, "left_out": 0, "max_examples": None}
    assert summary == report.to_dict()


def test_gallery_cap_keeps_every_error_in_the_json(tiny, tmp_path):
    items = tiny["items"]
    loader = DataLoader(Items(items), batch_size=4)  # its dataset is used, not its batches
    report = error_report(tiny["model"], loader, tmp_path, max_examples=1, progress=False)
    assert report.html_path == tmp_path / "report.html"
    assert report.shown == ["1"] and report.n_left_out == 3
    summary = json.loads(report.json_path.read_text())
    assert len(summary["errors"]) == 4 and summary["data"] == "DataLoader(Items, 7 items)"
    assert summary["gallery"] == {"shown": 1, "left_out": 3, "max_examples": 1}
    page = report.html_path.read_text()
    assert page.count('<div class="card">') == 1
    assert "3 error(s) left out of the gallery (max_examples=1)" in page
    assert "(2 errors, 1 not shown)" in page  # the first pair's section
    assert 'href="#pair-0"' in page and 'href="#pair-1"' not in page  # no cards of pair 2


def test_no_errors(tiny, tmp_path):
    k = tiny["classes"]
    items = [(tiny["items"][0][0], k["pa"]), (tiny["items"][5][0], k["pc"])]
    report = error_report(tiny["model"], Items(items), tmp_path / "ok.html", progress=False)
    assert (report.n_errors, report.accuracy, report.confusion_pairs) == (0, 1.0, [])
    assert report.json_path == tmp_path / "ok.json"
    page = report.html_path.read_text()
    assert "No confusions" in page and '<div class="card">' not in page


def test_model_is_left_as_found(photos, tmp_path):
    model = explainable_model("test_resnet", num_classes=10, seed=1)
    model.train()
    model.fc.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    requires = [p.requires_grad for p in model.parameters()]
    small = small_photos(photos)
    items = [(small["chelsea"], 0), (small["coffee"], 1), (small["rocket"], 2)]
    error_report(model, Items(items), tmp_path / "r.html", progress=False)
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == requires
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_no_labels_and_bad_labels_are_errors(tiny, tmp_path):
    model = tiny["model"]
    image = tiny["items"][0][0]
    with pytest.raises(ValueError, match="none of the 2 images has a label"):
        error_report(model, Items([(image, None), (image, None)]), tmp_path, progress=False)
    with pytest.raises(LabelNameError, match="class 10 is out of range"):
        error_report(model, Items([(image, 10)]), tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        error_report(model, Items([(image, 1)]), tmp_path, method="gradcm", progress=False)
    (tmp_path / "flat").mkdir()
    Image.fromarray(image).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="has a label"):
        error_report(model, tmp_path / "flat", tmp_path, progress=False)


# ----------------------------------------------------------------- folder labels
def test_label_resolver_imagenet_names():
    resolve = LabelResolver(1000)
    assert resolve("281") == resolve(281) == 281
    assert resolve("tabby") == resolve("Tabby_Cat") == resolve("tabby, tabby cat") == 281
    assert resolve("n02123045") == resolve("N02123045") == 281
    assert resolve("tiger cat") == 282 and resolve("space_shuttle") == 812
    assert resolve("missile") == 657  # a full description wins over 'projectile, missile'
    assert resolve("cardigan") == 474 and resolve("Cardigan Welsh corgi") == 264
    with pytest.raises(LabelNameError, match=r"'crane' names 2 classes: 134 \(n02012849\)"):
        resolve("crane")
    with pytest.raises(LabelNameError, match="class 1000 is out of range"):
        resolve("1000")
    with pytest.raises(LabelNameError) as info:
        resolve.resolve("tabbby", where="folder 'tabbby'")
    message = str(info.value)
    assert message.startswith("folder 'tabbby': 'tabbby' is not a class of this model.")
    assert "Close matches: 'tabby' (281)" in message and "WordNet ids" in message
    assert "\n" not in message


def test_label_resolver_model_names():
    resolve = LabelResolver(3, ["Cat", "dog", SCRIPT])
    assert [resolve("cat"), resolve("DOG"), resolve(SCRIPT), resolve("2")] == [0, 1, 2, 2]
    with pytest.raises(LabelNameError, match=r"Close matches: 'dog' \(1\)") as info:
        resolve("dgo")
    assert "the model's class names ('Cat', 'dog'" in str(info.value)
    assert "ImageNet" not in str(info.value)
    bare = LabelResolver(4)
    assert bare("3") == 3
    with pytest.raises(
        LabelNameError,
        match=r"Expected class indices 0\.\.3\. If the folders name your classes, give the "
        r"model their names in index order: class_names=\[\.\.\.\] in Python, "
        r"--class-names FILE\|a,b,c on the command line\.$",
    ):
        bare("cat")


def test_image_folder_labels(tmp_path, tiny):
    rng = np.random.default_rng(0)
    for folder in ("281", "tabby", "Tiger_Cat", "n02123045", "sub/space shuttle", "."):
        (tmp_path / "data" / folder).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "data" / folder / "img.png")
    source = ImageFolderSource(tmp_path / "data", LabelResolver(1000))
    labels = {sample.id: sample.label for sample in source}
    assert labels == {
        "281/img.png": 281,
        "tabby/img.png": 281,
        "Tiger_Cat/img.png": 282,
        "n02123045/img.png": 281,
        "sub/space shuttle/img.png": 812,
        "img.png": None,
    }
    assert source.labels == [labels[s.id] for s in source]
    # evaluate's behaviour without a resolver: integer names only, others unlabelled
    plain = {sample.id: sample.label for sample in as_source(tmp_path / "data")}
    assert plain["281/img.png"] == 281 and plain["tabby/img.png"] is None
    (tmp_path / "data" / "tabbby").mkdir()
    Image.fromarray(pixels).save(tmp_path / "data" / "tabbby" / "img.png")
    with pytest.raises(LabelNameError, match=r"folder 'tabbby': .*Close matches: 'tabby'"):
        ImageFolderSource(tmp_path / "data", LabelResolver(1000))
    # a model's own names, through label_resolver_for
    resolver = label_resolver_for(tiny["model"])
    assert resolver.num_classes == 10 and not resolver.imagenet
    assert resolver(SCRIPT) == tiny["classes"]["x"] and resolver("CLASS-7") == 7


# ----------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def real_report(real_model, photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    data = root / "data"
    for folder, name in (("tabby", "chelsea"), ("Espresso", "coffee"), ("n04266014", "rocket")):
        (data / folder).mkdir(parents=True)
        Image.fromarray(photos[name]).save(data / folder / f"{name}.png")
    Image.fromarray(photos["astronaut"]).save(data / "astronaut.png")  # no label
    return error_report(real_model, data, root / "out" / "report.html", progress=False)


def test_real_model_report(real_report):
    report = real_report
    assert (report.n_images, report.n_labelled, report.n_unlabelled) == (4, 3, 1)
    assert report.n_correct == 1 and report.accuracy == pytest.approx(1 / 3)
    assert report.top_k[5] == 1.0  # tabby ranks 3rd for the cat, space shuttle 4th
    pairs = [(p.true_name, p.predicted_name, p.ids) for p in report.confusion_pairs]
    assert pairs == [
        ("tabby", "tiger cat", ("tabby/chelsea.png",)),
        ("space shuttle", "missile", ("n04266014/rocket.png",)),
    ]
    assert [e.true_rank for e in report.errors] == [4, 3]
    page = report.html_path.read_text()
    assert "predicted: tiger cat (39.3%)" in page and "true: tabby (17.0%)" in page
    assert "predicted: missile (27.4%)" in page and "true: space shuttle (5.9%)" in page
    assert all(link.startswith(("data:image/", "#")) for link in sources_of_html(page))
    assert str(report).startswith("3 labelled images: 1 correct, 2 errors; top-1 33.3%")


# ----------------------------------------------------------------- command line
def _folder(tmp_path, photos, names):
    small = small_photos(photos)
    for folder, photo in names:
        (tmp_path / "data" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(small[photo]).save(tmp_path / "data" / folder / f"{photo}.png")
    return tmp_path / "data"


def test_cli_report_help(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["report", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--out", "--method", "--batch-size", "--max-examples", "--top-pairs"):
        assert option in text


def test_cli_report(tmp_path, photos, capsys):
    data = _folder(tmp_path, photos, [("tabby", "chelsea"), ("n07920052", "coffee")])
    out = tmp_path / "out" / "r.html"
    argv = ["report", str(data), "--model", "test_resnet", "--out", str(out)]
    code = main([*argv, "--batch-size", "1", "--max-examples", "1", "--top-pairs", "1"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("2 labelled images: ")
    assert lines[1:] == [f"html: {out}", f"json: {out.with_suffix('.json')}"]
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["counts"]["labelled"] == 2 and summary["model"] == "test_resnet"
    assert {e["true"] for e in summary["errors"]} <= {281, 967}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-examples", "-1"], "argument --max-examples: expected an integer >= 0, got '-1'"),
        (["--method", "rollout"], "rollout"),
        ([], "folder 'tabbby': 'tabbby' is not a class of this model. Close matches: 'tabby'"),
    ],
)
def test_cli_user_errors_are_one_line_with_status_2(tmp_path, photos, capsys, extra, message):
    pairs = [("tabby", "chelsea")] if extra else [("tabbby", "chelsea")]
    data = _folder(tmp_path, photos, pairs)
    try:
        code = main(["report", str(data), "--model", "test_resnet", "--out", str(tmp_path), *extra])
    except SystemExit as stop:  # argparse refuses a bad option value before anything runs
        code = stop.code
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "report: error" in line]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "report.html").exists()


# ----------------------------------------------------------------- torchrun
SETUP = """
import torch
from timmlens.testing import explainable_model

def setup():
    torch.set_num_threads(1)  # torchrun's ranks run one thread each: same float sums
    model = explainable_model("test_resnet", num_classes=6, seed=3)
    model.pretrained_cfg = {**model.pretrained_cfg,
                            "label_names": ["cat", "dog", "cup", "car", "sky", "sea"]}
    return model
"""


def test_torchrun_two_ranks_equal_one_process(tmp_path, photos, torchrun):
    rng = np.random.default_rng(0)
    small = small_photos(photos)
    data = tmp_path / "data"
    for i, folder in enumerate(["cat", "Dog", "cup", "car", "3", "sky", "sea", "cat", "."]):
        (data / folder).mkdir(parents=True, exist_ok=True)
        picture = small[("chelsea", "coffee", "rocket", "astronaut")[i % 4]]
        if i >= 4:
            picture = np.ascontiguousarray(picture[:, ::-1])  # flips: other predictions
            picture = np.clip(picture.astype(int) + rng.integers(-30, 30, picture.shape), 0, 255)
        Image.fromarray(picture.astype(np.uint8)).save(data / folder / f"img{i}.png")
    torchrun(
        SETUP
        + textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from timmlens.analysis.error_report import error_report
        report = error_report(setup(), sys.argv[1], sys.argv[2], batch_size=2,
                              max_examples=4, progress=False)
        counts = [report.n_labelled, report.n_errors, len(report.shown)]
        Path(sys.argv[3], f"rank{this_rank()}.json").write_text(json.dumps(counts))
    """),
        data,
        tmp_path / "dist" / "report.html",
        tmp_path,
    )
    threads = torch.get_num_threads()
    namespace: dict = {}
    exec(SETUP, namespace)
    try:
        single = error_report(
            namespace["setup"](),
            data,
            tmp_path / "single" / "report.html",
            batch_size=2,
            max_examples=4,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    counts = [single.n_labelled, single.n_errors, len(single.shown)]
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == counts
    assert single.n_labelled == 8 and single.n_errors >= 1
    dist_json = json.loads((tmp_path / "dist" / "report.json").read_text())
    single_json = json.loads((tmp_path / "single" / "report.json").read_text())
    assert dist_json == single_json
    page = (tmp_path / "dist" / "report.html").read_text()
    assert page.count('<div class="card">') == len(single.shown)
