"""One registry of named things, shared by the methods and the metrics.

[`Registry`][timmlens._registry.Registry] holds specs (anything with a canonical ``name``
and a tuple of ``aliases``) and owns what every registry of the library needs once:
the spelling rule of keys, aliases that may not clash, unregistering, a block whose
registrations are undone at its end, built-ins imported on the first query, a stable
listing order and the "did you mean" hint of an unknown name. The method registry
(``interpretation.registry``) and the metric registry (``interpretation.metrics.registry``)
are two instances; their public functions keep their own names and messages.

This module sits on the ground floor: it imports nothing of timmlens.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import itertools
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar


class Named(Protocol):
    """What a registry holds: a canonical name and other accepted spellings."""

    @property
    def name(self) -> str: ...

    @property
    def aliases(self) -> tuple[str, ...]: ...


Spec = TypeVar("Spec", bound=Named)


class Registry(Generic[Spec]):
    """Specs by canonical name, with aliases, scoping and lazily imported built-ins.

    Args:
        noun: what a spec is, for messages (``"method"``, ``"metric"``).
        key: the spelling rule of names and aliases (e.g. lower case, ``-`` as ``_``).
        order: the listing order: a sort key of ``(spec, n)``, ``n`` counting registrations.
        packages: packages whose public modules (names not starting with ``_``) register
            the built-ins; imported once, on the first query or non-built-in registration.
        unregister: the public function that removes a spec, named in clash messages.
        owner: how a clash message names the holder of a taken name (e.g. its class).
    """

    def __init__(
        self,
        noun: str,
        *,
        key: Callable[[str], str],
        order: Callable[[Spec, int], Any],
        packages: Sequence[str] = (),
        unregister: str = "unregister",
        owner: Callable[[Spec], str] | None = None,
    ) -> None:
        self.noun = noun
        self.key = key
        self._order = order
        self._packages = tuple(packages)
        self._unregister = unregister
        self._owner = owner
        self._specs: dict[str, Spec] = {}
        self._aliases: dict[str, str] = {}
        self._sequence: dict[str, int] = {}
        self._counter = itertools.count()
        self._loaded = not self._packages

    # -- filling ----------------------------------------------------------------------
    def load_builtins(self) -> None:
        """Import the built-in packages' public modules once, which runs their decorators."""
        if self._loaded:
            return
        self._loaded = True  # before importing: a module that queries must not recurse
        try:
            for name in self._packages:
                package = importlib.import_module(name)
                for module in pkgutil.iter_modules(package.__path__):
                    if not module.name.startswith("_"):
                        importlib.import_module(f"{package.__name__}.{module.name}")
        except BaseException:
            self._loaded = False
            raise

    # -- changing -----------------------------------------------------------------------
    def check_free(self, name: str, aliases: Iterable[str] = (), *, builtin: bool = False) -> None:
        """Raise ``ValueError`` unless ``name`` and ``aliases`` are free (or ``name``'s own).

        A user's registration loads the built-ins first, so a clash with a built-in name
        surfaces at the user's code, not later at the first query.
        """
        if not builtin:
            self.load_builtins()
        old = self._specs.get(name)
        if old is not None:
            by = f" by {self._owner(old)}" if self._owner else ""
            raise ValueError(
                f"{self.noun} '{name}' is already registered{by}; pick another name, or "
                f"{self._unregister}('{name}') first."
            )
        if name in self._aliases:
            raise ValueError(
                f"{self.noun} name '{name}' is an alias of {self.noun} "
                f"'{self._aliases[name]}'; pick another name."
            )
        for alias in aliases:
            holder = alias if alias in self._specs else self._aliases.get(alias)
            if holder is not None and holder != name:
                raise ValueError(
                    f"alias '{alias}' of {self.noun} '{name}' already names {self.noun} "
                    f"'{holder}'; drop it from aliases=."
                )

    def add(
        self,
        spec: Spec,
        *,
        builtin: bool = False,
        same: Callable[[Spec, Spec], bool] | None = None,
    ) -> None:
        """Register ``spec``; a spec that ``same`` calls the same as the holder replaces it
        (a module reloaded in a notebook registers its classes again)."""
        if not builtin:
            self.load_builtins()
        old = self._specs.get(spec.name)
        if old is not None and same is not None and same(old, spec):
            self.remove(spec.name)
        self.check_free(spec.name, spec.aliases, builtin=True)
        self._specs[spec.name] = spec
        self._aliases.update(dict.fromkeys(spec.aliases, spec.name))
        self._sequence[spec.name] = next(self._counter)

    def remove(self, name: str) -> Spec:
        """Remove ``name`` (the canonical name) and its aliases; returns its spec.

        Raises:
            KeyError: no such name is registered.
        """
        self.load_builtins()
        if name not in self._specs:
            raise KeyError(
                f"no {self.noun} '{name}' is registered; registered: {', '.join(self.names())}."
            )
        spec = self._specs.pop(name)
        del self._sequence[name]
        for alias in spec.aliases:
            self._aliases.pop(alias, None)
        return spec

    @contextlib.contextmanager
    def scoped(self) -> Iterator[None]:
        """Registrations and removals inside the block are undone at its end."""
        self.load_builtins()
        state = dict(self._specs), dict(self._aliases), dict(self._sequence)
        try:
            yield
        finally:
            live_state = (self._specs, self._aliases, self._sequence)
            for live, saved in zip(live_state, state, strict=True):
                live.clear()
                live.update(saved)  # type: ignore[arg-type]

    # -- reading ------------------------------------------------------------------------
    def lookup(self, name: str) -> Spec | None:
        """The spec ``name`` or an alias spells (by `key`), or ``None``."""
        self.load_builtins()
        key = self.key(name)
        return self._specs.get(self._aliases.get(key, key))

    def get(self, name: str) -> Spec:
        """The spec of canonical ``name`` (``KeyError`` otherwise)."""
        self.load_builtins()
        return self._specs[name]

    def specs(self) -> list[Spec]:
        """Every spec in listing order."""
        self.load_builtins()
        return sorted(self._specs.values(), key=lambda s: self._order(s, self._sequence[s.name]))

    def names(self) -> list[str]:
        """Every canonical name in listing order."""
        return [spec.name for spec in self.specs()]

    def suggestion(self, name: str, choices: Sequence[str]) -> str:
        """`` Did you mean 'x'?`` for the closest of ``choices`` and their aliases, or ``""``."""
        spellings = [*choices, *(a for a, target in self._aliases.items() if target in choices)]
        close = difflib.get_close_matches(self.key(name), spellings, n=1)
        return f" Did you mean '{self._aliases.get(close[0], close[0])}'?" if close else ""

    def view(self) -> Mapping[str, Spec]:
        """A live, read-only mapping ``name -> spec`` in listing order."""
        return _View(self)


class _View(Mapping[str, Any]):
    """Read-only access to a `Registry`; fills it on first use."""

    def __init__(self, registry: Registry[Any]) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> Any:
        return self._registry.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.names())

    def __len__(self) -> int:
        return len(self._registry.names())

    def __repr__(self) -> str:
        return f"{self._registry.noun.upper()}S({', '.join(self)})"
