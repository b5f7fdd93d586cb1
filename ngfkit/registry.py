"""A tiny name -> factory registry, used for datasets, models, attacks and defences.

Users add their own entries with the ``register`` decorator; lookups of unknown names raise
an :class:`~ngfkit.errors.NgfkitError` that lists the known names. :meth:`Registry.parse_names`
reads the name lists that options such as ``--attacks all`` or ``--defences ngf,ft`` take.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, Sequence, TypeVar

from .errors import NgfkitError

T = TypeVar("T")


def comma_separated(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the items of a comma-separated list, stripped, empty ones dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


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

    def parse_names(self, spec: str | Sequence[str], *, default: Sequence[str] | None = None,
                    option: str | None = None) -> list[str]:
        """The registered names ``spec`` asks for, in its order.

        ``spec`` is ``"all"``, a comma-separated string (``" badnets, blend "``) or a sequence of
        names. ``"all"`` stands for the registered names of ``default``, in its order, each once
        (names in ``default`` that are not registered are left out), or for every registered name,
        sorted, when there is no ``default``. ``option`` (e.g. ``"--attacks"``) names the option
        the list came from in the error. An unknown name or an empty list raises one
        :class:`~ngfkit.errors.NgfkitError` that lists the known names.
        """
        names = comma_separated(spec) if isinstance(spec, str) else [n.strip() for n in spec if n.strip()]
        if names == ["all"]:
            return list(dict.fromkeys(n for n in (self.names() if default is None else default) if n in self))
        where = f" in {option}" if option else ""
        known = ", ".join(self.names())
        if not names:
            raise NgfkitError(f"no {self.kind} given{where}; pass 'all' or comma-separated names from: {known}")
        unknown = [n for n in names if n not in self]
        if unknown:
            raise NgfkitError(f"unknown {self.kind} {unknown[0]!r}{where}; choose 'all' or from: {known}")
        return names

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
