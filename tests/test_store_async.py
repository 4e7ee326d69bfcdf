"""The async store API on real SQLite files and the file backend: off the loop, one write at a
time per session, and cancellation that never half-records a save (issue 15)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from astrid import Message
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import ConcurrencyError, InvalidKey, SerializationError, StorageError
from astrid.store import SessionStore


@pytest.fixture(params=["sqlite", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    backend = (
        SqliteBackend(tmp_path / "astrid.db")
        if request.param == "sqlite"
        else FileBackend(tmp_path / "sessions")
    )
    with SessionStore(backend) as opened:
        yield opened


class _WriteLock:
    """Another connection holding the SQLite file's write lock until ``release``."""

    def __init__(self, path: Path) -> None:
        self._held = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._hold, args=(path,))

    def _hold(self, path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._held.set()
            self._release.wait(30)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def __enter__(self) -> _WriteLock:
        self._thread.start()
        assert self._held.wait(10)
        return self

    def release(self) -> None:
        self._release.set()

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._thread.join(10)


async def _ticks_while(task: asyncio.Task[object], ticks: int) -> int:
    """Let the loop tick until ``task`` has been pending for ``ticks`` ticks; return the count."""
    seen = 0
    while seen < ticks and not task.done():
        await asyncio.sleep(0.005)
        seen += 1
    return seen


def test_asave_and_aload_round_trip(store: SessionStore) -> None:
    async def main() -> None:
        session = store.new_session("prompt")
        session.add_message(Message.user("hello"))
        first = await store.asave(session)
        session.add_message(Message.assistant("hi"))
        second = await store.asave(session)
        assert second > first
        loaded = await store.aload(session.id)
        assert loaded is not None
        assert [m.text() for m in loaded.messages] == ["hello", "hi"]
        assert store.revision_of(loaded) == second
        assert await store.aload(store.new_session().id) is None
        tail = await store.aload(session.id, tail=1)
        assert tail is not None and [m.text() for m in tail.messages] == ["hi"]

    asyncio.run(main())


def test_the_loop_keeps_running_while_a_save_waits_for_the_sqlite_write_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "astrid.db"
    store = SessionStore(SqliteBackend(path, busy_timeout_ms=20_000))
    session = store.new_session("p")
    session.add_message(Message.user("before"))
    store.save(session)
    session.add_message(Message.user("while locked"))

    async def main() -> int:
        with _WriteLock(path) as lock:
            save = asyncio.create_task(store.asave(session))
            # The lock is released only by the loop: a save blocking the loop would hang here
            # until its busy timeout and fail.
            ticked = await _ticks_while(save, 20)
            assert not save.done()
            lock.release()
            revision = await save
        assert ticked == 20
        return revision

    revision = asyncio.run(main())
    loaded = store.load(session.id)
    assert loaded is not None and store.revision_of(loaded) == revision
    assert [m.text() for m in loaded.messages] == ["before", "while locked"]
    store.close()


def test_concurrent_asaves_of_one_session_run_one_after_another(store: SessionStore) -> None:
    async def main() -> list[int]:
        session = store.new_session("p")
        session.add_message(Message.user("one"))
        first = asyncio.create_task(store.asave(session))
        second = asyncio.create_task(store.asave(session))
        session.add_message(Message.user("two"))  # before either write is computed
        third = asyncio.create_task(store.asave_state(session))
        revisions = list(await asyncio.gather(first, second, third))
        session.add_message(Message.user("three"))
        revisions.append(await store.asave(session))
        loaded = await store.aload(session.id)
        assert loaded is not None
        assert [m.text() for m in loaded.messages] == ["one", "two", "three"]
        assert [m.text() for m in await store.ahistory(session.id)] == ["one", "two", "three"]
        return revisions

    revisions = asyncio.run(main())
    assert revisions == sorted(set(revisions))


def test_a_save_cancelled_while_its_write_waits_is_recorded_when_the_write_ends(
    tmp_path: Path,
) -> None:
    path = tmp_path / "astrid.db"
    store = SessionStore(SqliteBackend(path, busy_timeout_ms=20_000))
    session = store.new_session("p")
    session.add_message(Message.user("first"))
    store.save(session)
    session.add_message(Message.user("second"))

    async def main() -> None:
        with _WriteLock(path) as lock:
            save = asyncio.create_task(store.asave(session))
            await _ticks_while(save, 5)
            save.cancel()
            await _ticks_while(save, 5)
            assert not save.done()  # the cancellation waits for the running write
            lock.release()
            with pytest.raises(asyncio.CancelledError):
                await save
        assert save.cancelled()

    asyncio.run(main())
    stored = store.load(session.id)
    assert stored is not None and [m.text() for m in stored.messages] == ["first", "second"]
    assert store.revision_of(session) == store.revision_of(stored)
    session.add_message(Message.user("third"))
    store.save(session)  # no conflict, no duplicate: the cancelled write was recorded
    again = store.load(session.id)
    assert again is not None
    assert [m.text() for m in again.messages] == ["first", "second", "third"]
    store.close()


def test_a_message_edited_while_its_save_runs_is_saved_by_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "astrid.db"
    store = SessionStore(SqliteBackend(path, busy_timeout_ms=20_000))
    session = store.new_session("p")
    session.add_message(Message.user("a"))
    session.add_message(Message.user("b"))
    store.save(session)
    session.add_message(Message.user("c"))

    async def main() -> None:
        with _WriteLock(path) as lock:
            save = asyncio.create_task(store.asave(session))
            await _ticks_while(save, 3)
            session.messages[0] = Message.user("A")  # the write in flight has "a"
            lock.release()
            await save
        await store.asave(session)

    asyncio.run(main())
    stored = store.load(session.id)
    assert stored is not None and [m.text() for m in stored.messages] == ["A", "b", "c"]
    store.close()


def test_async_kv_checks_names_and_json_like_the_sync_view(store: SessionStore) -> None:
    async def main() -> None:
        kv = store.akv("ns")
        await kv.aset_json("k", {"a": [1, "x"]})
        assert await kv.aget_json("k") == {"a": [1, "x"]}
        assert store.kv("ns").get_json("k") == {"a": [1, "x"]}
        await kv.aset("raw", b"\xff not json")
        with pytest.raises(SerializationError, match="'raw' in namespace 'ns'"):
            await kv.aget_json("raw")
        with pytest.raises(InvalidKey):
            await kv.aget("")
        with pytest.raises(SerializationError, match="'bad'"):
            await kv.aset_json("bad", float("nan"))
        assert await kv.alist_keys() == ["k", "raw"]
        assert await kv.aexists("k") and await kv.adelete("k")
        assert not await kv.aexists("k")
        assert await kv.aclear() == 1 and await kv.alist_keys() == []

    asyncio.run(main())


# -- the change set the session owns (issue 15 item 1) -------------------------------------


def test_the_change_set_records_what_the_store_holds(tmp_path: Path) -> None:
    with SessionStore(SqliteBackend(tmp_path / "astrid.db")) as store:
        session = store.new_session("p")
        for text in ("a", "b", "c"):
            session.add_message(Message.user(text))
        revision = store.save(session)
        changes = session.changes
        assert (changes.revision, changes.count, changes.offset) == (revision, 3, 0)
        assert changes.rewritten_from is None
        tail = store.load(session.id, tail=1)
        assert tail is not None
        assert (tail.changes.revision, tail.changes.count, tail.changes.offset) == (revision, 3, 2)
        session.messages[1] = Message.user("B")
        assert changes.rewritten_from == 1
        store.save(session)
        assert changes.rewritten_from is None and changes.revision > revision
        loaded = store.load(session.id)
        assert loaded is not None and [m.text() for m in loaded.messages] == ["a", "B", "c"]


def test_a_failed_save_keeps_its_message_changes_pending(tmp_path: Path) -> None:
    with SessionStore(SqliteBackend(tmp_path / "astrid.db")) as store:
        session = store.new_session("p")
        session.add_message(Message.user("a"))
        session.add_message(Message.user("b"))
        store.save(session)
        session.messages[0] = Message.user("A")
        session.add_message(Message.user("bad \ud800 surrogate"))
        with pytest.raises(SerializationError):
            store.save(session)
        assert session.changes.rewritten_from == 0  # the rewrite is still to be saved
        session.messages.pop()
        store.save(session)
        loaded = store.load(session.id)
        assert loaded is not None and [m.text() for m in loaded.messages] == ["A", "b"]


def test_a_session_belongs_to_the_store_that_saved_it_last(tmp_path: Path) -> None:
    with (
        SessionStore(SqliteBackend(tmp_path / "a.db")) as first,
        SessionStore(FileBackend(tmp_path / "b")) as second,
    ):
        session = first.new_session("p")
        session.add_message(Message.user("one"))
        first.save(session)
        session.add_message(Message.user("two"))
        second.save(session)  # a create there, with every message
        copied = second.load(session.id)
        assert copied is not None and [m.text() for m in copied.messages] == ["one", "two"]
        assert first.revision_of(session) is None
        assert second.revision_of(session) == second.revision_of(copied)
        with pytest.raises(ConcurrencyError, match=session.id.bare):
            first.save(session)  # a create in the first store, which holds it already
        again = first.load(session.id)
        assert again is not None and [m.text() for m in again.messages] == ["one"]
        again.add_message(Message.user("two"))
        first.save(again)

        tail = first.load(session.id, tail=1)
        assert tail is not None
        with pytest.raises(StorageError, match="only the last 1 of its 2 messages"):
            second.save(tail)
        with pytest.raises(StorageError, match="load it whole"):
            second.save_state(tail)
