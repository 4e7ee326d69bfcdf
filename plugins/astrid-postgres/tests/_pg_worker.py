"""A separate process for the multi-process tests: waits for ``go`` on stdin, then works.

Usage: ``python _pg_worker.py MODE DSN SCHEMA [SESSION_ID WRITER COUNT]`` (``use``: ``TOKEN_ID``;
``spend``: ``WORKSPACE COUNT``)

* ``append``: append COUNT messages ``WRITER:i`` with ``SessionStore.append_messages``.
* ``save``: COUNT times load the tail, add ``WRITER:i`` and save, retrying on ConcurrencyError.
* ``open``: open the backend (applying migrations) and report the schema version.
* ``use``: use the single-use capability token TOKEN_ID from the schema's
  capability store and report whether this process got it (``TokenAlreadyUsed``: not).
* ``spend``: attach a new session to WORKSPACE, then COUNT times charge its workspace budget
  0.25 and ``save_workspace_of``; report the tracker's spend after its last save.
* ``audit``: ``WORKSPACE COUNT KEY_HEX``: COUNT times record an audit decision on a new session
  of WORKSPACE (signed by the key) and save it; report the session id.

Prints ``ready`` once connected, then one JSON line with what it did.
"""

from __future__ import annotations

import json
import random
import sys
import time
from uuid import UUID

from astrid.errors import ConcurrencyError, TokenAlreadyUsed
from astrid.messages import Message
from astrid.security.capabilities import CapabilityStore
from astrid.store import SessionStore

from astrid_postgres.backend import PostgresBackend
from astrid_postgres.capabilities import PostgresCapabilityBackend


def main(argv: list[str]) -> None:
    """Run one worker."""
    mode, dsn, schema = argv[:3]
    if mode == "open":
        print("ready", flush=True)
        sys.stdin.readline()
        backend = PostgresBackend(dsn, schema=schema, min_size=0, max_size=1)
        print(json.dumps({"version": backend.schema_version()}), flush=True)
        backend.close()
        return
    if mode == "use":
        store = CapabilityStore(PostgresCapabilityBackend(dsn, schema=schema, max_size=1))
        store.is_used(UUID(argv[3]))  # connect and read the used ids before the race
        print("ready", flush=True)
        sys.stdin.readline()
        try:
            store.use_token(UUID(argv[3]))
        except TokenAlreadyUsed:
            print(json.dumps({"used": False}), flush=True)
        else:
            print(json.dumps({"used": True}), flush=True)
        return
    if mode == "audit":
        from astrid.security.audit import record
        from astrid.security.crypto import KeyPair

        workspace, saves = argv[3], int(argv[4])
        key = KeyPair.from_private_bytes(bytes.fromhex(argv[5]))
        store = SessionStore(PostgresBackend(dsn, schema=schema, min_size=1, max_size=1))
        auditee = store.new_session("audit").with_workspace(workspace)
        store.save(auditee)
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(saves):
            record(auditee, key, actor="runtime", action_type="file_read", action=f"read {i}",
                   decision="allowed")
            store.save(auditee)
        print(json.dumps({"session": auditee.id.bare}), flush=True)
        store.close()
        return
    if mode == "spend":
        workspace, saves = argv[3], int(argv[4])
        store = SessionStore(PostgresBackend(dsn, schema=schema, min_size=1, max_size=1))
        spender = store.new_session("spend")
        tracker = store.attach_workspace(spender, workspace)
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(saves):
            tracker.record_cost(0.25)
            store.save_workspace_of(spender)
        print(json.dumps({"spent": tracker.spent()}), flush=True)
        store.close()
        return
    session_id, writer, count = argv[3], argv[4], int(argv[5])
    store = SessionStore(PostgresBackend(dsn, schema=schema, min_size=1, max_size=1))
    print("ready", flush=True)
    sys.stdin.readline()
    retries = 0
    for i in range(count):
        message = Message.user(f"{writer}:{i}")
        if mode == "append":
            store.append_messages(session_id, [message])
            time.sleep(random.random() / 1000)
            continue
        while True:
            session = store.load(session_id, tail=1)
            assert session is not None
            session.add_message(message)
            try:
                store.save(session)
                break
            except ConcurrencyError:
                retries += 1
                time.sleep(random.random() / 500)
    print(json.dumps({"retries": retries}), flush=True)
    store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
