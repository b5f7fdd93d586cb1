"""A tiny name -> factory registry, used for datasets, models, attacks and defences.

Users add their own entries with the ``register`` decorator; lookups of unknown names raise
an :class:`~ngfkit.errors.NgfkitError` that lists the known names.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, TypeVar

from .errors import NgfkitError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes or factory functions).

    >>> models = Registry("model")
    >>> @models.register("tiny")
    ... def make_tiny(): ...
    >>> models.get("tiny") is make_tiny
    True
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise NgfkitError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
