"""``astrid.transfer`` called as a host would: real SQLite and file stores, no click.

Import, export, migrate and the doctor checks return result objects naming each session or file
that failed and why; a refusal of the whole operation is a typed ``AstridError``. The last test
checks that the CLI package reaches the store only through the facade.
"""

from __future__ import annotations

import ast
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from astrid import Message
from astrid.config import load_config
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import ConfigError, SessionNotFound
from astrid.store import SessionStore
from astrid.transfer import (
    Problem,
    check_store,
    export_sessions,
    import_document,
    import_sessions,
    migrate,
)
from tests.originals import RUST_DOCUMENT
from tests.test_cli import make_session

CLI_PACKAGE = Path(__file__).resolve().parent.parent / "astrid" / "cli"


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SessionStore]:
    with SessionStore(SqliteBackend(tmp_path / "astrid.db")) as store:
        yield store


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[SessionStore]:
    with SessionStore(FileBackend(tmp_path / "sessions")) as store:
        yield store


def summarized_session(store: SessionStore) -> str:
    """A session whose first messages were replaced by a summary (they stay in its history)."""
    session = store.new_session("summarized")
    for i in range(3):
        session.add_message(Message.user(f"q{i}"))
    store.save(session)
    session.messages = [Message.system("summary"), *session.messages[-1:]]
    store.save(session)
    return session.id.bare


def rust_doc(session_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RUST_DOCUMENT)
    data["id"] = session_id
    return data


# -- export ----------------------------------------------------------------------------------


def test_export_writes_one_document_an_array_or_lines_and_names_what_it_cannot_read(
    file_store: SessionStore, tmp_path: Path
) -> None:
    ids = [make_session(file_store, n) for n in (1, 2, 3)]
    chunks: list[str] = []
    single = export_sessions(file_store, chunks.append, [ids[0]])
    assert single.exported == [ids[0]] and not single.failed
    assert json.loads("".join(chunks))["id"] == ids[0]

    bad_path = tmp_path / "sessions" / f"{ids[1]}.json"
    bad_path.write_text('{"id": "garbage', encoding="utf-8")
    chunks.clear()
    everything = export_sessions(file_store, chunks.append)
    assert sorted(everything.exported) == sorted([ids[0], ids[2]])
    [failure] = everything.failed
    assert failure.subject == ids[1]
    assert failure.message.startswith(f"session {ids[1]} not exported: {bad_path}: ")
    assert sorted(d["id"] for d in json.loads("".join(chunks))) == sorted([ids[0], ids[2]])

    chunks.clear()
    lines = export_sessions(file_store, chunks.append, [ids[2], ids[0]], fmt="jsonl")
    assert [json.loads(line)["id"] for line in "".join(chunks).splitlines()] == [ids[2], ids[0]]
    assert lines.exported == [ids[2], ids[0]]


def test_export_of_a_missing_session_raises_before_writing_anything(
    sqlite_store: SessionStore,
) -> None:
    present = make_session(sqlite_store, 1)
    missing = str(uuid.uuid4())
    chunks: list[str] = []
    with pytest.raises(SessionNotFound, match=missing):
        export_sessions(sqlite_store, chunks.append, [present, missing])
    assert chunks == []


# -- import ----------------------------------------------------------------------------------


def test_import_reports_each_bad_document_and_imports_the_rest(
    sqlite_store: SessionStore, tmp_path: Path
) -> None:
    source = tmp_path / "rust-sessions"
    source.mkdir()
    good, huge, bad = sorted(str(uuid.uuid4()) for _ in range(3))
    (source / f"{good}.json").write_text(json.dumps(rust_doc(good)), encoding="utf-8")
    (source / f"{huge}.json").write_text(
        json.dumps(rust_doc(huge) | {"token_count": 2**63}), encoding="utf-8"
    )
    (source / f"{bad}.json").write_text("{not json", encoding="utf-8")
    (source / "broken.json").write_text("{not json", encoding="utf-8")  # not <uuid>.json

    result = import_sessions(sqlite_store, source)
    assert result.imported == [good] and not result.replaced and not result.skipped
    assert result.ignored == [str(source / "broken.json")]  # not read
    by_subject = {f.subject: f.message for f in result.failed}
    assert set(by_subject) == {str(source / f"{bad}.json"), str(source / f"{huge}.json")}
    assert "invalid JSON" in by_subject[str(source / f"{bad}.json")]
    assert "'token_count'" in by_subject[str(source / f"{huge}.json")]
    assert [r.id for r in sqlite_store.list_sessions()] == [good]

    again = import_sessions(sqlite_store, source)
    assert again.imported == [] and [s.session_id for s in again.skipped] == [good]
    replaced = import_sessions(sqlite_store, source / f"{good}.json", overwrite=True)
    assert replaced.replaced == [good]
    # The replaced import's messages stay in the history, the new ones are active.
    doc = sqlite_store.load_document(good)
    assert doc is not None and len(sqlite_store.history_entries(good)) == 2 * len(doc.messages)


def test_a_file_store_export_brings_its_replaced_messages_into_another_store(
    file_store: SessionStore, sqlite_store: SessionStore, tmp_path: Path
) -> None:
    sid = summarized_session(file_store)
    # The file backend's own document carries the replaced messages (astrid_archived_messages).
    data = json.loads((tmp_path / "sessions" / f"{sid}.json").read_text(encoding="utf-8"))
    assert import_document(sqlite_store, data, "copied.json") == "imported"
    original = [(h.active, h.message) for h in file_store.history_entries(sid)]
    assert [(h.active, h.message) for h in sqlite_store.history_entries(sid)] == original
    assert import_document(sqlite_store, data, "copied.json") == "skipped"


# -- migrate ---------------------------------------------------------------------------------


def test_migrate_copies_sessions_history_and_namespaces_and_resumes(
    file_store: SessionStore, sqlite_store: SessionStore, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    ids = [make_session(file_store, 2, workspace=workspace), summarized_session(file_store)]
    file_store.deferred_queue_kv(ids[0]).set("pending", b"{}")
    file_store.kv("host:notes").set("k", b"v")

    seen: list[str] = []

    def progress(rows: Any) -> Iterator[Any]:
        for row in rows:
            seen.append(row.id)
            yield row

    result = migrate(file_store, sqlite_store, progress=progress)
    assert result.ok, [str(f) for f in result.failed + result.mismatches]
    assert sorted(result.copied) == sorted(ids) and sorted(seen) == sorted(ids)
    assert result.namespaces_listed and result.kv_keys == 2 and result.kv_namespaces == 2
    assert result.verified_sessions == 2
    for sid in ids:
        src = [(h.active, h.message) for h in file_store.history_entries(sid)]
        assert [(h.active, h.message) for h in sqlite_store.history_entries(sid)] == src
    assert sqlite_store.deferred_queue_kv(ids[0]).get("pending") == b"{}"
    assert sqlite_store.kv("host:notes").get("k") == b"v"

    again = migrate(file_store, sqlite_store)
    assert again.copied == [] and sorted(again.skipped) == sorted(ids) and again.ok


def test_migrate_names_a_session_that_does_not_load_and_copies_the_rest(
    file_store: SessionStore, sqlite_store: SessionStore, tmp_path: Path
) -> None:
    good, bad = make_session(file_store, 1), make_session(file_store, 2)
    path = tmp_path / "sessions" / f"{bad}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["token_count"] = "many"
    path.write_text(json.dumps(data), encoding="utf-8")

    result = migrate(file_store, sqlite_store)
    assert not result.ok and result.copied == [good]
    [failure] = result.failed
    assert failure.subject == bad and failure.message.startswith(f"{path}: key 'token_count'")
    assert [r.id for r in sqlite_store.list_sessions()] == [good]


def test_migrate_refuses_the_same_store_and_a_target_that_keeps_nothing(
    sqlite_store: SessionStore, tmp_path: Path
) -> None:
    make_session(sqlite_store, 1)
    with (
        SessionStore(SqliteBackend(tmp_path / "astrid.db")) as twin,
        pytest.raises(ConfigError, match="same store"),
    ):
        migrate(sqlite_store, twin)
    memory = SessionStore(MemoryBackend())
    with pytest.raises(ConfigError, match=r"^memory\.toml: key 'storage\.backend': .*persistent"):
        migrate(sqlite_store, memory, target_key="memory.toml: key 'storage.backend'")
    assert memory.list_sessions() == []


# -- doctor ----------------------------------------------------------------------------------


def sqlite_config(tmp_path: Path) -> Path:
    config = tmp_path / "astrid.toml"
    config.write_text(
        f'[storage]\nbackend = "sqlite"\n[storage.options]\npath = "{tmp_path}/astrid.db"\n',
        encoding="utf-8",
    )
    return config


def test_check_store_reports_a_corrupt_row_by_the_database_file_and_session(
    sqlite_store: SessionStore, tmp_path: Path
) -> None:
    good, bad = make_session(sqlite_store, 1), make_session(sqlite_store, 1)
    db = tmp_path / "astrid.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sessions SET state = '{broken' WHERE id = ?", (bad,))
    report = check_store(load_config(sqlite_config(tmp_path)))
    assert not report.ok and report.sessions_checked == 2 and report.backend_name == "sqlite"
    [problem] = report.problems
    assert problem.location == f"{db}: session {bad}"
    assert problem.problem.startswith("stored state is not valid JSON")
    assert good not in str(problem)
    assert report.to_json()["problems"] == [
        {"location": problem.location, "problem": problem.problem}
    ]
    with pytest.raises(Exception, match="not valid JSON"):
        check_store(load_config(sqlite_config(tmp_path)), strict=True)


def test_check_store_of_a_store_that_cannot_open_is_one_problem_and_creates_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "astrid.db").write_bytes(b"\x00garbage" * 100)
    config = sqlite_config(tmp_path)
    report = check_store(load_config(config))
    assert report.backend_name == "sqlite" and report.schema_version is None
    [problem] = report.problems
    assert problem.location == str(config) and str(tmp_path / "astrid.db") in problem.problem

    fresh = tmp_path / "fresh"
    config = tmp_path / "file.toml"
    config.write_text(
        f'[storage]\nbackend = "file"\n[storage.options]\ndirectory = "{fresh}/sessions"\n',
        encoding="utf-8",
    )
    assert check_store(load_config(config)).problems == [] and not fresh.exists()


# -- the facade the CLI uses -----------------------------------------------------------------


def test_store_facade_describes_sessions_and_derives_the_namespaces_it_keeps(
    sqlite_store: SessionStore, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    sid = make_session(sqlite_store, 1, workspace=workspace)
    assert sqlite_store.describe(sid) == f"{tmp_path / 'astrid.db'}: session {sid}"
    assert sqlite_store.location() == str(tmp_path / "astrid.db")
    rows = sqlite_store.list_sessions()
    ws = rows[0].workspace_path
    assert SessionStore.derived_namespaces(rows) == sorted(
        [f"deferred:{sid}", f"ws:{ws}", f"ws:{ws}:allowances", f"ws:{ws}:budget", f"ws:{ws}:escape"]
    )
    assert sqlite_store.deferred_queue_kv(sid).namespace == f"deferred:{sid}"
    missing = str(uuid.uuid4())
    assert isinstance(sqlite_store.not_found(missing), SessionNotFound)
    assert missing in str(sqlite_store.not_found(missing))
    assert Problem("a", "b").__str__() == "a: b"


def test_the_cli_reaches_the_store_only_through_the_facade() -> None:
    """No ``<anything>.backend`` attribute, ``SessionWrite`` or namespace literal in astrid/cli."""
    offenders = []
    for path in sorted(CLI_PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "backend":
                offenders.append(f"{path.name}:{node.lineno}: .backend")
            elif isinstance(node, ast.Name) and node.id == "SessionWrite":
                offenders.append(f"{path.name}:{node.lineno}: SessionWrite")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith(("deferred:", "ws:"))
            ):
                offenders.append(f"{path.name}:{node.lineno}: namespace {node.value!r}")
    assert len(list(CLI_PACKAGE.glob("*.py"))) >= 7
    assert offenders == []
