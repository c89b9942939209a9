"""Package front doors that name their public functions without importing them until first use.

`core.engine` would otherwise pull in open_clip and torch for a command that only parses arguments.
`lazy_module` does the same for one third-party module (open_clip imports torchvision, transformers and
timm: seconds of start-up that an app serving its page does not need yet).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, modules: dict[str, list[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """(`__all__`, module `__getattr__`) for `package`, whose submodule `m` defines each name in `modules[m]`."""
    owner = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in owner:
            return getattr(importlib.import_module(f"{package}.{owner[name]}"), name)
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(owner), __getattr__


class LazyModule:
    """Stands for module `name` and imports it on first attribute access (then behaves as the module)."""

    def __init__(self, name: str):
        self._name = name
        self._module = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (imported)' if self._module is not None else ''}>"


def lazy_module(name: str) -> Any:
    """A stand-in for `import name` that defers the import to the first use of one of its attributes."""
    return LazyModule(name)
