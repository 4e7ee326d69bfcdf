"""Choosing plugins from the environment: ASTRID_LOAD_PLUGINS, ASTRID_DISABLE_PLUGINS and
ASTRID_PLUGINS_DIR, with real distributions (``*.dist-info`` on ``sys.path``) and real files."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from astrid.plugins import load_plugins, plugin_info, registry

from .test_plugins_isolation import make_site

ROOT = Path(__file__).resolve().parent.parent
VARIABLES = ("ASTRID_LOAD_PLUGINS", "ASTRID_DISABLE_PLUGINS", "ASTRID_PLUGINS_DIR")

MYSTORE = """
from astrid import hookimpl
from astrid.default_plugins.memory_storage import MemoryBackend

@hookimpl
def register_storage_backends(register):
    register("mystore", lambda options, context: MemoryBackend(), description="mine")
"""

OTHER = """
from astrid import hookimpl
from astrid.default_plugins.memory_storage import MemoryBackend

@hookimpl
def register_storage_backends(register):
    register("other", lambda options, context: MemoryBackend())
"""


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in VARIABLES:
        monkeypatch.delenv(var, raising=False)
    yield
    for var in VARIABLES:
        monkeypatch.delenv(var, raising=False)
    load_plugins()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two installed third-party plugins, ``mystore`` and ``other``, found in this process."""
    path = make_site(tmp_path / "site", {"mystore": MYSTORE, "other": OTHER})
    monkeypatch.syspath_prepend(str(path))
    return path


def test_unknown_names_are_warned_about_with_a_hint(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "ASTRID_LOAD_PLUGINS", "astrid.default_plugins.memory_storag,astrid-mystore,mystore"
    )
    with pytest.warns(UserWarning) as caught:
        load_plugins()
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2, messages
    assert messages[0].startswith(
        "ASTRID_LOAD_PLUGINS names 'astrid-mystore', which is no installed plugin "
        "('astrid-mystore' is a distribution; its plugin is named 'mystore')"
    )
    assert messages[1].startswith(
        "ASTRID_LOAD_PLUGINS names 'astrid.default_plugins.memory_storag', which is no installed "
        "plugin (did you mean 'astrid.default_plugins.memory_storage'?)"
    )
    assert set(registry("storage")) == {"mystore"}
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS")
    monkeypatch.setenv("ASTRID_DISABLE_PLUGINS", "otehr")
    with pytest.warns(UserWarning, match="ASTRID_DISABLE_PLUGINS names 'otehr'.*'other'"):
        load_plugins()


def test_one_plugin_is_turned_off_without_listing_the_others(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_plugins()
    assert {"mystore", "other", "sqlite", "memory"} <= set(registry("storage"))
    monkeypatch.setenv("ASTRID_DISABLE_PLUGINS", "other, astrid.default_plugins.sqlite_storage")
    load_plugins()
    names = set(registry("storage"))
    assert {"mystore", "memory", "file"} <= names and not {"other", "sqlite"} & names
    assert "other" not in {row["name"] for row in plugin_info()}
    monkeypatch.setenv("ASTRID_DISABLE_PLUGINS", "astrid.default_plugins")
    load_plugins()
    assert registry("token_estimator") == {} and "mystore" in registry("storage")


DOCUMENTED = "ASTRID_LOAD_PLUGINS=mystore,astrid.default_plugins my-host"


def test_the_documented_example_works_with_open_store_and_the_cli(tmp_path: Path) -> None:
    """docs/plugin-authors.md's example: only your plugin next to the built-ins."""
    docs = (ROOT / "docs" / "plugin-authors.md").read_text()
    assert DOCUMENTED in docs
    value = DOCUMENTED.split("=", 1)[1].split()[0]
    site = make_site(tmp_path / "site", {"mystore": MYSTORE, "other": OTHER})
    config = tmp_path / "astrid.toml"
    config.write_text('[storage]\nbackend = "mystore"\n')
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": f"{site}:{ROOT}",
        "ASTRID_HOME": str(tmp_path / "home"),
        "ASTRID_LOAD_PLUGINS": value,
    }
    script = textwrap.dedent(
        f"""
        import warnings
        warnings.simplefilter("error")
        from astrid.store import open_store
        from astrid.plugins import registry
        store = open_store({str(config)!r})
        session = store.new_session("p")
        store.save(session)
        print(sorted(registry("storage")))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    names = set(ast.literal_eval(out.stdout.strip()))
    assert {"file", "memory", "mystore", "sqlite"} <= names and "other" not in names, names
    cli = subprocess.run([sys.executable, "-W", "error", "-m", "astrid.cli", "--config",
                          str(config), "sessions", "list"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    listed = subprocess.run([sys.executable, "-m", "astrid.cli", "plugins"], env=env,
                            capture_output=True, text=True, timeout=60)
    names = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    assert "mystore" in names and "other" not in names, listed.stdout


def test_a_plugins_directory_loads_local_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "plugins"
    local.mkdir()
    (local / "shout.py").write_text(textwrap.dedent(
        """
        from astrid import hookimpl
        from astrid.tokens import ContentEstimator

        @hookimpl
        def register_token_estimators(register):
            register("shout", lambda options, context: ContentEstimator(), description="local")
        """
    ))
    (local / "broken.py").write_text("raise RuntimeError('half written')\n")
    monkeypatch.setenv("ASTRID_PLUGINS_DIR", str(local))
    load_plugins()
    impl = registry("token_estimator")["shout"]
    assert impl.plugin == "shout" and impl.description == "local"
    rows = {row["name"]: row for row in plugin_info()}
    assert rows["shout"]["status"] == "ok"
    assert rows["broken"]["status"] == "failed"
    assert rows["broken"]["error"] == "load: RuntimeError: half written"
    monkeypatch.setenv("ASTRID_DISABLE_PLUGINS", "shout")
    load_plugins()
    assert "shout" not in registry("token_estimator")
    monkeypatch.delenv("ASTRID_DISABLE_PLUGINS")
    monkeypatch.setenv("ASTRID_PLUGINS_DIR", str(tmp_path / "missing"))
    with pytest.warns(UserWarning, match="ASTRID_PLUGINS_DIR=.* is not a directory"):
        load_plugins()


def test_the_cli_prints_a_plugin_warning_as_one_line(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ASTRID_HOME": str(tmp_path / "home"),
        "ASTRID_LOAD_PLUGINS": "astrid.default_plugins,astrid.default_plugins.sqlite_storag",
    }
    out = subprocess.run([sys.executable, "-m", "astrid.cli", "plugins"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith(
        "warning: ASTRID_LOAD_PLUGINS names 'astrid.default_plugins.sqlite_storag', which is no "
        "installed plugin (did you mean 'astrid.default_plugins.sqlite_storage'?)"
    ), line
