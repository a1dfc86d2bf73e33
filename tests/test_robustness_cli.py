"""CLI robustness: output paths checked first, distinct explain names, option values, class
folders out of range, and torchrun ranks that fail together instead of hanging."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timmlens import cli
from timmlens.analysis.error_report import error_report
from timmlens.cli import main
from timmlens.errors import LabelNameError
from timmlens.evaluation.sources import ImageFolderSource, LabelResolver
from timmlens.testing import explainable_model

# Names new with these checks are imported in the tests, so that each test of this file
# fails on its own on the code before them (the way to show what a test catches).


def save_image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def error_lines(capsys) -> list[str]:
    """stderr lines, library warnings left out."""
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip() and "Warning" not in line]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the CLI gets as far as loading a model."""

    def refuse(spec):
        raise AssertionError(f"the model {spec!r} was loaded before the output check")

    monkeypatch.setattr(cli, "_load", refuse)


@pytest.fixture
def counted_model(monkeypatch):
    """The CLI loads a tiny model whose forward calls are counted in ``calls``."""
    calls: list[int] = []

    def load(spec):
        model = explainable_model("test_resnet", num_classes=10, seed=0)
        model.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
        return model

    monkeypatch.setattr(cli, "_load", load)
    return calls


# ----------------------------------------------------------------- output paths
def _argv(command: str, tmp_path: Path, out: str) -> list[str]:
    image = save_image(tmp_path / "data" / "3" / "a.png")
    data = str(image.parent.parent)
    first = {"explain": str(image), "evaluate": data, "report": data}[command]
    return [command, first, "--model", "test_resnet", "--out", out]


@pytest.mark.parametrize("command", ["explain", "evaluate", "report"])
def test_out_is_an_existing_file(tmp_path, capsys, no_model, command):
    (tmp_path / "taken").write_text("not a folder")
    out = str(tmp_path / "taken")
    assert main(_argv(command, tmp_path, out)) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"timmlens {command}: error: ")
    assert f"folder '{out}' is a file, not a folder" in lines[0]


@pytest.mark.parametrize("command", ["explain", "evaluate", "report"])
def test_out_under_a_file(tmp_path, capsys, no_model, command):
    (tmp_path / "taken").write_text("not a folder")
    out = str(tmp_path / "taken" / "sub" / ("r.html" if command == "report" else "out"))
    assert main(_argv(command, tmp_path, out)) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1, lines
    assert f"'{tmp_path / 'taken'}' is a file, not a folder" in lines[0]


def test_report_out_is_a_folder_named_like_a_file(tmp_path, capsys, no_model):
    (tmp_path / "r.html").mkdir()
    assert main(_argv("report", tmp_path, str(tmp_path / "r.html"))) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and f"'{tmp_path / 'r.html'}' is a folder, not a file" in lines[0]


def test_read_only_folder_detected_by_a_probe_write(tmp_path, capsys, no_model, monkeypatch):
    """As root (CI) a chmod does not stop writes: simulate the refusal of the file system."""
    folder = tmp_path / "ro"
    folder.mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    assert main(_argv("explain", tmp_path, str(folder / "new"))) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert (
        f"--out folder '{folder / 'new'}' is not writable (it would be created in '{folder}')"
        in lines[0]
    )
    assert not (folder / "new").exists()


def test_read_only_folder_detected_by_os_access(tmp_path, monkeypatch):
    from timmlens._outputs import ensure_writable_dir
    from timmlens.errors import OutputPathError

    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(OutputPathError, match="is not writable: permission denied"):
        ensure_writable_dir(tmp_path, "out")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes in read-only folders"
)
def test_read_only_folder_for_real(tmp_path, capsys, no_model):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main(_argv("report", tmp_path, str(folder))) == 2
    finally:
        folder.chmod(0o755)
    lines = error_lines(capsys)
    assert len(lines) == 1 and "is not writable" in lines[0]


def test_writable_paths_pass_and_create_nothing(tmp_path):
    from timmlens._outputs import ensure_writable_dir, ensure_writable_file

    assert ensure_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert ensure_writable_dir(tmp_path) == tmp_path
    assert ensure_writable_file(tmp_path / "c" / "r.html") == tmp_path / "c" / "r.html"
    assert sorted(tmp_path.iterdir()) == []  # the probe file is gone too


def test_error_report_api_checks_out_before_predicting(tmp_path):
    model = explainable_model("test_resnet", num_classes=10, seed=0)
    calls = []
    model.register_forward_hook(lambda _m, args, _o: calls.append(1))
    save_image(tmp_path / "data" / "3" / "a.png")
    (tmp_path / "taken").write_text("x")
    from timmlens.errors import OutputPathError

    with pytest.raises(OutputPathError, match=r"'.*taken' is a file, not a folder"):
        error_report(model, tmp_path / "data", tmp_path / "taken" / "r.html", progress=False)
    assert calls == []


# ----------------------------------------------------------------- explain names
def test_output_stems_never_collide():
    from timmlens.cli import output_stems

    assert output_stems(["a/cat.jpg", "b/dog.png"]) == ["cat", "dog"]
    assert output_stems(["a/cat.jpg", "b/cat.png"]) == ["cat-1", "cat-2"]
    assert output_stems(["x.png", "x.png"]) == ["x-1", "x-2"]
    assert output_stems(["Cat.png", "b/cat.jpg"]) == ["Cat-1", "cat-2"]
    # a number never repeats another image's own stem
    names = output_stems(["cat-1.png", "a/cat.png", "b/cat.png", "cat-2.jpg"])
    assert names == ["cat-1", "cat-3", "cat-4", "cat-2"]
    assert len({n.casefold() for n in names}) == len(names)


def test_explain_same_stem_writes_distinct_files(tmp_path, capsys, counted_model):
    first = save_image(tmp_path / "a" / "cat.jpg", seed=1)
    second = save_image(tmp_path / "b" / "cat.png", seed=2)
    out = tmp_path / "out"
    code = main(["explain", str(first), str(second), str(first), "--out", str(out), "--html"])
    assert code == 0
    printed = capsys.readouterr().out
    figures = sorted(p.name for p in out.glob("*.png"))
    tag = "_gradcam_random-weights"  # the tiny model is untrained: its file names say so
    assert figures == [f"cat-1{tag}.png", f"cat-2{tag}.png", f"cat-3{tag}.png"]
    assert len(list(out.glob("*.html"))) == 3
    assert f"{first}: " in printed and f"-> {out / f'cat-2{tag}.png'}" in printed


# ----------------------------------------------------------------- option values
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "d", "--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
        (["evaluate", "d", "--steps", "-5"], "argument --steps: expected an integer >= 1"),
        (["evaluate", "d", "--batch-size", "0"], "argument --batch-size: expected an integer"),
        (["report", "d", "--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
        (["report", "d", "--max-examples", "-1"], "--max-examples: expected an integer >= 0"),
        (["report", "d", "--top-pairs", "x"], "--top-pairs: expected an integer >= 0, got 'x'"),
    ],
)
def test_bad_option_values_are_one_line_with_status_2(capsys, no_model, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    lines = error_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"timmlens {argv[0]}: error: ") and message in lines[0]
    assert f"see: timmlens {argv[0]} --help" in lines[0]


def test_zero_is_still_allowed_where_it_means_something(tmp_path, capsys, counted_model):
    save_image(tmp_path / "data" / "3" / "a.png")
    argv = ["report", str(tmp_path / "data"), "--out", str(tmp_path / "r")]
    assert main([*argv, "--max-examples", "0", "--top-pairs", "0"]) == 0
    summary = json.loads((tmp_path / "r" / "report.json").read_text())
    assert summary["gallery"]["shown"] == 0 and summary["gallery"]["max_examples"] == 0


# ----------------------------------------------------------------- class folders
def test_index_folders_out_of_range_are_named_together(tmp_path):
    for folder in ("3", "5000", "-1", "sub/12", "tabby"):
        save_image(tmp_path / "data" / folder / "a.png")
    with pytest.raises(LabelNameError) as info:
        ImageFolderSource(tmp_path / "data", num_classes=10)
    message = str(info.value)
    assert "class folders '-1', '5000', 'sub/12'" in message
    assert "must be 0..9 (the model has 10 classes)" in message and "\n" not in message
    # the same with a resolver; a bare -1 is an index too, never a name
    with pytest.raises(LabelNameError, match=r"class folders '-1', '5000', 'sub/12'"):
        ImageFolderSource(tmp_path / "data", LabelResolver(10, [f"c{i}" for i in range(10)]))
    with pytest.raises(LabelNameError, match=r"class -1 is out of range: .* \(0\.\.9\)"):
        LabelResolver(10).resolve("-1")
    # without a class count only negative indices are known to be wrong
    with pytest.raises(LabelNameError, match=r"class folder '-1' under .* must be 0 or more"):
        ImageFolderSource(tmp_path / "data")


@pytest.mark.parametrize("command", ["evaluate", "report"])
def test_cli_class_folders_out_of_range_fail_before_the_run(
    tmp_path, capsys, counted_model, command
):
    for folder in ("3", "5000", "-1"):
        save_image(tmp_path / "data" / folder / "a.png")
    out = tmp_path / "out"
    assert main([command, str(tmp_path / "data"), "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1, lines
    assert "class folders '-1', '5000'" in lines[0] and "0..9" in lines[0]
    assert counted_model == [], "no image was run"
    assert not out.exists()


# ----------------------------------------------------------------- torchrun: fail fast
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_ranks(script: Path, args: list[str], tmp_path: Path, timeout: float = 120):
    """Run ``script`` as ranks 0 and 1 of a gloo group, each with its own output files.

    No launcher watches them (as with ``srun`` or a second node): a rank left waiting in a
    collective waits until the timeout, where torchrun's agent would SIGTERM it silently.
    Returns ``[(returncode, stdout, stderr)]`` per rank.
    """
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
    }
    procs, files = [], []
    try:
        for rank in range(2):
            out = (tmp_path / f"rank{rank}.out").open("w")
            err = (tmp_path / f"rank{rank}.err").open("w")
            files += [out, err]
            rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script), *args], env=rank_env, stdout=out, stderr=err
                )
            )
        codes = [proc.wait(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for handle in files:
            handle.close()
    return [
        (
            codes[rank],
            (tmp_path / f"rank{rank}.out").read_text(),
            (tmp_path / f"rank{rank}.err").read_text(),
        )
        for rank in range(2)
    ]


def test_fail_together_stops_every_rank_with_the_failing_message(tmp_path):
    script = tmp_path / "step.py"
    script.write_text(
        textwrap.dedent("""
        import json, sys
        import torch.distributed as dist
        from timmlens.evaluation.distributed import (
            fail_together, gather_to_rank0, init_from_environment, rank_and_world)

        init_from_environment()
        rank, world = rank_and_world()
        try:
            with fail_together("step one"):
                value = [rank]
            gathered = gather_to_rank0(value)  # a round that works
            with fail_together("step two"):
                if rank == 1:
                    raise OSError("disk 1 is gone")
                value = [rank]
            gather_to_rank0(value)
            outcome = {"ok": gathered}
        except Exception as error:
            outcome = {"type": type(error).__name__, "message": str(error)}
        with open(sys.argv[1] + f"/rank{rank}.json", "w") as file:
            json.dump(outcome, file)
        dist.destroy_process_group()
    """)
    )
    ranks = launch_two_ranks(script, [str(tmp_path)], tmp_path, timeout=60)
    assert [code for code, _, _ in ranks] == [0, 0], ranks
    zero = json.loads((tmp_path / "rank0.json").read_text())
    one = json.loads((tmp_path / "rank1.json").read_text())
    assert one == {"type": "OSError", "message": "disk 1 is gone"}
    assert zero["type"] == "DistributedRunError"
    assert zero["message"] == (
        "rank 1 of 2 failed during step two, so rank 0 stops too: OSError: disk 1 is gone"
    )


def test_cli_report_under_two_ranks_fails_fast_on_both(tmp_path):
    """Rank 1 gets the unreadable image; both ranks stop with exit 2 and its message."""
    save_image(tmp_path / "data" / "3" / "a.png")  # index 0: rank 0
    (tmp_path / "data" / "3" / "b.png").write_bytes(b"not an image")  # index 1: rank 1
    script = tmp_path / "cli.py"
    script.write_text(
        "import sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from timmlens.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["report", str(tmp_path / "data"), "--model", "test_resnet", "--out"]
    ranks = launch_two_ranks(script, [*argv, str(tmp_path / "out")], tmp_path, timeout=90)
    assert [code for code, _, _ in ranks] == [2, 2], ranks
    messages = [[line for line in err.splitlines() if "error:" in line] for _, _, err in ranks]
    assert all(len(lines) == 1 for lines in messages), messages
    unreadable = "b.png' is not an image file PIL can read"
    assert messages[1][0].startswith("timmlens report: error: image 0: '")
    assert unreadable in messages[1][0]
    assert messages[0][0].startswith(
        "timmlens report: error: rank 1 of 2 failed during predict, so rank 0 stops too: "
        "ImageInputError: "
    )
    assert unreadable in messages[0][0]
    assert not (tmp_path / "out").exists()
