"""Concurrent writer processes: nothing lost or duplicated, order kept, stale saves refused.

Every writer is a separate process (``writer.py``) on the same SQLite file or sessions
directory; the processes are started, wait until all are ready, and are then released together.
A writer that hits an error the store should have absorbed (a busy database, a lock) exits
non-zero with a traceback on stderr, which fails the test.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from astrid.messages import Message
from astrid.store import SessionStore

from .harness import Child, sqlite_integrity
from .writer import open_backend

BACKENDS = ["sqlite", "file"]
APPENDERS = 3
APPENDS_EACH = 40
OWNERS = 3
SAVES_EACH = 25
RETRIERS = 4
RETRIES_EACH = 12
BUSY_WRITERS = 5
BUSY_APPENDS = 50


def _location(backend: str, root: Path) -> Path:
    return root / "astrid.db" if backend == "sqlite" else root / "sessions"


def _store(backend: str, location: Path) -> SessionStore:
    return SessionStore(open_backend(backend, str(location)))


def _texts(store: SessionStore, sid: str) -> list[str]:
    session = store.load(sid)
    assert session is not None
    return [m.text() or "" for m in session.messages]


def _release(children: list[Child], ready: str = "ready") -> None:
    for child in children:
        if not child.wait_for(ready):
            child.finish()
            pytest.fail(f"a writer exited before it was ready: {child.stderr}")
    for child in children:
        child.send("go")


def _finish_cleanly(children: list[Child]) -> None:
    for child in children:
        code = child.finish()
        assert code == 0 and child.stderr == "", child.stderr


def _assert_each_writer_in_order(texts: list[str], tag: str, count: int) -> None:
    mine = [t for t in texts if t.startswith(f"{tag}-")]
    assert mine == [f"{tag}-{j}" for j in range(count)], f"writer {tag}: {mine}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_appenders_and_savers_in_parallel_lose_and_duplicate_nothing(
    backend: str, tmp_path: Path
) -> None:
    location = _location(backend, tmp_path)
    shared = str(uuid.uuid4())
    store = _store(backend, location)
    session = store.new_session("shared", session_id=shared)
    session.add_message(Message.user("first"))
    base_revision = store.save(session)
    store.close()

    owned = [str(uuid.uuid4()) for _ in range(OWNERS)]
    children = [
        Child.writer("append", backend, str(location), shared, f"a{i}", str(APPENDS_EACH))
        for i in range(APPENDERS)
    ] + [
        Child.writer("own", backend, str(location), sid, f"o{i}", str(SAVES_EACH))
        for i, sid in enumerate(owned)
    ]
    _release(children)
    _finish_cleanly(children)

    if backend == "sqlite":
        assert sqlite_integrity(location) == "ok"
    store = _store(backend, location)
    try:
        texts = _texts(store, shared)
        assert texts[0] == "first"
        assert len(texts) == 1 + APPENDERS * APPENDS_EACH
        assert len(set(texts)) == len(texts), "a message was stored twice"
        for i in range(APPENDERS):
            _assert_each_writer_in_order(texts, f"a{i}", APPENDS_EACH)
        # every append is one atomic read-modify-write: one revision each
        record = store.backend.load(shared, tail=0)
        assert record is not None
        assert record.revision == base_revision + APPENDERS * APPENDS_EACH
        for i, sid in enumerate(owned):
            assert _texts(store, sid) == [f"o{i}-{j}" for j in range(SAVES_EACH)]
        # the listing (the file backend's shared index) agrees with the sessions
        rows = {r.id: r.message_count for r in store.list_sessions()}
        assert rows == {shared: len(texts), **{sid: SAVES_EACH for sid in owned}}
        if backend == "file":
            assert store.backend.problems() == []
    finally:
        store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_stale_saves_one_wins_the_other_gets_a_concurrency_error(
    backend: str, tmp_path: Path
) -> None:
    location = _location(backend, tmp_path)
    sid = str(uuid.uuid4())
    store = _store(backend, location)
    session = store.new_session("race", session_id=sid)
    session.add_message(Message.user("base"))
    revision = store.save(session)
    store.close()

    racers = [Child.writer("race", backend, str(location), sid, f"r{i}") for i in range(2)]
    _release(racers, ready="loaded")
    _finish_cleanly(racers)
    outcomes = sorted(child.lines[-1] for child in racers)
    assert outcomes == ["conflict", "won"]
    winner = next(i for i, child in enumerate(racers) if child.lines[-1] == "won")

    store = _store(backend, location)
    try:
        assert _texts(store, sid) == ["base", f"r{winner}"]  # never overwritten by the loser
        record = store.backend.load(sid, tail=0)
        assert record is not None and record.revision == revision + 1
        assert [m.text() for m in store.history(sid)] == ["base", f"r{winner}"]
    finally:
        store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reload_and_retry_loop_converges_with_every_message(backend: str, tmp_path: Path) -> None:
    location = _location(backend, tmp_path)
    sid = str(uuid.uuid4())
    store = _store(backend, location)
    store.save(store.new_session("retry", session_id=sid))
    store.close()

    children = [
        Child.writer("retry", backend, str(location), sid, f"t{i}", str(RETRIES_EACH))
        for i in range(RETRIERS)
    ]
    _release(children)
    _finish_cleanly(children)
    assert all(child.lines[-1].startswith("done ") for child in children)

    store = _store(backend, location)
    try:
        texts = _texts(store, sid)
        assert len(texts) == RETRIERS * RETRIES_EACH
        assert len(set(texts)) == len(texts)
        for i in range(RETRIERS):
            _assert_each_writer_in_order(texts, f"t{i}", RETRIES_EACH)
        record = store.backend.load(sid, tail=0)
        assert record is not None
        # one revision per successful save; a conflict never wrote anything
        assert record.revision == 1 + RETRIERS * RETRIES_EACH
    finally:
        store.close()


def test_a_busy_database_is_retried_inside_the_store_not_reported(tmp_path: Path) -> None:
    """``busy_timeout_ms=0``: every lock conflict surfaces at once as SQLITE_BUSY, which the
    backend must absorb with its own retries; no writer may see it."""
    location = tmp_path / "astrid.db"
    sid = str(uuid.uuid4())
    store = _store("sqlite", location)
    store.save(store.new_session("busy", session_id=sid))
    store.close()
    children = [
        Child.writer(
            "append",
            "sqlite",
            str(location),
            sid,
            f"b{i}",
            str(BUSY_APPENDS),
            "--busy-timeout-ms",
            "0",
        )
        for i in range(BUSY_WRITERS)
    ]
    _release(children)
    _finish_cleanly(children)
    store = _store("sqlite", location)
    try:
        texts = _texts(store, sid)
        assert len(texts) == BUSY_WRITERS * BUSY_APPENDS == len(set(texts))
        for i in range(BUSY_WRITERS):
            _assert_each_writer_in_order(texts, f"b{i}", BUSY_APPENDS)
    finally:
        store.close()
