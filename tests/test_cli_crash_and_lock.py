"""``timmlens evaluate`` killed (SIGKILL) while writing rows, then resumed; two processes on one
``--out``. Real processes, a tiny model (``test_resnet``, random weights, seeded by the CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timmlens.cli import main
from timmlens.evaluation.summary import RowStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and flock are POSIX")

N_IMAGES, BATCH = 4, 2
METRICS = ["insertion", "deletion"]

#: Runs ``timmlens evaluate`` (argv after the script's own three arguments) in a child
#: process. ``kill`` ``N``: the N-th rows append writes its text up to the middle of the
#: batch's first row, then the process SIGKILLs itself (a kill in the middle of a write).
#: ``hold``: each batch waits for the file ``GO`` after creating ``STARTED`` (a run that is
#: busy in the folder).
CHILD = """
import os, signal, sys, time
from pathlib import Path

from timmlens.cli import main
from timmlens.evaluation import evaluator
from timmlens.evaluation.summary import RowStore

mode, value, flag_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
argv = sys.argv[4:]
calls = []
real_append, real_rows = RowStore.append, evaluator._rows_for_batch


def append(self, rows):
    rows = list(rows)
    calls.append(1)
    if mode == "kill" and len(calls) == value:
        new_file = not self.path.exists() or self.path.stat().st_size == 0
        text = self._format(rows, header=new_file)
        # 10 characters short of the end of the batch's first row: the cut is in that row
        cut = len(self._format(rows[:1], header=new_file)) - 10
        with self.path.open("a", newline="") as handle:
            handle.write(text[:cut])
            handle.flush()
            os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_append(self, rows)


def rows_for_batch(*args, **kwargs):
    if mode == "hold":
        (flag_dir / "STARTED").touch()
        while not (flag_dir / "GO").exists():
            time.sleep(0.05)
    return real_rows(*args, **kwargs)


RowStore.append = append
evaluator._rows_for_batch = rows_for_batch
sys.exit(main(argv))
"""


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
    return root


def _argv(data: Path, out: Path, rows_format: str) -> list[str]:
    return [
        "evaluate",
        str(data),
        "--model",
        "test_resnet",
        "--steps",
        "4",
        "--batch-size",
        str(BATCH),
        "--format",
        rows_format,
        "--out",
        str(out),
    ]


def _child(mode: str, value: int, flags: Path, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", CHILD, mode, str(value), str(flags), *argv]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _main(argv: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # printed by the CLI, one line each, to stderr
        return main(argv)


def _rows(out: Path, rows_format: str) -> list[dict]:
    path = out / f"rows.{rows_format}"
    if rows_format == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return RowStore(path, METRICS)._read_csv()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run's rows, by (id, method)."""
    root = tmp_path_factory.mktemp("reference")
    data = _folder(root / "data")
    assert _main(_argv(data, root / "out", "jsonl")) == 0
    return data, {(r["id"], r["method"]): r for r in _rows(root / "out", "jsonl")}


# A kill in the first batch's write cuts a CSV file's first row under its header; a kill in
# a later one cuts a row after complete ones (the formats are written alike otherwise).
@pytest.mark.parametrize(
    ("rows_format", "kill_at", "written"),
    [("csv", 1, 0), ("jsonl", 2, BATCH)],
    ids=["first-batch-csv", "later-batch-jsonl"],
)
def test_sigkill_while_writing_rows_then_resume_loses_and_doubles_nothing(
    tmp_path, reference, capsys, rows_format, kill_at, written
):
    data, expected = reference
    out = tmp_path / "out"
    argv = _argv(data, out, rows_format)
    child = _child("kill", kill_at, tmp_path, argv)
    _, err = child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    path = out / f"rows.{rows_format}"
    assert not path.read_bytes().endswith(b"\n"), "killed in the middle of a line"
    assert (out / "run.lock").exists(), "the killed run leaves its lock file behind"

    assert _main(argv) == 0  # the stale lock blocks nothing; the cut line is dropped
    err = capsys.readouterr().err
    line = written + 1 + (1 if rows_format == "csv" else 0)
    assert f"{path}:{line}: the last line is incomplete" in err
    rows = _rows(out, rows_format)
    keys = [(r["id"], r["method"]) for r in rows]
    assert len(keys) == len(set(keys)) == N_IMAGES, "no row lost, none doubled"
    for row in rows:  # the same weights (seeded) and the same scores as an unbroken run
        for metric in METRICS:
            assert row[metric] == pytest.approx(expected[row["id"], "gradcam"][metric])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == N_IMAGES and summary["rows"] == str(path)


def test_a_second_process_on_the_same_out_is_refused_and_rows_do_not_interleave(
    tmp_path, reference, capsys
):
    data, expected = reference
    out = tmp_path / "out"
    argv = _argv(data, out, "jsonl")
    first = _child("hold", 0, tmp_path, argv)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "STARTED").exists():
            assert first.poll() is None, first.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the first run never started its first batch"
            time.sleep(0.05)
        assert _main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
        assert err == [
            f"timmlens evaluate: error: '{out}' is in use by another timmlens run (pid "
            f"{first.pid} on {os.uname().nodename}); two runs in one folder would interleave "
            f"their rows: wait for that run to finish, or use another output folder (--out)."
        ]
    finally:
        (tmp_path / "GO").touch()
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err.decode()[-2000:]
    rows = _rows(out, "jsonl")
    keys = [(r["id"], r["method"]) for r in rows]
    assert len(keys) == len(set(keys)) == N_IMAGES
    assert set(keys) == set(expected)
    # the lock went with the first process: a rerun resumes (nothing left to compute)
    assert _main(argv) == 0 and len(_rows(out, "jsonl")) == N_IMAGES
