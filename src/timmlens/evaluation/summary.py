"""Per-image rows on disk (JSONL or CSV) and their summary: mean and 95% CI."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._warnings import warn_caller
from ..errors import RowsFileError
from .run_identity import jsonable

ROW_KEYS = ("id", "method", "label", "predicted", "target")
#: each class column's name column, as the model names the class (``"class N"`` where it
#: has no names); rows of an older timmlens lack them, and a resume adds them
NAME_KEYS = {"label": "label_name", "predicted": "predicted_name", "target": "target_name"}
#: the columns before the metrics: ``ROW_KEYS``, then the class names
FIXED_KEYS = (*ROW_KEYS, *NAME_KEYS.values())


def with_names(row: dict[str, Any], name: Callable[[int | None], str | None]) -> dict[str, Any]:
    """``row`` with each class column's name (``label_name``, ...) after the indices."""
    named = {key: value for key, value in row.items() if key not in NAME_KEYS.values()}
    head = {key: named.pop(key) for key in ("id", "method", *NAME_KEYS) if key in named}
    names = {column: name(head.get(key)) for key, column in NAME_KEYS.items()}
    return {**head, **names, **named}


def t_critical_975(dof: int) -> float:
    """Two-sided 95% Student-t critical value (Cornish-Fisher expansion around z).

    Within 0.2% of the exact value for dof >= 3; exact tables for dof 1 and 2.
    """
    if dof <= 0:
        return math.nan
    if dof == 1:
        return 12.706
    if dof == 2:
        return 4.303
    z = 1.959964
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


@dataclass(frozen=True)
class Statistic:
    mean: float
    ci95: float  # half-width of the 95% confidence interval of the mean
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.ci95:.4f} (n={self.n})"


def summarise(values: list[float]) -> Statistic:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Statistic(math.nan, math.nan, 0)
    mean = sum(finite) / n
    if n == 1:
        return Statistic(mean, math.nan, 1)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    return Statistic(mean, t_critical_975(n - 1) * std / math.sqrt(n), n)


@dataclass
class EvaluationSummary:
    """Mean and 95% CI per method and metric, with where the rows and summary were written.

    Attributes:
        identity: the run identity (``out/run.json``): model and its state-dict hash,
            method and metric options, images, timmlens version.
        skipped: images that could not be read, id -> reason (not in the table).
        n_labelled: images with a true class (explained for it); the others were
            explained for their prediction.
    """

    table: dict[str, dict[str, Statistic]]
    n_images: int
    rows_path: Path
    summary_path: Path
    metrics: list[str] = field(default_factory=list)
    identity: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    n_labelled: int = 0

    @property
    def labels_line(self) -> str:
        """``"3 of 4 images labelled (explained for their true class); 1 explained for its
        prediction"``: the one sentence every output says about labels."""
        rest = self.n_images - self.n_labelled
        text = f"{self.n_labelled} of {self.n_images} images labelled"
        if (self.identity or {}).get("targets") == "prediction":
            return f"{text}; every image explained for its prediction"
        if self.n_labelled:
            text += " (explained for their true class)"
        if rest:
            text += f"; {rest} explained for {'its' if rest == 1 else 'their'} prediction"
        return text

    @property
    def note(self) -> str | None:
        """``"quick profile (...): not comparable to papers"`` for a quick run, else None."""
        from .profiles import QUICK_NOTE

        return QUICK_NOTE if (self.identity or {}).get("profile") == "quick" else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (NaN as ``None``), as ``summary.json`` holds it."""
        return jsonable(
            {
                "n_images": self.n_images,
                "n_labelled": self.n_labelled,
                "profile": (self.identity or {}).get("profile", "full"),
                "note": self.note,
                "rows": str(self.rows_path),
                "methods": {
                    method: {metric: vars(stat) for metric, stat in stats.items()}
                    for method, stats in self.table.items()
                },
                "skipped": len(self.skipped),
                "skipped_images": [
                    {"id": image, "reason": reason} for image, reason in self.skipped.items()
                ],
                "run": self.identity,
            }
        )

    def __str__(self) -> str:
        header = ["method", *self.metrics]
        lines = [" | ".join(header), " | ".join("---" for _ in header)]
        for method, stats in self.table.items():
            lines.append(" | ".join([method, *(str(stats[m]) for m in self.metrics)]))
        text = f"{self.n_images} images, mean ± 95% CI\n" + "\n".join(lines)
        text += f"\n{self.labels_line}" + (f"\n{self.note}" if self.note else "")
        if self.identity:
            text += "\n" + describe_identity(self.identity)
        if self.skipped:
            shown = ", ".join(list(self.skipped)[:5]) + (", ..." if len(self.skipped) > 5 else "")
            text += f"\nskipped {len(self.skipped)} unreadable image(s): {shown}"
        return text


def describe_identity(identity: dict[str, Any]) -> str:
    """One line: the model, its hash, the images, metric options not at their default."""
    from .run_identity import metric_identity

    model = identity.get("model") or {}
    images = identity.get("images") or {}
    defaults = metric_identity({})
    options = ", ".join(
        f"{k}={v}"
        for k, v in (identity.get("metric_options") or {}).items()
        if k not in defaults or defaults[k] != v
    )
    return (
        f"run: model {model.get('name')} (sha256 {str(model.get('sha256'))[:12]}), "
        f"{images.get('count')} images (ids sha256 {str(images.get('ids_sha256'))[:12]}), "
        f"metric options {options or 'default'}, timmlens {identity.get('timmlens')}"
    )


class RowStore:
    """Per-image rows in ``.jsonl`` or ``.csv``: crash-safe appends, repair, resume keys.

    Rows are dicts with ``FIXED_KEYS`` (``ROW_KEYS``: id, method and the class indices;
    ``NAME_KEYS``: the classes' names) and one key per metric computed for them (a NaN
    score stays NaN; a metric not computed is absent). JSONL writes NaN as ``null``;
    CSV writes ``nan``, and an empty cell means "not computed".

    A later line for the same (id, method) replaces an earlier one (a row recomputed to
    add a metric is appended first, then the file is compacted by `rewrite`).

    CSV columns are fixed by the header: ``FIXED_KEYS`` then ``metrics``. A resume asking
    for a metric the header lacks rewrites the file with the wider header first
    (`widen`), atomically, so every line always has the header's column count. A file
    written before the name columns existed is read too; the evaluator names its rows
    and rewrites it.
    """

    def __init__(self, path: Path, metrics: list[str]) -> None:
        self.path = path
        self.metrics = list(metrics)
        if path.suffix not in {".jsonl", ".csv"}:
            raise ValueError(f"rows file must end in .jsonl or .csv, got '{path.name}'.")
        #: whether the last read found a (id, method) twice
        self.had_duplicates = False

    @property
    def columns(self) -> list[str]:
        return [*FIXED_KEYS, *self.metrics]

    # -- reading -------------------------------------------------------------------------

    def repair(self) -> None:
        """Drop a last line a kill cut short (no final newline), with a warning.

        Appends then start on a fresh line. Lines before the last are not touched.
        """
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        line = data.count(b"\n") + 1
        with self.path.open("r+b") as handle:
            handle.truncate(keep)
        warn_caller(
            f"{self.path}:{line}: the last line is incomplete (the run was stopped while "
            f"writing it); dropped it, its row will be computed again.",
            RuntimeWarning,
        )

    def read(self) -> list[dict[str, Any]]:
        """Every row, one per (id, method) (the last line wins), in first-seen order."""
        if not self.path.exists():
            return []
        rows = self._read_jsonl() if self.path.suffix == ".jsonl" else self._read_csv()
        unique: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            unique[(row["id"], row["method"])] = row
        self.had_duplicates = len(unique) != len(rows)
        return list(unique.values())

    def _damaged(self, line: int, what: str) -> RowsFileError:
        return RowsFileError(
            f"{self.path}:{line}: {what}; expected one row per line as timmlens writes them. "
            f"Delete that line (its row is computed again) or start afresh with --overwrite."
        )

    def _read_jsonl(self) -> list[dict[str, Any]]:
        rows = []
        with self.path.open() as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise self._damaged(
                        number, f"not valid JSON ({exc.msg}, column {exc.colno})"
                    ) from exc
                if not isinstance(row, dict) or not {"id", "method"} <= set(row):
                    raise self._damaged(number, "not a row (a JSON object with id and method)")
                rows.append(
                    {
                        k: (math.nan if v is None and k not in FIXED_KEYS else v)
                        for k, v in row.items()
                    }
                )
        return rows

    def _read_csv(self) -> list[dict[str, Any]]:
        with self.path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return []
            if header[: len(ROW_KEYS)] != list(ROW_KEYS):
                raise self._damaged(1, f"header {header} does not start with {list(ROW_KEYS)}")
            # a file of an older timmlens has no name columns: its metrics follow ROW_KEYS
            named = header[: len(FIXED_KEYS)] == list(FIXED_KEYS)
            self.metrics = header[len(FIXED_KEYS if named else ROW_KEYS) :]
            rows = []
            for values in reader:
                if not values:
                    continue
                if len(values) != len(header):
                    raise self._damaged(
                        reader.line_num, f"{len(values)} fields under a {len(header)}-column header"
                    )
                try:
                    rows.append(self._parse_csv(dict(zip(header, values, strict=True))))
                except ValueError as exc:
                    raise self._damaged(
                        reader.line_num, f"a value is not a number ({exc})"
                    ) from exc
        return rows

    @staticmethod
    def _parse_csv(row: dict[str, str]) -> dict[str, Any]:
        parsed: dict[str, Any] = {}
        for key, value in row.items():
            if key in {"id", "method"}:
                parsed[key] = value
            elif key in NAME_KEYS.values():  # a class name is text, even "7"
                parsed[key] = value or None
            elif key in NAME_KEYS:
                parsed[key] = int(value) if value not in ("", "None") else None
            elif value not in ("", "None"):
                parsed[key] = float(value)
        return parsed

    # -- writing -------------------------------------------------------------------------

    def widen(self, metrics: list[str]) -> None:
        """Make the columns hold ``metrics`` too (CSV: rewrite with the wider header)."""
        rows = self.read()  # the header of an existing CSV fixes the columns so far
        missing = [m for m in metrics if m not in self.metrics]
        if not missing:
            return
        self.metrics += missing
        # Also a header-only CSV (a kill cut its first row): its header must widen too.
        if self.path.suffix == ".csv" and self.path.exists() and self.path.stat().st_size:
            self.rewrite(rows)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists() or self.path.stat().st_size == 0
        # One write per batch: a kill cuts at most the last line, which repair() drops.
        with self.path.open("a", newline="") as handle:
            handle.write(self._format(rows, header=new_file))

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the file by ``rows`` atomically (a temporary file, then a rename)."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(self._format(rows, header=True), newline="")
        os.replace(temporary, self.path)

    def _format(self, rows: list[dict[str, Any]], header: bool) -> str:
        if self.path.suffix == ".jsonl":
            return "".join(json.dumps(jsonable(row), allow_nan=False) + "\n" for row in rows)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()


def count_rows(path: Path) -> int:
    """Complete lines of a rows file (a CSV header and a last line cut short not counted)."""
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    return max(0, lines - (1 if path.suffix == ".csv" else 0))


def build_summary(
    rows: list[dict[str, Any]],
    metrics: list[str],
    rows_path: Path,
    summary_path: Path,
    identity: dict[str, Any] | None = None,
    skipped: dict[str, str] | None = None,
) -> EvaluationSummary:
    """Summarise ``rows`` and write ``summary_path`` as strict JSON (``null`` for NaN)."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for metric in metrics:
            values[row["method"]][metric].append(row.get(metric))
    table = {
        method: {metric: summarise(per_metric[metric]) for metric in metrics}
        for method, per_metric in values.items()
    }
    n_images = len({row["id"] for row in rows})
    n_labelled = len({row["id"] for row in rows if row.get("label") is not None})
    summary = EvaluationSummary(
        table, n_images, rows_path, summary_path, list(metrics), identity, dict(skipped or {})
    )
    summary.n_labelled = n_labelled
    summary_path.write_text(json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n")
    return summary
