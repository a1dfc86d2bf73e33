"""Train the known-answer models on CPU, reproducibly from a seed, and check they use the evidence.

``python -m timmlens.groundtruth.training [--model vit] [--steps N]`` (or ``timmlens
groundtruth train``) trains each recipe of `timmlens.models.known_answer` on a fixed
pool of generated images, writes its float16 weights into the package, and prints the
figures the docs report: test accuracy, accuracy with the deciding object removed (it
must fall to chance) and with one distractor removed (it must stay).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.known_answer import (
    KNOWN_ANSWER_SIZE,
    RECIPES,
    known_answer_recipe,
    round_to_shipped_precision,
    save_known_answer_weights,
)
from .generator import KnownAnswerSet, generate

#: Seeds of the image pools: the test set is never trained on.
TRAIN_SEED, TEST_SEED = 1, 0
PROG = "timmlens groundtruth train"
DEFAULT_TEST_IMAGES = 1_000


@dataclass(frozen=True)
class InterventionReport:
    """Accuracies of one model on the test set, as is and with objects removed.

    Attributes:
        accuracy: on the unchanged images.
        without_evidence: with the deciding object refilled with background (chance is
            1/K).
        without_distractor: with one distractor (the first) refilled with background.
        images: number of test images.
    """

    accuracy: float
    without_evidence: float
    without_distractor: float
    images: int


def to_batch(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float, normalised with mean = std = 0.5."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 250) -> float:
    """Top-1 accuracy of ``model`` on uint8 ``images`` ``(N, H, W, 3)``."""
    model.eval()
    hits = 0
    for start in range(0, len(images), batch):
        logits = model(to_batch(images[start : start + batch]))
        hits += int((logits.argmax(1).numpy() == labels[start : start + batch]).sum())
    return hits / len(images)


def interventions(model: nn.Module, test: KnownAnswerSet) -> InterventionReport:
    """Whether ``model`` decides by the evidence: accuracy with objects removed."""
    first = np.stack([masks[0] for masks in test.distractor_masks])
    return InterventionReport(
        accuracy=accuracy(model, test.images, test.labels),
        without_evidence=accuracy(model, test.without(test.evidence), test.labels),
        without_distractor=accuracy(model, test.without(first), test.labels),
        images=len(test),
    )


def _learning_rate(step: int, steps: int, peak: float) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(
    spec: str,
    pool: KnownAnswerSet,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    check: KnownAnswerSet | None = None,
    check_every: int = 250,
) -> nn.Module:
    """Train the recipe of ``spec`` on ``pool`` (random flips), deterministically by ``seed``.

    With ``check`` (held-out images), print its accuracy every ``check_every`` steps: the
    training does not depend on it (no random draw, eval mode only for the check).
    """
    from tqdm.auto import tqdm

    recipe = known_answer_recipe(spec)
    steps = steps or recipe.steps
    batch_size = batch_size or recipe.batch_size
    torch.manual_seed(seed)
    model = recipe.create().train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.05)
    images, labels = to_batch(pool.images), torch.from_numpy(pool.labels)
    order = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc=spec, disable=not progress, leave=False)
    for step in bar:
        index = torch.randint(len(images), (batch_size,), generator=order)
        batch = images[index]
        flips = torch.rand(batch_size, generator=order)
        batch = torch.where((flips < 0.5)[:, None, None, None], batch.flip(3), batch)
        batch = torch.where((flips % 0.5 < 0.25)[:, None, None, None], batch.flip(2), batch)
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(step, steps, recipe.learning_rate)
        loss = nn.functional.cross_entropy(model(batch), labels[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if check is not None and (step + 1) % check_every == 0:
            held_out = accuracy(model, check.images, check.labels)
            bar.write(f"{spec} step {step + 1}: held-out accuracy {held_out:.3f}")
            model.train()
    return round_to_shipped_precision(model.eval())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        choices=[r.name for r in RECIPES.values()],
        help="recipe to train (repeatable; default: all)",
    )
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument(
        "--train-images", type=int, default=None, help="default: the recipe's pool size"
    )
    parser.add_argument("--test-images", type=int, default=DEFAULT_TEST_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="train and report only")
    parser.add_argument(
        "--check-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="print the accuracy on 300 test images every STEPS steps (default: never)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    names = args.model or [r.name for r in RECIPES.values()]
    started = time.perf_counter()
    pool_sizes = {
        name: args.train_images or RECIPES[f"bundled:gt-{name}"].train_images for name in names
    }
    pool = generate(max(pool_sizes.values()), size=KNOWN_ANSWER_SIZE, seed=TRAIN_SEED + args.seed)
    test = generate(args.test_images, size=KNOWN_ANSWER_SIZE, seed=TEST_SEED)
    print(
        f"generated {len(pool)} training and {len(test)} test images "
        f"in {time.perf_counter() - started:.0f} s"
    )
    for name in names:
        spec = f"bundled:gt-{name}"
        started = time.perf_counter()
        steps = args.steps or RECIPES[spec].steps
        model = train(
            spec,
            pool.head(pool_sizes[name]),
            steps=steps,
            seed=args.seed,
            check=test.head(300) if args.check_every else None,
            check_every=args.check_every or 250,
        )
        seconds = time.perf_counter() - started
        report = interventions(model, test)
        facts: dict[str, Any] = {
            **asdict(report),
            "train_seconds": round(seconds),
            "steps": steps,
            "seed": args.seed,
            "train_images": pool_sizes[name],
            "batch_size": RECIPES[spec].batch_size,
        }
        print(f"{spec}: {facts}")
        if not args.no_save:
            print(f"  wrote {save_known_answer_weights(model, spec, facts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
