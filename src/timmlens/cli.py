"""The ``timmlens`` command: explain images, evaluate a dataset, report errors, describe a model.

User errors (bad model spec, missing file, unknown method, bad option value, an output
path that cannot be written) print one line and exit with status 2; output paths are
checked before a model is loaded. The logic lives in the library, the CLI only parses
and reports.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ._outputs import ensure_writable_dir
from .errors import TimmLensError
from .interpretation.registry import METHODS, layer_methods, methods, resolve_method

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


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

    parser = _Parser(prog="timmlens", description="Explanations for timm image classifiers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explain = commands.add_parser(
        "explain",
        help="explain images and save overlays",
        description="Explain images with one method and save figures.",
    )
    explain.add_argument("images", nargs="+", help="image files")
    explain.add_argument(
        "--model",
        default="bundled:efficientnet_lite0",
        help="timm name, hf-hub: id, local folder, or bundled:efficientnet_lite0",
    )
    explain.add_argument(
        "--method",
        default="gradcam",
        type=_method_name,
        choices=sorted(METHODS),
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
    explain.add_argument("--out", default="outputs/explain", help="output folder")
    explain.add_argument("--html", action="store_true", help="also write interactive HTML")

    evaluate = commands.add_parser(
        "evaluate",
        help="explain and score a dataset",
        description="Explain and score every image of a folder; writes rows and a summary.",
    )
    evaluate.add_argument("data", help="image folder (integer-named sub-folders give labels)")
    evaluate.add_argument("--model", default="bundled:efficientnet_lite0")
    evaluate.add_argument(
        "--methods",
        nargs="+",
        default=["gradcam"],
        type=_method_name,
        choices=sorted(METHODS),
        help=_methods_help("gradcam"),
    )
    evaluate.add_argument(
        "--metrics",
        nargs="+",
        default=["insertion", "deletion"],
        choices=heatmap_metrics("heatmap"),
        help="metrics from the registry (timmlens.interpretation.metrics.metrics())",
    )
    evaluate.add_argument("--out", default="results", help="output folder")
    evaluate.add_argument("--batch-size", type=_positive_int, default=8)
    evaluate.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="insertion/deletion steps (default: RISE, 224 pixels per step)",
    )
    evaluate.add_argument("--format", default="jsonl", choices=["jsonl", "csv"])
    evaluate.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the rows and run identity already in --out and start afresh "
        "(by default a run resumes rows of the same model, options and images, and stops "
        "if --out holds another run's)",
    )
    evaluate.add_argument("--no-resume", action="store_true", help="the same as --overwrite")
    evaluate.add_argument(
        "--on-error",
        default="skip",
        choices=["skip", "fail"],
        help="an unreadable image: skip it with a warning (counted in the summary) or stop",
    )
    _add_device(evaluate)
    _add_benchmark(commands)

    report = commands.add_parser(
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
    report.add_argument("--model", default="bundled:efficientnet_lite0")
    report.add_argument("--out", default="report.html", help="HTML file (JSON written next to it)")
    report.add_argument(
        "--method",
        default="gradcam",
        type=_method_name,
        choices=sorted(METHODS),
        help=_methods_help("gradcam"),
    )
    report.add_argument("--batch-size", type=_positive_int, default=8)
    report.add_argument(
        "--max-examples",
        type=_non_negative_int,
        default=100,
        help="errors drawn in the gallery (JSON: all)",
    )
    report.add_argument(
        "--top-pairs", type=_non_negative_int, default=10, help="rows of the confusion-pair table"
    )

    layers = commands.add_parser(
        "layers",
        help="describe a model's layers and layouts",
        description="Print what the adapter knows about a model.",
    )
    layers.add_argument("model", help="model spec")
    return parser


def _add_device(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--device",
        default=None,
        help="where the model runs: cpu, cuda, cuda:1, mps (default: where it loads, the CPU)",
    )


def _add_benchmark(commands: argparse._SubParsersAction) -> None:
    """``timmlens benchmark``: a leaderboard of methods over models (timmlens.benchmark)."""
    from .interpretation.metrics.registry import metrics as heatmap_metrics

    bench = commands.add_parser(
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
    bench.add_argument("--out", default="leaderboard", help="output folder")
    bench.add_argument("--batch-size", type=_positive_int, default=8)
    bench.add_argument(
        "--no-reference", action="store_true", help="leave out the randomcam/centerprior rows"
    )
    bench.add_argument(
        "--overwrite", action="store_true", help="discard earlier rows in --out and start afresh"
    )
    _add_device(bench)


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


def _load(spec: str):
    from .models import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        return load_model(spec)


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
    model = _load(args.model)
    options = {"target_layer": args.layer} if args.layer else None
    out = Path(args.out)
    for image, name in zip(args.images, output_stems(args.images), strict=True):
        stem = f"{name}_{args.method}"
        result = quick_explain(
            model,
            image,
            save_path=out / f"{stem}.png",
            method=args.method,
            target_class=args.target,
            method_options=options,
        )
        print(
            f"{image}: {result.target_name} ({result.target_probability:.1%}) -> "
            f"{result.figure_path}"
        )
        if args.html:
            from .viz.interactive import explanation_html

            page = explanation_html(
                out / f"{stem}.html",
                result.image,
                {args.method: result.heatmap},
                result.geometry,
                label=result.target_name,
                probability=result.target_probability,
                model_name=args.model,
            )
            print(f"{image}: interactive -> {page}")


def _run_evaluate(args: argparse.Namespace) -> None:
    from .devices import resolve_device
    from .evaluation import evaluate

    device = resolve_device(args.device)  # before the model loads: a bad device fails fast
    model = _load(args.model)
    if device is not None:
        model = model.to(device)
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

    model = _load(args.model)
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

    describe(_load(args.model))


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail on an unwritable ``--out`` now, not after the model ran on the first batch."""
    if args.command in ("explain", "evaluate", "benchmark"):
        ensure_writable_dir(args.out, "--out folder")
    elif args.command == "report":
        from .analysis.error_report import check_output

        check_output(args.out)


def _leave_process_group() -> None:
    """Under torchrun: leave the group before exiting (exiting in it can abort, SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = {
        "explain": _run_explain,
        "evaluate": _run_evaluate,
        "benchmark": _run_benchmark,
        "report": _run_report,
        "layers": _run_layers,
    }
    try:
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
