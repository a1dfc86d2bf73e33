"""Benchmarks run on the model's device with a fixed thread count, side by side per group."""

from __future__ import annotations

import os

import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
