"""Module attributes served on first access: lazy re-exports and deprecated old names.

The one mechanism behind every module-level ``__getattr__`` in astrid: ``astrid`` re-exports the
host API without importing it at ``import astrid`` time, and a module whose class was renamed
keeps serving the old name, with a ``DeprecationWarning``, for code written against it.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping

__all__ = ["module_attributes"]


def module_attributes(
    module_name: str,
    *,
    lazy: Mapping[str, str] | None = None,
    renamed: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A ``(__getattr__, __dir__)`` pair for the module ``module_name``.

    ``lazy`` maps a public name to the module it lives in (imported on first access, then kept
    in the module's globals); ``renamed`` maps an old name to its new name in the same module
    (served with a ``DeprecationWarning``, and left out of ``dir()``).
    """
    lazy = dict(lazy or {})
    renamed = dict(renamed or {})

    def __getattr__(name: str) -> object:
        module = sys.modules[module_name]
        source = lazy.get(name)
        if source is not None:
            value = getattr(importlib.import_module(source), name)
            setattr(module, name, value)
            return value
        new = renamed.get(name)
        if new is not None:
            warnings.warn(
                f"{module_name}.{name} is deprecated, use {module_name}.{new} (renamed in 0.2.0)",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(module, new)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[module_name]), *lazy})

    return __getattr__, __dir__
