"""A tiny name -> factory registry used for datasets, views, representations, methods."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict, Generic, Iterator, TypeVar

from mvmr.errors import ConfigError

T = TypeVar("T")


# Where each registry lives. The config schema sits below these packages, so it names a registry by its kind and
# the registry is found here by the module's name (imported on first use, like a plugin): the schema's help and
# checks then list whatever is registered, with no hard-coded copy of the names.
REGISTRY_HOMES = {
    "dataset": "mvmr.data.datasets",
    "representation": "mvmr.representations",
    "aug_policy": "mvmr.data.views.policies",
    "backbone": "mvmr.models.encoder",
    "optimizer": "mvmr.methods.optim",
    "scheduler": "mvmr.methods.optim",
}
_BY_KIND: Dict[str, "Registry"] = {}


class Registry(Generic[T]):
    """Maps names to factories; ``get`` fails with a one-line error listing the allowed names.

    >>> DATASETS = Registry("dataset")
    >>> @DATASETS.register("digits")
    ... def build_digits(cfg): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}
        _BY_KIND.setdefault(kind, self)

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
            raise ConfigError(f"{where}unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))


def registered_names(kind: str) -> list[str]:
    """The names registered under ``kind`` (a key of :data:`REGISTRY_HOMES`), importing the registry's module."""
    importlib.import_module(REGISTRY_HOMES[kind])  # by name: the registries' packages sit above the config
    return _BY_KIND[kind].names()


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
