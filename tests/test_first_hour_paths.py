"""One rule for relative paths (issue 20, item 2).

Every path option of the configuration, the plugins' included, is taken relative to the astrid
home, whatever the current directory: each default backend's option is checked by writing
through it from one directory and reading from another, and ``astrid config show`` prints the
path that is used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from astrid import Message
from astrid.config import (
    AstridConfig,
    LoadedConfig,
    PathOption,
    load_config,
    resolve_home_path,
    resolve_path_options,
)
from astrid.plugins import KINDS, PluginContext, get_implementation, registry
from astrid.runtime import open_runtime
from astrid.store import open_store


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    return home


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current directory of the test: neither the home nor where the config file is."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "astrid.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def cli(config: Path, cwd: Path, *args: str) -> Any:
    """``astrid --config CONFIG ARGS --json`` run in ``cwd``; its JSON output."""
    proc = subprocess.run(
        [sys.executable, "-m", "astrid.cli", "--config", str(config), *args, "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def save_one(config: Path) -> str:
    with open_store(config) as store:
        session = store.new_session("You are terse.")
        session.add_message(Message.user("hello"))
        store.save(session)
        return session.id.bare


def listed_ids(config: Path, cwd: Path) -> list[str]:
    return [row["id"] for row in cli(config, cwd, "sessions", "list")["sessions"]]


def test_sqlite_path_is_under_the_home(home: Path, elsewhere: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, '[storage]\nbackend = "sqlite"\n[storage.options]\npath = "back.db"\n'
    )
    sid = save_one(config)
    assert (home / "back.db").is_file()
    assert not (elsewhere / "back.db").exists()
    other = tmp_path / "another"
    other.mkdir()
    assert listed_ids(config, other) == [sid]
    assert not (other / "back.db").exists()


def test_file_backend_directory_is_under_the_home(
    home: Path, elsewhere: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, '[storage]\nbackend = "file"\n[storage.options]\ndirectory = "sess"\n'
    )
    sid = save_one(config)
    assert (home / "sess" / f"{sid}.json").is_file()
    assert not (elsewhere / "sess").exists()
    other = tmp_path / "another"
    other.mkdir()
    assert listed_ids(config, other) == [sid]
    assert listed_ids(config, home) == [sid]  # the same sessions from every directory


def test_file_backend_kv_directory_is_under_the_home(
    home: Path, elsewhere: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        '[storage]\nbackend = "file"\n'
        '[storage.options]\ndirectory = "sess"\nkv_directory = "kv2"\n',
    )
    with open_store(config) as store:
        store.kv("first-hour").set("k", b"v")
    assert (home / "kv2").is_dir() and any((home / "kv2").rglob("*"))
    assert not (elsewhere / "kv2").exists()
    with open_store(config) as store:
        assert store.kv("first-hour").get("k") == b"v"


@pytest.mark.parametrize(
    ("store", "key", "name"),
    [("sqlite", "path", "caps-back.db"), ("file", "directory", "caps-dir")],
)
def test_capability_store_path_is_under_the_home(
    home: Path, elsewhere: Path, tmp_path: Path, store: str, key: str, name: str
) -> None:
    config = write_config(
        tmp_path, f'[capabilities]\nstore = "{store}"\n[capabilities.options]\n{key} = "{name}"\n'
    )
    with open_store(config):
        pass
    assert (home / name).exists()
    assert not (elsewhere / name).exists()
    assert not (tmp_path / "conf" / name).exists()


def test_scripted_script_file_is_under_the_home(
    home: Path, elsewhere: Path, tmp_path: Path
) -> None:
    home.mkdir(parents=True)
    (home / "script.json").write_text(json.dumps([[{"text": "from the home"}]]), "utf-8")
    (elsewhere / "script.json").write_text(json.dumps([[{"text": "from the cwd"}]]), "utf-8")
    config = write_config(
        tmp_path,
        '[storage]\nbackend = "memory"\n[llm]\nprovider = "scripted"\n'
        '[llm.options]\nscript_file = "script.json"\n',
    )

    async def one_turn() -> str:
        async with open_runtime(config) as runtime:
            session = runtime.create_session("")
            return (await runtime.run_turn(session, "hi")).text

    import asyncio

    assert asyncio.run(one_turn()) == "from the home"


def test_runtime_workspace_root_is_under_the_home(
    home: Path, elsewhere: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, '[storage]\nbackend = "memory"\n[runtime]\nworkspace_root = "proj"\n'
    )
    loaded = load_config(config)

    async def root() -> Path:
        async with open_runtime(loaded) as runtime:
            return runtime.workspace_root(runtime.create_session(""))

    import asyncio

    assert asyncio.run(root()) == home / "proj"


def path_fields(model: type[BaseModel]) -> list[str]:
    """The fields of ``model`` the one rule resolves (every field set to a relative path)."""
    relative = dict.fromkeys(model.model_fields, "rel/x")
    resolved = resolve_path_options(model.model_construct(None, **relative), Path("/h"))
    return [name for name in relative if getattr(resolved, name) == "/h/rel/x"]


def every_implementation() -> list[tuple[str, str, type[BaseModel]]]:
    return [
        (kind, name, impl.options)
        for kind in sorted(KINDS)
        for name, impl in sorted(registry(kind).items())
    ]


def test_every_path_option_of_every_plugin_is_a_path_option() -> None:
    """No plugin declares a path as a plain ``str``/``Path`` the one rule would miss: each
    field named like a path (``path``, ``*_file``, ``*directory``, ``*_dir``) is marked."""
    looks_like_a_path = ("path", "file", "directory", "dir")
    found = []
    for kind, name, options in every_implementation():
        marked = path_fields(options)
        for field in options.model_fields:
            if field.rpartition("_")[2] in looks_like_a_path:
                assert field in marked, f"{kind} {name!r}: option {field!r} is not a PathOption"
                found.append(f"{kind}.{name}.{field}")
    # The default plugins' path options, each tested above through its backend.
    for expected in (
        "storage.sqlite.path",
        "storage.file.directory",
        "storage.file.kv_directory",
        "capability_store.sqlite.path",
        "capability_store.file.directory",
        "llm_provider.scripted.script_file",
    ):
        assert expected in found


def test_the_rule_itself() -> None:
    home = Path("/srv/astrid-home")
    assert resolve_home_path("a/b.db", home) == home / "a/b.db"
    assert resolve_home_path("/abs/b.db", home) == Path("/abs/b.db")
    assert resolve_home_path("~/b.db", home) == Path.home() / "b.db"

    class Options(BaseModel):
        where: PathOption | None = None
        plain: str = "x.db"
        required: PathOption = "y.db"

    out = resolve_path_options(Options(where="w"), home)
    assert (out.where, out.plain, out.required) == (f"{home}/w", "x.db", f"{home}/y.db")
    assert resolve_path_options(Options(), home).where is None  # unset stays unset


def test_a_factory_is_given_the_resolved_path(home: Path, elsewhere: Path) -> None:
    seen: list[Any] = []
    impl = get_implementation("storage", "sqlite")

    def factory(options: Any, context: PluginContext) -> Any:
        seen.append(options.path)
        return impl.factory(options, context)

    probe = type(impl)(impl.kind, "probe", factory, impl.options, "", "test")
    for options in ({"path": "rel.db"}, {}):
        probe.create(options, PluginContext(home=home)).close()
    assert seen == [str(home / "rel.db"), str(home / "astrid.db")]
    assert (home / "rel.db").is_file() and not (elsewhere / "rel.db").exists()


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("", "storage.options.path", "astrid.db"),
        ('[storage.options]\npath = "back.db"\n', "storage.options.path", "back.db"),
        ('[storage.options]\npath = "/abs/elsewhere.db"\n', "storage.options.path", None),
        ('[storage]\nbackend = "file"\n', "storage.options.directory", "sessions"),
        ("", "capabilities.options.path", "capabilities.db"),
        ('[runtime]\nworkspace_root = "proj"\n', "runtime.workspace_root", "proj"),
    ],
)
def test_config_show_prints_the_path_used(
    home: Path, elsewhere: Path, tmp_path: Path, text: str, key: str, expected: str | None
) -> None:
    config = write_config(tmp_path, text)
    shown = cli(config, elsewhere, "config", "show")
    node: Any = shown["config"]
    for part in key.split("."):
        node = node[part]
    assert node == (str(home / expected) if expected else "/abs/elsewhere.db")
    assert not list(elsewhere.iterdir())  # config show created nothing


def test_config_show_table_prints_the_path_not_null(home: Path, elsewhere: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "astrid.cli", "config", "show"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("storage.options.path")]
    assert str(home / "astrid.db") in row and "null" not in row


def test_the_loaded_config_keeps_what_the_file_says(home: Path, tmp_path: Path) -> None:
    """Resolution happens where a path is used; the validated config still holds the text."""
    config = write_config(tmp_path, '[storage.options]\npath = "back.db"\n')
    loaded = load_config(config)
    assert isinstance(loaded, LoadedConfig) and isinstance(loaded.config, AstridConfig)
    assert loaded.config.storage.options == {"path": "back.db"}
