"""Concepts over a dataset: one batch = the batch fit, streaming close to full NMF, resume,
run identity, damaged shards, JSON, HTML gallery, CLI, torchrun."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from timmlens.analysis import fit_concepts
from timmlens.analysis.concept_store import ShardStore
from timmlens.analysis.dff import deep_feature_factorization
from timmlens.cli import main
from timmlens.errors import ConceptInputError, RunMismatchError
from timmlens.evaluation.cost import ForwardCounter
from timmlens.testing import explainable_model

N_IMAGES = 12
SIDE = 64
K = 3
#: the streaming fit's relative reconstruction error may exceed full NMF's by this factor
STREAMING_TOLERANCE = 1.05

# scikit-learn's NMF stops at pytorch-grad-cam's 200 iterations, and says so
pytestmark = pytest.mark.filterwarnings("ignore:Maximum number of iterations")


def tiny_model() -> torch.nn.Module:
    model = explainable_model("test_resnet", num_classes=10, seed=0)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, SIDE, SIDE)}
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def augmented(photos, count: int = N_IMAGES, seed: int = 0) -> list[np.ndarray]:
    """Random crops and flips of the scikit-image photos, ``SIDE`` px."""
    rng = np.random.default_rng(seed)
    pictures = list(photos.values())
    out = []
    for i in range(count):
        photo = pictures[i % len(pictures)]
        height, width = photo.shape[:2]
        scale = rng.uniform(0.5, 1.0)
        h, w = int(height * scale), int(width * scale)
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = photo[top : top + h, left : left + w]
        if i % 2:
            crop = crop[:, ::-1]
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((SIDE, SIDE))))
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("concept-images")
    for i, picture in enumerate(augmented(photos)):
        Image.fromarray(picture).save(root / f"img{i:02d}.png")
    return root


class Pictures(Dataset):
    """Arrays as a dataset; ``fail_at`` makes reading that index raise ``KeyboardInterrupt``
    (a run stopped by Ctrl-C); ``reads`` counts the items read."""

    def __init__(self, pictures, fail_at=None):
        self.pictures = pictures
        self.fail_at = fail_at
        self.reads = 0

    def __len__(self):
        return len(self.pictures)

    def __getitem__(self, index):
        if index == self.fail_at:
            raise KeyboardInterrupt
        self.reads += 1
        return self.pictures[index]


def fit(model, data, out, **options):
    options = {"n_concepts": K, "progress": False, **options}
    return fit_concepts(model, data, out=out, **options)


def counted_fit(model, data, out, **options):
    with ForwardCounter(model) as counter:
        result = fit(model, data, out, **options)
    return result, counter.images


# ----------------------------------------------------------------- the fit
def test_one_batch_equals_the_batch_fit(model, folder, tmp_path):
    result = fit(model, folder, tmp_path / "out", batch_size=N_IMAGES, gallery=False)
    files = sorted(str(p) for p in folder.glob("*.png"))
    batch = deep_feature_factorization(model, files, n_concepts=K, seed=0)
    assert result.fit == "exact NMF (one batch)"
    assert result.concepts.shape == batch.concepts.shape
    assert torch.allclose(result.concepts, batch.concepts.cpu(), atol=1e-6, rtol=0)
    assert torch.allclose(result.offset, batch.offset.cpu(), atol=0, rtol=0)
    assert result.relative_error == pytest.approx(batch.relative_error, abs=1e-6)


def test_streaming_fit_is_close_to_full_nmf(model, folder, tmp_path):
    from sklearn.decomposition import NMF

    result = fit(model, folder, tmp_path / "out", batch_size=4, gallery=False)
    assert result.fit.startswith("MiniBatchNMF, 3 passes over 3 shards")
    store = ShardStore(tmp_path / "out", 4, N_IMAGES)
    offset = store.offset()
    rows = np.concatenate([store.read(b).rows(offset) for b in range(3)])
    full = NMF(n_components=K, init="random", random_state=0).fit(rows)
    full_error = full.reconstruction_err_ / np.linalg.norm(rows)
    assert result.relative_error <= STREAMING_TOLERANCE * full_error
    # the concept vectors reconstruct the data they came from: offset + loadings @ components
    assert torch.all(result.concepts >= result.offset - 1e-6)
    assert sum(result.energy_share) == pytest.approx(1.0)


def test_k_above_channels_fails_before_reading_an_image(model, photos, tmp_path):
    data = Pictures(augmented(photos, 4))
    with pytest.raises(ConceptInputError, match=r"n_concepts=5000 is more than the \d+ channels"):
        fit(model, data, tmp_path / "out", n_concepts=5000)
    assert data.reads == 0
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- resume and identity
def test_stopped_run_resumes_from_its_shards(model, photos, tmp_path):
    pictures = augmented(photos)
    whole = fit(model, Pictures(pictures), tmp_path / "whole", batch_size=4, gallery=False)
    stopped = Pictures(pictures, fail_at=5)  # stops in the second batch
    with pytest.raises(KeyboardInterrupt):
        fit(model, stopped, tmp_path / "out", batch_size=4, gallery=False)
    assert sorted(p.name for p in (tmp_path / "out" / "shards").glob("*.npz")) == ["000000.npz"]
    stopped.fail_at = None
    resumed, forwards = counted_fit(model, stopped, tmp_path / "out", batch_size=4, gallery=False)
    assert forwards == 8 + 1  # the two missing batches, and the one-image probe
    assert torch.equal(resumed.concepts, whole.concepts)
    # and a finished run, rerun, forwards only the probe
    again, forwards = counted_fit(model, stopped, tmp_path / "out", batch_size=4, gallery=False)
    assert forwards == 1 and torch.equal(again.concepts, whole.concepts)


def test_another_run_in_the_folder_is_refused(model, folder, tmp_path):
    out = tmp_path / "out"
    fit(model, folder, out, batch_size=6, gallery=False)
    with pytest.raises(RunMismatchError) as raised:
        fit(model, folder, out, n_concepts=K + 1, batch_size=6, gallery=False)
    assert str(raised.value) == (
        f"'{out}' holds concepts of another run: n_concepts {K} vs {K + 1}; use a new output "
        f"folder (--out), or --overwrite (overwrite=True) to discard its shards."
    )
    with pytest.raises(RunMismatchError, match=r"layer layer4 vs layer3"):
        fit(model, folder, out, layer="layer3", batch_size=6, gallery=False)
    other = tiny_model()
    with torch.no_grad():
        other.fc.bias += 1
    with pytest.raises(RunMismatchError, match=r"holds concepts of another run: model differs"):
        fit(other, folder, out, batch_size=6, gallery=False)
    result = fit(model, folder, out, n_concepts=K + 1, batch_size=6, overwrite=True)
    assert result.n_concepts == K + 1


def test_a_cut_shard_is_computed_again(model, folder, tmp_path):
    out = tmp_path / "out"
    first = fit(model, folder, out, batch_size=4, gallery=False)
    shard = out / "shards" / "000001.npz"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # a copy or a write stopped half-way
    with pytest.warns(RuntimeWarning, match=r"000001.npz' is damaged"):
        again, forwards = counted_fit(model, folder, out, batch_size=4, gallery=False)
    assert forwards == 4 + 1
    assert torch.equal(again.concepts, first.concepts)


# ----------------------------------------------------------------- outputs
def test_json_and_gallery(model, folder, tmp_path):
    out = tmp_path / "out"
    result = fit(model, folder, out, batch_size=6, top_k_images=4)
    summary = json.loads((out / "concepts.json").read_text())
    assert summary["n_concepts"] == K and summary["n_images"] == N_IMAGES
    assert summary["layer"] == result.layer == "layer4"
    assert summary["labels_unavailable_reason"] is None
    assert summary["run"]["concepts"]["n_concepts"] == K
    assert sum(c["energy_share"] for c in summary["concepts"]) == pytest.approx(1.0, abs=1e-5)
    for concept in summary["concepts"]:
        assert [c["index"] for c in concept["top_classes"]] == [
            c["index"] for c in sorted(concept["top_classes"], key=lambda c: -c["score"])
        ]
        assert set(concept["top_classes"][0]) == {"index", "name", "score", "probability"}
        images = concept["top_images"]
        assert len(images) == 4
        assert set(images[0]) == {"id", "index", "score", "predicted", "predicted_name"}
        scores = [image["score"] for image in images]
        assert scores == sorted(scores, reverse=True) and scores[-1] >= 0
    vectors = np.load(out / "concepts.npz")
    assert np.allclose(vectors["concepts"], result.concepts.numpy())
    page = (out / "concepts.html").read_text()
    for k in range(K):  # shown numbered from 1
        assert summary["concepts"][k]["name"] == f"concept {k + 1}"
        assert f'id="concept-{k + 1}"' in page and (out / f"concept_{k + 1}.png").is_file()
        section = page.split(f'id="concept-{k + 1}"')[1].split("</section>")[0]
        assert section.count("<img ") == 4
        for image in summary["concepts"][k]["top_images"]:
            assert image["id"] in section
    assert page.count('src="data:image/jpeg;base64,') == 4 * K
    assert not re.search(r'(src|href)="(https?:)?//', page)  # self-contained


def test_no_classes_for_a_layer_the_head_does_not_read(model, folder, tmp_path):
    result = fit(model, folder, tmp_path / "out", layer="layer3", batch_size=12)
    assert result.top_classes == [[] for _ in range(K)]
    # layer3 has 192 channels, the classifier reads layer4's 96: the reason says so
    assert result.labels_unavailable_reason.startswith("The classifier reads 96 features")
    page = (tmp_path / "out" / "concepts.html").read_text()
    assert page.count("no classes: The classifier reads 96 features") == K


# ----------------------------------------------------------------- CLI
def test_cli_end_to_end(folder, tmp_path, capsys):
    out = tmp_path / "cli"
    base = ["concepts", str(folder), "--model", "test_resnet", "--out", str(out)]
    assert main([*base, "--concepts", "2", "--batch-size", "6", "--top-images", "3"]) == 0
    captured = capsys.readouterr()
    assert "2 concepts of layer backbone.layer4 over 12 images" in captured.out
    assert f"html: {out / 'concepts.html'}" in captured.out
    assert captured.err.index("concepts: 12 images, 12 to extract") < captured.err.index("extract")
    assert (out / "concepts.json").is_file()
    # rerun with another K: the run identity stops it, one line, exit 2; K is the only
    # difference (the CLI draws test_resnet's random weights from a fixed seed)
    assert main([*base, "--concepts", "3", "--batch-size", "6"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1
    assert errors[0].startswith(
        f"timmlens concepts: error: '{out}' holds concepts of another run: n_concepts 2 vs 3; "
        f"use a new output folder (--out), or --overwrite"
    )
    assert main([*base, "--concepts", "99999"]) == 2
    assert "n_concepts=99999 is more than the" in capsys.readouterr().err


# ----------------------------------------------------------------- torchrun
SCRIPT = """
import sys
import torch
from timmlens.analysis import fit_concepts
from timmlens.testing import explainable_model

torch.set_num_threads(1)  # torchrun's ranks run one thread each: same float sums
model = explainable_model("test_resnet", num_classes=10, seed=0)
model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 64, 64)}
result = fit_concepts(model, sys.argv[1], n_concepts=3, out=sys.argv[2], batch_size=4,
                      progress=False, gallery=False)
torch.save(result.concepts, f"{sys.argv[2]}/rank{this_rank()}.pt")
"""


def test_torchrun_two_ranks_equal_one_process(folder, tmp_path, torchrun):
    torchrun(SCRIPT, folder, tmp_path / "dist")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = fit(tiny_model(), folder, tmp_path / "single", batch_size=4, gallery=False)
    finally:
        torch.set_num_threads(threads)
    for rank in (0, 1):
        concepts = torch.load(tmp_path / "dist" / f"rank{rank}.pt")
        assert torch.equal(concepts, single.concepts)
    shards = sorted(p.name for p in (tmp_path / "dist" / "shards").glob("*.npz"))
    assert shards == ["000000.npz", "000001.npz", "000002.npz"]


def test_unreadable_images_are_skipped_and_listed(model, folder, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in sorted(p.name for p in folder.glob("*.png"))[:4]:
        (data / name).write_bytes((folder / name).read_bytes())
    for name in ("img04.png", "img05.png"):  # a whole batch of broken files
        (data / name).write_bytes(b"not a png")
    with pytest.warns(RuntimeWarning) as warned:
        result = fit(model, data, tmp_path / "out", batch_size=2)
    skipped = [str(w.message).split(":")[1] for w in warned if "skipped image" in str(w.message)]
    assert skipped == [" skipped image 'img04.png'", " skipped image 'img05.png'"]
    assert result.n_images == 4 and sorted(result.skipped) == ["img04.png", "img05.png"]
    summary = json.loads((tmp_path / "out" / "concepts.json").read_text())
    assert [s["id"] for s in summary["skipped"]] == ["img04.png", "img05.png"]
    shown = {image["id"] for concept in summary["concepts"] for image in concept["top_images"]}
    assert shown <= {f"img{i:02d}.png" for i in range(4)}


def test_float16_shards_halve_the_disk_and_keep_the_concepts(model, folder, tmp_path):
    full = fit(model, folder, tmp_path / "f32", batch_size=N_IMAGES, gallery=False)
    half = fit(model, folder, tmp_path / "f16", batch_size=N_IMAGES, gallery=False, dtype="float16")
    sizes = [(tmp_path / d / "shards" / "000000.npz").stat().st_size for d in ("f32", "f16")]
    assert sizes[1] < 0.6 * sizes[0]
    scale = float(full.concepts.abs().max())
    assert float((half.concepts - full.concepts).abs().max()) < 0.02 * scale
