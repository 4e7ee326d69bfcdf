"""The ``encrypted`` storage backend: the conformance suite over three inner backends, nothing
readable in the raw files, one clear error for a wrong key, keys never in the TOML, rekey."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from astrid import SessionStore
from astrid.config import load_config
from astrid.default_plugins.encrypted_storage import EncryptedBackend, EncryptedOptions
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import AstridError, CryptoKeyError, SessionDecryptionError
from astrid.ids import validate_session_id
from astrid.messages import Message
from astrid.plugins import PluginContext, get_implementation
from astrid.store import open_store
from astrid.testing import StorageConformance

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SECRET = "the launch code is zebra-4417"


class TestEncryptedMemory(StorageConformance):
    def make_backend(self, tmp_path: Path) -> EncryptedBackend:
        return EncryptedBackend(MemoryBackend(), KEY)


class TestEncryptedFile(StorageConformance):
    def make_backend(self, tmp_path: Path) -> EncryptedBackend:
        return EncryptedBackend(FileBackend(tmp_path / "sessions"), KEY)

    def reopen_backend(self, backend: object, tmp_path: Path) -> EncryptedBackend:
        return EncryptedBackend(FileBackend(tmp_path / "sessions"), KEY)


class TestEncryptedSqlite(StorageConformance):
    def make_backend(self, tmp_path: Path) -> EncryptedBackend:
        return EncryptedBackend(SqliteBackend(tmp_path / "astrid.db"), KEY, encrypt_metadata=True)

    def reopen_backend(self, backend: object, tmp_path: Path) -> EncryptedBackend:
        return EncryptedBackend(SqliteBackend(tmp_path / "astrid.db"), KEY, encrypt_metadata=True)


def _raw_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.parametrize("inner", ["sqlite", "file"])
def test_the_raw_files_hold_no_message_text(tmp_path: Path, inner: str) -> None:
    backend = (
        SqliteBackend(tmp_path / "db" / "astrid.db") if inner == "sqlite"
        else FileBackend(tmp_path / "db")
    )
    store = SessionStore(EncryptedBackend(backend, KEY, encrypt_metadata=True))
    session = store.new_session("system prompt: be careful")
    session.metadata.title = "Secret title"
    session.add_message(Message.user(SECRET))
    store.save(session)
    session.add_message(Message.assistant(SECRET + " confirmed"))
    store.save(session)
    store.close()
    raw = _raw_bytes(tmp_path / "db")
    assert raw, "the inner backend wrote nothing"
    for needle in (b"zebra-4417", b"launch code", b"Secret title", b"be careful"):
        assert needle not in raw, needle
    reopened = SessionStore(EncryptedBackend(
        SqliteBackend(tmp_path / "db" / "astrid.db") if inner == "sqlite"
        else FileBackend(tmp_path / "db"), KEY, encrypt_metadata=True,
    ))
    loaded = reopened.load(session.id)
    assert loaded is not None and loaded.messages[0].text() == SECRET
    assert reopened.list_sessions()[0].title == "Secret title"
    reopened.close()


def test_a_wrong_key_is_one_clear_error_naming_the_session(tmp_path: Path) -> None:
    store = SessionStore(EncryptedBackend(SqliteBackend(tmp_path / "a.db"), KEY))
    session = store.new_session("s")
    session.add_message(Message.user(SECRET))
    store.save(session)
    store.close()
    wrong = SessionStore(EncryptedBackend(SqliteBackend(tmp_path / "a.db"), OTHER_KEY))
    with pytest.raises(SessionDecryptionError) as caught:
        wrong.load(session.id)
    assert validate_session_id(session.id) in str(caught.value)
    assert "key" in str(caught.value)
    with pytest.raises(SessionDecryptionError):
        wrong.history(session.id)
    wrong.close()


def test_a_tampered_message_does_not_decrypt(tmp_path: Path) -> None:
    inner = MemoryBackend()
    store = SessionStore(EncryptedBackend(inner, KEY))
    one, two = store.new_session("a"), store.new_session("b")
    for s in (one, two):
        s.add_message(Message.user(SECRET))
        store.save(s)
    # a ciphertext moved from one session to the other is refused (the id is associated data)
    stolen = inner.load(validate_session_id(one.id))
    assert stolen is not None
    inner._sessions[validate_session_id(two.id)].messages[0] = (0, stolen.messages[0])
    with pytest.raises(SessionDecryptionError, match=validate_session_id(two.id)):
        store.load(two.id)


def _key_file(path: Path, key: bytes) -> Path:
    path.write_text(base64.b64encode(key).decode())
    path.chmod(0o600)
    return path


def test_created_from_options_with_a_key_file_or_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    impl = get_implementation("storage", "encrypted")
    context = PluginContext(home=tmp_path)
    key_file = _key_file(tmp_path / "store.key", KEY)
    backend = impl.create(
        {"inner": "sqlite", "inner_options": {"path": "x.db"}, "key_file": "store.key"}, context
    )
    assert isinstance(backend, EncryptedBackend) and isinstance(backend.inner, SqliteBackend)
    store = SessionStore(backend)
    s = store.new_session("x")
    s.add_message(Message.user(SECRET))
    store.save(s)
    assert store.location() == str(tmp_path / "x.db")
    store.close()
    monkeypatch.setenv("ASTRID_TEST_KEY", KEY.hex())
    again = impl.create(
        {"inner": "sqlite", "inner_options": {"path": "x.db"}, "key_env": "ASTRID_TEST_KEY"},
        context,
    )
    loaded = SessionStore(again).load(s.id)
    assert loaded is not None and loaded.messages[0].text() == SECRET
    again.close()
    key_file.chmod(0o644)
    with pytest.raises(CryptoKeyError, match="readable by others"):
        impl.create({"inner": "memory", "key_file": str(key_file)}, context)
    monkeypatch.setenv("ASTRID_TEST_KEY", "too short")
    with pytest.raises(CryptoKeyError, match="ASTRID_TEST_KEY"):
        impl.create({"inner": "memory", "key_env": "ASTRID_TEST_KEY"}, context)


def test_a_key_in_the_toml_is_an_error(tmp_path: Path) -> None:
    literal = base64.b64encode(KEY).decode()
    for options in (
        {"inner": "memory", "key_env": literal},
        {"inner": "memory", "key_file": KEY.hex()},
        {"inner": "memory", "key": literal},
        {"inner": "memory"},
    ):
        with pytest.raises(ValueError):
            EncryptedOptions.model_validate(options)
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[storage]\nbackend = "encrypted"\n[storage.options]\ninner = "memory"\n'
        f'key_env = "{literal}"\n'
    )
    with pytest.raises(AstridError) as caught:
        open_store(load_config(home / "config.toml"))
    assert "key_env" in str(caught.value)
    assert literal not in str(caught.value)


@pytest.mark.parametrize(
    ("inner_options", "named"),
    [
        ('key = "{literal}"', "unknown key 'storage.options.inner_options.key'; valid keys:"),
        ('busy_timeout_ms = "{literal}"', "key 'storage.options.inner_options.busy_timeout_ms'"),
    ],
)
def test_a_mistake_in_inner_options_is_named_without_echoing_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inner_options: str, named: str
) -> None:
    literal = base64.b64encode(OTHER_KEY).decode()
    monkeypatch.setenv("ASTRID_TEST_KEY", base64.b64encode(KEY).decode())
    config = tmp_path / "config.toml"
    config.write_text(
        '[storage]\nbackend = "encrypted"\n[storage.options]\ninner = "sqlite"\n'
        'key_env = "ASTRID_TEST_KEY"\n[storage.options.inner_options]\n'
        + inner_options.format(literal=literal) + "\n"
    )
    with pytest.raises(AstridError) as caught:  # at load, as `astrid config validate` does
        load_config(config)
    assert str(caught.value).startswith(f"{config}: {named}")
    assert "(options of storage 'sqlite')" in str(caught.value)
    assert literal not in str(caught.value)
    done = subprocess.run(
        [sys.executable, "-m", "astrid.cli", "--config", str(config), "sessions", "list"],
        capture_output=True, text=True, env={**os.environ, "ASTRID_HOME": str(tmp_path / "h")},
    )
    assert done.returncode != 0 and len(done.stderr.splitlines()) == 1
    assert named in done.stderr and literal not in done.stderr + done.stdout


def test_rekey_reencrypts_messages_and_history(tmp_path: Path) -> None:
    backend = EncryptedBackend(SqliteBackend(tmp_path / "r.db"), KEY, encrypt_metadata=True)
    store = SessionStore(backend)
    session = store.new_session("p")
    session.metadata.title = "Rotated"
    session.add_message(Message.user(SECRET))
    store.save(session)
    session.messages = [Message.user("summary")]
    store.save(session)
    assert backend.rekey(OTHER_KEY) == 1
    store.close()
    with pytest.raises(SessionDecryptionError):
        SessionStore(EncryptedBackend(SqliteBackend(tmp_path / "r.db"), KEY)).load(session.id)
    fresh = SessionStore(EncryptedBackend(SqliteBackend(tmp_path / "r.db"), OTHER_KEY))
    loaded = fresh.load(session.id)
    assert loaded is not None and [m.text() for m in loaded.messages] == ["summary"]
    assert [m.text() for m in fresh.history(session.id)] == [SECRET, "summary"]
    assert fresh.list_sessions()[0].title == "Rotated"
    fresh.close()


def test_the_cli_rekey_and_a_wrong_key_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _key_file(home / "old.key", KEY)
    _key_file(home / "new.key", OTHER_KEY)
    (home / "config.toml").write_text(
        '[storage]\nbackend = "encrypted"\n[storage.options]\ninner = "sqlite"\n'
        'key_file = "old.key"\n'
    )
    env = {**os.environ, "ASTRID_HOME": str(home)}
    backend = get_implementation("storage", "encrypted").create(
        {"inner": "sqlite", "key_file": str(home / "old.key")}, PluginContext(home=home)
    )
    store = SessionStore(backend)
    session = store.new_session("p")
    session.add_message(Message.user(SECRET))
    store.save(session)
    store.close()

    def astrid(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "astrid", *args], env=env, capture_output=True, text=True,
            timeout=120,
        )

    done = astrid("sessions", "rekey", "--new-key-file", str(home / "new.key"))
    assert done.returncode == 0, done.stderr
    assert "1 session" in done.stdout
    shown = astrid("sessions", "show", validate_session_id(session.id))
    assert shown.returncode != 0
    assert len(shown.stderr.strip().splitlines()) == 1, shown.stderr
    assert validate_session_id(session.id) in shown.stderr and "Traceback" not in shown.stderr
    (home / "config.toml").write_text(
        '[storage]\nbackend = "encrypted"\n[storage.options]\ninner = "sqlite"\n'
        'key_file = "new.key"\n'
    )
    shown = astrid("sessions", "show", validate_session_id(session.id))
    assert shown.returncode == 0, shown.stderr
    assert SECRET in shown.stdout


def test_a_rekey_killed_between_delete_and_write_is_finished_by_the_next(tmp_path: Path) -> None:
    from astrid.default_plugins.encrypted_storage import REKEY_NAMESPACE, _data_of, _Sealer
    from astrid.store import SessionWrite

    inner = SqliteBackend(tmp_path / "k.db")
    backend = EncryptedBackend(inner, KEY)
    store = SessionStore(backend)
    first, second = store.new_session("a"), store.new_session("b")
    for s in (first, second):
        s.add_message(Message.user(SECRET))
        store.save(s)
    # what a rekey killed after deleting ``first`` leaves: its resealed copy in the kv store
    sid = validate_session_id(first.id)
    record = backend.load(sid)
    summary = next(r for r in inner.list_sessions() if r.id == sid)
    assert record is not None
    current, backend._sealer = backend._sealer, _Sealer(OTHER_KEY)
    copy = backend._sealed(SessionWrite(
        session_id=sid, expected_revision=None, state=record.state, messages=record.messages,
        base_count=0, replace=False, summary=summary,
    ))
    backend._sealer = current
    inner.kv().set(REKEY_NAMESPACE, sid, json.dumps(_data_of(copy)).encode())
    inner.delete(sid)
    assert store.load(sid) is None
    assert backend.rekey(OTHER_KEY) == 2
    assert inner.kv().list_keys(REKEY_NAMESPACE) == []
    for s in (first, second):
        loaded = store.load(s.id)
        assert loaded is not None and loaded.messages[0].text() == SECRET
    assert backend.rekey(OTHER_KEY) == 2  # a second run finds both done and changes nothing
    store.close()


def test_rekey_of_a_store_that_is_not_encrypted_is_one_line_naming_its_backend(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _key_file(home / "new.key", OTHER_KEY)
    env = {**os.environ, "ASTRID_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "astrid", "sessions", "rekey", "--new-key-file",
         str(home / "new.key")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'sqlite', not 'encrypted'" in lines[0], done.stderr
