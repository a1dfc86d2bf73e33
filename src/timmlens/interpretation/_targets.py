"""Targets: validation and resolution against a batch of logits.

A target is a class (index or name, one for all images or one per image), ``None`` (each
image's predicted class), or a *callable* ``scores(values (N, K)) -> (N,)``: a class
group's sum, a softmax probability, a margin. One mechanism serves every method: the
engines carry a callable as `CallableTargets`, a stand-in for the ``(N,)`` class
tensor that slices and repeats like it, and `target_scores`
(and `TargetScore`) apply it where a class would be indexed. So the callable sees
exactly what a class index would select from:

* the **logits** for every explanation method (gradient methods differentiate it; ScoreCAM,
  AblationCAM and the Captum perturbation methods apply it to the logits of each masked
  or ablated forward), except
* the **softmax probabilities** where the method or metric scores probabilities (RISE
  with ``score="probability"``, the metrics' default ``score="probability"``).

Hence ``lambda z: z[:, 7]`` gives exactly what ``7`` gives, everywhere. The callable must
be row-wise (row ``i`` of its output depends on row ``i`` of its input only), because the
methods batch and expand rows (IG's steps, occlusion's windows) as they see fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TargetError
from .scoring import ScoreKind, target_scores

#: ``scores(values (N, K)) -> (N,)``: a target as a function of the logits (or of the
#: probabilities, where a method scores those)
TargetFn = Callable[[torch.Tensor], torch.Tensor]

#: a class index (Python or numpy integer), a class name, one of them per image
#: (list, 1-d integer tensor or array), a callable ``(N, K) -> (N,)``, or ``None`` for
#: each image's predicted class
TargetInput = int | str | Sequence[int | str] | torch.Tensor | np.ndarray | TargetFn | None


def callable_name(fn: Callable[..., Any]) -> str:
    """``fn``'s ``__name__`` (``"lambda"`` for a lambda; a partial's function's name)."""
    inner = getattr(fn, "func", fn)  # functools.partial
    name = getattr(inner, "__name__", None) or type(inner).__name__
    return "lambda" if name == "<lambda>" else name


class CallableTargets:
    """``rows`` images whose target is the same callable: the ``(N,)`` class tensor's stand-in.

    The engines slice, repeat and move targets as the ``(N,)`` long tensor of classes; this
    object answers those operations with itself at a new row count, so no engine needs a
    second code path. `target_scores` calls it on
    ``(N, K)`` logits (or probabilities) and gets ``(N,)`` checked scores.

    Args:
        fn: ``values (N, K) -> (N,)`` (``(N, 1)`` is accepted and squeezed).
        rows: how many rows (images, or jobs) it stands for.
        method: the explaining method or metric, named in errors.
        device: where the rows live (read by chunked scoring for its output).
    """

    def __init__(
        self, fn: TargetFn, rows: int, method: str = "", device: torch.device | None = None
    ) -> None:
        self.fn = fn
        self.rows = int(rows)
        self.method = method
        self.device = torch.device("cpu") if device is None else torch.device(device)

    @property
    def name(self) -> str:
        """The callable's name (``"lambda"`` for a lambda)."""
        return callable_name(self.fn)

    @property
    def label(self) -> str:
        """How results and figures name the target: ``"custom target (<name>)"``."""
        return f"custom target ({self.name})"

    def __repr__(self) -> str:
        return f"CallableTargets({self.name}, rows={self.rows}, method={self.method!r})"

    # ------------------------------------------- the (N,) tensor's operations
    def _with_rows(self, rows: int) -> CallableTargets:
        return CallableTargets(self.fn, rows, self.method, self.device)

    def numel(self) -> int:
        return self.rows

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: Any) -> CallableTargets:
        if isinstance(index, slice):
            return self._with_rows(len(range(self.rows)[index]))
        return self._with_rows(int(torch.as_tensor(index).numel()))  # an index tensor

    def repeat(self, times: int) -> CallableTargets:
        return self._with_rows(self.rows * int(times))

    def repeat_interleave(self, times: int) -> CallableTargets:
        return self._with_rows(self.rows * int(times))

    def view(self, *_shape: Any) -> CallableTargets:
        return self

    def to(self, device: Any = None, **_kwargs: Any) -> CallableTargets:
        if isinstance(device, (str, torch.device)):
            return CallableTargets(self.fn, self.rows, self.method, torch.device(device))
        return self

    def cpu(self) -> CallableTargets:
        return self.to(torch.device("cpu"))

    # ------------------------------------------------------------- scoring
    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """The callable's scores of ``values`` ``(N, K)``, checked: -> ``(N,)`` float32
        (float64 where ``values`` are).

        Raises:
            TargetError: not a tensor, a shape other than ``(N,)`` or ``(N, 1)``, NaN, or
                (when ``values`` takes gradients) a result not connected to ``values``.
        """
        rows, classes = values.shape[0], values.shape[-1]
        expected = f"expected one score per image: shape ({rows},) (or ({rows}, 1))"
        where = f"{self.method or 'the method'}: the callable target {self.name}"
        scores = self.fn(values)
        if not isinstance(scores, torch.Tensor):
            raise TargetError(
                f"{where} returned {type(scores).__name__}, not a tensor; {expected}, e.g. "
                f"lambda z: z[:, 7] or lambda z: z[:, [281, 282]].sum(1)."
            )
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if tuple(scores.shape) != (rows,):
            raise TargetError(
                f"{where} returned shape {tuple(scores.shape)} for logits of shape "
                f"({rows}, {classes}); {expected}. Reduce over classes, e.g. "
                f"lambda z: z[:, [281, 282]].sum(1), not over the batch."
            )
        if values.requires_grad and torch.is_grad_enabled() and not scores.requires_grad:
            raise TargetError(
                f"{where} returned a tensor not connected to the logits (no gradient), and "
                f"{self.method or 'this method'} differentiates the target. Compute the "
                f"score from the logits it is given, without .detach(), .item() or numpy."
            )
        if torch.isnan(scores).any():
            raise TargetError(
                f"{where} returned NaN for {int(torch.isnan(scores).sum())} of {rows} rows; "
                f"{expected}, finite. Check for 0/0 or log(0) (use log_softmax)."
            )
        return scores.to(torch.promote_types(values.dtype, torch.float32))

    def selected_classes(self, logits: torch.Tensor) -> torch.Tensor:
        """The class each row's score reads, where it reads one: ``(N, K)`` -> ``(N,)`` long.

        Row ``i`` reads class ``k`` when the gradient of its score at ``logits`` is
        non-zero for ``z[i, k]`` only (``lambda z: z[:, 7]``, ``2 * z[:, 7:8]``); rows whose
        score depends on several classes (a group's sum, a softmax probability) or on
        none get ``-1``, as do all rows of a callable that cannot be differentiated.
        One extra call of the callable on a detached copy; the model does not run.
        """
        unknown = torch.full((logits.shape[0],), -1, dtype=torch.long, device=logits.device)
        # a copy outside inference mode: RandomCAM runs under torch.inference_mode() too
        with torch.inference_mode(False), torch.enable_grad():
            values = logits.detach().float().clone().requires_grad_(True)
            try:
                (grad,) = torch.autograd.grad(self(values).sum(), values, allow_unused=True)
            except (TargetError, RuntimeError):  # detached or not differentiable: no class
                return unknown
        if grad is None:
            return unknown
        read = grad != 0
        return torch.where(read.sum(dim=1) == 1, read.long().argmax(dim=1), unknown)


def _is_index(value: object) -> bool:
    """Python and numpy integers (``argmax`` returns ``np.int64``), but not ``bool``."""
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _class_name_resolver(model: nn.Module | None, name: str) -> int:
    """The class index ``name`` stands for in ``model``'s own class names (or ImageNet's)."""
    if model is None:  # a caller that has only a class count
        raise ValueError(
            f"target_class {name!r} is a class name, but no model was given to look it up "
            f"in; pass the class index instead."
        )
    from ..models.introspect import label_resolver_for  # the one class-name matcher

    return label_resolver_for(model).resolve(name, where="target_class")


#: what `validate_targets` gives: one class per image, a callable, or ``None``
ResolvedTargets = list[int] | CallableTargets | None


def validate_targets(
    target_class: TargetInput,
    batch_size: int,
    num_classes: int,
    model: nn.Module | None = None,
    method: str = "",
) -> ResolvedTargets:
    """Check ``target_class`` for a batch; ``None`` means "the predicted class".

    Class names (``"tabby"``, a WordNet id, one of the model's ``label_names``) are
    resolved through ``model``'s names, as folder names are in [`timmlens.evaluate`][].
    A callable is kept as `CallableTargets` of ``batch_size`` rows (its output is
    checked where it is called); ``method`` names the caller in its errors.

    Returns:
        One class index per image, a `CallableTargets`, or ``None``.

    Raises:
        TargetError: a class outside ``[0, num_classes)``, a list of the wrong length, or
            a value that is no target; [`LabelNameError`][timmlens.LabelNameError]: a name that is
            not a class of ``model``. Both are ``ValueError``.
    """
    if target_class is None:
        return None
    if isinstance(target_class, CallableTargets):
        return CallableTargets(target_class.fn, batch_size, method or target_class.method)
    if callable(target_class) and not isinstance(target_class, (torch.Tensor, np.ndarray)):
        return CallableTargets(target_class, batch_size, method)
    if isinstance(target_class, (torch.Tensor, np.ndarray)):
        kind = target_class.dtype
        floating = (
            target_class.is_floating_point()
            if isinstance(target_class, torch.Tensor)
            else not np.issubdtype(kind, np.integer)
        )
        if target_class.ndim > 1 or floating:
            raise TargetError(
                f"target_class {type(target_class).__name__} must be 0-d or 1-d of integers, "
                f"got shape {tuple(target_class.shape)} of {kind}."
            )
        if isinstance(target_class, torch.Tensor) and target_class.is_meta:
            raise TargetError(
                "target_class is on the 'meta' device, which holds shapes but no values, so "
                "there is no class to read. Pass the classes themselves: an int, a list, or "
                "a tensor with data (e.g. torch.tensor(3), or .to('cpu') of a real one)."
            )
        target_class = target_class.tolist()
    if isinstance(target_class, str) or _is_index(target_class):
        targets: list[object] = [target_class] * batch_size
    elif isinstance(target_class, Sequence) and not isinstance(target_class, (bytes, bytearray)):
        targets = list(target_class)
    else:
        raise TargetError(
            f"target_class must be a class index, a class name, a list of them (one per "
            f"image), a callable logits (B, K) -> scores (B,), or None, got "
            f"{type(target_class).__name__}."
        )
    if len(targets) != batch_size:
        raise TargetError(
            f"target_class has {len(targets)} entries for a batch of {batch_size} images; give "
            f"one class for all, one per image, or None for the predicted classes."
        )
    indices = []
    for target in targets:
        if isinstance(target, str):
            target = _class_name_resolver(model, target)
        if not _is_index(target):
            raise TargetError(
                f"target_class entries must be class indices or names, got "
                f"{type(target).__name__} {target!r}."
            )
        if not 0 <= int(target) < num_classes:
            raise TargetError(
                f"target_class {int(target)} is out of range: valid classes are "
                f"0..{num_classes - 1} (the model has {num_classes} outputs)."
            )
        indices.append(int(target))
    return indices


def target_rows(
    targets: ResolvedTargets, device: torch.device
) -> torch.Tensor | CallableTargets | None:
    """Resolved targets as the engines carry them: ``(B,)`` long on ``device``, the
    `CallableTargets` on ``device``, or ``None`` (the predicted classes)."""
    if targets is None:
        return None
    if isinstance(targets, CallableTargets):
        return targets.to(device)
    return torch.tensor(targets, device=device, dtype=torch.long)


def predicted_or(targets: torch.Tensor | CallableTargets, logits: torch.Tensor) -> torch.Tensor:
    """The ``(B,)`` classes a result reports: ``targets``, or for a callable target the
    predicted classes of ``logits`` ``(B, K)`` (a callable has no class to report)."""
    if isinstance(targets, CallableTargets):
        return logits.detach().argmax(dim=1)
    return targets


class TargetScore(nn.Module):
    """``model``'s score for each row's target class: ``(N, C, H, W), (N,)`` -> ``(N,)``.

    The one module form of `target_scores`, for
    Captum. Targets travel as a forward argument (Captum's ``additional_forward_args``),
    so Captum expands them alongside the inputs whatever its expansion order
    (step-major for IG, sample-major for ``NoiseTunnel``). With ``targets=None`` each
    row's predicted class is used, chosen inside the same forward pass: the argmax is
    piecewise constant, so the gradient of the selected logit is exactly the gradient
    for the predicted class, at the cost of one forward.

    A `CallableTargets` (a non-tensor, so Captum passes it on unexpanded) scores
    every row with its callable.

    The module is made per call: `seen` holds the classes (or the callable) and
    detached logits of its latest forward, for the call that owns it.
    """

    def __init__(self, model: nn.Module, kind: ScoreKind = "logit") -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        #: ``((N,) classes or the callable, (N, K) logits)`` of the latest forward, detached
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor | CallableTargets | None = None
    ) -> torch.Tensor:
        logits = self.model(inputs)
        chosen: torch.Tensor | CallableTargets
        if targets is None:
            chosen = logits.detach().argmax(dim=1)
        elif isinstance(targets, CallableTargets):  # one callable for every row
            chosen = targets._with_rows(logits.shape[0]).to(logits.device)
        else:
            chosen = targets.to(device=logits.device, dtype=torch.long).view(-1)
        self.seen = (chosen, logits.detach())  # type: ignore[assignment]
        return target_scores(logits, chosen, self.kind)
