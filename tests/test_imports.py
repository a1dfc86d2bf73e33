"""Imports: ``import timmlens`` loads no drawing or attribution library; the names resolve.

Captum, matplotlib, plotly and scipy load on first use (torchmetrics is no dependency:
it stays on the list so that it does not come back as an eager import). The checks run
in a fresh interpreter, because this test process has long imported them all.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import timmlens

HEAVY = ("captum", "matplotlib", "plotly", "torchmetrics", "scipy")
#: packages whose exports are lazy (PEP 562 ``__getattr__``)
LAZY_PACKAGES = (
    "timmlens",
    "timmlens.interpretation",
    "timmlens.analysis",
    "timmlens.viz",
    "timmlens.evaluation",
)


def _heavy_modules_after(statement: str) -> list[str]:
    """The HEAVY libraries in ``sys.modules`` after running ``statement`` in a new Python."""
    source = Path(timmlens.__file__).parents[1]  # the timmlens this test imported
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")]),
    }
    code = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_timmlens_loads_no_drawing_or_attribution_library():
    assert _heavy_modules_after("import timmlens") == []


def test_subpackages_and_cli_import_without_heavy_libraries():
    statement = (
        "import timmlens.interpretation, timmlens.interpretation.registry, timmlens.analysis, "
        "timmlens.viz, timmlens.viz.labels, timmlens.evaluation, timmlens.models.introspect, "
        "timmlens.cli"
    )
    assert _heavy_modules_after(statement) == []


def test_first_use_of_a_name_loads_its_library():
    loaded = _heavy_modules_after("from timmlens.interpretation import quick_explain")
    assert "matplotlib" in loaded


def test_api_md_names_resolve():
    from timmlens import ImageClassifier
    from timmlens.interpretation import (
        AttentionVisualizer,
        GradCAM,
        GradCAMPlusPlus,
        IntegratedGradients,
        SmoothGrad,
        compare_methods,
        quick_explain,
    )
    from timmlens.interpretation.metrics import ExplanationMetrics
    from timmlens.quick import compare_methods as defined_compare
    from timmlens.quick import quick_explain as defined_quick

    for cls in (ImageClassifier, GradCAM, GradCAMPlusPlus, IntegratedGradients, SmoothGrad):
        assert isinstance(cls, type)
    assert isinstance(AttentionVisualizer, type) and isinstance(ExplanationMetrics, type)
    assert quick_explain is defined_quick and compare_methods is defined_compare


@pytest.mark.parametrize("package_name", LAZY_PACKAGES)
def test_every_exported_name_resolves_and_is_listed(package_name):
    package = importlib.import_module(package_name)
    assert len(set(package.__all__)) == len(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert set(package.__all__) <= set(dir(package))


def test_lazy_names_are_the_defining_objects():
    from timmlens.interpretation import GradCAM
    from timmlens.interpretation.cam.gradcam import GradCAM as defined

    assert GradCAM is defined
    # error_report is also the name of its submodule: the package keeps the function.
    module = importlib.import_module("timmlens.analysis.error_report")
    assert timmlens.error_report is timmlens.analysis.error_report is module.error_report


@pytest.mark.parametrize("package_name", LAZY_PACKAGES)
def test_unknown_name_is_an_attribute_error(package_name):
    package = importlib.import_module(package_name)
    with pytest.raises(AttributeError, match=f"module '{package_name}' has no attribute 'GradCam'"):
        package.GradCam  # noqa: B018
    assert not hasattr(package, "GradCam")


def test_every_registered_method_class_is_exported_and_documented():
    import timmlens.interpretation as interpretation
    from timmlens.interpretation.registry import METHODS

    api = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    classes = {spec.cls for spec in METHODS.values() if spec.builtin}
    assert len(classes) == len(METHODS) >= 31
    for cls in classes:
        assert getattr(interpretation, cls.__name__) is cls, cls.__name__
        assert cls.__name__ in interpretation.__all__, cls.__name__
        assert f"::: timmlens.interpretation.{cls.__name__}\n" in api, cls.__name__
