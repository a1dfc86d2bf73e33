"""The ``timmlens`` command: explain images, evaluate a dataset, report errors, describe a model.

User errors (bad model spec, missing file, unknown method) print one line and exit
with status 2; the logic lives in the library, the CLI only parses and reports.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .errors import TimmLensError
from .interpretation.registry import METHODS

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timmlens", description="Explanations for timm image classifiers."
    )
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
    explain.add_argument("--method", default="gradcam", choices=sorted(METHODS))
    explain.add_argument(
        "--target", type=int, default=None, help="class to explain (default: the predicted class)"
    )
    explain.add_argument("--layer", default=None, help="target layer for CAM methods")
    explain.add_argument("--out", default="outputs/explain", help="output folder")
    explain.add_argument("--html", action="store_true", help="also write interactive HTML")

    evaluate = commands.add_parser(
        "evaluate",
        help="explain and score a dataset",
        description="Explain and score every image of a folder; writes rows and a summary.",
    )
    evaluate.add_argument("data", help="image folder (integer-named sub-folders give labels)")
    evaluate.add_argument("--model", default="bundled:efficientnet_lite0")
    evaluate.add_argument("--methods", nargs="+", default=["gradcam"], choices=sorted(METHODS))
    evaluate.add_argument(
        "--metrics",
        nargs="+",
        default=["insertion", "deletion"],
        choices=["insertion", "deletion", "sensitivity"],
    )
    evaluate.add_argument("--out", default="results", help="output folder")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument(
        "--steps",
        type=int,
        default=None,
        help="insertion/deletion steps (default: RISE, 224 pixels per step)",
    )
    evaluate.add_argument("--format", default="jsonl", choices=["jsonl", "csv"])
    evaluate.add_argument("--no-resume", action="store_true", help="start the rows file afresh")

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
    report.add_argument("--method", default="gradcam", choices=sorted(METHODS))
    report.add_argument("--batch-size", type=int, default=8)
    report.add_argument(
        "--max-examples", type=int, default=100, help="errors drawn in the gallery (JSON: all)"
    )
    report.add_argument(
        "--top-pairs", type=int, default=10, help="rows of the confusion-pair table"
    )

    layers = commands.add_parser(
        "layers",
        help="describe a model's layers and layouts",
        description="Print what the adapter knows about a model.",
    )
    layers.add_argument("model", help="model spec")
    return parser


def _load(spec: str):
    from .models import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        return load_model(spec)


def _run_explain(args: argparse.Namespace) -> None:
    from .interpretation.quick import quick_explain

    model = _load(args.model)
    options = {"target_layer": args.layer} if args.layer else None
    out = Path(args.out)
    for image in args.images:
        stem = f"{Path(image).stem}_{args.method}"
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
    from .evaluation import evaluate

    model = _load(args.model)
    options = {"steps": args.steps} if args.steps else {}
    summary = evaluate(
        model,
        args.data,
        methods=args.methods,
        metrics=args.metrics,
        out=args.out,
        batch_size=args.batch_size,
        rows_format=args.format,
        resume=not args.no_resume,
        metric_options=options,
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = {
        "explain": _run_explain,
        "evaluate": _run_evaluate,
        "report": _run_report,
        "layers": _run_layers,
    }
    try:
        run[args.command](args)
    except (TimmLensError, ValueError, FileNotFoundError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"timmlens {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
