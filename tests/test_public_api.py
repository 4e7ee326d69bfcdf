"""The public names: one class per name across astrid, and the renamed ones still served.

Every module of the package is imported for real; a name two classes share (the port left three
``Allowed``, two ``SessionApproval``, two ``RequiresApproval``) makes a host alias one on import.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from collections import defaultdict
from types import ModuleType

import pytest

import astrid
from astrid.security import approvals, budget, capabilities, interceptor, policy


def _public_classes() -> dict[str, set[str]]:
    """Public class name -> the modules that define a class of that name."""
    defined: dict[str, set[str]] = defaultdict(set)
    for info in pkgutil.walk_packages(astrid.__path__, "astrid."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            own = isinstance(value, type) and value.__module__ == module.__name__
            if own and not name.startswith("_"):
                defined[name].add(module.__name__)
    return defined


def test_no_two_public_classes_share_a_name() -> None:
    shared = {name: sorted(where) for name, where in _public_classes().items() if len(where) > 1}
    assert shared == {}, f"one name, several classes: {shared}"


def test_interceptor_passes_the_managers_proofs_on() -> None:
    assert interceptor.SessionApproval is approvals.SessionApproval
    assert interceptor.WorkspaceApproval is approvals.WorkspaceApproval
    assert interceptor.AllowanceProof is approvals.AllowanceProof
    assert interceptor.PolicyAllowed is policy.PolicyAllowed


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        (budget, "Allowed", "WithinBudget"),
        (policy, "Allowed", "PolicyAllowed"),
        (interceptor, "Allowance", "AllowanceProof"),
        (capabilities, "RequiresApproval", "NotAuthorized"),
    ],
)
def test_a_renamed_class_is_served_under_its_old_name_with_a_warning(
    module: ModuleType, old: str, new: str
) -> None:
    with pytest.warns(DeprecationWarning, match=rf"\.{old} is deprecated, use .*\.{new}\b"):
        value = getattr(module, old)
    assert value is getattr(module, new)
    assert old not in dir(module)
    assert old not in module.__all__
    assert new in module.__all__


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="has no attribute 'Alowed'"):
            _ = budget.Alowed  # type: ignore[attr-defined]
