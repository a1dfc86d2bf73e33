"""The concept gallery's feature visualisations and quality figures (fit_concepts with
visualize_steps), reruns and stops in the same folder, the CLI option, and dictionaries
on a ViT's patch tokens (class and register tokens left out)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import timmlens.analysis.concept_visuals as visuals
from timmlens.analysis import fit_concepts
from timmlens.analysis.concept_maps import concept_maps
from timmlens.analysis.concept_store import ShardStore
from timmlens.cli import main
from timmlens.data import prepare_images
from timmlens.testing import explainable_model

SIDE = 64
K = 3
N_IMAGES = 10
PNG = 'src="data:image/png;base64,'


class Pictures(Dataset):
    def __init__(self, pictures):
        self.pictures = pictures

    def __len__(self):
        return len(self.pictures)

    def __getitem__(self, index):
        return self.pictures[index]


def small(model: torch.nn.Module) -> torch.nn.Module:
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, SIDE, SIDE)}
    return model


@pytest.fixture(scope="module")
def model():
    return small(explainable_model("test_resnet", num_classes=10, seed=0))


@pytest.fixture(scope="module")
def pictures(photos):
    rng = np.random.default_rng(0)
    out = []
    for i in range(N_IMAGES):
        photo = list(photos.values())[i % len(photos)]
        h, w = photo.shape[:2]
        top, left = rng.integers(0, h // 3), rng.integers(0, w // 3)
        crop = np.ascontiguousarray(photo[top : top + 2 * h // 3, left : left + 2 * w // 3])
        out.append(np.asarray(Image.fromarray(crop).resize((SIDE, SIDE))))
    return Pictures(out)


def fit(model, data, out, **options):
    options = {
        "n_concepts": K,
        "layer": "layer3",
        "epochs": 3,
        "batch_size": 5,
        "progress": False,
        "top_k_images": 2,
        "method": "sae-topk",
        "stability": False,
        **options,
    }
    return fit_concepts(model, data, out=out, **options)


def sections(page: str) -> list[str]:
    return [page.split(f'id="concept-{k}"')[1].split("</section>")[0] for k in range(1, K + 1)]


class Counting:
    """visualize_concept, counted; raises KeyboardInterrupt on call number ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls, self.stop_at = 0, stop_at
        self.real = visuals.visualize_concept

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


# ----------------------------------------------------------------- the page
def test_one_visualisation_per_concept_when_asked_and_the_quality_figures(
    model, pictures, tmp_path, monkeypatch
):
    counting = Counting()
    monkeypatch.setattr(visuals, "visualize_concept", counting)
    result = fit(model, pictures, tmp_path / "out", visualize_steps=2)
    page = result.html_path.read_text()
    assert counting.calls == K
    for k, section in enumerate(sections(page), start=1):
        assert section.count(PNG) == 1 and section.count('class="feature-vis"') == 1
        assert f'alt="feature visualisation of concept {k}"' in section
        assert section.count("<img ") == 1 + 2  # the visualisation, then the top images
        assert section.index(PNG) < section.index("data:image/jpeg")
    assert page.count(PNG) == K and "MACO, 2 steps" in page
    # the cached pictures: the model's input size, keyed, no partial file left
    folder = tmp_path / "out" / visuals.VISUALIZATION_DIR
    assert sorted(p.name for p in folder.iterdir()) == [f"concept_{k}.png" for k in (1, 2, 3)]
    with Image.open(folder / "concept_2.png") as picture:
        assert picture.size == (SIDE, SIDE) and len(picture.text[visuals.KEY_FIELD]) == 64
    # the quality figures, as measured
    quality = result.quality
    table = page.split('<table class="quality">')[1].split("</table>")[0]
    assert f"{quality['r2']:.3f} (held-out images, {quality['r2_rows']} positions)" in table
    assert f"{quality['dead_codes']} ({quality['dead_fraction']:.1%})" in table
    assert f"{quality['active_codes']:.1f}" in table and "not measured" in table
    assert not re.search(r'(src|href)="(https?:)?//', page)  # still self-contained


def test_no_visualisation_by_default(model, pictures, tmp_path, monkeypatch):
    counting = Counting()
    monkeypatch.setattr(visuals, "visualize_concept", counting)
    result = fit(model, pictures, tmp_path / "out", method="nmf", stability=True)
    page = result.html_path.read_text()
    assert counting.calls == 0 and PNG not in page and 'class="feature-vis"' not in page
    assert not (tmp_path / "out" / visuals.VISUALIZATION_DIR).exists()
    table = page.split('<table class="quality">')[1].split("</table>")[0]
    assert "in-sample: NMF is fitted on every image" in table
    assert f"{result.quality['stability']:.3f} mean matched cosine" in table


def test_rerun_reuses_the_pictures_and_a_stop_leaves_the_page_whole(
    model, pictures, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    fit(model, pictures, out)  # a page without visualisations
    before = (out / "concepts.html").read_text()
    stopping = Counting(stop_at=2)
    monkeypatch.setattr(visuals, "visualize_concept", stopping)
    with pytest.raises(KeyboardInterrupt):
        fit(model, pictures, out, visualize_steps=2)
    assert (out / "concepts.html").read_text() == before  # the old page, whole
    folder = out / visuals.VISUALIZATION_DIR
    assert [p.name for p in folder.iterdir()] == ["concept_1.png"]  # no half picture
    # the rerun draws only what is missing, and the same page comes out every time
    counting = Counting()
    monkeypatch.setattr(visuals, "visualize_concept", counting)
    first = fit(model, pictures, out, visualize_steps=2).html_path.read_text()
    assert counting.calls == K - 1
    again = fit(model, pictures, out, visualize_steps=2).html_path.read_text()
    assert counting.calls == K - 1 and again == first
    # other options: every picture drawn again
    fit(model, pictures, out, visualize_steps=3)
    assert counting.calls == 2 * K - 1
    assert not list(out.glob("*.partial")) and not list(folder.glob("*.partial"))


def test_bad_visualize_steps_and_the_cli(model, pictures, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"visualize_steps must be >= 0 \(0: no feature"):
        fit(model, pictures, tmp_path / "bad", visualize_steps=-1)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(N_IMAGES):
        Image.fromarray(pictures[i]).save(folder / f"{i}.png")
    out = tmp_path / "cli"
    args = ["concepts", str(folder), "--model", "test_resnet", "--out", str(out)]
    args += ["--concepts", "2", "--layer", "layer3", "--visualize-steps", "2"]
    assert main(args) == 0, capsys.readouterr().err
    page = (out / "concepts.html").read_text()
    assert page.count(PNG) == 2 and "Quality of the fit" in page


# ----------------------------------------------------------------- a ViT
def test_dictionary_on_vit_patch_tokens(pictures, tmp_path):
    """test_vit with a class token and 2 register tokens at 64 px: 3 prefix tokens and a
    4x4 patch grid. The shards hold the patch tokens only, on the grid; the concepts' maps
    live on that grid; the gallery (with visualisations) is written."""
    vit = small(explainable_model("test_vit", num_classes=10, seed=0, reg_tokens=2))
    assert vit.num_prefix_tokens == 3
    result = fit(
        vit, pictures, tmp_path / "vit", layer=None, n_concepts=6, visualize_steps=2, epochs=5
    )
    module = vit.get_submodule(result.layer)
    captured = []
    handle = module.register_forward_hook(lambda _m, _a, out: captured.append(out.detach()))
    store = ShardStore(tmp_path / "vit", 5, N_IMAGES)
    shard = store.read(0)
    inputs = prepare_images([pictures[i] for i in shard.indices.tolist()], vit).tensor
    try:
        with torch.no_grad():
            vit(inputs)
    finally:
        handle.remove()
    tokens = captured[-1]  # (B, 3 + 16, 64)
    assert tokens.shape == (5, 19, 64)
    grid = tokens[:, 3:].reshape(5, 4, 4, 64).permute(0, 3, 1, 2)
    assert shard.activations.shape == (5, 64, 4, 4)
    torch.testing.assert_close(torch.from_numpy(shard.activations), grid, atol=1e-4, rtol=1e-4)
    maps = concept_maps(result, vit, [pictures[0]], upsample=False)
    assert maps.shape == (1, 6, 4, 4) and bool((maps >= 0).all())
    assert concept_maps(result, vit, [pictures[0]]).shape == (1, 6, SIDE, SIDE)
    # the head reads the class token: concepts get no classes, and the reason says why
    assert "class token" in result.labels_unavailable_reason
    page = result.html_path.read_text()
    assert page.count(PNG) == 6 and page.count('<section class="concept"') == 6
