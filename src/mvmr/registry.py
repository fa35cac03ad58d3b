"""A tiny name -> factory registry used for datasets, views, representations, methods."""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, TypeVar

from mvmr.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; ``get`` fails with a one-line error listing the allowed names.

    >>> DATASETS = Registry("dataset")
    >>> @DATASETS.register("digits")
    ... def build_digits(cfg): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return wrap

    def get(self, name: str, key: str | None = None) -> T:
        if name not in self._items:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
