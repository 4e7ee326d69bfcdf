"""The built-in capability stores (memory, file, sqlite): persistence across reopen, safety."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pluggy
import pytest
from pydantic import BaseModel, ValidationError

from astrid import hookspecs
from astrid.default_plugins import capability_stores
from astrid.default_plugins.capability_stores import (
    FileCapabilityBackend,
    InvalidTokenId,
    SqliteCapabilityBackend,
    canonical_token_id,
)
from astrid.default_plugins.sqlite_storage import MIGRATIONS
from astrid.errors import (
    PluginError,
    SerializationError,
    StorageError,
    TokenAlreadyUsed,
    TokenRevoked,
)
from astrid.plugins import PluginContext
from astrid.security.actions import Permission
from astrid.security.capabilities import (
    AuditEntryId,
    CapabilityBackend,
    CapabilityStore,
    CapabilityToken,
    MemoryCapabilityBackend,
    ResourcePattern,
    TokenBuilder,
)
from astrid.security.crypto import KeyPair

BACKENDS = ("memory", "file", "sqlite")
DISK_BACKENDS = ("file", "sqlite")
RESOURCE = "mcp://server:tool"

# ------------------------------------------------------------------------------------------
# helpers


@dataclass(frozen=True)
class Registration:
    """What one ``register`` call received."""

    name: str
    factory: Callable[[Any, PluginContext], Any]
    options: type[BaseModel]
    description: str


def registrations() -> dict[str, Registration]:
    """Run the plugin's hook through a private pluggy manager and collect its registrations."""
    pm = pluggy.PluginManager("astrid")
    pm.add_hookspecs(hookspecs)
    pm.register(capability_stores, name="astrid.default_plugins.capability_stores")
    found: dict[str, Registration] = {}

    def register(
        name: str,
        factory: Callable[[Any, PluginContext], Any],
        options: type[BaseModel],
        description: str = "",
    ) -> None:
        assert name not in found
        found[name] = Registration(name, factory, options, description)

    pm.hook.register_capability_stores(register=register)
    return found


def create(name: str, home: Path, **options: Any) -> Any:
    """A backend made by the registered factory, as the runtime would make it."""
    reg = registrations()[name]
    return reg.factory(reg.options.model_validate(options), PluginContext(home=home))


@dataclass
class Opener:
    """Opens the same store again and again (memory: the same instance, as a process would)."""

    name: str
    home: Path
    opened: list[Any] = field(default_factory=list)
    _memory: MemoryCapabilityBackend | None = None

    def backend(self) -> Any:
        if self.name == "memory":
            if self._memory is None:
                self._memory = create("memory", self.home)
            return self._memory
        backend = create(self.name, self.home)
        self.opened.append(backend)
        return backend

    def store(self) -> CapabilityStore:
        return CapabilityStore(backend=self.backend())

    def reopen(self) -> CapabilityStore:
        """Close every open backend, then a fresh backend and a fresh store over it."""
        self.close()
        return self.store()

    def close(self) -> None:
        for backend in self.opened:
            backend.close()
        self.opened.clear()


@pytest.fixture
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    op = Opener(request.param, tmp_path / "home")
    yield op
    op.close()


def parametrize_backends(names: tuple[str, ...] = BACKENDS) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("opener", names, indirect=True)


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return KeyPair.generate()


def make_token(
    key: KeyPair,
    resource: str = RESOURCE,
    *,
    persistent: bool = True,
    ttl: timedelta | None = None,
    single_use: bool = False,
) -> CapabilityToken:
    builder = TokenBuilder(ResourcePattern.new(resource)).permission(Permission.INVOKE)
    builder = builder.persistent() if persistent else builder.session()
    if ttl is not None:
        builder = builder.ttl(ttl)
    if single_use:
        builder = builder.single_use()
    return builder.build(key.key_id, AuditEntryId.new(), key)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    previous = os.umask(0o022)
    os.umask(previous)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(previous)


def write_corrupt(opener: Opener, token_id: str, raw: bytes) -> None:
    """Put undecodable bytes where a token should be, behind the store's back."""
    if opener.name == "memory":
        opener.backend().put_token(token_id, raw.decode("utf-8", errors="replace"))
    elif opener.name == "file":
        (opener.home / "capabilities" / "tokens" / f"{token_id}.json").write_bytes(raw)
    else:
        with sqlite3.connect(opener.home / "capabilities.db") as conn:
            conn.execute(
                "INSERT INTO cap_tokens (id, body) VALUES (?, ?)",
                (token_id, raw.decode("utf-8", errors="replace")),
            )
        conn.close()


# ------------------------------------------------------------------------------------------
# registration


def test_registers_three_stores_with_strict_options(tmp_path: Path) -> None:
    regs = registrations()
    assert set(regs) == {"memory", "file", "sqlite"}
    for reg in regs.values():
        assert reg.description
        with pytest.raises(ValidationError):
            reg.options.model_validate({"bogus": 1})
    assert regs["file"].options.model_validate({}).model_dump() == {"directory": "capabilities"}
    assert regs["sqlite"].options.model_validate({}).model_dump() == {"path": "capabilities.db"}
    assert regs["memory"].options.model_validate({}).model_dump() == {}

    home = tmp_path / "home"
    memory = create("memory", home)
    file = create("file", home)
    db = create("sqlite", home)
    try:
        assert isinstance(memory, MemoryCapabilityBackend)
        assert memory is not create("memory", home)
        for backend in (memory, file, db):
            assert isinstance(backend, CapabilityBackend)
        assert isinstance(file, FileCapabilityBackend)
        assert file.directory == home / "capabilities"
        assert isinstance(db, SqliteCapabilityBackend)
        assert db.path == home / "capabilities.db"
        assert db.path.is_file()
    finally:
        db.close()


def test_options_choose_the_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    file = create("file", tmp_path / "home", directory="~/caps")
    assert file.directory == tmp_path / "user" / "caps"
    assert (tmp_path / "user" / "caps" / "tokens").is_dir()
    db = create("sqlite", tmp_path / "home", path=str(tmp_path / "elsewhere" / "c.db"))
    db.close()
    assert (tmp_path / "elsewhere" / "c.db").is_file()
    assert not (tmp_path / "home").exists()


# ------------------------------------------------------------------------------------------
# surviving a reopen


@parametrize_backends()
def test_persistent_token_survives_reopen(opener: Opener, key: KeyPair) -> None:
    token = make_token(key)
    opener.store().add(token)

    store = opener.reopen()
    got = store.get(token.id)
    assert got == token
    assert got is not None and got.signature == token.signature and got.has_valid_signature()
    assert got.model_dump_json() == token.model_dump_json()
    assert store.has_capability(RESOURCE, Permission.INVOKE)
    assert not store.has_capability(RESOURCE, Permission.WRITE)
    assert store.find_capability(RESOURCE, Permission.INVOKE) == token
    assert [t.id for t in store.list_tokens()] == [token.id]


@parametrize_backends()
def test_revocation_survives_reopen(opener: Opener, key: KeyPair) -> None:
    token = make_token(key)
    store = opener.store()
    store.add(token)
    store.revoke(token.id)
    never_stored = uuid4()
    store.revoke(never_stored)

    store = opener.reopen()
    assert store.is_revoked(token.id)
    assert store.is_revoked(never_stored)
    with pytest.raises(TokenRevoked):
        store.get(token.id)
    assert not store.has_capability(RESOURCE, Permission.INVOKE)
    assert store.list_tokens() == []
    assert str(token.id) in opener.backend().revoked_ids()
    assert opener.backend().get_token(str(token.id)) is None


@parametrize_backends()
def test_used_single_use_token_stays_used_after_reopen(opener: Opener, key: KeyPair) -> None:
    token = make_token(key, single_use=True)
    store = opener.store()
    store.add(token)
    assert store.use_token(token.id) == token

    store = opener.reopen()
    assert store.is_used(token.id)
    with pytest.raises(TokenAlreadyUsed):
        store.use_token(token.id)
    assert not store.has_capability(RESOURCE, Permission.INVOKE)
    assert opener.backend().used_ids() == {str(token.id)}


@parametrize_backends()
def test_single_use_token_is_used_once_across_stores_open_at_once(
    opener: Opener, key: KeyPair
) -> None:
    token = make_token(key, single_use=True)
    first, second = opener.store(), opener.store()
    first.add(token)
    assert second.use_token(token.id) == token
    with pytest.raises(TokenAlreadyUsed):
        first.use_token(token.id)
    assert first.is_used(token.id)
    assert opener.backend().used_ids() == {str(token.id)}


@parametrize_backends()
def test_claim_use_is_a_check_and_mark(opener: Opener) -> None:
    backend = opener.backend()
    token_id = str(uuid4())
    assert backend.claim_use(token_id) is True
    assert backend.claim_use(token_id) is False
    assert backend.used_ids() == {token_id}


USE_WORKER = """
import sys
from uuid import UUID
from astrid.default_plugins.capability_stores import FileCapabilityBackend, SqliteCapabilityBackend
from astrid.errors import TokenAlreadyUsed
from astrid.security.capabilities import CapabilityStore

kind, where, token_id = sys.argv[1:4]
backend = SqliteCapabilityBackend(where) if kind == "sqlite" else FileCapabilityBackend(where)
store = CapabilityStore(backend)
print("ready", flush=True)
sys.stdin.readline()
try:
    store.use_token(UUID(token_id))
except TokenAlreadyUsed:
    print("already-used", flush=True)
else:
    print("used", flush=True)
"""


@pytest.mark.parametrize("kind", DISK_BACKENDS)
def test_processes_racing_to_use_one_single_use_token_let_exactly_one_use_it(
    kind: str, tmp_path: Path, key: KeyPair
) -> None:
    where = tmp_path / ("caps.db" if kind == "sqlite" else "caps")
    backend: Any = (
        SqliteCapabilityBackend(where) if kind == "sqlite" else FileCapabilityBackend(where)
    )
    token = make_token(key, single_use=True)
    CapabilityStore(backend).add(token)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", USE_WORKER, kind, str(where), str(token.id)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        for proc in procs:  # every process has opened its store before any uses the token
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == "ready\n", (line, proc.stderr.read() if proc.stderr else "")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outcomes.append(out.strip())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sorted(outcomes) == ["already-used"] * 5 + ["used"]
    assert backend.used_ids() == {str(token.id)}
    backend.close()


class OldProtocolBackend:
    """A third-party backend written before ``claim_use``: only ``add_used``/``used_ids``."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.used: set[str] = set()

    def put_token(self, token_id: str, data: str) -> None:
        self.tokens[token_id] = data

    def get_token(self, token_id: str) -> str | None:
        return self.tokens.get(token_id)

    def delete_token(self, token_id: str) -> None:
        self.tokens.pop(token_id, None)

    def list_tokens(self) -> list[str]:
        return list(self.tokens.values())

    def add_revoked(self, token_id: str) -> None:
        pass

    def revoked_ids(self) -> set[str]:
        return set()

    def add_used(self, token_id: str) -> None:
        self.used.add(token_id)

    def used_ids(self) -> set[str]:
        return set(self.used)

    def __repr__(self) -> str:
        return "OldProtocolBackend()"


def test_backend_without_claim_use_refuses_single_use_tokens_but_serves_the_rest(
    key: KeyPair,
) -> None:
    backend = OldProtocolBackend()
    store = CapabilityStore(backend)  # type: ignore[arg-type]  # the old protocol, on purpose
    plain, single = make_token(key), make_token(key, single_use=True)
    store.add(plain)
    store.add(single)
    assert store.use_token(plain.id) == plain
    with pytest.raises(PluginError, match=r"OldProtocolBackend\(\) has no claim_use") as info:
        store.use_token(single.id)
    assert f"token:{single.id}" in str(info.value)
    assert backend.used == set() and not store.is_used(single.id)


@parametrize_backends()
def test_cleanup_expired_deletes_expired_persistent_tokens(opener: Opener, key: KeyPair) -> None:
    live = make_token(key)
    recently_expired = make_token(key, ttl=timedelta(seconds=-5))  # accepted within the skew
    long_expired = make_token(key, ttl=timedelta(hours=-1))
    store = opener.store()
    store.add(live)
    store.add(recently_expired)
    opener.backend().put_token(str(long_expired.id), long_expired.model_dump_json())
    assert len(opener.backend().list_tokens()) == 3

    assert store.cleanup_expired() == 2
    assert store.cleanup_expired() == 0

    store = opener.reopen()
    backend = opener.backend()
    assert [json.loads(body)["id"] for body in backend.list_tokens()] == [str(live.id)]
    assert backend.get_token(str(recently_expired.id)) is None
    assert backend.get_token(str(long_expired.id)) is None
    assert store.get(recently_expired.id) is None
    assert store.get(live.id) == live
    if opener.name == "file":
        names = sorted(p.name for p in (opener.home / "capabilities" / "tokens").iterdir())
        assert names == [f"{live.id}.json"]
    if opener.name == "sqlite":
        with sqlite3.connect(opener.home / "capabilities.db") as conn:
            ids = [row[0] for row in conn.execute("SELECT id FROM cap_tokens")]
        conn.close()
        assert ids == [str(live.id)]


@parametrize_backends()
def test_session_tokens_are_not_persisted(opener: Opener, key: KeyPair) -> None:
    token = make_token(key, persistent=False)
    store = opener.store()
    store.add(token)
    assert store.get(token.id) == token
    assert opener.backend().list_tokens() == []
    assert opener.backend().get_token(str(token.id)) is None

    store = opener.reopen()
    assert store.get(token.id) is None
    assert not store.has_capability(RESOURCE, Permission.INVOKE)
    assert store.list_tokens() == []


@parametrize_backends()
def test_corrupt_token_is_skipped_by_listing_and_reported_by_get(
    opener: Opener, key: KeyPair
) -> None:
    good = make_token(key)
    opener.store().add(good)
    broken = str(uuid4())
    write_corrupt(opener, broken, b'{"id": "not finished')
    undecodable = str(uuid4())
    write_corrupt(opener, undecodable, b"\xff\xfe\x00garbage")

    store = opener.reopen()
    assert len(opener.backend().list_tokens()) == 3
    assert [t.id for t in store.list_tokens()] == [good.id]
    assert store.find_capability(RESOURCE, Permission.INVOKE) == good
    for token_id in (broken, undecodable):
        with pytest.raises(SerializationError):
            store.get(UUID(token_id))
    assert store.cleanup_expired() == 0


# ------------------------------------------------------------------------------------------
# the disk backends


@parametrize_backends(DISK_BACKENDS)
def test_second_instance_sees_writes_of_the_first(opener: Opener, key: KeyPair) -> None:
    first = opener.store()
    second_backend = opener.backend()
    token = make_token(key)
    first.add(token)
    assert CapabilityStore(backend=second_backend).get(token.id) == token
    first.revoke(token.id)
    assert str(token.id) in second_backend.revoked_ids()


@parametrize_backends(DISK_BACKENDS)
@pytest.mark.parametrize(
    "hostile",
    [
        "",
        "..",
        "../../etc/passwd",
        "/etc/passwd",
        "tokens/../../x",
        "x\0y",
        "not-a-uuid",
        "2f0e0c53-5f3c-4a0e-9a43-6f1d1c0e8b1a/../../escape",
        "7a3c5e2b-1d4f-4b8e-a6c9-0e2d4f6a8b1c.json",
        "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f\n",
        "*",
    ],
)
def test_hostile_ids_are_rejected_before_touching_storage(
    opener: Opener, hostile: str, tmp_path: Path
) -> None:
    backend = opener.backend()
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    operations: list[Callable[[], object]] = [
        lambda: backend.put_token(hostile, "{}"),
        lambda: backend.get_token(hostile),
        lambda: backend.delete_token(hostile),
        lambda: backend.add_revoked(hostile),
        lambda: backend.add_used(hostile),
    ]
    for operation in operations:
        with pytest.raises(InvalidTokenId) as info:
            operation()
        assert isinstance(info.value, StorageError)
        assert isinstance(info.value, ValueError)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert backend.list_tokens() == []
    assert backend.revoked_ids() == set()
    assert backend.used_ids() == set()


def test_non_string_ids_are_rejected() -> None:
    with pytest.raises(InvalidTokenId):
        canonical_token_id(uuid4())
    with pytest.raises(InvalidTokenId):
        canonical_token_id(None)


@parametrize_backends(DISK_BACKENDS)
def test_ids_are_stored_in_canonical_form(opener: Opener, key: KeyPair) -> None:
    token = make_token(key)
    backend = opener.backend()
    backend.put_token(str(token.id).upper(), token.model_dump_json())
    backend.add_revoked("{" + str(token.id).upper() + "}")
    backend.add_used(str(token.id).replace("-", ""))
    assert backend.get_token(str(token.id)) == token.model_dump_json()
    assert backend.revoked_ids() == {str(token.id)}
    assert backend.used_ids() == {str(token.id)}
    backend.delete_token(str(token.id).upper())
    assert backend.list_tokens() == []


@parametrize_backends(DISK_BACKENDS)
def test_store_is_idempotent(opener: Opener, key: KeyPair) -> None:
    token = make_token(key)
    backend = opener.backend()
    for _ in range(2):
        backend.put_token(str(token.id), token.model_dump_json())
        backend.add_revoked(str(token.id))
        backend.add_used(str(token.id))
    backend.delete_token(str(token.id))
    backend.delete_token(str(token.id))
    assert backend.list_tokens() == []
    assert backend.revoked_ids() == {str(token.id)}
    assert backend.used_ids() == {str(token.id)}


@pytest.mark.parametrize("umask_value", [0o022, 0o000, 0o277], ids=oct)
def test_file_store_is_private_whatever_the_umask(
    tmp_path: Path, key: KeyPair, umask: Callable[[int], None], umask_value: int
) -> None:
    umask(umask_value)
    root = tmp_path / "a" / "b" / "caps"
    backend = FileCapabilityBackend(root)
    store = CapabilityStore(backend=backend)
    token = make_token(key, single_use=True)
    store.add(token)
    store.use_token(token.id)
    store.revoke(uuid4())
    umask(0o022)

    for directory in (tmp_path / "a", tmp_path / "a" / "b", root):
        assert mode(directory) == 0o700, directory
    for sub in ("tokens", "revoked", "used"):
        assert mode(root / sub) == 0o700, sub
        files = list((root / sub).iterdir())
        assert len(files) == 1
        assert all(mode(f) == 0o600 for f in files), files


def test_file_store_leaves_an_existing_parent_alone(
    tmp_path: Path, umask: Callable[[int], None]
) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o755)
    FileCapabilityBackend(parent / "caps")
    assert mode(parent) == 0o755
    assert mode(parent / "caps") == 0o700


def test_file_store_layout(tmp_path: Path, key: KeyPair) -> None:
    root = tmp_path / "caps"
    store = CapabilityStore(backend=FileCapabilityBackend(root))
    token = make_token(key, single_use=True)
    store.add(token)
    store.use_token(token.id)
    other = make_token(key)
    store.add(other)
    store.revoke(other.id)

    assert json.loads((root / "tokens" / f"{token.id}.json").read_text()) == json.loads(
        token.model_dump_json()
    )
    assert not (root / "tokens" / f"{other.id}.json").exists()
    assert (root / "revoked" / str(other.id)).is_file()
    assert (root / "used" / str(token.id)).is_file()
    leftovers = [p for p in root.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == []


def test_file_listing_reads_the_tokens_directory(tmp_path: Path, key: KeyPair) -> None:
    root = tmp_path / "caps"
    store = CapabilityStore(backend=FileCapabilityBackend(root))
    assert not store.has_capability(RESOURCE, Permission.INVOKE)
    token = make_token(key)
    (root / "tokens" / f"{token.id}.json").write_text(token.model_dump_json())
    (root / "tokens" / "README.txt").write_text("not a token")
    (root / "tokens" / f".{uuid4()}.json.abcd.tmp").write_text("half written")
    (root / "tokens" / f"{uuid4()}.json.tmp.{'ab' * 8}").write_text("half written")
    (root / "revoked" / f"{uuid4()}.tmp.{'cd' * 8}").write_text("")
    (root / "tokens" / "notes.json").write_text(make_token(key, "mcp://other:x").model_dump_json())
    (root / "revoked" / "not-a-uuid").write_text("")
    (root / "used" / f"{uuid4()}.tmp").write_text("")

    assert store.has_capability(RESOURCE, Permission.INVOKE)
    assert [t.id for t in store.list_tokens()] == [token.id]
    backend = FileCapabilityBackend(root)
    assert backend.revoked_ids() == set()
    assert backend.used_ids() == set()


def test_file_store_on_a_regular_file_is_a_storage_error(tmp_path: Path) -> None:
    target = tmp_path / "caps"
    target.write_text("I am a file")
    with pytest.raises(StorageError, match=str(target)):
        FileCapabilityBackend(target)


@pytest.mark.parametrize("umask_value", [0o022, 0o000, 0o277], ids=oct)
def test_sqlite_store_is_private_whatever_the_umask(
    tmp_path: Path, key: KeyPair, umask: Callable[[int], None], umask_value: int
) -> None:
    umask(umask_value)
    path = tmp_path / "new" / "caps.db"
    backend = SqliteCapabilityBackend(path)
    try:
        CapabilityStore(backend=backend).add(make_token(key))
        umask(0o022)
        assert mode(path.parent) == 0o700
        assert mode(path) == 0o600
        wal = path.with_name(path.name + "-wal")
        assert wal.exists()
        assert mode(wal) == 0o600
    finally:
        backend.close()


def test_sqlite_store_leaves_an_existing_parent_alone(
    tmp_path: Path, umask: Callable[[int], None]
) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o755)
    SqliteCapabilityBackend(parent / "caps.db").close()
    assert mode(parent) == 0o755
    assert mode(parent / "caps.db") == 0o600


def test_sqlite_schema_migrations_and_wal(tmp_path: Path, key: KeyPair) -> None:
    path = tmp_path / "caps.db"
    backend = SqliteCapabilityBackend(path)
    names = [name for name, _ in MIGRATIONS]  # the one ladder of an astrid SQLite file
    assert backend.migrations() == names
    token = make_token(key)
    CapabilityStore(backend=backend).add(token)
    backend.close()
    with SqliteCapabilityBackend(path) as again:
        assert again.migrations() == names

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = conn.execute("SELECT name, applied_at FROM _astrid_migrations").fetchall()
        assert [r[0] for r in rows] == names and all(r[1] for r in rows)
        columns = {
            table: [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
            for table in ("cap_tokens", "cap_revoked", "cap_used", "_astrid_migrations")
        }
        assert columns == {
            "cap_tokens": ["id", "body"],
            "cap_revoked": ["id"],
            "cap_used": ["id"],
            "_astrid_migrations": ["name", "applied_at"],
        }
        body = conn.execute("SELECT body FROM cap_tokens WHERE id = ?", (str(token.id),))
        assert json.loads(body.fetchone()[0])["id"] == str(token.id)  # readable JSON text
    finally:
        conn.close()


def test_sqlite_not_a_database_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "capabilities.db"
    content = b"this is certainly not a SQLite database, just some text\n" * 20
    path.write_bytes(content)
    with pytest.raises(StorageError, match=str(path)):
        SqliteCapabilityBackend(path)
    assert path.read_bytes() == content


def test_sqlite_path_that_is_a_directory_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "capabilities.db"
    path.mkdir()
    with pytest.raises(StorageError, match=str(path)):
        SqliteCapabilityBackend(path)


def test_sqlite_closed_store_raises_storage_error(tmp_path: Path) -> None:
    backend = SqliteCapabilityBackend(tmp_path / "caps.db")
    backend.close()
    backend.close()
    with pytest.raises(StorageError, match="closed"):
        backend.list_tokens()


def test_sqlite_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "caps.db"
    backends = [SqliteCapabilityBackend(path) for _ in range(4)]
    ids = [[str(uuid4()) for _ in range(25)] for _ in backends]

    def work(backend: SqliteCapabilityBackend, mine: list[str]) -> None:
        for token_id in mine:
            backend.add_revoked(token_id)
            backend.add_used(token_id)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(backends, ids, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = {token_id for mine in ids for token_id in mine}
    try:
        for backend in backends:
            assert backend.revoked_ids() == expected
            assert backend.used_ids() == expected
    finally:
        for backend in backends:
            backend.close()
