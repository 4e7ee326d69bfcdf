"""The plugin manager: built-ins registered like plugins, entry points, allowlist, duplicates."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from pydantic import BaseModel

from astrid import hookimpl, hookspecs
from astrid.errors import PluginError
from astrid.plugins import (
    KINDS,
    collect,
    get_implementation,
    load_plugins,
    plugin_info,
    register_plugin,
    registry,
    unregister_plugin,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    load_plugins()
    yield
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    load_plugins()


def test_builtins_are_registered() -> None:
    assert {"memory", "file", "sqlite"} <= set(registry("storage"))
    assert {"content", "original"} <= set(registry("token_estimator"))
    assert {"fs", "subprocess", "none"} <= set(registry("git_capture"))
    assert {"memory", "file", "sqlite"} <= set(registry("capability_store"))
    assert registry("storage")["sqlite"].plugin == "astrid.default_plugins.sqlite_storage"


def test_unknown_kind() -> None:
    with pytest.raises(PluginError, match="unknown registry kind"):
        registry("nope")


class _Opts(BaseModel):
    level: int = 1


class _Dup:
    @hookimpl
    def register_storage_backends(self, register: Any) -> None:
        register("memory", lambda options, context: None)


class _WordEstimator:
    name = "words"

    def __init__(self, level: int) -> None:
        self.level = level

    def estimate(self, message: Any) -> int:
        return len(message.text().split()) * self.level


class _Custom:
    @hookimpl
    def register_token_estimators(self, register: Any) -> None:
        register("words", lambda options, context: _WordEstimator(options.level), _Opts, "by words")


def test_duplicate_names_are_an_error_naming_both_plugins_when_used() -> None:
    register_plugin(_Dup(), name="dup-plugin")
    try:
        assert "memory" not in registry("storage") and "sqlite" in registry("storage")
        with pytest.raises(PluginError, match=r"'memory' is registered by two plugins.*dup-plugin"):
            get_implementation("storage", "memory")
    finally:
        unregister_plugin("dup-plugin")
    assert "memory" in registry("storage")


class _ToolA:
    @hookimpl
    def register_tools(self, register: Any) -> None:
        register("same", lambda options, context: None)


class _ToolB(_ToolA):
    pass


class _Nameless:
    @hookimpl
    def register_tools(self, register: Any) -> None:
        register("", lambda options, context: None)


def _host_manager(*plugins: tuple[str, object]) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("astrid")
    pm.add_hookspecs(hookspecs)
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    return pm


def test_a_host_plugin_manager_registers_through_the_same_mechanism(tmp_path: Path) -> None:
    """``AgentRuntime(plugin_manager=...)`` had its own ``register``: a duplicate was a bare
    ``ValueError`` naming no plugin, and an empty name was accepted."""
    from astrid.default_plugins.scripted_provider import ScriptedProvider
    from astrid.runtime import AgentRuntime, RuntimeConfig

    config = RuntimeConfig(workspace=tmp_path)
    twice = _host_manager(("tools-a", _ToolA()), ("tools-b", _ToolB()))
    with pytest.raises(PluginError, match=r"tool 'same' is registered by two plugins: "
                       r"'tools-a' and 'tools-b'"):
        AgentRuntime(ScriptedProvider([]), config=config, plugin_manager=twice,
                     enabled_tools=["same"])
    AgentRuntime(ScriptedProvider([]), config=config, plugin_manager=twice, enabled_tools=[])
    nameless = _host_manager(("nameless", _Nameless()))
    with pytest.raises(PluginError, match="plugin 'nameless' registered a tool with an empty name"):
        AgentRuntime(ScriptedProvider([]), config=config, plugin_manager=nameless,
                     enabled_tools=["x"])
    assert set(collect(_host_manager(("tools-a", _ToolA())), "tool")) == {"same"}


def test_in_process_plugin_registers_an_implementation(tmp_path: Path) -> None:
    from astrid.plugins import PluginContext, get_implementation

    register_plugin(_Custom(), name="custom")
    impl = get_implementation("token_estimator", "words")
    assert impl.plugin == "custom" and impl.description == "by words"
    from astrid import Message

    estimator = impl.create({"level": 3}, PluginContext(home=tmp_path))
    assert estimator.estimate(Message.user("a b")) == 6
    with pytest.raises(PluginError, match="valid choices: content, original, words"):
        get_implementation("token_estimator", "nope")


def test_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRID_LOAD_PLUGINS", "astrid.default_plugins.memory_storage")
    load_plugins()
    assert set(registry("storage")) == {"memory"}
    assert registry("token_estimator") == {}
    monkeypatch.setenv("ASTRID_LOAD_PLUGINS", "")
    load_plugins()
    assert registry("storage") == {}


def test_plugin_info_lists_names_versions_and_hooks() -> None:
    info = {row["name"]: row for row in plugin_info()}
    row = info["astrid.default_plugins.memory_storage"]
    assert row["hooks"] == ["register_storage_backends"]
    assert row["version"]


def test_entry_point_plugins_are_discovered(tmp_path: Path) -> None:
    """A real distribution (dist-info with an entry point) on sys.path is loaded by name."""
    site = tmp_path / "site"
    pkg = site / "astrid_hello"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from astrid import hookimpl

            @hookimpl
            def register_token_estimators(register):
                register("hello", lambda options, context: "hi")
            """
        )
    )
    dist = site / "astrid_hello-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: astrid-hello\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[astrid]\nhello = astrid_hello\n")
    script = textwrap.dedent(
        """
        import sys
        from astrid.plugins import registry, plugin_info
        r = registry("token_estimator")
        assert "hello" in r and r["hello"].plugin == "hello", r
        info = {row["name"]: row for row in plugin_info()}
        assert info["hello"]["version"] == "1.2.3", info["hello"]
        print("ok")
        """
    )
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    env["ASTRID_LOAD_PLUGINS"] = "astrid.default_plugins.memory_storage"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from astrid.plugins import registry; print(sorted(registry('token_estimator')))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[]", out.stderr


def _hooks_pluggy_knows() -> dict[str, list[str]]:
    pm = pluggy.PluginManager("astrid")
    pm.add_hookspecs(hookspecs)
    return {
        name: list(caller.spec.argnames)
        for name, caller in vars(pm.hook).items()
        if isinstance(caller, pluggy.HookCaller) and caller.spec is not None
    }


def _reference() -> str:
    docs = (ROOT / "docs" / "plugin-authors.md").read_text()
    return docs[docs.index("## 6. Hook reference"):docs.index("## 7. ")]


def test_every_hook_is_documented_with_its_arguments_and_tested() -> None:
    """Iterates the hooks pluggy knows (not name prefixes): each is in the reference as
    ``hook(arg, ...)`` with every argument of its spec, and some test implements it."""
    hooks = _hooks_pluggy_knows()
    assert set(KINDS.values()) <= set(hooks)
    reference = _reference()
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    for hook, args in hooks.items():
        signature = f"`{hook}({', '.join(args)})`"
        assert signature in reference, f"{signature} is not in the hook reference"
        assert re.search(rf"def {hook}\b", tests), f"no test implements {hook}"


def test_every_protocol_member_and_config_key_is_in_the_reference() -> None:
    from astrid.config import PLUGGABLE
    from astrid.plugins import _PROTOCOLS, protocol_members

    reference = _reference()
    rows = {line.split("|")[1].strip(" `").split("(")[0]: line
            for line in reference.splitlines() if line.startswith("| `register_")}
    for kind, hook in KINDS.items():
        if kind not in _PROTOCOLS:
            continue  # git_capture: a callable
        module, name, _optional = _PROTOCOLS[kind]
        row = rows[hook]
        protocol = getattr(importlib.import_module(module), name)
        assert f"`{name}`" in row, f"{kind}: the protocol {name} is not named"
        for member in protocol_members(protocol):
            assert re.search(rf"`(async )?{member}\b", row), f"{kind}: {name}.{member}"
    for section, key, kind in PLUGGABLE:
        assert f"`[{section}] {key}`" in rows[KINDS[kind]], f"{kind}: [{section}] {key}"


def test_the_documented_conformance_counts_are_the_real_ones() -> None:
    from astrid.testing import StorageConformance

    own = {n: f for n, f in vars(StorageConformance).items() if n.startswith("test_")}
    with_parameters = 0
    for function in own.values():
        cases = 1
        for mark in getattr(function, "pytestmark", []):
            if mark.name == "parametrize":
                cases *= len(mark.args[1])
        with_parameters += cases
    docs = (ROOT / "docs" / "plugin-authors.md").read_text()
    assert f"What the suite checks ({len(own)} tests, {with_parameters} with parameters)" in docs


def test_importing_astrid_stays_light() -> None:
    """``import astrid`` loads the session core; the host API it re-exports loads on first use."""
    heavy = (
        "sqlite3", "cryptography", "click", "astrid.store", "astrid.runtime", "astrid.config",
        "opentelemetry",
    )
    code = (
        "import sys, astrid; "
        f"print([m for m in {heavy!r} if m in sys.modules]); "
        "astrid.open_store, astrid.AgentRuntime; "
        "print('astrid.store' in sys.modules, 'astrid.runtime' in sys.modules, "
        "'opentelemetry' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == ["[]", "True True False"], out.stdout + out.stderr


class _GitAndCaps:
    @hookimpl
    def register_git_capture(self, register: Any) -> None:
        from astrid import GitState

        register("fixed", lambda options, context: lambda path: GitState(branch="b", commit="c"))

    @hookimpl
    def register_capability_stores(self, register: Any) -> None:
        from astrid.security.capabilities import MemoryCapabilityBackend

        register("scratch", lambda options, context: MemoryCapabilityBackend())


def test_git_capture_and_capability_store_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from astrid.security.capabilities import CapabilityBackend
    from astrid.store import open_store

    register_plugin(_GitAndCaps(), name="git-and-caps")
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path))
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[storage]\nbackend = "memory"\n[git]\ncapture = "fixed"\n'
        '[capabilities]\nstore = "scratch"\n'
    )
    store = open_store(cfg)
    session = store.new_session("p").with_workspace(tmp_path)
    store.save(session)
    loaded = store.load(session.id)
    assert loaded is not None and loaded.git_state is not None
    assert (loaded.git_state.branch, loaded.git_state.commit) == ("b", "c")
    backend = registry("capability_store")["scratch"].create({}, _ctx(tmp_path))
    assert isinstance(backend, CapabilityBackend)


def _ctx(home: Path) -> Any:
    from astrid.plugins import PluginContext

    return PluginContext(home=home)
