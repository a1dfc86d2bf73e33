"""The interactive HTML page: self-contained, small, escaped, and drawn by a real browser.

The browser part runs headless Chromium on the written file (``/usr/bin/chromium``;
``make test`` installs it where apt is available) and is skipped without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timmlens import ImageClassifier, prepare_images
from timmlens.interpretation import AttentionVisualizer, GradCAM
from timmlens.testing import make_explainable
from timmlens.viz.interactive import ERRORS_ATTRIBUTE, READY_ATTRIBUTE, explanation_html

EVIL = "<script>alert(1)</script>"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """The page for a tiny ViT on a flat grey photo: every colour in it is the heatmap's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = ImageClassifier(make_explainable(timm.create_model("test_vit")))
    photo = Image.fromarray(np.full((150, 200, 3), 128, dtype=np.uint8))
    batch = prepare_images(photo, model)
    visualizer = AttentionVisualizer(model)
    attention = visualizer.get_attention_maps(photo).cls_to_patches(head="mean")  # (L, h, w)
    heatmaps = {
        "gradcam": GradCAM(model)(photo, target_class=1),
        EVIL: visualizer.attention_rollout(photo),
    }
    path = tmp_path_factory.mktemp("html") / "explanation.html"
    return explanation_html(
        path,
        photo,
        heatmaps,
        batch.geometries[0],
        attention={f"block {i}": attention[i] for i in range(attention.shape[0])},
        label=EVIL,
        probability=0.25,
        note="random weights",
        model_name=EVIL,
    )


def test_page_is_self_contained_small_and_escaped(page):
    text = page.read_text(encoding="utf-8")
    assert EVIL not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # Nothing is fetched from anywhere: no script, image or style source outside the page.
    assert not re.search(r"<script[^>]*\bsrc=", text)
    assert not re.search(r"(src|href)=\"https?:", text)
    assert "random weights" in text
    assert page.stat().st_size < 1.5 * 2**20  # plotly.js alone was 4.8 MB


def test_real_photo_pages_stay_under_one_and_a_half_megabytes(tmp_path):
    """A full-size photo, four methods and twelve attention blocks (plotly pages: 5-7 MB)."""
    from skimage import data

    photo = data.astronaut()  # 512 x 512
    rng = np.random.default_rng(0)
    maps = {name: torch.from_numpy(rng.random((224, 224))) for name in "abcd"}
    blocks = {f"block {i}": torch.from_numpy(rng.random((14, 14))) for i in range(12)}
    page = explanation_html(tmp_path / "big.html", photo, maps, attention=blocks, label="x")
    assert page.stat().st_size < 1.5 * 2**20, page.stat().st_size


def _chromium(args: list[str], tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        pytest.skip(
            "headless Chromium not found at /usr/bin/chromium; install it with "
            "'apt-get install chromium' (make test does this where apt is available)."
        )
    profile = tmp_path / f"profile-{name}"
    try:
        return subprocess.run(
            [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_page_plots_without_javascript_errors(page, tmp_path):
    run = _chromium(
        ["--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()], tmp_path, "dom"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert f'{READY_ATTRIBUTE}="2"' in dom, "the page did not finish plotting both figures"
    assert f'{ERRORS_ATTRIBUTE}="0"' in dom, re.findall(r'data-timmlens-last-error="[^"]*"', dom)
    assert "Uncaught" not in run.stderr, run.stderr[-2000:]
    # The hostile label is text in the page, never an element.
    assert EVIL not in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert dom.count('class="photo"') == 2  # the methods view and the attention view


def test_screenshot_shows_the_heatmap(page, tmp_path):
    shot = tmp_path / "screenshot.png"
    run = _chromium(
        ["--window-size=1000,800", f"--screenshot={shot}", page.as_uri()], tmp_path, "shot"
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, "the screenshot is blank"
    # The photo is flat grey, so saturated colours in the plot area come from the heatmap.
    plot = Image.fromarray(image[200:620, 100:800]).convert("HSV")
    hsv = np.asarray(plot)
    coloured = hsv[..., 1] > 80
    assert coloured.mean() > 0.2, f"only {coloured.mean():.1%} of the plot area is coloured"
    hues = np.unique(hsv[..., 0][coloured] // 16)
    assert len(hues) >= 3, f"the heatmap shows only hues {hues.tolist()}"
