"""One exception hierarchy: every public exception class of astrid is an ``AstridError`` defined in
``astrid.errors``, and the modules that raised them before still export them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import astrid
from astrid import errors
from astrid.errors import AstridError


def _modules() -> list[ModuleType]:
    names = [astrid.__name__] + [
        info.name for info in pkgutil.walk_packages(astrid.__path__, prefix="astrid.")
    ]
    return [importlib.import_module(name) for name in sorted(names)]


def _public_exceptions() -> dict[str, type[BaseException]]:
    """Every public exception class defined in (or exported by) any astrid module, by where."""
    found: dict[str, type[BaseException]] = {}
    for module in _modules():
        for name, value in vars(module).items():
            if name.startswith("_") or not inspect.isclass(value):
                continue
            if not issubclass(value, BaseException):
                continue
            owner = value.__module__
            if owner == module.__name__ or (owner.startswith("astrid.") and name in getattr(
                module, "__all__", ()
            )):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_the_walk_finds_the_exceptions() -> None:
    found = _public_exceptions()
    assert "astrid.errors.AstridError" in found
    assert "astrid.security.budget.InvalidBudgetLimit" in found  # re-exported there
    assert len({id(cls) for cls in found.values()}) >= 30


def test_every_public_exception_is_an_astrid_error_defined_in_errors() -> None:
    found = _public_exceptions()
    not_astrid = sorted(where for where, cls in found.items() if not issubclass(cls, AstridError))
    assert not_astrid == []
    elsewhere = sorted(
        f"{where} (defined in {cls.__module__})"
        for where, cls in found.items()
        if cls.__module__ != errors.__name__ and cls.__module__.startswith("astrid")
    )
    assert elsewhere == []


OLD_HOMES = [
    ("astrid.runtime", "LLMError", errors.AstridError),
    ("astrid.runtime", "MaxIterationsExceeded", errors.AstridError),
    ("astrid.tools", "ToolError", errors.AstridError),
    ("astrid.context", "SummarizationError", errors.AstridError),
    ("astrid.default_plugins.scripted_provider", "ScriptedProviderError", errors.AstridError),
    ("astrid.default_plugins.capability_stores", "InvalidTokenId", ValueError),
    ("astrid.default_plugins.capability_stores", "InvalidTokenId", errors.StorageError),
    ("astrid.security.crypto", "CryptoKeyError", errors.SecurityError),
    ("astrid.security.globs", "GlobSyntaxError", ValueError),
    ("astrid.security.globs", "GlobSyntaxError", errors.SecurityError),
    ("astrid.security.interceptor", "PolicyBlocked", errors.ApprovalError),
    ("astrid.security.interceptor", "ApprovalDenied", errors.ApprovalError),
    ("astrid.security.interceptor", "ApprovalDeferred", errors.ApprovalError),
    ("astrid.security.budget", "InvalidBudgetLimit", ValueError),
    ("astrid.security.budget", "ReservationError", ValueError),
    ("astrid.security.budget", "ReservationError", errors.SecurityError),
]


@pytest.mark.parametrize(("module", "name", "base"), OLD_HOMES)
def test_old_import_locations_still_work(module: str, name: str, base: type) -> None:
    """``from astrid.security.budget import InvalidBudgetLimit`` and the like keep working, as
    the same class, with the bases callers' ``except`` clauses rely on."""
    cls = getattr(importlib.import_module(module), name)
    assert cls is getattr(errors, name)
    assert issubclass(cls, base)


def test_a_bad_glob_is_caught_as_an_astrid_error() -> None:
    from astrid.security.globs import compile_glob

    with pytest.raises(AstridError, match="unclosed character class"):
        compile_glob("src/[abc")
    with pytest.raises(ValueError, match="unclosed character class"):
        compile_glob("src/[abc")
