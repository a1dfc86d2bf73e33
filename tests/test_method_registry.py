"""The method registry: one name per method, lazy filling, and a new method with no other edit.

``test_a_registered_toy_method_appears_everywhere`` is the whole diff of adding a method:
one decorated class. It then shows up in ``methods()``, the CLI's choices and help,
``compare_methods``'s default list, ``evaluate`` rows and the generated docs page.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import timmlens.interpretation.registry as registry_module
from timmlens.cli import _parser
from timmlens.errors import UnsupportedModelError
from timmlens.interpretation.base import Explainer, Explanation, normalize_maps
from timmlens.interpretation.registry import (
    METHODS,
    as_explainer,
    create_explainer,
    default_comparison,
    layer_methods,
    methods,
    register_method,
    resolve_method,
    scoped_registry,
    unregister_method,
)

ROOT = Path(__file__).parents[1]
DOCS_PAGE = ROOT / "docs" / "methods" / "index.md"
sys.path.insert(0, str(ROOT / "tools"))
from methods_page import methods_markdown  # noqa: E402 - the generator lives in tools/

CAM = ["fullgrad", "gradcam", "gradcampp", "scorecam", "ablationcam", "shapleycam", "finercam"]
CAM += ["gradcamelementwise", "fem", "kpcacam", "sobelcam", "sess", "hirescam", "xgradcam"]
CAM += ["layercam", "eigencam", "eigengradcam", "randomcam"]
#: CAM methods without a target layer (FullGrad: every bias layer; SobelCAM: the input image)
LAYERLESS_CAM = ["fullgrad", "sobelcam"]
INPUT = ["centerprior", "deeplift", "deepliftshap", "gradientshap", "saliency", "inputxgradient"]
INPUT += ["guidedbackprop", "deconvolution", "guidedgradcam", "ig", "lrp", "occlusion"]
INPUT += ["featureablation", "shapley", "kernelshap", "lime", "rise", "smoothgrad"]
ATTENTION = ["attnlrp", "cplrp", "chefer", "legrad", "rollout"]
BUILTIN = CAM + INPUT + ATTENTION
#: what compare_methods runs when no methods are named
COMPARED = ["gradcam", "gradcampp", "ig", "smoothgrad", "rollout"]
#: built-ins are ordered by module and line within their engine, whatever was imported first


def _toy_saliency_class() -> type[Explainer]:
    """A gradient saliency method (|dy/dx|, max over channels): a complete new method."""

    @register_method(
        "toy_saliency",
        title="Toy saliency",
        kind="input",
        aliases=("toy-grad",),
        summary="largest absolute input gradient over the channels",
        paper="Simonyan et al., 2014",
        formula="max_c |dy/dx_c|",
        cost="1 forward + 1 backward",
    )
    class ToySaliency(Explainer):
        def attribute(self, inputs, targets, **kwargs):
            x = inputs.detach().clone().requires_grad_(True)
            logits = self.model(x)
            chosen = logits.argmax(1) if targets is None else torch.tensor(targets, device=x.device)
            (grad,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), x)
            heatmap = normalize_maps(grad.abs().amax(1))
            return Explanation(heatmap=heatmap, targets=chosen.cpu(), logits=logits.detach())

    return ToySaliency


def _cli_command(command: str):
    """The argparse parser of ``timmlens COMMAND``, built afresh from the registry."""
    return next(a for a in _parser()._actions if a.dest == "command").choices[command]


def _cli_choices(command: str, option: str) -> list[str]:
    actions = _cli_command(command)._actions
    return list(next(a for a in actions if option in a.option_strings).choices)


def test_builtin_methods_in_registry_order_with_their_canonical_names(small, vit):
    assert methods() == BUILTIN and list(METHODS) == BUILTIN
    layered = [name for name in CAM if name not in LAYERLESS_CAM]
    assert methods(kind="cam") == CAM and layer_methods() == [*layered, "guidedgradcam"]
    assert methods(kind="input") == INPUT
    assert methods(model=small) == CAM + INPUT
    assert methods(kind="cam", model=vit) == [n for n in CAM if n not in ("fullgrad",)]
    assert methods(kind="attention", model=vit) == ATTENTION
    assert default_comparison(small) == COMPARED[:-1] and default_comparison(vit) == COMPARED
    for name in BUILTIN:
        spec = METHODS[name]
        assert spec.cls.name == name, "the explainer names itself as the registry does"
        assert spec.title and spec.summary and spec.cost and spec.paper
    assert create_explainer("gradcam++", small).name == "gradcampp"
    assert create_explainer("integrated_gradients", small, n_steps=2).name == "ig"
    assert create_explainer("attention_rollout", vit).name == "rollout"
    with pytest.raises(ValueError, match="kind='layer' is not an engine"):
        methods(kind="layer")


def test_as_explainer_passes_instances_and_builds_names(small, vit):
    built = as_explainer("IG", small, n_steps=3)
    assert built.n_steps == 3 and as_explainer(built, small) is built
    with pytest.raises(ValueError, match="apply to a method name, not an explainer instance"):
        as_explainer(built, small, n_steps=4)
    with pytest.raises(TypeError, match="method must be a name such as 'gradcam'"):
        as_explainer(3, small)
    with pytest.raises(UnsupportedModelError, match="GradCAM"):
        as_explainer("rollout", small)
    with pytest.raises(TypeError, match=r"method 'ig' got unknown option.*target_layer applies"):
        as_explainer("ig", small, target_layer="layer4")
    with pytest.raises(TypeError, match=r"method 'rollout' got unknown option.*no options"):
        as_explainer("rollout", vit, head_fusion="max")
    with pytest.raises(ValueError, match="Did you mean 'smoothgrad'"):
        resolve_method("smoothgrd")


def test_registration_errors_name_the_fix():
    with pytest.raises(ValueError, match="is not an engine"):
        register_method("x", title="X", kind="layer")
    with pytest.raises(ValueError, match="lower case letters"):
        register_method("Grad CAM", title="X", kind="cam")
    with scoped_registry():
        with pytest.raises(ValueError, match="already registered by GradCAM"):

            @register_method("gradcam", title="Other", kind="cam")
            class Other(Explainer):
                def attribute(self, inputs, targets, **kwargs):
                    raise NotImplementedError

        with pytest.raises(ValueError, match=r"alias 'gradcam\+\+' .* already names method"):

            @register_method("other", title="Other", kind="cam", aliases=("GradCAM++",))
            class Other2(Explainer):
                def attribute(self, inputs, targets, **kwargs):
                    raise NotImplementedError

    assert methods() == BUILTIN


def test_a_registered_toy_method_appears_everywhere(small, tmp_path):
    from timmlens.evaluation import evaluate
    from timmlens.quick import compare_methods

    with scoped_registry():
        toy = _toy_saliency_class()
        # The registry, its kinds and applicability, aliases at the edge.
        # grouped with its engine
        assert methods()[-len(ATTENTION) - 1 :] == ["toy_saliency", *ATTENTION]
        assert "toy_saliency" in methods(kind="input", model=small)
        assert resolve_method("Toy-Grad").cls is toy and toy.name == "toy_saliency"
        # The CLI: choices of every command and the --method help.
        for command, option in (("explain", "--method"), ("evaluate", "--methods")):
            assert "toy_saliency" in _cli_choices(command, option)
        assert "toy_saliency" in _cli_choices("report", "--method")
        # --help stays short; `timmlens methods` lists it with its summary and options
        from timmlens.cli.listings import methods_listing

        help_text = " ".join(_cli_command("explain").format_help().split())
        assert "options and costs: timmlens methods" in help_text
        listing = methods_listing()
        assert "toy_saliency (input): largest absolute input gradient over the channels" in listing
        # compare_methods: a registered method is in its default list (compared_by_default).
        photo = torch.rand(3, 32, 32)
        options = {"ig": {"n_steps": 2}, "smoothgrad": {"n_samples": 2}}
        comparison = compare_methods(small, photo, save_path=None, method_options=options)
        assert list(comparison.heatmaps) == default_comparison(small)
        assert list(comparison.heatmaps)[-1] == "toy_saliency"
        assert comparison.heatmaps["toy_saliency"].shape == (32, 32)
        # evaluate: rows keyed by the registry name.
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        data = TensorDataset(images, torch.tensor([1, 2]))
        summary = evaluate(
            small,
            data,
            methods=["toy-grad"],
            metrics=["deletion"],
            out=tmp_path,
            metric_options={"steps": 4},
            progress=False,
        )
        assert list(summary.table) == ["toy_saliency"]
        # The docs page.
        page = methods_markdown()
        assert "## `toy_saliency`: Toy saliency" in page and "`max_c |dy/dx_c|`" in page
    assert "toy_saliency" not in methods() and methods() == BUILTIN
    assert "toy_saliency" not in _cli_choices("explain", "--method")


def test_unregister_method_removes_name_and_aliases():
    with scoped_registry():
        spec = unregister_method("gradcampp")
        assert spec.cls.__name__ == "GradCAMPlusPlus" and "gradcampp" not in methods()
        with pytest.raises(ValueError, match="unknown method 'gradcam\\+\\+'"):
            resolve_method("gradcam++")
        with pytest.raises(KeyError, match="no method 'gradcampp' is registered"):
            unregister_method("gradcampp")
    assert resolve_method("gradcam++").name == "gradcampp"


def test_the_docs_page_is_generated_from_the_registry():
    assert DOCS_PAGE.read_text(encoding="utf-8") == methods_markdown(), (
        "docs/methods/index.md is out of date; run "
        "`python tools/methods_page.py docs/methods/index.md`"
    )
    for name in BUILTIN:
        spec = METHODS[name]
        assert f"## `{name}`: {spec.title}" in DOCS_PAGE.read_text(encoding="utf-8")


def test_the_registry_fills_itself_on_first_query_only():
    code = (
        "import sys\n"
        "import timmlens.interpretation.registry as r\n"
        "print('timmlens.interpretation.cam.gradcam' in sys.modules)\n"
        "print(r.methods() == " + repr(BUILTIN) + ")\n"
        "print('captum' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    # No method module before the first query; filling the registry loads no Captum.
    assert out == ["False", "True", "False"]


def test_a_user_method_registered_before_any_query_clashes_at_its_own_class():
    # In a fresh process nothing has queried the registry yet: the clash with the
    # built-in alias must be reported at the user's decorator, and the registry must
    # keep working for everyone afterwards.
    code = (
        "from timmlens.interpretation.registry import register_method, methods\n"
        "from timmlens.interpretation.base import Explainer\n"
        "try:\n"
        "    @register_method('toycam', title='Toy', kind='cam', aliases=('ig',))\n"
        "    class Toy(Explainer):\n"
        "        def attribute(self, inputs, targets, **kwargs): ...\n"
        "except ValueError as error:\n"
        "    print('clash:', error)\n"
        "print(methods())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "clash:" in out and "'ig'" in out
    assert out.strip().splitlines()[-1] == repr(BUILTIN)


def test_quick_options_are_constructor_options_and_cheaper():
    quick = {name: dict(METHODS[name].quick_options) for name in BUILTIN}
    assert quick["ig"] == {"n_steps": 4} and quick["rise"] == {"n_masks": 32}
    for name, options in quick.items():
        known = METHODS[name].options()
        assert set(options) <= set(known), name
        for option, value in options.items():
            default = known[option].default
            if option.startswith("n_"):  # fewer steps, samples, baselines or masks
                assert value < default, f"{name}.{option}={value} is not cheaper than {default}"
    with scoped_registry(), pytest.raises(TypeError, match=r"unknown quick option\(s\) n_stpes"):

        @register_method("toy_quick", title="Toy", kind="input", quick_options={"n_stpes": 2})
        class ToyQuick(Explainer):
            def __init__(self, model, n_steps: int = 8):
                super().__init__(model)

            def attribute(self, inputs, targets, **kwargs):
                raise NotImplementedError


def test_deprecated_names_and_the_page_generator_left_the_package():
    for name in ("available_methods", "method_names", "methods_markdown", "main"):
        assert not hasattr(registry_module, name), name
    assert not hasattr(METHODS["gradcam"], "factory")
