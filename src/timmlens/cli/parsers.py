"""The ``timmlens`` command's arguments: one parser, one function per sub-command.

Every command shows its defaults in ``--help``, writes under ``outputs/<command>/`` unless
``--out`` says otherwise, and shares ``--model`` and ``--device`` (`add_model_arguments`).
A bad option value is one line and exit status 2 (`EXIT_USER_ERROR`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .. import __version__
from ..devices import DEVICE_CHOICES
from ..interpretation.registry import METHODS, layer_methods, methods, resolve_method
from ..models import BUNDLED_SPEC

EXIT_USER_ERROR = 2
#: the model of every command without ``--model``: real ImageNet weights, offline
DEFAULT_MODEL = BUNDLED_SPEC
#: every command's files go to ``OUTPUT_ROOT/<command>/`` unless ``--out`` says otherwise
OUTPUT_ROOT = Path("outputs")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after every option's help, unless there is nothing to show.

    No default is shown for flags (``False``), for options whose absence means something
    the help already says (``None``), or where the help states it in its own words.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


MODEL_HELP = (
    f"timm name, hf-hub: id, local folder, checkpoint, or {BUNDLED_SPEC} (default: "
    f"{DEFAULT_MODEL}, real ImageNet weights shipped with timmlens; the command says so "
    f"when it uses it)"
)


def add_model_arguments(parser: argparse.ArgumentParser, *, model: bool = True) -> None:
    """``--model`` (unless the command takes it as a positional), your own checkpoint
    (``--weights``, ``--num-classes``, ``--class-names``) and ``--device``: the same
    options, help and defaults on every command that runs a model."""
    if model:
        parser.add_argument("--model", default=None, help=MODEL_HELP)
    group = parser.add_argument_group("your own model")
    group.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="your checkpoint (.pth/.pt/.bin state dict or .safetensors) for the timm "
        "architecture named by --model, e.g. --model resnet18 --weights finetuned.pth",
    )
    group.add_argument(
        "--num-classes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="classes of the model's head (default: read from the --weights head, else the "
        "model's own); another number than the model's puts an untrained head on it",
    )
    group.add_argument(
        "--class-names",
        default=None,
        metavar="FILE|a,b,c",
        help="one name per class in index order: a file (one name a line, or a JSON "
        "list) or a comma-separated list (default: the model's own names)",
    )
    group.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an option the model was created with, as timm.create_model takes it (a "
        "Python literal), e.g. --model-arg drop_path_rate=0.1 --model-arg img_size=384; "
        "repeatable",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help=f"where the model runs: {DEVICE_CHOICES} (auto: CUDA, then MPS, then CPU)",
    )


def default_out(command: str, name: str = "") -> str:
    """The default ``--out`` of ``command``: ``outputs/<command>/`` (and ``name`` in it)."""
    return str(OUTPUT_ROOT / command / name) if name else str(OUTPUT_ROOT / command)


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        # ArgumentTypeError's message is shown as it is, after the option's name.
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got '{text}'")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1)


def _non_negative_int(text: str) -> int:
    return _integer(text, 0)


def _method_name(text: str) -> str:
    """A method's canonical name for an alias (``gradcam++`` -> ``gradcampp``); argparse
    then checks it against the choices (an unknown name is returned as given)."""
    try:
        return resolve_method(text).name
    except (TypeError, ValueError):
        return text


def _methods_help(default: str) -> str:
    """Short: the default and where the list is (``timmlens methods``)."""
    return (
        f"explanation method (default: {default}); the {len(methods())} methods, their "
        f"options and costs: timmlens methods"
    )


def _add_method_option(parser: argparse.ArgumentParser) -> None:
    """``--method-option NAME=VALUE`` (repeatable): a constructor option of the methods."""
    parser.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a method option, repeatable: n_steps=64 (every chosen method that takes it) "
        "or ig.n_steps=64 (that method); see: timmlens methods",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``timmlens`` parser: one sub-command per verb, in the order ``--help`` lists them."""
    parser = _Parser(
        prog="timmlens",
        description="Explanations for timm image classifiers.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, formatter_class=_HelpFormatter, **kwargs)

    for add in (
        _add_explain,
        _add_evaluate,
        _add_benchmark,
        _add_report,
        _add_concepts,
        _add_visualize,
        _add_layers,
        _add_listings,
        _add_groundtruth,
    ):
        add(command)
    return parser


def _add_explain(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``timmlens explain``: explain images and save figures (timmlens.quick_explain)."""
    explain = command(
        "explain",
        help="explain images and save overlays",
        description="Explain images with one method and save figures.",
    )
    explain.add_argument(
        "images",
        nargs="+",
        help="image files or folders (every image under a folder, recursively, sorted)",
    )
    add_model_arguments(explain)
    explain.add_argument(
        "--method",
        default="gradcam",
        type=_method_name,
        choices=sorted(METHODS),
        metavar="METHOD",
        help=_methods_help("gradcam"),
    )
    explain.add_argument(
        "--target",
        default=None,
        help="class to explain, an index or a name such as tabby (default: the predicted class)",
    )
    explain.add_argument(
        "--layer",
        default=None,
        help=f"target layer of the layer methods ({', '.join(layer_methods())}); "
        f"default: the family's layer",
    )
    _add_method_option(explain)
    explain.add_argument(
        "--quick",
        action="store_true",
        help="the method's quick options (fewer steps, samples or masks; see: timmlens "
        "methods); --method-option values win",
    )
    explain.add_argument("--out", default=default_out("explain"), help="output folder")
    explain.add_argument("--html", action="store_true", help="also write interactive HTML")


_DATA_HELP = (
    "image folder; a sub-folder named by a class (index, class name, WordNet id) labels its "
    "images, which are explained for that class"
)


def _add_targets(parser: argparse.ArgumentParser) -> None:
    """``--explain-prediction`` and ``--quick``: the same options on ``evaluate`` and
    ``benchmark``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a first look in minutes: 16 insertion/deletion steps and each method's quick "
        "options (fewer steps, samples, masks); outputs say it is not comparable to papers",
    )
    parser.add_argument(
        "--explain-prediction",
        action="store_true",
        help="explain every image for its predicted class (by default a labelled image, "
        "one in a sub-folder named by a class, is explained for its true class)",
    )


def _add_evaluate(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``timmlens evaluate``: explain and score a dataset (timmlens.evaluate)."""
    from ..interpretation.metrics.registry import metrics as heatmap_metrics

    evaluate = command(
        "evaluate",
        help="explain and score a dataset",
        description="Explain and score every image of a folder; writes rows and a summary.",
    )
    evaluate.add_argument("data", help=_DATA_HELP)
    add_model_arguments(evaluate)
    evaluate.add_argument(
        "--methods",
        nargs="+",
        default=["gradcam"],
        type=_method_name,
        choices=sorted(METHODS),
        metavar="METHOD",
        help=_methods_help("gradcam"),
    )
    evaluate.add_argument(
        "--metrics",
        nargs="+",
        default=["insertion", "deletion"],
        choices=heatmap_metrics("heatmap"),
        metavar="METRIC",
        help=f"heatmap metrics: {', '.join(heatmap_metrics('heatmap'))} (see: timmlens metrics)",
    )
    _add_method_option(evaluate)
    evaluate.add_argument(
        "--out", default=default_out("evaluate"), help="output folder (rows and summary)"
    )
    evaluate.add_argument(
        "--batch-size", type=_positive_int, default=8, help="images per explanation batch"
    )
    evaluate.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="insertion/deletion steps (default: RISE, 224 pixels per step)",
    )
    evaluate.add_argument(
        "--format", default="jsonl", choices=["jsonl", "csv"], help="rows file format"
    )
    evaluate.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the rows and run identity already in --out and start afresh "
        "(by default a run resumes rows of the same model, options and images, and stops "
        "if --out holds another run's)",
    )
    evaluate.add_argument("--no-resume", action="store_true", help="the same as --overwrite")
    evaluate.add_argument(
        "--save-maps",
        action="store_true",
        help="also keep every heatmap as OUT/maps/<method>/<image>.npz (read them with "
        "timmlens.load_explanation)",
    )
    evaluate.add_argument(
        "--on-error",
        default="skip",
        choices=["skip", "fail"],
        help="an unreadable image: skip it with a warning (counted in the summary) or stop",
    )
    _add_targets(evaluate)


def _add_report(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``timmlens report``: an error analysis (timmlens.analysis.error_report)."""
    report = command(
        "report",
        help="error analysis of labelled images (HTML + JSON)",
        description=(
            "Predict every labelled image, find the errors, explain each for the predicted "
            "and the true class, and write one self-contained HTML report and a JSON summary."
        ),
    )
    report.add_argument(
        "data",
        help="image folder whose sub-folders name the classes (index, class name, "
        "WordNet id); files directly in it have no label and are skipped",
    )
    add_model_arguments(report)
    report.add_argument(
        "--out",
        default=default_out("report", "report.html"),
        help="HTML file (JSON written next to it)",
    )
    report.add_argument(
        "--method",
        default="gradcam",
        type=_method_name,
        choices=sorted(METHODS),
        metavar="METHOD",
        help=_methods_help("gradcam"),
    )
    _add_method_option(report)
    report.add_argument(
        "--batch-size", type=_positive_int, default=8, help="images per forward and explanation"
    )
    report.add_argument(
        "--max-examples",
        type=_non_negative_int,
        default=100,
        help="errors drawn in the gallery (JSON: all)",
    )
    report.add_argument(
        "--top-pairs", type=_non_negative_int, default=10, help="rows of the confusion-pair table"
    )


def _add_layers(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``timmlens layers``: what the adapter knows about a model."""
    layers = command(
        "layers",
        help="describe a model's layers and layouts",
        description="Print what the adapter knows about a model: its family, default CAM "
        "layer, recommended layers, layouts and attention blocks.",
    )
    layers.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    add_model_arguments(layers, model=False)


def _add_benchmark(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``timmlens benchmark``: a leaderboard of methods over models (timmlens.benchmark)."""
    from ..interpretation.metrics.registry import metrics as heatmap_metrics

    bench = command(
        "benchmark",
        help="rank methods on several models: a leaderboard",
        description=(
            "Explain and score every image of a folder with each method on each model (one "
            "evaluate run per model, in --out/<model>), then write leaderboard.md, "
            "leaderboard.json and leaderboard.png with the reference rows randomcam and "
            "centerprior. A model that does not load is reported; the others go on."
        ),
    )
    bench.add_argument("data", help=_DATA_HELP)
    bench.add_argument(
        "--model",
        nargs="+",
        default=["bundled:efficientnet_lite0"],
        metavar="SPEC",
        help="model specs: timm names, hf-hub: ids, local folders, bundled:efficientnet_lite0",
    )
    bench.add_argument(
        "--methods",
        nargs="+",
        default=None,
        type=_method_name,
        choices=sorted(METHODS),
        metavar="METHOD",
        help="explanation methods (default: each model's compare_methods defaults); "
        "randomcam and centerprior are added as reference rows",
    )
    bench.add_argument(
        "--metrics",
        nargs="+",
        default=["insertion", "deletion"],
        help=f"heatmap metrics: {', '.join(heatmap_metrics('heatmap'))} (see: timmlens metrics)",
    )
    _add_method_option(bench)
    bench.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="insertion/deletion steps (default: RISE, 224 pixels per step); fewer is cheaper",
    )
    bench.add_argument("--out", default=default_out("benchmark"), help="output folder")
    bench.add_argument("--batch-size", type=_positive_int, default=8)
    bench.add_argument(
        "--no-reference", action="store_true", help="leave out the randomcam/centerprior rows"
    )
    _add_targets(bench)
    bench.add_argument(
        "--overwrite", action="store_true", help="discard earlier rows in --out and start afresh"
    )
    add_model_arguments(bench, model=False)


def _add_concepts(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``timmlens concepts``: concepts over a dataset (timmlens.analysis.fit_concepts)."""
    concepts = command(
        "concepts",
        help="find the concepts a layer uses over a dataset (HTML gallery + JSON)",
        description=(
            "Deep feature factorization over every image of a folder: one forward per image "
            "stores the layer's activations as shards in --out/shards (a rerun resumes them), "
            "then NMF (MiniBatchNMF over the shards) finds the concepts; writes concepts.json, "
            "a self-contained concepts.html gallery and concepts.npz."
        ),
    )
    concepts.add_argument("data", help="image folder (every image under it, recursively)")
    add_model_arguments(concepts)
    concepts.add_argument(
        "--concepts", type=_positive_int, default=8, metavar="K", help="number of concepts"
    )
    concepts.add_argument(
        "--out", default=default_out("concepts"), help="output folder (shards, JSON, HTML)"
    )
    concepts.add_argument(
        "--layer",
        default=None,
        help="layer to factorize (default: the family's CAM layer, or the norm + activation "
        "right after it)",
    )
    concepts.add_argument(
        "--batch-size", type=_positive_int, default=32, help="images per forward and per shard"
    )
    concepts.add_argument(
        "--top-images", type=_positive_int, default=8, metavar="N", help="images shown per concept"
    )
    concepts.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="passes over the shards: MiniBatchNMF's (default 3), or a dictionary's training "
        "(default: about 1000 optimizer steps)",
    )
    concepts.add_argument("--seed", type=_non_negative_int, default=0, help="random state")
    concepts.add_argument(
        "--method",
        default="nmf",
        choices=("nmf", "sae-topk", "sae-batchtopk", "sae-jumprelu", "archetypal"),
        help="nmf (deep feature factorization), or a sparse dictionary trained by overcomplete "
        "(may have more concepts than channels; prints its held-out R^2, dead codes and "
        "stability across two seeds, also in concepts.json)",
    )
    concepts.add_argument(
        "--sparsity",
        type=_positive_int,
        default=None,
        metavar="k",
        help="codes kept per position by the top-k dictionaries, or where JumpReLU's thresholds "
        "start (default K // 10)",
    )
    concepts.add_argument(
        "--stability",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fit a second seed and report the matched cosine (default: on for dictionaries)",
    )
    concepts.add_argument(
        "--visualize-steps",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="show each concept's feature visualisation (MACO, N steps) in concepts.html; "
        "each costs N forward+backward passes, kept in --out/feature_vis for reruns "
        "(default 0: none)",
    )
    concepts.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the shards and files already in --out and start afresh (by default a "
        "run resumes the shards of the same model, layer, options and images, and stops if "
        "--out holds another run's)",
    )


def _add_listings(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``timmlens methods`` and ``timmlens metrics``: the registries, with options."""
    listing = command(
        "methods",
        help="list the explanation methods with their options, defaults and costs",
        description="Every registered method: engine, summary, cost, constructor options "
        "with defaults (set them with --method-option) and what --quick changes.",
    )
    listing.add_argument(
        "--kind", default=None, choices=["cam", "input", "attention"], help="only this engine"
    )
    command(
        "metrics",
        help="list the metrics with their direction and options",
        description="Every registered metric: direction, what it needs, summary, options.",
    )


def _add_visualize(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``timmlens visualize``: feature visualisation (timmlens.analysis.visualize_feature)."""
    visualize = command(
        "visualize",
        help="optimise the image a channel, neuron or class responds to most (PNG)",
        description=(
            "Feature visualisation: optimise an image (MACO or Fourier parameterisation, "
            "random shifts, zooms and rotations) that maximises a channel of --layer "
            "(or one neuron of it with --position), or a class logit with --class; writes "
            "one PNG per channel or class and a JSON of the objective traces."
        ),
    )
    add_model_arguments(visualize)
    target = visualize.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--channel", type=_non_negative_int, nargs="+", metavar="C", help="channels of --layer"
    )
    target.add_argument(
        "--class",
        dest="classes",
        type=_non_negative_int,
        nargs="+",
        metavar="K",
        help="class indices whose logit to maximise",
    )
    visualize.add_argument(
        "--layer",
        default=None,
        help="layer of --channel (default: the family's CAM layer, or the norm + activation "
        "right after it)",
    )
    visualize.add_argument(
        "--position",
        type=_non_negative_int,
        nargs=2,
        metavar=("ROW", "COL"),
        default=None,
        help="one neuron of each channel at (row, column) of the layer's grid",
    )
    visualize.add_argument("--method", choices=("maco", "fourier"), default="maco")
    visualize.add_argument("--steps", type=_positive_int, default=256, help="optimisation steps")
    visualize.add_argument(
        "--size", type=_positive_int, default=None, help="image side (default: the model's)"
    )
    visualize.add_argument("--seed", type=_non_negative_int, default=0)
    visualize.add_argument("--out", default=default_out("visualize"), help="output folder")


def _add_groundtruth(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``timmlens groundtruth``: the known-answer task (timmlens.groundtruth)."""
    groundtruth = command(
        "groundtruth",
        help="the known-answer task: train its models, rank the methods against its evidence",
        description=(
            "'train' trains the known-answer models on CPU from a seed and writes their "
            "weights into the package (python -m timmlens.groundtruth.training); 'benchmark' "
            "scores every method against the evidence masks and writes the ranking and "
            "metric-agreement page (python -m timmlens.groundtruth.report). Options after the "
            "action are that action's: timmlens groundtruth train --help."
        ),
    )
    groundtruth.add_argument("action", choices=("train", "benchmark"))
    groundtruth.add_argument(
        "options", nargs=argparse.REMAINDER, help="the action's own options (--model, ...)"
    )
