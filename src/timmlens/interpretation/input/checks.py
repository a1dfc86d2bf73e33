"""Argument checks shared by the input methods (errors say what to pass instead)."""

from __future__ import annotations

from typing import Any

__all__ = ["check_budget", "check_positive_int"]


def check_positive_int(value: Any, name: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}. {hint}")
    return value


def check_budget(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"memory_budget_bytes must be a positive integer number of bytes or None (auto), "
            f"got {value!r}. Try 2 * 2**30 for 2 GiB."
        )
    return value
