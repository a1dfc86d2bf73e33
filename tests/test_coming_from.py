"""The "Coming from pytorch-grad-cam / torchcam / Captum" page runs, every tab of it."""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

PAGE = Path(__file__).resolve().parents[1] / "docs" / "coming_from.md"
TAB = re.compile(r'^=== "([^"]+)"\n\n((?:    .*\n|\n)+)', flags=re.M)
FENCE = re.compile(r"```python\n(.*?)```", flags=re.S)


SIZE = 64  # the page's 224 px, made smaller so every tab runs in a second or two


def shrunk(code: str) -> str:
    return code.replace("224", str(SIZE))


def setup_code() -> str:
    # offline: the torchvision weights the page names are not downloaded here
    code = FENCE.search(PAGE.read_text()).group(1)
    return shrunk(code.replace('weights="IMAGENET1K_V1"', "weights=None"))


def tabs() -> list[tuple[str, str, str]]:
    """``(section, tab, code)`` for every tab of the page."""
    found = []
    for section in re.split(r"^## ", PAGE.read_text(), flags=re.M)[1:]:
        title = section.splitlines()[0]
        for name, body in TAB.findall(section):
            found.append((title, name, FENCE.search(textwrap.dedent(body)).group(1)))
    return found


def test_every_task_has_a_timmlens_tab_and_a_peer() -> None:
    by_task: dict[str, list[str]] = {}
    for title, name, _ in tabs():
        by_task.setdefault(title, []).append(name)
    assert len(by_task) >= 6
    for title, names in by_task.items():
        assert names[0] == "timmlens" and len(names) >= 2, title


@pytest.mark.parametrize(
    ("title", "name", "code"), tabs(), ids=[f"{t[:20]}-{n}" for t, n, _ in tabs()]
)
def test_the_tab_runs(title: str, name: str, code: str, tmp_path, monkeypatch) -> None:
    del title
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(setup_code(), "coming_from.md", "exec"), namespace)
        exec(compile(shrunk(code), f"coming_from.md[{name}]", "exec"), namespace)
    if name != "timmlens":
        return  # the peers' tabs only have to run (pytorch-grad-cam leaves .grad set)
    model = namespace["model"]
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    if "heatmap" in namespace:
        heatmap = namespace["heatmap"]
        assert tuple(heatmap.shape[-2:]) == (SIZE, SIZE)
        assert 0 <= heatmap.min() <= heatmap.max() <= 1
