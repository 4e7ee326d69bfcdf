"""A broken plugin never takes astrid down; each author mistake is refused with a named error.

Installed plugins are real distributions: a ``*.dist-info`` directory with an ``entry_points.txt``
on ``sys.path`` (``importlib.metadata`` finds it), used by a subprocess running the real CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from astrid import hookimpl
from astrid.errors import PluginError
from astrid.plugins import (
    KINDS,
    PluginContext,
    collect,
    get_implementation,
    load_plugins,
    register_plugin,
    registry,
    unregister_plugin,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("ASTRID_LOAD_PLUGINS", "ASTRID_DISABLE_PLUGINS", "ASTRID_PLUGINS_DIR"):
        monkeypatch.delenv(var, raising=False)
    load_plugins()
    yield
    for var in ("ASTRID_LOAD_PLUGINS", "ASTRID_DISABLE_PLUGINS", "ASTRID_PLUGINS_DIR"):
        monkeypatch.delenv(var, raising=False)
    load_plugins()


def make_site(site: Path, plugins: dict[str, str]) -> Path:
    """Install each plugin (entry-point name → module source) as a distribution in ``site``."""
    for name, source in plugins.items():
        module = f"astrid_{name.replace('-', '_')}"
        (site / module).mkdir(parents=True)
        (site / module / "__init__.py").write_text(textwrap.dedent(source))
        dist = site / f"{module}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: astrid-{name}\nVersion: 1.0\n"
        )
        (dist / "entry_points.txt").write_text(f"[astrid]\n{name} = {module}\n")
    return site


def run_astrid(
    tmp_path: Path, site: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess with ``site`` on its path and a fresh home."""
    full = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": f"{site}:{ROOT}",
        "ASTRID_HOME": str(tmp_path / "home"),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "astrid.cli", *args],
        env=full, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )


BROKEN_IMPORT = """
import astrid_no_such_dependency  # the author forgot a dependency
"""

RAISING_HOOK = """
from astrid import hookimpl

@hookimpl
def register_storage_backends(register):
    raise RuntimeError("boom in the hook")
"""

MISSPELT_HOOK = """
from astrid import hookimpl

@hookimpl
def register_storage_backend(register):
    register("never", lambda options, context: None)
"""


def _twin(description: str) -> str:
    return f"""
from astrid import hookimpl
from astrid.default_plugins.memory_storage import MemoryBackend

@hookimpl
def register_storage_backends(register):
    register("twin", lambda options, context: MemoryBackend(), description={description!r})
"""


def _config(tmp_path: Path, backend: str) -> Path:
    path = tmp_path / f"{backend}.toml"
    path.write_text(f'[storage]\nbackend = "{backend}"\n')
    return path


def test_broken_plugins_are_listed_as_failed_and_other_commands_work(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", {
        "broken": BROKEN_IMPORT, "raiser": RAISING_HOOK, "misspelt": MISSPELT_HOOK,
        "twin-a": _twin("a"), "twin-b": _twin("b"),
    })
    listed = run_astrid(tmp_path, site, "plugins")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(line.split()[:3] == ["broken", "1.0", "failed"] for line in lines), listed.stdout
    assert (
        "failed: broken: load: ModuleNotFoundError: No module named 'astrid_no_such_dependency'"
        in lines
    )
    assert "failed: raiser: register_storage_backends: raised RuntimeError: boom in the hook" in (
        lines
    )
    assert (
        "failed: misspelt: register: unknown hook 'register_storage_backend' "
        "(did you mean 'register_storage_backends'?)" in lines
    )
    assert "conflict: storage 'twin' is registered by two plugins: 'twin-a' and 'twin-b'" in (
        lines
    ), listed.stdout
    # Nothing selects what the broken plugins provide: commands work.
    ok = run_astrid(tmp_path, site, "--config", str(_config(tmp_path, "memory")), "sessions",
                    "list")
    assert ok.returncode == 0, ok.stderr
    # Selecting a name only a failed plugin could provide names the failures, in one line.
    bad = run_astrid(tmp_path, site, "--config", str(_config(tmp_path, "jsonl")), "sessions",
                     "list")
    assert bad.returncode != 0
    message = bad.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "unknown storage 'jsonl'" in message
    assert "plugin 'raiser' failed (register_storage_backends): raised RuntimeError: boom" in (
        message
    )
    assert "plugin 'broken' failed (load): ModuleNotFoundError" in message
    # A duplicate name is an error when (and only when) it is used.
    twin = run_astrid(tmp_path, site, "--config", str(_config(tmp_path, "twin")), "sessions",
                      "list")
    assert twin.returncode != 0
    assert "storage 'twin' is registered by two plugins: 'twin-a' and 'twin-b'" in twin.stderr
    assert len(twin.stderr.strip().splitlines()) == 1, twin.stderr


def test_open_store_names_the_failed_plugin(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", {"raiser": RAISING_HOOK})
    script = textwrap.dedent(
        f"""
        from astrid.errors import ConfigError
        from astrid.store import open_store
        open_store({str(_config(tmp_path, "memory"))!r}).close()
        try:
            open_store({str(_config(tmp_path, "mine"))!r})
        except ConfigError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": f"{site}:{ROOT}", "ASTRID_HOME": str(tmp_path / "home")},
    )
    assert out.returncode == 0, out.stderr
    assert "unknown storage 'mine'" in out.stdout
    assert "plugin 'raiser' failed (register_storage_backends): raised RuntimeError" in out.stdout


# -- in process: each mistake and its message --------------------------------------------


class _Misspelt:
    @hookimpl
    def register_storage_backend(self, register: Any) -> None:
        register("x", lambda options, context: None)


class _MisnamedArgument:
    @hookimpl
    def register_tools(self, regster: Any) -> None:
        regster("x", lambda options, context: None)


class _NoArguments:
    @hookimpl
    def register_tools(self) -> None:
        """Declares fewer arguments than the spec, as pluggy allows."""


def test_a_misspelt_hook_is_refused_as_unknown() -> None:
    with pytest.raises(PluginError, match=r"plugin 'typo' refused: unknown hook "
                       r"'register_storage_backend' \(did you mean 'register_storage_backends'"):
        register_plugin(_Misspelt(), name="typo")
    assert "x" not in registry("storage")


def test_a_misnamed_hook_argument_is_refused() -> None:
    with pytest.raises(PluginError, match=r"plugin 'argname' refused: .*register_tools.*"
                       r"\{'regster'\} are declared in the hookimpl but can not be found"):
        register_plugin(_MisnamedArgument(), name="argname")
    assert "x" not in registry("tool")


def test_an_implementation_may_declare_fewer_arguments_than_the_spec() -> None:
    register_plugin(_NoArguments(), name="no-args")
    try:
        tools = registry("tool")
        assert tools.failures == [] and "read_file" in tools
    finally:
        unregister_plugin("no-args")


class _Factories:
    @hookimpl
    def register_storage_backends(self, register: Any) -> None:
        def explode(options: Any, context: PluginContext) -> Any:
            raise OSError("disk on fire")

        register("explodes", explode)


def test_a_factory_that_raises_names_the_plugin_and_the_kind(tmp_path: Path) -> None:
    register_plugin(_Factories(), name="factories")
    try:
        impl = get_implementation("storage", "explodes")
        with pytest.raises(PluginError, match=r"plugin 'factories': the factory of storage "
                           r"'explodes' raised OSError: disk on fire"):
            impl.create(None, PluginContext(home=tmp_path))
    finally:
        unregister_plugin("factories")


class _Validating:
    @hookimpl
    def register_storage_backends(self, register: Any) -> None:
        def strict(options: Any, context: PluginContext) -> Any:
            class Remote(BaseModel):
                model_config = ConfigDict(extra="forbid")
                port: int

            return Remote.model_validate({"port": "not a port", "token": "s3cr3t-t0ken-value"})

        register("validating", strict)


def test_a_factorys_validation_error_names_each_place_and_never_the_input_value(
    tmp_path: Path,
) -> None:
    register_plugin(_Validating(), name="validating")
    try:
        impl = get_implementation("storage", "validating")
        with pytest.raises(PluginError) as caught:
            impl.create(None, PluginContext(home=tmp_path))
    finally:
        unregister_plugin("validating")
    text = str(caught.value)
    assert "raised ValidationError: port: Input should be a valid integer" in text
    assert "token: Extra inputs are not permitted" in text
    assert "s3cr3t" not in text and "not a port" not in text


class _Nothing:
    """Has none of any protocol's members."""


class _WrongObjects:
    def __init__(self) -> None:
        for kind, hook in KINDS.items():
            setattr(self, hook, self._hook(kind))

    @staticmethod
    def _hook(kind: str) -> Any:
        @hookimpl(specname=KINDS[kind])
        def hook(register: Any) -> None:
            register(f"wrong-{kind}", lambda options, context: _Nothing())

        return hook


MISSING = {
    "storage": "StorageBackend: the _Nothing its factory returned lacks append, close, "
    "count_sessions, delete, history, kv, list_sessions, load, name, schema_version, write",
    "token_estimator": "TokenEstimator: the _Nothing its factory returned lacks estimate, name",
    "capability_store": "CapabilityBackend: the _Nothing its factory returned lacks add_revoked",
    "git_capture": "GitCapture: its factory returned a _Nothing, not a callable",
    "summarizer": "Summarizer: the _Nothing its factory returned lacks name, summarize",
    "llm_provider": "LLMProvider: the _Nothing its factory returned lacks complete_simple, model, "
    "name, stream",
    "tool": "Tool: the _Nothing its factory returned lacks description, input_schema, name, run",
    "toolset": "Toolset: the _Nothing its factory returned lacks",
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_factory_returning_the_wrong_object_names_the_missing_members(
    kind: str, tmp_path: Path
) -> None:
    import pluggy

    from astrid import hookspecs

    pm = pluggy.PluginManager("astrid")
    pm.add_hookspecs(hookspecs)
    pm.register(_WrongObjects(), name="wrong")
    impl = collect(pm, kind)[f"wrong-{kind}"]
    with pytest.raises(PluginError) as caught:
        impl.create(None, PluginContext(home=tmp_path))
    assert str(caught.value).startswith(f"{kind} 'wrong-{kind}' (plugin 'wrong') is not a ")
    assert MISSING[kind] in str(caught.value)


class _Keywords:
    @hookimpl
    def register_token_estimators(self, register: Any) -> None:
        register("documented", lambda o, c: o, options_model=_Level, description="d")
        register("deprecated", lambda o, c: o, options=_Level)


class _Level(BaseModel):
    level: int = 1


def test_options_model_is_the_keyword_and_options_still_works_with_a_warning(
    tmp_path: Path,
) -> None:
    register_plugin(_Keywords(), name="keywords")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = registry("token_estimator")
        assert [str(w.message) for w in caught if w.category is DeprecationWarning] == [
            "plugin 'keywords': register(..., options=) is deprecated; use options_model="
        ]
        assert found["documented"].options is _Level and found["deprecated"].options is _Level
    finally:
        unregister_plugin("keywords")
