"""Conservation of AttnLRP / CP-LRP per family: summed input relevance vs the target logit.

Prints a markdown table (docs/methods/attnlrp.md pastes it): for each family's small
random-init model (the test configs of ``tests/test_attnlrp.py``), the median over 8
images of ``sum(R_input) / logit``, with the model as it is and with every additive
parameter (biases, position embeddings, class / distillation / register tokens,
relative-position tables) set to zero, so only the rules themselves can lose relevance;
then the same ratio on the shipped known-answer ViTs (trained on the synthetic task of
``timmlens.groundtruth``), over 32 test images and their true class.
Run with ``PYTHONPATH=src python benchmarks/attnlrp_conservation.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_attnlrp import FAMILIES, _inputs, _model, _without_biases
from timmlens.interpretation.registry import create_explainer

RUNS = [("attnlrp", "epsilon"), ("attnlrp", "zero"), ("cplrp", "zero"), ("attnlrp", "gamma")]


def ratio(model: torch.nn.Module, key: str, method: str, rule: str) -> float:
    """Median over 8 images of summed input relevance / target logit."""
    x = _inputs(key, batch=8)
    result = create_explainer(method, model, linear_rule=rule).explain_batch_full(x, 1)
    total = result.attributions.double().sum(dim=(1, 2, 3))
    return (total / result.extras["target_scores"].double()).median().item()


def main() -> None:
    header = [f"{m} {r}" for m, r in RUNS]
    print("| family | weights | " + " | ".join(header) + " |")
    print("|---|---|" + "---|" * len(RUNS))
    for key in FAMILIES:
        for label, model in (("as is", _model(key)), ("additive params = 0", None)):
            model = model if model is not None else _without_biases(_model(key))
            cells = [f"{ratio(model, key, m, r):.3f}" for m, r in RUNS]
            print(f"| {key} | {label} | " + " | ".join(cells) + " |")


def trained_ratio(spec: str, method: str, rule: str, images: int = 32) -> float:
    """Median over ``images`` known-answer test images of summed relevance / true logit."""
    from timmlens.groundtruth import generate
    from timmlens.groundtruth.benchmark import model_inputs
    from timmlens.models import load_model

    model = load_model(spec)
    data = generate(images, size=64, seed=0)
    explainer = create_explainer(method, model, linear_rule=rule)
    result = explainer.explain_batch_full(model_inputs(model, data), data.labels.tolist())
    total = result.attributions.double().sum(dim=(1, 2, 3))
    return (total / result.extras["target_scores"].double()).median().item()


def main_trained() -> None:
    from timmlens.models.known_answer import KNOWN_ANSWER_SPECS, RECIPES

    print("\n| trained model | " + " | ".join(f"{m} {r}" for m, r in RUNS) + " |")
    print("|---|" + "---|" * len(RUNS))
    for spec in KNOWN_ANSWER_SPECS:
        if RECIPES[spec].conv_stem and RECIPES[spec].weights_path.is_file():
            cells = [f"{trained_ratio(spec, m, r):.3f}" for m, r in RUNS]
            print(f"| `{spec}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
    main_trained()
