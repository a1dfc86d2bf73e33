"""The ``timmlens`` command: explain images, evaluate a dataset, report errors, describe a model.

User errors (bad model spec, missing file, unknown method, bad option value, an output
path that cannot be written, a device this machine lacks) print one line and exit with
status 2; output paths and the device are checked before a model is loaded. Every
command writes under one root, ``outputs/<command>/``, unless ``--out`` says otherwise,
and shows its defaults in ``--help``. The logic lives in the library, the CLI only
parses and reports: the arguments are built in `parsers`, the commands run here.

A data folder in which no image can be read is a user error in every command that reads
one (``evaluate``, ``benchmark``, ``concepts``, ``report``): status 2, one line. A model
named by spec is created with any random weights drawn from a fixed seed, so a rerun of
``--model test_resnet`` is the same model and resumes its rows.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .._outputs import ensure_writable_dir
from ..errors import TimmLensError
from ..interpretation.registry import METHODS, layer_methods
from .parsers import (
    DEFAULT_MODEL,
    EXIT_USER_ERROR,
    MODEL_HELP,
    OUTPUT_ROOT,
    add_model_arguments,
    build_parser,
    default_out,
)

__all__ = [
    "DEFAULT_MODEL",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "MODEL_HELP",
    "OUTPUT_ROOT",
    "add_model_arguments",
    "default_out",
    "image_paths",
    "main",
    "output_stems",
]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
#: the parser of ``main`` (the name tests and older code use)
_parser = build_parser


def _run_concepts(args: argparse.Namespace) -> None:
    from ..analysis.concepts import fit_concepts

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
            method=args.method,
            sparsity=args.sparsity,
            stability=args.stability,
            visualize_steps=args.visualize_steps,
        )
    except KeyboardInterrupt:
        from ..analysis.concept_store import SHARDS_DIR

        # Shards are written per batch: what finished is on disk and a rerun resumes it.
        shards = Path(args.out) / SHARDS_DIR
        kept = len(list(shards.glob("*.npz"))) if shards.is_dir() else 0
        raise KeyboardInterrupt(
            f"{kept} activation shard{'' if kept == 1 else 's'} kept in {shards}, rerun the "
            f"same command to resume"
        ) from None
    print(result)
    print(f"html: {result.html_path}\njson: {result.json_path}")


def _targets(args: argparse.Namespace) -> str:
    return "prediction" if args.explain_prediction else "label"


def _profile(args: argparse.Namespace) -> str:
    return "quick" if args.quick else "full"


def _run_benchmark(args: argparse.Namespace) -> None:
    from ..evaluation import benchmark
    from .listings import parse_method_options

    method_options = parse_method_options(args.method_option, args.methods or sorted(METHODS))
    models = args.model
    if _model_options(args):
        # one checkpoint: loaded here (the options name one model), benchmarked as a module
        if len(args.model) != 1:
            raise ValueError(
                f"--weights, --num-classes, --class-names and --model-arg describe one model; "
                f"--model names {len(args.model)}: run one benchmark per checkpoint"
            )
        name = Path(args.weights).stem if args.weights else Path(args.model[0]).name
        models = {name or "model": _load(args, spec=args.model[0])}
    board = benchmark(
        models,
        args.data,
        methods=args.methods,
        metrics=args.metrics,
        out=args.out,
        steps=args.steps,
        reference=not args.no_reference,
        device=args.device,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        targets=_targets(args),
        profile=_profile(args),
        method_options=method_options,
    )
    print(board.markdown(), end="")
    for kind, path in board.paths.items():
        print(f"{kind}: {path}")


def _model_options(args: argparse.Namespace) -> dict[str, object]:
    """``load_model`` keywords of ``--weights``, ``--num-classes``, ``--class-names`` and
    each ``--model-arg NAME=VALUE`` (a ``timm.create_model`` keyword)."""
    from .listings import parse_model_args

    options = {
        "weights": args.weights,
        "num_classes": args.num_classes,
        "class_names": args.class_names,
    }
    given = {key: value for key, value in options.items() if value is not None}
    return {**parse_model_args(getattr(args, "model_arg", None) or []), **given}


def _load(args: argparse.Namespace, *, quiet_random_weights: bool = False, spec=None):
    """The model of ``--model`` (saying so when it is the default) on ``--device``, with
    ``--weights``, ``--num-classes`` and ``--class-names``."""
    from ..devices import resolve_device
    from ..evaluation.run_identity import load_model_seeded
    from ..models import RandomWeightsWarning

    device = resolve_device(args.device)
    spec = spec if spec is not None else args.model
    if args.weights is not None and spec is None:
        raise ValueError(
            f"--weights needs the timm architecture it was trained with: --model "
            f"ARCHITECTURE --weights {args.weights} (e.g. --model resnet18)"
        )
    if spec is None:
        print(
            f"timmlens {args.command}: using {DEFAULT_MODEL} (EfficientNet-Lite0, real "
            f"ImageNet weights shipped with timmlens); choose another with --model",
            file=sys.stderr,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        if quiet_random_weights:  # describing layers does not need trained weights
            warnings.simplefilter("ignore", RandomWeightsWarning)
        # seeded: a spec with random weights (test_resnet) is the same model in a rerun,
        # so an evaluate or concepts run of it resumes
        return load_model_seeded(spec or DEFAULT_MODEL, **_model_options(args)).to(device)


def image_paths(items: Sequence[str]) -> list[str]:
    """Files as given, folders replaced by every image under them (recursively, sorted).

    A folder without images is an error, as in ``evaluate``; a missing path is left for
    the image reader to report.
    """
    from ..evaluation.sources import ImageFolderSource

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
    from ..quick import quick_explain

    if args.layer and not METHODS[args.method].uses_layer:
        raise ValueError(
            f"--layer applies to the layer methods ({', '.join(layer_methods())}); "
            f"{args.method} explains the input, so drop --layer or pick one of those."
        )
    from ..models.weights_status import file_tag
    from .listings import parse_method_options

    given = parse_method_options(args.method_option, [args.method]).get(args.method, {})
    if args.quick:  # the registry's cheap options; the user's own win
        given = {**METHODS[args.method].quick_options, **given}
    images = image_paths(args.images)
    model = _load(args)
    options = {**given, **({"target_layer": args.layer} if args.layer else {})} or None
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
            from ..viz.interactive import explanation_html

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
    from ..evaluation import evaluate
    from .listings import parse_method_options

    method_options = parse_method_options(args.method_option, args.methods)
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
            method_options=method_options,
            save_maps=args.save_maps,
            targets=_targets(args),
            profile=_profile(args),
        )
    except KeyboardInterrupt:
        from ..evaluation.summary import count_rows

        # Rows are appended per batch: what finished is on disk and a rerun resumes it.
        rows = Path(args.out) / f"rows.{args.format}"
        kept = count_rows(rows)
        raise KeyboardInterrupt(
            f"{kept} row{'' if kept == 1 else 's'} kept in {rows}, rerun the same command to resume"
        ) from None
    print(summary)
    print(f"rows: {summary.rows_path}\nsummary: {summary.summary_path}")


def _run_report(args: argparse.Namespace) -> None:
    from ..analysis.error_report import error_report
    from .listings import parse_method_options

    given = parse_method_options(args.method_option, [args.method]).get(args.method)
    model = _load(args)
    result = error_report(
        model,
        args.data,
        args.out,
        method=args.method,
        method_options=given,
        batch_size=args.batch_size,
        max_examples=args.max_examples,
        top_pairs=args.top_pairs,
    )
    print(result)
    print(f"html: {result.html_path}\njson: {result.json_path}")


def _run_listing(args: argparse.Namespace) -> None:
    from .listings import methods_listing, metrics_listing

    print(methods_listing(args.kind) if args.command == "methods" else metrics_listing(), end="")


def _run_visualize(args: argparse.Namespace) -> None:
    import json

    from ..analysis import objectives, visualize_feature
    from ..analysis.activations import default_activation_layer
    from ..models.introspect import data_config

    model = _load(args)
    size = args.size or int(data_config(model)["input_size"][-1])
    layer = args.layer or default_activation_layer(model)
    if args.classes is not None:
        if args.position is not None or args.layer is not None:
            raise ValueError("--layer and --position go with --channel, not with --class.")
        named = {f"class{k}": objectives.class_logit(k) for k in args.classes}
    else:
        position = tuple(args.position) if args.position else None
        named = {
            f"{layer}-{c}": objectives.neuron(layer, c, position)
            if position
            else objectives.channel(layer, c)
            for c in args.channel
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, objective in named.items():
        result = visualize_feature(
            model,
            objective=objective,
            steps=args.steps,
            size=size,
            method=args.method,
            seed=args.seed,
        )
        path = out / f"{name}.png"
        result.to_pil().save(path)
        summary[name] = {
            "objective": str(objective),
            "png": path.name,
            "final_score": result.final_score,
            "trace": [round(float(v), 5) for v in result.objective_trace],
        }
        print(f"{path}: {objective} = {result.final_score:.4g}")
    options = {"method": args.method, "steps": args.steps, "size": size, "seed": args.seed}
    (out / "visualize.json").write_text(json.dumps({**options, "images": summary}, indent=1))


def _run_layers(args: argparse.Namespace) -> None:
    from ..adapters import describe

    describe(_load(args, quiet_random_weights=True))


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail on an unwritable ``--out`` or a missing device now, not after the model ran."""
    from ..devices import resolve_device

    if hasattr(args, "device"):
        resolve_device(args.device)
    if args.command in ("explain", "evaluate", "benchmark", "concepts", "visualize"):
        ensure_writable_dir(args.out, "--out folder")
    elif args.command == "report":
        from ..analysis.error_report import check_output

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


def _run_groundtruth(args: argparse.Namespace) -> None:
    if args.action == "train":
        from ..groundtruth.training import main as run
    else:
        from ..groundtruth.report import main as run
    code = run(list(args.options))
    if code:
        raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = {
        "explain": _run_explain,
        "evaluate": _run_evaluate,
        "benchmark": _run_benchmark,
        "concepts": _run_concepts,
        "visualize": _run_visualize,
        "report": _run_report,
        "layers": _run_layers,
        "methods": _run_listing,
        "metrics": _run_listing,
        "groundtruth": _run_groundtruth,
    }
    try:
        with warnings.catch_warnings():  # restored on return: main() may run in-process
            warnings.showwarning = _warning_printer(args.command)
            _check_outputs(args)
            run[args.command](args)
    except (TimmLensError, ValueError, FileNotFoundError) as exc:
        # a timmlens error may carry its hints written as command lines (--num-classes 5)
        text = str(getattr(exc, "cli", None) or exc).strip()
        message = text.splitlines()[0] if text else type(exc).__name__
        print(f"timmlens {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, not a traceback
        detail = f"; {exc}" if str(exc) else ""
        print(f"timmlens {args.command}: interrupted{detail}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        _leave_process_group()
    return 0
