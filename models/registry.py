"""Name -> class registries for backends (``models.backends``) and benchmarks (``pipelines.benchmarks``).

Built-in entries are the modules of a package: the first lookup imports every module in it, and each
module registers its class with a decorator. Anything else (a plugin, a test) registers through the
same decorator. Names and aliases are unique; a second class under a taken name is an error.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Generic, TypeVar

from glmscore.models.errors import GlmscoreError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._classes: dict[str, type[T]] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False
        self._loading = False
        self._lock = threading.RLock()

    def register(self, name: str, *, aliases: tuple[str, ...] = ()):
        """Class decorator: ``@register_backend("hf_causal")``; sets ``cls.name``."""

        def decorate(cls):
            for n in (name, *aliases):
                taken = self._classes.get(self._aliases.get(n, n))
                if taken is not None and taken.__qualname__ != cls.__qualname__:
                    raise ValueError(f"{self.kind} name {n!r} is already registered by {taken.__qualname__}")
            cls.name = name
            self._classes[name] = cls
            for a in aliases:
                self._aliases[a] = name
            return cls

        return decorate

    def unregister(self, name: str) -> None:
        """Remove a registered class and its aliases (for plugins and tests that register temporarily)."""
        self._classes.pop(name, None)
        self._aliases = {a: n for a, n in self._aliases.items() if n != name}

    def _load(self) -> None:
        """Import every module of the package once. Other threads wait until the imports are done (a
        sweep looks registries up from several threads); the importing thread itself may look the
        registry up from a module being imported (re-entrant lock) and then sees what is registered."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                pkg = importlib.import_module(self.package)
                for info in pkgutil.iter_modules(pkg.__path__):
                    if not info.name.startswith("_"):
                        importlib.import_module(f"{self.package}.{info.name}")
                self._loaded = True
            finally:
                self._loading = False

    def names(self, *, aliases: bool = False) -> list[str]:
        self._load()
        return sorted(self._classes) + (sorted(self._aliases) if aliases else [])

    def classes(self) -> list[type[T]]:
        self._load()
        return [self._classes[n] for n in sorted(self._classes)]

    def get(self, name: str) -> type[T]:
        self._load()
        cls = self._classes.get(self._aliases.get(name, name))
        if cls is None:
            raise GlmscoreError(f"unknown {self.kind} {name!r}: choose one of {', '.join(self.names())}.")
        return cls
