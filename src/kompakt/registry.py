"""One registry pattern for every extensible set: layers, models, datasets, backends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kompakt.errors import ConfigError, NotFoundError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict from lowercase name to a builder, filled by a decorator where the builder is defined.

    Args:
        kind: what the entries are ("layer", "model", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str | None = None) -> Callable[[T], T]:
        """Decorator that registers `obj` under `name`.

        Raises:
            ConfigError: if the name is not lowercase or is already taken.
        """
        if name != name.lower() or not name:
            raise ConfigError(
                f"{self.kind} names must be non-empty lowercase strings, got {name!r}"
            )

        def decorate(obj: T) -> T:
            if name in self._entries:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            doc = help if help is not None else (getattr(obj, "__doc__", None) or "")
            self._help[name] = doc.strip().splitlines()[0] if doc.strip() else ""
            return obj

        return decorate

    def unregister(self, name: str) -> None:
        """Remove an entry (plugins registered for one test, or replaced at run time)."""
        self._entries.pop(name, None)
        self._help.pop(name, None)

    def get(self, name: str) -> T:
        """The entry registered under `name`.

        Raises:
            NotFoundError: naming the valid choices.
        """
        key = name.lower()
        if key not in self._entries:
            valid = ", ".join(self.names()) or "(none registered)"
            raise NotFoundError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid}")
        return self._entries[key]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def help(self, name: str) -> str:
        """First line of the entry's docstring (or the help given at registration)."""
        self.get(name)
        return self._help[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
