"""Configuration: discovery, defaults, validation errors that name the file and key."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from astrid.config import (
    AstridConfig,
    astrid_home,
    dump_config,
    find_config_file,
    load_config,
    write_default_config,
)
from astrid.errors import ConfigError
from astrid.store import open_store


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    monkeypatch.chdir(work)
    return tmp_path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_gives_the_embedded_defaults(tmp_path: Path) -> None:
    loaded = load_config()
    assert loaded.source is None
    assert loaded.home == tmp_path / "home"
    cfg = loaded.config
    assert (cfg.storage.backend, cfg.tokens.estimator, cfg.git.capture) == (
        "sqlite",
        "content",
        "fs",
    )
    assert cfg.capabilities.store == "sqlite"
    assert cfg.budget.session_max_usd == 100.0


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home_file = _write(tmp_path / "home" / "config.toml", '[storage]\nbackend = "memory"\n')
    assert find_config_file() == home_file
    local = _write(Path.cwd() / "astrid.toml", '[storage]\nbackend = "file"\n')
    assert find_config_file() == local
    env = _write(tmp_path / "env.toml", "")
    monkeypatch.setenv("ASTRID_CONFIG", str(env))
    assert find_config_file() == env
    explicit = _write(tmp_path / "explicit.toml", "")
    assert find_config_file(explicit) == explicit
    assert load_config().config.storage.backend == "sqlite"  # env file is empty → defaults


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_unknown_key_names_file_key_and_choices(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", '[storage]\nbackend = "memory"\nbakend = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "storage.bakend" in msg and "backend" in msg and "options" in msg


def test_unknown_section(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", "[storgae]\n")
    with pytest.raises(ConfigError, match=r"unknown key 'storgae'.*valid keys: budget"):
        load_config(path)


def test_unknown_backend_lists_valid_choices(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", '[storage]\nbackend = "mongo"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "'storage.backend'" in msg and "mongo" in msg
    choices = msg.split("valid choices: ")[1].split(", ")
    assert {"file", "memory", "sqlite"} <= set(choices)


def test_bad_plugin_option_is_validated_by_the_plugin(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.toml", '[storage]\nbackend = "sqlite"\n[storage.options]\nsize = 3\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "storage.options.size" in str(info.value) and "sqlite" in str(info.value)
    keys = "busy_timeout_ms, mmap_size_mb, path, synchronous, wal_autocheckpoint"
    assert f"valid keys: {keys}" in str(info.value)


def test_wrong_types(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", '[budget]\nsession_max_usd = "lots"\n')
    with pytest.raises(ConfigError, match=r"budget\.session_max_usd"):
        load_config(path)
    path = _write(tmp_path / "d.toml", "storage = 3\n")
    with pytest.raises(ConfigError, match="storage"):
        load_config(path)
    path = _write(tmp_path / "e.toml", "[budget]\nsession_max_usd = nan\n")
    with pytest.raises(ConfigError, match="session_max_usd"):
        load_config(path)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", "[storage\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


@pytest.mark.parametrize("value", ["relative/home", "/tmp/../etc", ""])
def test_home_must_be_absolute_without_dotdot(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRID_HOME", value)
    with pytest.raises(ConfigError):
        astrid_home()


def test_home_defaults_to_dot_astrid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ASTRID_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert astrid_home() == tmp_path / ".astrid"


def test_default_file_is_commented_and_loads_to_the_defaults(tmp_path: Path) -> None:
    path = write_default_config(tmp_path / "home" / "config.toml")
    text = path.read_text()
    assert text.count("#") > 10
    assert load_config(path).config == AstridConfig()
    with pytest.raises(ConfigError, match="already exists"):
        write_default_config(path)
    write_default_config(path, overwrite=True)


def test_dump_round_trips() -> None:
    cfg = AstridConfig.model_validate(
        {"storage": {"backend": "memory"}, "budget": {"warn_at_percent": 50}}
    )
    assert AstridConfig.model_validate(tomllib.loads(dump_config(cfg))) == cfg


def test_open_store_uses_the_configured_parts(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.toml",
        '[storage]\nbackend = "memory"\n[tokens]\nestimator = "original"\n[git]\ncapture = "none"\n'
        "[budget]\nsession_max_usd = 5.0\nworkspace_max_usd = 7.5\n",
    )
    store = open_store(path)
    session = store.new_session("p")
    from astrid import Message

    session.add_message(Message.user("12345678"))
    assert session.token_count == 2  # the original rule
    assert session.budget_tracker.config().session_max_usd == 5.0
    store.save(session)
    assert store.load(session.id) is not None
    assert store.attach_workspace(session, tmp_path).max_usd() == 7.5


def test_default_store_is_sqlite_under_home(tmp_path: Path) -> None:
    store = open_store()
    session = store.new_session("p")
    store.save(session)
    store.close()
    assert (tmp_path / "home" / "astrid.db").is_file()
    assert os.stat(tmp_path / "home" / "astrid.db").st_mode & 0o777 == 0o600


# Every path option of the built-in plugins and the config itself: (section table, key).
PATH_OPTIONS = [
    ('[storage]\nbackend = "sqlite"\n[storage.options]\n', "storage.options.path"),
    ('[storage]\nbackend = "file"\n[storage.options]\n', "storage.options.directory"),
    ('[storage]\nbackend = "file"\n[storage.options]\n', "storage.options.kv_directory"),
    ('[capabilities]\nstore = "sqlite"\n[capabilities.options]\n', "capabilities.options.path"),
    (
        '[capabilities]\nstore = "file"\n[capabilities.options]\n',
        "capabilities.options.directory",
    ),
    ('[llm]\nprovider = "scripted"\n[llm.options]\n', "llm.options.script_file"),
    ("[runtime]\n", "runtime.workspace_root"),
]


@pytest.mark.parametrize(("table", "key"), PATH_OPTIONS, ids=[k for _t, k in PATH_OPTIONS])
@pytest.mark.parametrize(
    ("value", "why"),
    [('""', "must not be empty"), ('"  "', "must not be empty"), ('"a\\u0000b"', "NUL")],
    ids=["empty", "blank", "nul"],
)
def test_an_empty_or_nul_path_is_a_config_error_naming_file_and_key(
    tmp_path: Path, table: str, key: str, value: str, why: str
) -> None:
    leaf = key.rpartition(".")[2]
    config = _write(tmp_path / "bad.toml", f"{table}{leaf} = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    message = str(err.value)
    assert message.startswith(f"{config}: key '{key}': ") and why in message
    assert "embedded null byte" not in message
    assert not (tmp_path / "home").exists()  # nothing was created at the home path


def test_a_valid_path_option_still_loads(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "ok.toml",
        f'[storage.options]\npath = "{tmp_path / "db" / "astrid.db"}"\n',
    )
    assert load_config(config).config.storage.options["path"] == str(tmp_path / "db/astrid.db")
