"""The ``timmlens`` command: explain images, evaluate a dataset, report errors, describe a model.

User errors (bad model spec, missing file, unknown method, bad option value, an output
path that cannot be written, a device this machine lacks) print one line and exit with
status 2; output paths and the device are checked before a model is loaded. Every
command writes under one root, ``outputs/<command>/``, unless ``--out`` says otherwise,
and shows its defaults in ``--help``. The logic lives in the library, the CLI only
parses and reports.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from ._outputs import ensure_writable_dir
from .devices import DEVICE_CHOICES
from .errors import TimmLensError
from .interpretation.registry import METHODS, layer_methods, methods, resolve_method
from .models import BUNDLED_SPEC

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
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
    """``--model`` (unless the command takes it as a positional) and ``--device``: the
    same options, help and defaults on every command that runs a model."""
    if model:
        parser.add_argument("--model", default=None, help=MODEL_HELP)
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
    """One line per registered method: its name and summary (registry order)."""
    lines = "; ".join(f"{name}: {METHODS[name].summary}" for name in methods())
    return f"explanation method (default: {default}) - {lines}"


def _parser() -> argparse.ArgumentParser:
    from .interpretation.metrics.registry import metrics as heatmap_metrics

    parser = _Parser(
        prog="timmlens",
        description="Explanations for timm image classifiers.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, formatter_class=_HelpFormatter, **kwargs)

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
    explain.add_argument("--out", default=default_out("explain"), help="output folder")
    explain.add_argument("--html", action="store_true", help="also write interactive HTML")

    evaluate = command(
        "evaluate",
        help="explain and score a dataset",
        description="Explain and score every image of a folder; writes rows and a summary.",
    )
    evaluate.add_argument("data", help="image folder (integer-named sub-folders give labels)")
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
        help="metrics from the registry (timmlens.interpretation.metrics.metrics())",
    )
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
    _add_benchmark(command)

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

    _add_concepts(command)

    layers = command(
        "layers",
        help="describe a model's layers and layouts",
        description="Print what the adapter knows about a model: its family, default CAM "
        "layer, recommended layers, layouts and attention blocks.",
    )
    layers.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    add_model_arguments(layers, model=False)
    return parser


def _add_benchmark(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``timmlens benchmark``: a leaderboard of methods over models (timmlens.benchmark)."""
    from .interpretation.metrics.registry import metrics as heatmap_metrics

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
    bench.add_argument("data", help="image folder (integer-named sub-folders give labels)")
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
        help=f"heatmap metrics from the registry: {', '.join(heatmap_metrics('heatmap'))}",
    )
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
        "--epochs", type=_positive_int, default=3, help="MiniBatchNMF passes over the shards"
    )
    concepts.add_argument("--seed", type=_non_negative_int, default=0, help="NMF random state")
    concepts.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the shards and files already in --out and start afresh (by default a "
        "run resumes the shards of the same model, layer, options and images, and stops if "
        "--out holds another run's)",
    )


def _run_concepts(args: argparse.Namespace) -> None:
    from .analysis.concepts import fit_concepts

    model = _load(args)
    try:
        result = fit_concepts(
            model,
            args.data,
            n_concepts=args.concepts,
            layer=args.layer,
            out=args.out,
            batch_size=args.batch_size,
            top_k_images=args.top_images,
            seed=args.seed,
            epochs=args.epochs,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        from .analysis.concept_store import SHARDS_DIR

        # Shards are written per batch: what finished is on disk and a rerun resumes it.
        shards = Path(args.out) / SHARDS_DIR
        kept = len(list(shards.glob("*.npz"))) if shards.is_dir() else 0
        raise KeyboardInterrupt(
            f"{kept} activation shard{'' if kept == 1 else 's'} kept in {shards}, rerun the "
            f"same command to resume"
        ) from None
    print(result)
    print(f"html: {result.html_path}\njson: {result.json_path}")


def _run_benchmark(args: argparse.Namespace) -> None:
    from .evaluation import benchmark

    board = benchmark(
        args.model,
        args.data,
        methods=args.methods,
        metrics=args.metrics,
        out=args.out,
        steps=args.steps,
        reference=not args.no_reference,
        device=args.device,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    print(board.markdown(), end="")
    for kind, path in board.paths.items():
        print(f"{kind}: {path}")


def _load(args: argparse.Namespace, *, quiet_random_weights: bool = False):
    """The model of ``--model`` (saying so when it is the default) on ``--device``."""
    from .devices import resolve_device
    from .models import RandomWeightsWarning, load_model

    device = resolve_device(args.device)
    if args.model is None:
        print(
            f"timmlens {args.command}: using {DEFAULT_MODEL} (EfficientNet-Lite0, real "
            f"ImageNet weights shipped with timmlens); choose another with --model",
            file=sys.stderr,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        if quiet_random_weights:  # describing layers does not need trained weights
            warnings.simplefilter("ignore", RandomWeightsWarning)
        return load_model(args.model or DEFAULT_MODEL).to(device)


def image_paths(items: Sequence[str]) -> list[str]:
    """Files as given, folders replaced by every image under them (recursively, sorted).

    A folder without images is an error, as in ``evaluate``; a missing path is left for
    the image reader to report.
    """
    from .evaluation.sources import ImageFolderSource

    paths: list[str] = []
    for item in items:
        if Path(item).is_dir():
            paths.extend(str(path) for path in ImageFolderSource(item).files)
        else:
            paths.append(item)
    return paths


def output_stems(images: Sequence[str]) -> list[str]:
    """One distinct file stem per image, in order: its own stem unless another has it too.

    ``a/cat.jpg b/cat.png`` -> ``cat-1``, ``cat-2``; the same path given twice gets two
    numbers as well. Stems are compared case-insensitively (``Cat`` and ``cat`` are one
    file on macOS and Windows), and a number never repeats another image's stem.
    """
    stems = [Path(image).stem for image in images]
    counts = Counter(stem.casefold() for stem in stems)
    taken = {stem.casefold() for stem in stems if counts[stem.casefold()] == 1}
    names = []
    for stem in stems:
        name, number = stem, 0
        while counts[stem.casefold()] > 1 and (number == 0 or name.casefold() in taken):
            number += 1
            name = f"{stem}-{number}"
        taken.add(name.casefold())
        names.append(name)
    return names


def _run_explain(args: argparse.Namespace) -> None:
    from .quick import quick_explain

    if args.layer and not METHODS[args.method].uses_layer:
        raise ValueError(
            f"--layer applies to the layer methods ({', '.join(layer_methods())}); "
            f"{args.method} explains the input, so drop --layer or pick one of those."
        )
    from .models.weights_status import file_tag

    images = image_paths(args.images)
    model = _load(args)
    options = {"target_layer": args.layer} if args.layer else None
    out = Path(args.out)
    for image, name in zip(images, output_stems(images), strict=True):
        stem = f"{name}_{args.method}{file_tag(model)}"  # "_random-weights" when untrained
        result = quick_explain(
            model,
            image,
            save_path=out / f"{stem}.png",
            method=args.method,
            target_class=args.target,
            method_options=options,
        )
        note = f" [{result.weights.note}]" if result.weights.note else ""
        print(f"{image}: {result.heading}{note} -> {result.figure_path}")
        if args.html:
            from .viz.interactive import explanation_html

            page = explanation_html(
                out / f"{stem}.html",
                result.image,
                {args.method: result.heatmap},
                result.geometry,
                label=result.heading,
                note=result.weights.note,
                model_name=args.model or DEFAULT_MODEL,
            )
            print(f"{image}: interactive -> {page}")


def _run_evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate

    model = _load(args)
    options = {"steps": args.steps} if args.steps else {}
    try:
        summary = evaluate(
            model,
            args.data,
            methods=args.methods,
            metrics=args.metrics,
            out=args.out,
            batch_size=args.batch_size,
            rows_format=args.format,
            overwrite=args.overwrite or args.no_resume,
            on_error=args.on_error,
            metric_options=options,
            save_maps=args.save_maps,
        )
    except KeyboardInterrupt:
        from .evaluation.summary import count_rows

        # Rows are appended per batch: what finished is on disk and a rerun resumes it.
        rows = Path(args.out) / f"rows.{args.format}"
        kept = count_rows(rows)
        raise KeyboardInterrupt(
            f"{kept} row{'' if kept == 1 else 's'} kept in {rows}, rerun the same command to resume"
        ) from None
    print(summary)
    print(f"rows: {summary.rows_path}\nsummary: {summary.summary_path}")


def _run_report(args: argparse.Namespace) -> None:
    from .analysis.error_report import error_report

    model = _load(args)
    result = error_report(
        model,
        args.data,
        args.out,
        method=args.method,
        batch_size=args.batch_size,
        max_examples=args.max_examples,
        top_pairs=args.top_pairs,
    )
    print(result)
    print(f"html: {result.html_path}\njson: {result.json_path}")


def _run_layers(args: argparse.Namespace) -> None:
    from .adapters import describe

    describe(_load(args, quiet_random_weights=True))


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail on an unwritable ``--out`` or a missing device now, not after the model ran."""
    from .devices import resolve_device

    resolve_device(args.device)
    if args.command in ("explain", "evaluate", "benchmark", "concepts"):
        ensure_writable_dir(args.out, "--out folder")
    elif args.command == "report":
        from .analysis.error_report import check_output

        check_output(args.out)


def _leave_process_group() -> None:
    """Under torchrun: leave the group before exiting (exiting in it can abort, SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _warning_printer(command: str):
    """Warnings as one line, ``timmlens explain: warning: ... (RandomWeightsWarning)``.

    Python's format names a file and line of code, which on the command line is the
    ``timmlens`` script, not anything the user wrote.
    """

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message).strip().splitlines()[0] if str(message).strip() else ""
        print(f"timmlens {command}: warning: {text} ({category.__name__})", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = {
        "explain": _run_explain,
        "evaluate": _run_evaluate,
        "benchmark": _run_benchmark,
        "concepts": _run_concepts,
        "report": _run_report,
        "layers": _run_layers,
    }
    try:
        with warnings.catch_warnings():  # restored on return: main() may run in-process
            warnings.showwarning = _warning_printer(args.command)
            _check_outputs(args)
            run[args.command](args)
    except (TimmLensError, ValueError, FileNotFoundError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"timmlens {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, not a traceback
        detail = f"; {exc}" if str(exc) else ""
        print(f"timmlens {args.command}: interrupted{detail}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        _leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
