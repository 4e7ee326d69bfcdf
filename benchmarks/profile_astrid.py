"""Where astrid's time goes in the operations that miss a target (docs/performance.md).

Usage: ``python benchmarks/profile_astrid.py [append|security|parts|load|gitmove|all]
[--pyinstrument]``

* ``append``: one append+save on the sqlite backend split into its parts (medians of many calls):
  the facade over a backend that does nothing, the backend's ``write`` alone, and the bare SQLite
  statements the backend runs (the floor for this schema and these durability settings).
* ``security``: the same save with the security state of each variant, with and without the git
  capture, and the size of the state written per save.
* ``parts``: what the ``bounded`` variant adds over the control, piece by piece: loops of
  3 000 appends on sqlite, run round after round, each as a ratio to the control loop of its
  round: the control with a workspace set, ``bounded`` without the git capture, ``bounded``
  without the ``sessions_by_workspace`` index, and ``bounded`` as benchmarked.
* ``load``: a whole load of 10 000 split into SQL + JSON decoding and building the session.
* ``gitmove``: why the security rows are compared with the control row. A bare SQLite INSERT
  (no astrid code) timed right after nothing, after the benchmark's untimed git move (a 41-byte
  ref file rewritten), after git's own way (lock file + rename) and after a 0.5 ms sleep. The
  file write blocks the process in ``close()`` (ext4 starts writing back a truncated or renamed
  file), and whatever runs next after such a pause is slower.

Add ``--pyinstrument`` (installed in the peers venv) or ``--cprofile`` for a call profile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ensure_paths, time_us

ensure_paths()

from ours import (
    SecurityEnv,
    Turn,
    make_backend,
    new_session,
    new_store,
    stored_session,
    workdir,
)
from workload import astrid_message


def med(samples: list[float]) -> float:
    return statistics.median(samples)


def profiled(fn: Any, mode: str | None) -> None:
    if mode == "pyinstrument":
        from pyinstrument import Profiler

        p = Profiler(interval=0.0001)
        p.start()
        fn()
        p.stop()
        print(p.output_text(unicode=False, color=False, show_all=False))
    elif mode == "cprofile":
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        fn()
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)


class _Null:
    name = "null"

    def __init__(self) -> None:
        self.revision = 0

    def write(self, change: Any) -> int:
        self.revision += 1
        return self.revision

    def load(self, session_id: str, *, tail: int | None = None) -> None:
        return None


def append(mode: str | None, steps: int = 3000, size: int = 1000) -> None:
    from astrid.store import SessionStore, SessionWrite, StorageBackend

    with workdir() as where:
        # 1. whole append+save
        b = make_backend("sqlite", where)
        store = SessionStore(b)
        s = store.new_session("You are a benchmark.")
        turn = Turn(store, s, None, None)
        turn.bulk(size)
        i = [size]

        msgs = [astrid_message(k) for k in range(size, size + steps + 100)]

        def step() -> None:
            turn.step(i[0], msgs[i[0] - size])
            i[0] += 1

        whole = med(time_us(step, steps, warmup=20))
        # 2. facade over a null backend
        nstore = SessionStore(cast(StorageBackend, _Null()))
        ns = nstore.new_session("You are a benchmark.")
        nturn = Turn(nstore, ns, None, None)
        nturn.bulk(size)
        j = [size]

        def nstep() -> None:
            nturn.step(j[0], msgs[j[0] - size])
            j[0] += 1

        facade = med(time_us(nstep, steps, warmup=20))
        # 3. backend.write alone (state and summary prebuilt)
        state = store._state_of(s)
        summary = store._summary_of(s, state, len(s.messages))
        body = astrid_message(1).to_json()
        mark = [store.revision_of(s) or 0, len(s.messages)]
        sid = s.id.bare

        def write() -> None:
            mark[0] = b.write(SessionWrite(sid, mark[0], state, [body], mark[1], False, summary))
            mark[1] += 1

        backend_write = med(time_us(write, steps, warmup=20))
        # 4. the bare statements, same connection, same text
        conn = b._conn
        state_text = json.dumps(state, separators=(",", ":"))
        body_text = json.dumps(body, separators=(",", ":"))
        seq = [10**7]

        def bare() -> None:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "UPDATE sessions SET revision = revision + 1, state = ?, updated_at = ?, "
                "message_count = message_count + 1, next_seq = next_seq + 1 WHERE id = ? "
                "RETURNING revision, next_seq",
                (state_text, "2026-01-01T00:00:00.000000Z", sid),
            ).fetchone()
            conn.execute(
                "INSERT INTO messages (session_id, seq, active, body) VALUES (?, ?, 1, ?)",
                (sid, seq[0], body_text),
            )
            seq[0] += 1
            conn.execute("COMMIT")
            del row

        bare_sql = med(time_us(bare, steps, warmup=20))

        def bare_insert_only() -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO messages (session_id, seq, active, body) VALUES (?, ?, 1, ?)",
                (sid, seq[0], body_text),
            )
            seq[0] += 1
            conn.execute("COMMIT")

        insert_only = med(time_us(bare_insert_only, steps, warmup=20))
        conn.execute("PRAGMA synchronous = FULL")
        bare_full = med(time_us(bare, min(steps, 1000), warmup=20))
        conn.execute("PRAGMA synchronous = NORMAL")
        encode = med(time_us(lambda: b._encode(body, sid, "m"), steps))
        state_encode = med(time_us(lambda: b._encode(state, sid, "s"), steps))
        print(f"append+save on sqlite at ~{size} messages (medians over {steps} calls, us):")
        print(f"  whole add_message + SessionStore.save     {whole:8.1f}")
        print(f"  facade only (null backend)                {facade:8.1f}")
        print(f"  SqliteBackend.write only                  {backend_write:8.1f}")
        print(f"    encode the message body (8 KB/256 B mix) {encode:7.1f}")
        print(f"    encode the state ({len(state_text)} B)            {state_encode:7.1f}")
        print(f"  bare SQL: BEGIN IMMEDIATE, UPDATE..RETURNING, INSERT, COMMIT {bare_sql:6.1f}")
        print(f"  bare SQL: BEGIN IMMEDIATE, INSERT, COMMIT                   {insert_only:6.1f}")
        print(f"  bare SQL as above with synchronous=FULL (fsync per commit)  {bare_full:6.1f}")
        store.close()
        if mode:
            s2 = SessionStore(make_backend("sqlite", where / "p"))
            sess = s2.new_session("x")
            t2 = Turn(s2, sess, None, None)
            t2.bulk(size)
            profiled(lambda: [t2.step(size + k) for k in range(steps)], mode)


def security(mode: str | None, steps: int = 300) -> None:
    from astrid.gitstate import capture_fs

    with workdir() as where:
        env = SecurityEnv(where)
        print(
            f"capture_fs of the bench repo: {med(time_us(lambda: capture_fs(env.repo), 3000)):.1f} us"
        )
        for variant in ("bounded", "single_use", "growing"):
            for size in (1_000, 10_000):
                for git in (True, False):
                    d = where / f"{variant}{size}{git}"
                    d.mkdir()
                    b = make_backend("sqlite", d)
                    store = new_store(b, variant, env)
                    if not git:
                        store.git_capture = None
                    sess = new_session(store, env)
                    turn = Turn(store, sess, variant, env)
                    turn.bulk(size)
                    n = steps if variant == "bounded" else min(steps, 30)
                    samples = []
                    for k in range(n):
                        turn.untimed(size + k)
                        msg = astrid_message(size + k)
                        t0 = time.perf_counter_ns()
                        turn.step(size + k, msg)
                        samples.append((time.perf_counter_ns() - t0) / 1000)
                    st = time_us(lambda: store._state_of(sess), n if variant == "bounded" else 10)
                    state_bytes = len(json.dumps(store._state_of(sess)))
                    print(
                        f"  {variant:<10} N={size:<6} git={'fs ' if git else 'off'} "
                        f"append+save {med(samples):9.1f} us; state_data {med(st):9.1f} us; "
                        f"state {state_bytes:,} B; allowance entries "
                        f"{sess.allowance_store.count():,}"
                    )
                    if variant == "growing" and git:
                        # A whole load: allowances validated, every escape path re-checked.
                        loads = time_us(lambda: store.load(sess.id), 3)
                        print(f"  {'':<10} N={size:<6} load of that session {med(loads) / 1000:.0f} ms")
                    if mode and git and size == 10_000 and variant != "bounded":
                        profiled(
                            lambda: [
                                (turn.untimed(size + 1000 + k), turn.step(size + 1000 + k))
                                for k in range(5)
                            ],
                            mode,
                        )
                    if mode and git and size == 1_000 and variant == "bounded":
                        profiled(
                            lambda: [
                                (turn.untimed(size + 1000 + k), turn.step(size + 1000 + k))
                                for k in range(300)
                            ],
                            mode,
                        )
                    store.close()


def parts(rounds: int = 4, n: int = 3000) -> None:
    from ours import CONTROL, Plan, run_loop

    def with_workspace(b: Any, store: Any, session: Any, env: Any) -> None:
        session.with_workspace(env.repo)

    def no_git(b: Any, store: Any, session: Any, env: Any) -> None:
        store.git_capture = None

    def no_index(b: Any, store: Any, session: Any, env: Any) -> None:
        b._conn.execute("DROP INDEX sessions_by_workspace")

    kinds: list[tuple[str, str, Any]] = [
        ("control (plain + the untimed git move)", CONTROL, None),
        ("control with a workspace set (no git capture)", CONTROL, with_workspace),
        ("bounded without the git capture", "bounded", no_git),
        ("bounded without the workspace index", "bounded", no_index),
        ("bounded (as benchmarked)", "bounded", None),
    ]
    plan = Plan.full()
    means: dict[str, list[float]] = {name: [] for name, _, _ in kinds}
    for _ in range(rounds):
        for name, security, tweak in kinds:
            means[name].append(run_loop("sqlite", plan, security, n, tweak=tweak).mean_us)
    control = means[kinds[0][0]]
    print(f"bounded vs the control on sqlite, loops of {n}, medians of {rounds} rounds:")
    for name, _, _ in kinds:
        ratios = [m / c for m, c in zip(means[name], control, strict=True)]
        print(f"  {name:<48} {med(means[name]):7.1f} us/msg  {med(ratios):.2f}x the control")


def gitmove(runs: int = 3, n: int = 3000) -> None:
    import os
    import resource
    import sqlite3

    def before(kind: str, ref: Path, i: int) -> None:
        if kind == "ref file rewritten (the benchmark's git move)":
            ref.write_text(f"{i:040x}\n")
        elif kind == "lock file + rename (git update-ref)":
            lock = ref.with_suffix(".lock")
            lock.write_text(f"{i:040x}\n")
            os.replace(lock, ref)
        elif kind == "0.5 ms sleep":
            time.sleep(0.0005)

    kinds = (
        "nothing",
        "ref file rewritten (the benchmark's git move)",
        "lock file + rename (git update-ref)",
        "0.5 ms sleep",
    )
    found: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    payload = os.urandom(3000)
    for _ in range(runs):
        for kind in kinds:  # interleaved, so every kind sees the same machine load
            with workdir() as where:
                ref = where / "main"
                ref.write_text("0" * 40 + "\n")
                conn = sqlite3.connect(where / "bare.db", isolation_level=None)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
                samples, waits_before, waits_during = [], 0, 0
                for i in range(n):
                    v0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
                    before(kind, ref, i)
                    v1 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
                    t0 = time.perf_counter_ns()
                    conn.execute("INSERT INTO t (b) VALUES (?)", (payload,))
                    samples.append((time.perf_counter_ns() - t0) / 1000)
                    v2 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
                    waits_before += v1 - v0
                    waits_during += v2 - v1
                conn.close()
                found[kind].append((med(samples), waits_before / n, waits_during / n))
    print(
        f"a bare SQLite INSERT of 3 KB (WAL, synchronous=NORMAL), {n} per run, medians of "
        f"{runs} interleaved runs:"
    )
    print(f"  {'untimed, before each INSERT':<48} {'INSERT us':>9}  {'waits before / during'}")
    for kind in kinds:
        rows = found[kind]
        print(
            f"  {kind:<48} {med([r[0] for r in rows]):9.1f}  "
            f"{med([r[1] for r in rows]):.2f} / {med([r[2] for r in rows]):.2f}"
        )
    print(
        "  (waits: voluntary context switches per INSERT, in the untimed step and in the "
        "INSERT itself)"
    )


def load(mode: str | None, size: int = 10_000) -> None:
    from astrid.document import SessionDocument
    from astrid.messages import Message
    from astrid.session import AgentSession
    from astrid.store import SessionStore

    with workdir() as where:
        b = make_backend("sqlite", where)
        store = SessionStore(b)
        sid = stored_session(store, size)
        whole = med(time_us(lambda: store.load(sid), 7, warmup=1))
        rec = med(time_us(lambda: b.load(sid.bare), 7, warmup=1))
        record = b.load(sid.bare)
        assert record is not None
        conn = b._conn
        query = (
            "SELECT role, text, body FROM messages WHERE session_id = ? AND active = 1 "
            "ORDER BY seq"
        )
        sql = med(time_us(lambda: conn.execute(query, (sid.bare,)).fetchall(), 7, warmup=1))
        rows = conn.execute(query, (sid.bare,)).fetchall()
        decode = med(time_us(lambda: b._messages_of(rows, sid.bare), 7, warmup=1))
        data = dict(record.state)
        data["messages"] = record.messages
        doc_t = med(time_us(lambda: SessionDocument.from_data(data, source="x"), 7, warmup=1))
        msgs = med(time_us(lambda: [Message.from_json(m) for m in record.messages], 7, warmup=1))
        doc = SessionDocument.from_data(data, source="x")
        sess_t = med(time_us(lambda: AgentSession.from_document(doc), 7, warmup=1))
        print(f"whole load of {size} on sqlite (medians, ms):")
        print(f"  SessionStore.load                         {whole / 1000:8.1f}")
        print(f"  SqliteBackend.load (SQL + decoding)       {rec / 1000:8.1f}")
        print(f"    SQL fetch only                          {sql / 1000:8.1f}")
        print(f"    rows to JSON values (json.loads non-text){decode / 1000:8.1f}")
        print(f"  SessionDocument.from_data (validation)    {doc_t / 1000:8.1f}")
        print(f"    (Message.from_json x N, for reference   {msgs / 1000:8.1f})")
        print(f"  AgentSession.from_document                {sess_t / 1000:8.1f}")
        if mode:
            profiled(lambda: [store.load(sid) for _ in range(3)], mode)
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["append", "security", "parts", "load", "gitmove", "all"],
    )
    parser.add_argument("--pyinstrument", action="store_true")
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args()
    mode = "pyinstrument" if args.pyinstrument else "cprofile" if args.cprofile else None
    if args.what in ("append", "all"):
        append(mode)
    if args.what in ("security", "all"):
        security(mode)
    if args.what in ("parts", "all"):
        parts()
    if args.what in ("load", "all"):
        load(mode)
    if args.what in ("gitmove", "all"):
        gitmove()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
