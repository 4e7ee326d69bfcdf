"""The public names: one class per name across astrid, the renamed ones still served, and the
host API importable from ``astrid`` itself without ``import astrid`` loading it.

Every module of the package is imported for real; a name two classes share (the port left three
``Allowed``, two ``SessionApproval``, two ``RequiresApproval``) makes a host alias one on import.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import warnings
from collections import defaultdict
from pathlib import Path
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


# -- what a host imports from ``astrid`` ----------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
HOST_API = {  # a name a host needs -> the module that defines or re-exports it
    "open_store": "astrid.store",
    "SessionStore": "astrid.store",
    "open_runtime": "astrid.runtime",
    "AgentRuntime": "astrid.runtime",
    "RuntimeConfig": "astrid.runtime",
    "TurnResult": "astrid.runtime",
    "load_config": "astrid.config",
    "register_plugin": "astrid.plugins",
    "Tool": "astrid.tools",
    "FunctionTool": "astrid.tools",
    "ToolContext": "astrid.tools",
    "ApprovalRequest": "astrid.security.deferred",
    "ApprovalResponse": "astrid.security.approvals",
    "ApprovalHandler": "astrid.security.approvals",
    "Approve": "astrid.security.approvals",
    "ApproveSession": "astrid.security.approvals",
    "ApproveWorkspace": "astrid.security.approvals",
    "ApproveAlways": "astrid.security.approvals",
    "ApproveWithAllowance": "astrid.security.approvals",
    "Deny": "astrid.security.approvals",
    "BudgetConfig": "astrid.security.budget",
    "BudgetTracker": "astrid.security.budget",
    "WorkspaceBudgetTracker": "astrid.security.budget",
    "WithinBudget": "astrid.security.budget",
    "WarnAndAllow": "astrid.security.budget",
    "Exceeded": "astrid.security.budget",
}


@pytest.mark.parametrize(("name", "home"), sorted(HOST_API.items()))
def test_the_host_api_imports_from_astrid(name: str, home: str) -> None:
    assert name in astrid.__all__
    assert name in dir(astrid)
    assert getattr(astrid, name) is getattr(importlib.import_module(home), name)


def test_every_error_class_imports_from_astrid() -> None:
    errors = importlib.import_module("astrid.errors")
    classes = [
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    ]
    assert "ConcurrencyError" in classes
    assert [name for name in classes if name not in astrid.__all__] == []
    assert all(getattr(astrid, name) is getattr(errors, name) for name in classes)


def test_every_name_in_all_resolves_and_is_listed_by_dir() -> None:
    missing = [name for name in astrid.__all__ if not hasattr(astrid, name)]
    assert missing == []
    assert set(astrid.__all__) <= set(dir(astrid))


def test_a_lazy_name_is_what_type_checkers_see() -> None:
    """The ``if TYPE_CHECKING:`` imports of ``astrid/__init__.py`` name exactly the lazy names."""
    tree = ast.parse((ROOT / "astrid" / "__init__.py").read_text(encoding="utf-8"))
    seen: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.level == 1
                seen.update({alias.name: f"astrid.{stmt.module}" for alias in stmt.names})
    assert seen == astrid._LAZY


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def test_examples_and_docs_import_only_names_astrid_has() -> None:
    sources = {"examples/embedding.py": (ROOT / "examples" / "embedding.py").read_text()}
    for page in sorted((ROOT / "docs").glob("*.md")):
        for number, block in enumerate(_python_blocks(page.read_text(encoding="utf-8"))):
            sources[f"docs/{page.name} block {number}"] = block
    from_astrid: dict[str, list[str]] = {}
    for where, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module == "astrid":
                from_astrid.setdefault(where, []).extend(a.name for a in node.names)
    unknown = {
        where: [name for name in names if name not in astrid.__all__]
        for where, names in from_astrid.items()
    }
    assert {where: names for where, names in unknown.items() if names} == {}
    assert "open_runtime" in from_astrid["examples/embedding.py"]


def test_the_embedding_example_imports_from_astrid_only() -> None:
    tree = ast.parse((ROOT / "examples" / "embedding.py").read_text(encoding="utf-8"))
    modules = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("astrid")
    }
    modules |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.startswith("astrid")
    }
    assert modules == {"astrid"}
