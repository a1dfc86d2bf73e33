"""Benchmarks run on the model's device with a fixed thread count, side by side per group.

Two threads by default; ``OMP_NUM_THREADS`` (e.g. ``1`` on a machine shared with other
work) overrides it, since ``torch.set_num_threads`` would otherwise ignore it.
"""

from __future__ import annotations

import os

import torch

_DEFAULT = max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", _DEFAULT)))
