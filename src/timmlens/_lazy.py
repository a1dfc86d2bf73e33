"""Lazy package exports (PEP 562): a name is imported from its module on first access.

A package lists ``name -> ".module"`` and binds what `lazy_exports` returns::

    __getattr__, __dir__ = lazy_exports(__name__, {"GradCAM": ".cam"})

so ``import timmlens`` does not load Captum, matplotlib or plotly until a name that needs
them is used. Type checkers see the same names through ``if TYPE_CHECKING:`` imports in
the package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, resolving ``exports`` on first access.

    Args:
        package: the package's ``__name__``.
        exports: public name -> module relative to ``package`` (``".cam"``) or absolute.
    """

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name, package), name)
        # Cache on the package, so later accesses are plain attribute lookups.
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
