"""A writer process for the crash and concurrency tests (run as a script, never collected).

Usage (``BACKEND``: ``sqlite`` or ``file``; ``LOCATION``: the database file or sessions directory)::

    writer.py crash  BACKEND LOCATION SID [--summarize-every K] [--count N]
    writer.py append BACKEND LOCATION SID TAG COUNT
    writer.py own    BACKEND LOCATION SID TAG COUNT
    writer.py race   BACKEND LOCATION SID TAG
    writer.py retry  BACKEND LOCATION SID TAG COUNT
    writer.py wscrash BACKEND LOCATION WORKSPACE [--count N]
    writer.py spend  BACKEND LOCATION WORKSPACE TAG COUNT

(SQLite only: ``--busy-timeout-ms`` sets the backend's ``busy_timeout_ms``.)

``crash`` loads the session (creating it if absent), then appends ``body_of(n)`` and saves in a
loop, printing ``saved <n>`` (flushed) only after ``save`` returned; with ``--allowances`` each
save also adds the session allowance ``crash/t<n>`` (from 64 on, SQLite keeps them as keyed rows
and saves send deltas: the state must stay in step with the messages); with ``--summarize-every`` it
also summarizes through ``ContextManager.summarize(session, store=store)`` every K messages,
between the lines ``summarizing`` and ``summarized``.
The other modes print ``ready`` (``race``: ``loaded``) and wait for a line on stdin before
writing, so that the parent can start them together:

* ``append``: ``SessionStore.append_messages`` of ``TAG-0`` .. ``TAG-<COUNT-1>``, one per call;
* ``own``: load/add/save of its own session ``SID``, one message per save;
* ``race``: one load -> add -> save; prints ``won`` or ``conflict`` (``ConcurrencyError``);
* ``retry``: for each message, reload -> add -> save until no ``ConcurrencyError``; prints
  ``done <conflicts>``.
* ``spend``: attach a new session to the workspace ``WORKSPACE`` (the ``SID`` argument), then
  ``COUNT`` times charge its workspace tracker 0.25 and ``save_workspace_of``; prints
  ``done <the tracker's spend>``.

``wscrash`` (like ``crash``, no stdin) attaches a session to ``WORKSPACE`` and loops: add the
workspace allowance ``ws/t<n>``, charge the workspace budget 1.0, ``save_workspace_of``, print
``saved <n>``; so a stored state holds allowances ``t0 .. tk`` and a spend of ``k + 1``.

Any other exception escapes: the parent treats a non-zero exit or any stderr output as an error
that reached the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import sys

from astrid.context import ContextManager
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import ConcurrencyError
from astrid.messages import Message
from astrid.security.allowances import Allowance, ExactTool
from astrid.security.budget import WorkspaceBudgetTracker
from astrid.session import AgentSession
from astrid.store import SessionStore, StorageBackend

_BODY = re.compile(r"m(\d+):")


def body_of(n: int) -> str:
    """The deterministic text of message ``n`` (0.3-4 KB; a torn copy never equals it)."""
    filler = f"{n:08d}" * (32 + (n * 7919) % 480)
    digest = hashlib.sha256(filler.encode()).hexdigest()[:16]
    return f"m{n}:{filler}:{digest}"


def number_of(text: str | None) -> int | None:
    """``n`` for a text that starts like ``body_of(n)``, else None (the text may still be torn)."""
    if text is None:
        return None
    match = _BODY.match(text)
    return int(match.group(1)) if match else None


def open_backend(kind: str, location: str, busy_timeout_ms: int = 5000) -> StorageBackend:
    """The backend under test: a SQLite file or a file-backend sessions directory."""
    if kind == "sqlite":
        return SqliteBackend(location, busy_timeout_ms=busy_timeout_ms)
    if kind == "file":
        return FileBackend(location)
    raise SystemExit(f"unknown backend {kind!r}")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _last_number(session: AgentSession) -> int:
    for message in reversed(session.messages):
        n = number_of(message.text())
        if n is not None:
            return n
    return -1


def crash(
    store: SessionStore, sid: str, summarize_every: int, count: int | None, allowances: bool
) -> None:
    session = store.load(sid)
    if session is None:
        session = store.new_session("crash test", session_id=sid)
    n = _last_number(session) + 1
    manager = ContextManager(keep_recent=3)
    _say("ready")
    written = 0
    while count is None or written < count:
        session.add_message(Message.user(body_of(n)))
        if allowances:
            session.add_session_allowance(
                Allowance.create(ExactTool(server="crash", tool=f"t{n}"), session_only=True)
            )
        store.save(session)
        _say(f"saved {n}")
        n += 1
        written += 1
        if summarize_every and n % summarize_every == 0:
            _say("summarizing")
            asyncio.run(manager.summarize(session, store=store))
            _say("summarized")


def append(store: SessionStore, sid: str, tag: str, count: int) -> None:
    _say("ready")
    sys.stdin.readline()
    for j in range(count):
        store.append_messages(sid, [Message.user(f"{tag}-{j}")])
    _say("done")


def own(store: SessionStore, sid: str, tag: str, count: int) -> None:
    _say("ready")
    sys.stdin.readline()
    session = store.new_session("own", session_id=sid)
    for j in range(count):
        session.add_message(Message.user(f"{tag}-{j}"))
        store.save(session)
        again = store.load(sid)
        assert again is not None and len(again.messages) == j + 1, "own session lost a save"
        session = again
    _say("done")


def race(store: SessionStore, sid: str, tag: str) -> None:
    session = store.load(sid)
    assert session is not None
    _say("loaded")
    sys.stdin.readline()
    session.add_message(Message.user(tag))
    try:
        store.save(session)
    except ConcurrencyError:
        _say("conflict")
    else:
        _say("won")


def retry(store: SessionStore, sid: str, tag: str, count: int) -> None:
    _say("ready")
    sys.stdin.readline()
    conflicts = 0
    for j in range(count):
        while True:
            session = store.load(sid)
            assert session is not None
            session.add_message(Message.user(f"{tag}-{j}"))
            try:
                store.save(session)
            except ConcurrencyError:
                conflicts += 1
                continue
            break
    _say(f"done {conflicts}")


def _workspace_tracker(session: AgentSession) -> WorkspaceBudgetTracker:
    tracker = session.workspace_budget_tracker
    assert tracker is not None
    return tracker


def wscrash(store: SessionStore, workspace: str, count: int | None) -> None:
    session = store.new_session("workspace crash test")
    tracker = store.attach_workspace(session, workspace)
    n = len(session.export_workspace_allowances())
    _say("ready")
    written = 0
    while count is None or written < count:
        session.import_workspace_allowances(
            [
                Allowance.create(
                    ExactTool(server="ws", tool=f"t{n}"),
                    session_only=False,
                    workspace_root=workspace,
                )
            ]
        )
        tracker.record_cost(1.0)
        store.save_workspace_of(session)
        _say(f"saved {n}")
        n += 1
        written += 1


def spend(store: SessionStore, workspace: str, count: int) -> None:
    session = store.new_session("spend")
    store.attach_workspace(session, workspace)
    _say("ready")
    sys.stdin.readline()
    for _ in range(count):
        _workspace_tracker(session).record_cost(0.25)
        store.save_workspace_of(session)
    _say(f"done {_workspace_tracker(session).spent()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="writer.py")
    parser.add_argument(
        "mode", choices=["crash", "append", "own", "race", "retry", "wscrash", "spend"]
    )
    parser.add_argument("backend", choices=["sqlite", "file"])
    parser.add_argument("location")
    parser.add_argument("sid")
    parser.add_argument("tag", nargs="?", default="w")
    parser.add_argument("count", nargs="?", type=int, default=0)
    parser.add_argument("--summarize-every", type=int, default=0)
    parser.add_argument("--count", dest="limit", type=int, default=None)
    parser.add_argument("--busy-timeout-ms", type=int, default=5000)
    parser.add_argument("--allowances", action="store_true")
    args = parser.parse_args(argv)
    store = SessionStore(open_backend(args.backend, args.location, args.busy_timeout_ms))
    try:
        if args.mode == "crash":
            crash(store, args.sid, args.summarize_every, args.limit, args.allowances)
        elif args.mode == "append":
            append(store, args.sid, args.tag, args.count)
        elif args.mode == "own":
            own(store, args.sid, args.tag, args.count)
        elif args.mode == "race":
            race(store, args.sid, args.tag)
        elif args.mode == "wscrash":
            wscrash(store, args.sid, args.limit)
        elif args.mode == "spend":
            spend(store, args.sid, args.count)
        else:
            retry(store, args.sid, args.tag, args.count)
    finally:
        store.close()


if __name__ == "__main__":
    main()
