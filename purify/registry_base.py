"""One generic name -> object registry, used for strategies, filters, attacks, bases and recipes.

Entries are objects, lazy ``"module:Obj"`` references resolved on first use, or modules named in an entry-point
group that register themselves when imported (as third-party plugins do).
"""
from __future__ import annotations

import importlib
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_MISSING: Any = object()


class _Lazy:
    """A ``"module:Obj"`` reference not imported yet."""

    __slots__ = ("target",)

    def __init__(self, target: str) -> None:
        self.target = target


class Registry(Mapping[str, T], Generic[T]):
    """Objects of one kind by name: a read-only mapping plus `register`, `get` with a clear error, and `names`.

    `kind` names the objects in messages ("strategy", "filter"); `group` is an entry-point group whose modules are
    imported (once) before the first lookup; `identity` gives what makes two registrations the same (default: the
    object itself), so registering the same thing twice is a no-op.
    """

    def __init__(self, kind: str, *, plural: str | None = None, group: str | None = None,
                 identity: Callable[[T], Any] | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.group = group
        self._identity = identity or (lambda obj: obj)
        self._entries: dict[str, T | _Lazy] = {}
        self._loaded_group = group is None

    # -- registration ------------------------------------------------------------------------------------------
    def register(self, name: str, obj: T) -> T:
        """Register `obj` under `name`; the same thing again (by `identity`) replaces it, another thing under a taken
        name is an error (a lazy reference may be replaced by its object)."""
        existing = self._entries.get(name)
        if existing is not None and not isinstance(existing, _Lazy):
            if self._identity(existing) is not self._identity(obj):
                raise ValueError(f"{self.kind} name {name!r} is already registered by "
                                 f"{_origin(self._identity(existing))}")
        self._entries[name] = obj
        return obj

    def register_lazy(self, name: str, target: str) -> None:
        """Register `name` as ``"module:Obj"``, imported on first use (an object already there is kept)."""
        if ":" not in target:
            raise ValueError(f"lazy {self.kind} {name!r}: expected 'module:Obj', got {target!r}")
        self._entries.setdefault(name, _Lazy(target))

    def load_entry_points(self) -> None:
        """Import every entry of the group once; a broken plugin warns instead of taking the others down."""
        if self._loaded_group:
            return
        self._loaded_group = True
        assert self.group is not None  # a registry without a group starts loaded
        for ep in metadata.entry_points(group=self.group):
            try:
                loaded = ep.load()
            except Exception as exc:  # noqa: BLE001 - any plugin error becomes a warning
                warnings.warn(f"purify: {self.kind} plugin {ep.name!r} ({ep.value}) failed to load: {exc}",
                              stacklevel=2)
                continue
            if not isinstance(loaded, types.ModuleType) and ep.name not in self._entries:
                self.register(ep.name, loaded)  # an entry point naming the object itself

    # -- lookup ------------------------------------------------------------------------------------------------
    def get(self, name: str, default: Any = _MISSING) -> T:
        """The object `name`; unknown names give `default` when one is passed, else a one-line ConfigError."""
        self.load_entry_points()
        if name not in self._entries:
            if default is not _MISSING:
                return default
            known = ", ".join(self.names()) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.plural}: {known}")
        return self._resolve(name)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self.load_entry_points()
        return sorted(self._entries)

    def _resolve(self, name: str) -> T:
        entry = self._entries[name]
        if isinstance(entry, _Lazy):
            module_name, _, attr = entry.target.partition(":")
            module = importlib.import_module(module_name)
            entry = self._entries[name]  # importing may have registered the object itself
            if isinstance(entry, _Lazy):  # the import did not register it: take the named object
                entry = self._entries[name] = getattr(module, attr)
        return entry

    def __getitem__(self, name: str) -> T:
        self.load_entry_points()
        if name not in self._entries:
            raise KeyError(name)
        return self._resolve(name)

    def __iter__(self) -> Iterator[str]:
        self.load_entry_points()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.load_entry_points()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self.load_entry_points()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


def _origin(obj: Any) -> str:
    """Where a registered object comes from, for the name-clash message."""
    return getattr(obj, "__module__", None) or type(obj).__module__
