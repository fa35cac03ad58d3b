"""A tiny name -> factory registry used for datasets, views, representations, methods."""
from __future__ import annotations

import importlib
import pkgutil
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


def import_submodules(package_name: str, package_path: list[str]) -> list[str]:
    """Import every module of a package so that their ``@register`` decorators run.

    Adding a dataset or a representation is then one new file: no import list to edit.
    Call as ``import_submodules(__name__, __path__)`` from the package's ``__init__``.
    Returns the imported module names (sorted, for a deterministic registration order).
    """
    names = sorted(info.name for info in pkgutil.iter_modules(package_path) if not info.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package_name}.{name}")
    return names
