"""Install torch and torchvision into the running Python, the CPU build where it will do.

``make`` calls it once per venv (``.venv/.torch-stamp``). PyPI's default torch wheel for
Linux carries CUDA (5.2 GB of venv with its ``nvidia-*`` libraries and triton); a machine
without an NVIDIA GPU needs none of it. So, on such a machine, when PyTorch's CPU wheel
index answers, torch comes from there (0.73 GB installed: the dev venv comes to about
2 GB instead of 6.5 GB, see README.md); when it does not (offline, behind a mirror that
carries only PyPI) or the install from it fails, the plain ``pip install`` runs (PyPI,
or what pip is configured to use), which is what happened before.

    python tools/install_torch.py torch==2.14.1 torchvision==0.29.1
    python tools/install_torch.py --dry-run torch==2.14.1 torchvision==0.29.1
    TIMMLENS_TORCH=cuda python tools/install_torch.py torch      # never the CPU index

``TIMMLENS_TORCH`` (or ``--build``): ``auto`` (default: CPU build when no NVIDIA GPU is
seen), ``cpu`` (always try the CPU index first) or ``cuda`` (never). Standard library
only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

#: PyTorch's index of CPU-only wheels (torch ``X.Y.Z+cpu``, and torchvision to match).
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
BUILDS = ("auto", "cpu", "cuda")
#: Seconds to wait for the index before falling back to PyPI.
PROBE_TIMEOUT = 10.0


def has_nvidia_gpu() -> bool:
    """Whether this machine shows an NVIDIA GPU (its driver's tool or device node)."""
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidia0").exists()


def index_reachable(index: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether ``index`` (a PEP 503 simple index) answers for torch within ``timeout``."""
    url = f"{index.rstrip('/')}/torch/"
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":  # a local index (a mirror, a test): a folder per project
        return Path(urllib.request.url2pathname(parsed.path)).is_dir()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return 200 <= answer.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def cpu_pins(pins: Sequence[str]) -> list[str]:
    """``torch==2.14.1`` -> ``torch==2.14.1+cpu``: an exact torch pin names the CPU build,
    so another index pip is configured with cannot hand over the CUDA one. torchvision
    and unpinned or ranged requirements are left as given (the CPU index has only CPU
    builds; torchvision follows the torch it is installed with)."""
    pinned = []
    for pin in pins:
        match = re.fullmatch(r"torch==([0-9][0-9A-Za-z.]*)", pin.strip())
        pinned.append(f"torch=={match.group(1)}+cpu" if match else pin)
    return pinned


def plan(
    pins: Sequence[str],
    *,
    build: str = "auto",
    index: str = CPU_INDEX,
    gpu: Callable[[], bool] = has_nvidia_gpu,
    reachable: Callable[[str], bool] = index_reachable,
) -> tuple[list[list[str]], str]:
    """The ``pip install`` argument lists to try in order, and why.

    Args:
        pins: requirements, e.g. ``["torch==2.14.1", "torchvision==0.29.1"]``.
        build: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see the module docstring).
        index: the CPU wheel index.
        gpu: whether the machine has an NVIDIA GPU.
        reachable: whether an index answers.
    """
    if build not in BUILDS:
        raise ValueError(f"build={build!r}: use one of {', '.join(BUILDS)}.")
    default = ["install", "--quiet", *pins]
    if build == "cuda" or (build == "auto" and gpu()):
        return [default], "an NVIDIA GPU is present: the default (CUDA) build"
    if not reachable(index):
        return [default], f"{index} does not answer: the default build from PyPI"
    cpu = ["install", "--quiet", "--index-url", index, *cpu_pins(pins)]
    return [cpu, default], f"no NVIDIA GPU: the CPU build from {index}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pins", nargs="+", help="requirements, e.g. torch==2.14.1")
    parser.add_argument("--index", default=os.environ.get("TORCH_CPU_INDEX") or CPU_INDEX)
    parser.add_argument(
        "--build", choices=BUILDS, default=os.environ.get("TIMMLENS_TORCH") or "auto"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands only")
    args = parser.parse_args(argv)
    attempts, why = plan(args.pins, build=args.build, index=args.index)
    print(f"install_torch: {why}", file=sys.stderr)
    for number, pip_args in enumerate(attempts):
        command = [sys.executable, "-m", "pip", *pip_args]
        print(f"install_torch: {' '.join(command)}", file=sys.stderr)
        if args.dry_run:
            continue
        if subprocess.call(command) == 0:
            return 0
        if number + 1 < len(attempts):
            print("install_torch: that failed; falling back to the default build", file=sys.stderr)
    return 0 if args.dry_run else 1


if __name__ == "__main__":
    sys.exit(main())
