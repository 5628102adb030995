"""Module attributes that import their submodule on first use (PEP 562)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, namespace: dict[str, Any], sources: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``__getattr__`` and ``__dir__`` for ``package``.

    ``sources`` maps each public name to the submodule that defines it,
    relative to ``package`` (``".model"``). The first lookup of a name
    imports that submodule and stores the value in ``namespace``, the
    package's globals, so later lookups do not call ``__getattr__``.

    NOTE: a public name must differ from every submodule name. Importing a
    submodule binds its name in the package, which would then hide a lazy
    attribute of the same name. ``multkan.analysis`` exports a function
    ``attribution`` from its submodule ``attribution``, so it stays eager.
    """

    def __getattr__(name: str) -> Any:
        module = sources.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        public = namespace.get("__all__", [])
        return sorted({*public, *(name for name in namespace if name.startswith("__") and name.endswith("__"))})

    return __getattr__, __dir__
