"""astrid's side of the benchmarks: the nine operations of issue 6 on each built-in backend.

Every operation goes through the public ``SessionStore`` facade (``save``, ``load``,
``load(tail=)``, ``list_sessions``, ``append_messages``) and ``ContextManager.summarize``.
Each measurement runs in a fresh temporary directory.

Two ways to measure "append one message and save" at size N:

* ``loop``: a new session, N times (add one message, save); one sample is the total time
  divided by N (the mean per-message cost over sizes 0..N). Repeated ``runs`` times.
* ``at N``: the session is first grown to N messages in one bulk save (untimed), then K single
  appends are timed one by one; one sample is one append+save at size ~N. Used where a loop is
  infeasible because the backend's save is O(N) (``file`` rewrites its whole document,
  ``memory`` deep-copies its whole entry) and in ``--quick`` mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import Row, dir_bytes, na_row, quantiles, summarize, time_us, value_row
from workload import MARK_RE, astrid_from_spec, astrid_message, marked_spec

BACKENDS = ("memory", "file", "sqlite")


# -- configuration ---------------------------------------------------------------------------


@dataclass
class Plan:
    """How much to run. ``full()`` is the default of ``run.py``; ``quick()`` is ``--quick``."""

    sizes: tuple[int, ...] = (1_000, 10_000)
    loop_runs: dict[int, int] = field(default_factory=lambda: {1_000: 5, 10_000: 3})
    security_loop_runs: dict[int, int] = field(default_factory=lambda: {1_000: 5, 10_000: 3})
    loop_max: dict[str, int] = field(
        default_factory=lambda: {"memory": 1_000, "file": 1_000, "sqlite": 10_000}
    )
    """Largest N measured as a loop, per backend; above it the ``at N`` method is used."""
    security_loop_max: dict[str, int] = field(
        default_factory=lambda: {"memory": 1_000, "file": 1_000, "sqlite": 10_000}
    )
    at_n_samples: int = 20
    create_runs: int = 200
    load_runs: dict[int, int] = field(default_factory=lambda: {1_000: 30, 10_000: 10})
    tail_runs: int = 300
    list_sessions: int = 10_000
    list_sessions_max: dict[str, int] = field(
        default_factory=lambda: {"memory": 10_000, "file": 10_000, "sqlite": 10_000}
    )
    list_runs: int = 50
    compact_n: int = 10_000
    compact_runs: int = 3
    procs: int = 4
    per_proc: int = 1_000
    per_proc_max: dict[str, int] = field(default_factory=lambda: {"file": 100, "sqlite": 1_000})
    concurrency_runs: int = 3
    sqlite_synchronous: str = "NORMAL"
    budget_s: float = 10.0
    """Repeated calls of one measurement stop after this many seconds (at least 5 calls)."""

    @classmethod
    def full(cls) -> Plan:
        return cls()

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            loop_runs={1_000: 3, 10_000: 1},
            security_loop_runs={1_000: 1, 10_000: 1},
            loop_max={"memory": 0, "file": 0, "sqlite": 10_000},
            security_loop_max={"memory": 0, "file": 0, "sqlite": 10_000},
            at_n_samples=10,
            create_runs=100,
            load_runs={1_000: 10, 10_000: 5},
            tail_runs=200,
            list_sessions_max={"memory": 10_000, "file": 2_000, "sqlite": 10_000},
            list_runs=30,
            compact_n=10_000,
            compact_runs=1,
            per_proc_max={"file": 50, "sqlite": 1_000},
            concurrency_runs=1,
            budget_s=3.0,
        )


# -- backends --------------------------------------------------------------------------------


def make_backend(name: str, where: Path, synchronous: str = "NORMAL") -> Any:
    """A fresh backend of ``name`` storing under the directory ``where``."""
    if name == "memory":
        from astrid.default_plugins.memory_storage import MemoryBackend

        return MemoryBackend()
    if name == "file":
        from astrid.default_plugins.file_storage import FileBackend

        return FileBackend(where / "sessions", kv_directory=where / "kv")
    if name == "sqlite":
        from astrid.default_plugins.sqlite_storage import SqliteBackend

        return SqliteBackend(where / "astrid.db", synchronous=synchronous)  # type: ignore[arg-type]
    raise ValueError(f"unknown backend {name!r}")


def system_name(backend: str, synchronous: str = "NORMAL") -> str:
    if backend == "sqlite" and synchronous != "NORMAL":
        return f"astrid/sqlite({synchronous})"
    return f"astrid/{backend}"


def durability(backend: str, synchronous: str = "NORMAL") -> str:
    """What a save of this backend survives, read from the backend itself where possible."""
    if backend == "memory":
        return "memory: nothing persisted"
    if backend == "file":
        return (
            "file: each save writes a temp file, fsync, rename, fsync of the directory "
            "(durable against power loss); the listing index is not fsynced"
        )
    with tempfile.TemporaryDirectory(prefix="astrid-bench-") as tmp:
        b = make_backend("sqlite", Path(tmp), synchronous)
        conn = b._conn
        jm = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        b.close()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return f"sqlite: journal_mode={jm}, synchronous={names.get(sync, sync)} ({sync})"


@contextlib.contextmanager
def workdir(prefix: str = "astrid-bench-") -> Iterator[Path]:
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@functools.cache
def json_bytes(i: int) -> int:
    """Compact UTF-8 JSON size of message ``i`` of the mix."""
    body = astrid_message(i).to_json()
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def messages_json_bytes(session: Any) -> int:
    total = 0
    for m in session.messages:
        total += len(json.dumps(m.to_json(), ensure_ascii=False, separators=(",", ":")).encode())
    return total


# -- security state --------------------------------------------------------------------------

CONTROL = "control"
"""The variant that changes no security state: only the untimed git move of the others."""


def _git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    }
    out = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return out.stdout.strip()


class SecurityEnv:
    """A real git repository (the workspace) with 8 commits and a pool of escape directories.

    Each turn the branch ``main`` is moved to another commit by rewriting its ref file
    (untimed: it stands for git activity outside the agent), so the captured git state changes.
    """

    def __init__(self, root: Path) -> None:
        self.repo = root / "workspace"
        self.repo.mkdir()
        _git(self.repo, "init", "-q")
        self.commits: list[str] = []
        for i in range(8):
            (self.repo / "file.txt").write_text(f"{i}\n")
            _git(self.repo, "add", "file.txt")
            _git(self.repo, "commit", "-q", "-m", f"commit {i}")
            self.commits.append(_git(self.repo, "rev-parse", "HEAD"))
        self.ref = self.repo / ".git" / "refs" / "heads" / "main"
        self.escapes = root / "outside"
        self.escapes.mkdir()
        self._made = 0

    def move_branch(self, i: int) -> None:
        self.ref.write_text(self.commits[i % len(self.commits)] + "\n")

    def escape_dir(self, i: int) -> str:
        """An existing directory outside the workspace (created on first use)."""
        path = self.escapes / f"d{i}"
        if i >= self._made:
            path.mkdir(exist_ok=True)
            self._made = i + 1
        return str(path)


class Turn:
    """One turn's work: security mutations (if any), one message, one save."""

    def __init__(self, store: Any, session: Any, security: str | None, env: SecurityEnv | None):
        self.store = store
        self.session = session
        self.security = security
        self.env = env
        self.mutation_ns = 0
        if security is not None:
            from astrid.security.actions import McpToolCall
            from astrid.security.allowances import Allowance, ExactTool
            from astrid.security.escape import EscapeDecision, EscapeOperation, EscapeRequest

            self._Allowance = Allowance
            self._ExactTool = ExactTool
            self._Decision = EscapeDecision
            self._Op = EscapeOperation
            self._Request = EscapeRequest
            self._Call = McpToolCall

    def untimed(self, i: int, bulk_last: int | None = None) -> None:
        """What happens between saves outside the store: git moves, the runtime's mutations.

        ``control``: only the git move (a 41-byte file written), no security state and no git
        capture: the plain append with the same untimed file-system work as the variants.
        """
        if self.env is not None:
            self.env.move_branch(i)
            if self.security == CONTROL:
                return
            t0 = time.perf_counter_ns()
            self.mutate(i, bulk_last)
            self.mutation_ns += time.perf_counter_ns() - t0

    def mutate(self, i: int, bulk_last: int | None = None) -> None:
        """Change the session's security state as a turn of the runtime would (untimed).

        ``bulk_last`` (pre-growing only): the single-use allowances of earlier turns are added
        already used up instead of being consumed one by one (the same state; consuming scans
        every entry, which made pre-growing quadratic).
        """
        s = self.session
        env = self.env
        assert env is not None
        if self.security == "growing":
            # A new session allowance and a new AllowAlways escape path every turn.
            s.add_session_allowance(
                self._Allowance.create(
                    self._ExactTool(server="fs", tool=f"t{i}"), session_only=True
                )
            )
            s.escape_handler.process_decision(
                self._Request.new(env.escape_dir(i), self._Op.READ, "bench"),
                self._Decision.ALLOW_ALWAYS,
            )
        else:
            if self.security == "single_use":
                # A single-use allowance granted, the previous one used up (the store keeps
                # exhausted entries).
                used_up = bulk_last is not None and i < bulk_last
                s.add_session_allowance(
                    self._Allowance.create(
                        self._ExactTool(server="fs", tool=f"t{i}"),
                        session_only=True,
                        max_uses=1,
                        uses_remaining=0 if used_up else 1,
                    )
                )
                if i > 0 and bulk_last is None:
                    s.allowance_store.find_matching_and_consume(
                        self._Call(server="fs", tool=f"t{i - 1}")
                    )
            else:
                # bounded: the previous session allowance removed, a new one added.
                s.end_session()
                s.add_session_allowance(
                    self._Allowance.create(
                        self._ExactTool(server="fs", tool=f"t{i}"), session_only=True
                    )
                )
            # The remembered escape path replaced by another one.
            s.escape_handler.clear_all()
            s.escape_handler.process_decision(
                self._Request.new(env.escape_dir(i % 32), self._Op.READ, "bench"),
                self._Decision.ALLOW_ALWAYS,
            )
        s.budget_tracker.record_cost(0.0001)

    def step(self, i: int, message: Any = None) -> None:
        """The timed part: one message added, one save (which captures git state).

        Callers build ``message`` before starting the clock (as the peers' items are).
        """
        self.session.add_message(message if message is not None else astrid_message(i))
        self.store.save(self.session)

    def bulk(self, n: int) -> None:
        """Grow to ``n`` messages (and n turns of security changes) with one save."""
        for i in range(n):
            self.untimed(i, bulk_last=n - 1)
            self.session.add_message(astrid_message(i))
        self.store.save(self.session)


def new_store(backend: Any, security: str | None, env: SecurityEnv | None) -> Any:
    from astrid.security.budget import BudgetConfig
    from astrid.store import SessionStore

    if security is None or security == CONTROL:
        return SessionStore(backend)
    from astrid.gitstate import capture_fs

    return SessionStore(
        backend,
        git_capture=capture_fs,
        budget=BudgetConfig(session_max_usd=1e9, per_action_max_usd=1e6),
    )


def stored_session(store: Any, n: int) -> Any:
    """Save a new session of ``n`` workload messages in one save; return its id."""
    session = store.new_session("You are a benchmark.")
    for i in range(n):
        session.add_message(astrid_message(i))
    store.save(session)
    return session.id


def new_session(store: Any, env: SecurityEnv | None, security: str | None = None) -> Any:
    session = store.new_session("You are a benchmark.")
    if env is not None and security != CONTROL:
        session.with_workspace(env.repo)
    return session


# -- 2/3: append + save ---------------------------------------------------------------------


def loop_max_of(backend: str, plan: Plan, security: str | None) -> int:
    """The largest N measured as a loop for this backend and variant (above it: at N)."""
    loop_max = (plan.loop_max if security is None else plan.security_loop_max)[backend]
    if security in ("single_use", "growing") and backend != "sqlite":
        # Their state (or the allowance store) grows, and these backends write it whole: O(N).
        loop_max = min(loop_max, 1_000)
    return loop_max


@dataclass
class Loop:
    """One loop of ``n`` appends from empty (see the module docstring)."""

    mean_us: float
    steps_us: list[float]
    mutation_us: float
    """The untimed runtime mutations per turn (security variants)."""
    disk: tuple[int, int, int] | None
    """(bytes of the store's files, compact JSON bytes of the messages, messages)."""


def run_loop(
    backend: str,
    plan: Plan,
    security: str | None,
    n: int,
    *,
    disk: bool = False,
    tweak: Callable[[Any, Any, Any, SecurityEnv | None], None] | None = None,
) -> Loop:
    """A new session, ``n`` times: the untimed turn work, then one timed add + save.

    ``tweak(backend, store, session, env)`` changes the set-up before the loop (profiling).
    """
    with workdir() as where:
        env = SecurityEnv(where) if security is not None else None
        b = make_backend(backend, where, plan.sqlite_synchronous)
        store = new_store(b, security, env)
        session = new_session(store, env, security)
        if tweak is not None:
            tweak(b, store, session, env)
        turn = Turn(store, session, security, env)
        total = 0
        steps = []
        for i in range(n):
            turn.untimed(i)
            msg = astrid_message(i)
            t0 = time.perf_counter_ns()
            turn.step(i, msg)
            dt = time.perf_counter_ns() - t0
            total += dt
            steps.append(dt / 1000)
        store.close()
        on_disk = None
        if disk and backend != "memory":
            on_disk = (dir_bytes(where), messages_json_bytes(session), len(session.messages))
        return Loop(total / n / 1000, steps, turn.mutation_ns / n / 1000, on_disk)


def loop_row(op: str, system: str, n: int, loops: list[Loop], security: bool) -> Row:
    """The row of repeated loops: one sample per loop (its total / N)."""
    steps = sorted(s for loop in loops for s in loop.steps_us)
    extra = {
        "single_append_p50_us": steps[len(steps) // 2],
        "single_append_p99_us": steps[int(len(steps) * 0.99)],
        "single_append_max_us": steps[-1],
    }
    if security:
        extra["untimed_runtime_mutation_us_per_turn"] = statistics.mean(
            loop.mutation_us for loop in loops
        )
    return summarize(
        op,
        system,
        n,
        "us/msg",
        [loop.mean_us for loop in loops],
        sample=f"loop of {n} appends from empty, total/N",
        note=f"loop; single append p50 {extra['single_append_p50_us']:.0f} p99 "
        f"{extra['single_append_p99_us']:.0f} us",
        extra=extra,
    )


def append_rows(
    backend: str,
    plan: Plan,
    security: str | None = None,
    *,
    disk: bool = False,
    sizes: tuple[int, ...] | None = None,
) -> list[Row]:
    """Append+save per message at each N (plain or with security state changing every turn)."""
    op = "append_save" if security is None else f"append_save_security_{security}"
    system = system_name(backend, plan.sqlite_synchronous)
    rows: list[Row] = []
    loop_max = loop_max_of(backend, plan, security)
    loop_runs = plan.loop_runs if security is None else plan.security_loop_runs
    for n in plan.sizes if sizes is None else sizes:
        if n <= loop_max:
            runs = loop_runs.get(n, 1)
            if backend in ("memory", "file"):
                runs = min(runs, 2)  # O(N) saves: a loop of 1 000 takes 5-30 s
            loops = [run_loop(backend, plan, security, n, disk=disk) for _ in range(runs)]
            last_disk = loops[-1].disk
            rows.append(loop_row(op, system, n, loops, security is not None))
        else:
            with workdir() as where:
                env = SecurityEnv(where) if security is not None else None
                b = make_backend(backend, where, plan.sqlite_synchronous)
                store = new_store(b, security, env)
                session = new_session(store, env, security)
                turn = Turn(store, session, security, env)
                turn.bulk(n)
                samples = []
                deadline = time.perf_counter() + plan.budget_s
                for j in range(2 + plan.at_n_samples):
                    i = n + j
                    turn.untimed(i)
                    msg = astrid_message(i)
                    t0 = time.perf_counter_ns()
                    turn.step(i, msg)
                    if j >= 2:
                        samples.append((time.perf_counter_ns() - t0) / 1000)
                        if len(samples) >= 5 and time.perf_counter() > deadline:
                            break
                k = len(samples)
                store.close()
                last_disk = None
                if disk and backend != "memory":
                    last_disk = (
                        dir_bytes(where),
                        messages_json_bytes(session),
                        len(session.messages),
                    )
            rows.append(
                summarize(
                    op,
                    system,
                    n,
                    "us/msg",
                    samples,
                    sample=f"one append+save at size {n} (after a bulk save)",
                    note=f"at N: {k} single appends after bulk pre-grow"
                    + ("; O(N) per save" if backend in ("memory", "file") else ""),
                )
            )
        if disk:
            if backend == "memory":
                rows.append(na_row("disk_bytes_per_msg", system, n, "nothing on disk"))
            elif last_disk is not None:
                on_disk, js, count = last_disk
                rows.append(
                    value_row(
                        "disk_bytes_per_msg",
                        system,
                        n,
                        "B/msg",
                        on_disk / count,
                        sample="all files of the store / messages",
                        note=f"{on_disk / js:.2f}x the compact JSON ({js / count:.0f} B/msg); "
                        f"{count} msgs",
                        extra={
                            "bytes": on_disk,
                            "json_bytes": js,
                            "messages": count,
                            "ratio_to_json": on_disk / js,
                        },
                    )
                )
    return rows


def security_rows(backend: str, plan: Plan) -> list[Row]:
    """The security variants and the control, with per-round ratios where they all run as loops.

    At each N where plain, the control and every variant are loops, the five loops run round
    after round (plain, control, bounded, single_use, growing, then again), so each ratio
    compares loops that saw the same machine load; ``append_save_security_<v>_ratio`` holds the
    per-round ratios to the plain loop of the same round (and, in ``extra``, to the control's).
    """
    system = system_name(backend, plan.sqlite_synchronous)
    kinds: tuple[str | None, ...] = (None, *SECURITY_VARIANTS)
    paired = tuple(
        n for n in plan.sizes if all(n <= loop_max_of(backend, plan, k) for k in kinds)
    )
    rows: list[Row] = []
    rest = tuple(n for n in plan.sizes if n not in paired)
    if rest:
        for variant in SECURITY_VARIANTS:
            rows += append_rows(backend, plan, variant, sizes=rest)
    for n in paired:
        runs = plan.security_loop_runs.get(n, 1)
        if backend in ("memory", "file"):
            runs = min(runs, 2)
        loops: dict[str | None, list[Loop]] = {k: [] for k in kinds}
        for _ in range(runs):
            for kind in kinds:
                loops[kind].append(run_loop(backend, plan, kind, n))
        for variant in SECURITY_VARIANTS:
            row = loop_row(f"append_save_security_{variant}", system, n, loops[variant], True)
            row.sample += "; rounds interleaved with plain and the other variants"
            rows.append(row)
        plain = [loop.mean_us for loop in loops[None]]
        control = [loop.mean_us for loop in loops[CONTROL]]
        for variant in SECURITY_VARIANTS:
            if variant == CONTROL:
                continue
            means = [loop.mean_us for loop in loops[variant]]
            vs_control = quantiles([m / c for m, c in zip(means, control, strict=True)])
            rows.append(
                summarize(
                    f"append_save_security_{variant}_ratio",
                    system,
                    n,
                    "x",
                    [m / p for m, p in zip(means, plain, strict=True)],
                    sample="per interleaved round: the variant's loop / the plain loop",
                    note=f"ratio to plain per round; to the control: {vs_control[0]:.2f}x",
                    extra={
                        "plain_us": statistics.median(plain),
                        "control_us": statistics.median(control),
                        "vs_control": list(vs_control),
                    },
                )
            )
    return rows


# -- 2b: the floor ---------------------------------------------------------------------------


FLOOR_SCHEMA = "CREATE TABLE messages (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, body TEXT)"


def floor_loop(where: Path, n: int, synchronous: str = "NORMAL") -> float:
    """Mean µs of one bare ``sqlite3`` INSERT + COMMIT per message over ``n`` messages.

    The same message JSON as astrid stores (compact ``to_json()`` text, built before the clock)
    at the same durability (WAL, ``synchronous``); everything else is SQLite's default. No
    astrid code runs inside the clock: the least any store of this message in SQLite pays.
    """
    import sqlite3

    conn = sqlite3.connect(where / "floor.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(FLOOR_SCHEMA)
        total = 0
        for i in range(n):
            data = astrid_message(i).to_json()
            body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            t0 = time.perf_counter_ns()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO messages (session_id, body) VALUES (?, ?)", ("s", body))
            conn.execute("COMMIT")
            total += time.perf_counter_ns() - t0
    finally:
        conn.close()
    return total / n / 1000


def floor_rows(backend: str, plan: Plan) -> list[Row]:
    """The floor at the largest N next to astrid's append+save loop, round by round.

    Each round runs the bare loop and astrid's plain loop one after the other, so the ratio
    (astrid / floor per round) compares loops that saw the same machine load.
    """
    if backend != "sqlite":
        return []
    n = max(plan.sizes)
    system = system_name(backend, plan.sqlite_synchronous)
    floor_system = "sqlite3 (bare)" + (
        "" if plan.sqlite_synchronous == "NORMAL" else f"({plan.sqlite_synchronous})"
    )
    floors: list[float] = []
    ours: list[float] = []
    for _ in range(plan.loop_runs.get(n, 1)):
        with workdir() as where:
            floors.append(floor_loop(where, n, plan.sqlite_synchronous))
        ours.append(run_loop(backend, plan, None, n).mean_us)
    ratios = [a / f for a, f in zip(ours, floors, strict=True)]
    return [
        summarize(
            "append_save_floor",
            floor_system,
            n,
            "us/msg",
            floors,
            sample=f"loop of {n} bare INSERT + COMMIT of the message JSON (WAL, synchronous="
            f"{plan.sqlite_synchronous}), total/N",
            note="no astrid code; rounds interleaved with astrid's plain loop",
        ),
        summarize(
            "append_save_floor_ratio",
            system,
            n,
            "x",
            ratios,
            sample="per round: astrid's append+save loop / the bare sqlite3 loop",
            note=f"astrid {statistics.median(ours):.0f} vs floor "
            f"{statistics.median(floors):.0f} us/msg (medians)",
            extra={"astrid_us": ours, "floor_us": floors},
        ),
    ]


# -- 1: create -------------------------------------------------------------------------------


def create_row(backend: str, plan: Plan) -> Row:
    system = system_name(backend, plan.sqlite_synchronous)
    with workdir() as where:
        b = make_backend(backend, where, plan.sqlite_synchronous)
        from astrid.store import SessionStore

        store = SessionStore(b)

        def create() -> None:
            store.save(store.new_session("You are a benchmark."))

        samples = time_us(create, plan.create_runs, budget_s=plan.budget_s)
        store.close()
    return summarize(
        "create", system, None, "us", samples, sample="new_session + first save (no messages)"
    )


# -- 4/5: loads ------------------------------------------------------------------------------


def load_rows(backend: str, plan: Plan) -> list[Row]:
    system = system_name(backend, plan.sqlite_synchronous)
    rows: list[Row] = []
    from astrid.store import SessionStore

    for n in plan.sizes:
        with workdir() as where:
            b = make_backend(backend, where, plan.sqlite_synchronous)
            store = SessionStore(b)
            sid = stored_session(store, n)
            whole = time_us(
                lambda: store.load(sid), plan.load_runs.get(n, 5), warmup=1, budget_s=plan.budget_s
            )
            tail = time_us(
                lambda: store.load(sid, tail=20), plan.tail_runs, warmup=3, budget_s=plan.budget_s
            )
            loaded = store.load(sid)
            assert loaded is not None and len(loaded.messages) == n
            store.close()
        rows.append(
            summarize(
                "load_whole",
                system,
                n,
                "ms",
                [x / 1000 for x in whole],
                sample="store.load(id): an AgentSession with N validated Messages",
            )
        )
        rows.append(
            summarize("load_tail20", system, n, "us", tail, sample="store.load(id, tail=20)")
        )
    return rows


# -- 6: list ---------------------------------------------------------------------------------


def list_row(backend: str, plan: Plan) -> Row:
    from astrid.store import SessionStore

    system = system_name(backend, plan.sqlite_synchronous)
    m = min(plan.list_sessions, plan.list_sessions_max.get(backend, plan.list_sessions))
    with workdir() as where:
        b = make_backend(backend, where, plan.sqlite_synchronous)
        store = SessionStore(b)
        note = ""
        if backend == "file":
            # Setup only: skip the listing cache while creating M sessions (each save would
            # rewrite the whole index, O(M^2)); the first listing rebuilds it.
            b._index_put = lambda sid, entry: None
        t0 = time.perf_counter()
        for i in range(m):
            s = store.new_session("bench")
            s.metadata.title = f"session {i}"
            s.add_message(astrid_message(0))
            store.save(s)
        setup_s = time.perf_counter() - t0
        extra: dict[str, Any] = {"setup_seconds": setup_s}
        if backend == "file":
            del b._index_put
            t0 = time.perf_counter()
            store.list_sessions(limit=50)
            extra["cold_first_listing_ms"] = (time.perf_counter() - t0) * 1000
            note = f"warm index; cold first listing {extra['cold_first_listing_ms']:.0f} ms"
        page = store.list_sessions(limit=50)
        assert len(page) == 50 and store.count() == m
        samples = time_us(
            lambda: store.list_sessions(limit=50), plan.list_runs, budget_s=plan.budget_s
        )
        store.close()
    if m < plan.list_sessions:
        note = (note + "; " if note else "") + f"M capped at {m:,}"
    return summarize(
        "list50",
        system,
        m,
        "ms",
        [x / 1000 for x in samples],
        sample=f"list_sessions(limit=50) out of M={m} sessions",
        note=note,
        extra=extra,
    )


# -- 7: compact ------------------------------------------------------------------------------


SUMMARY_TEXT = "the user asked about files; " * 80
"""A fixed ~2 KB summary: the compaction figures measure the context manager and the store."""


class FixedSummarizer:
    """Returns ``SUMMARY_TEXT``; the extractive summarizer's own cost is reported apart."""

    name = "fixed"

    async def summarize(self, messages: Any, *, provider: Any = None) -> str:
        return SUMMARY_TEXT[:2000]


def compact_rows(backend: str, plan: Plan) -> list[Row]:
    from astrid.context import ContextManager, ExtractiveSummarizer, choose_cut
    from astrid.store import SessionStore

    system = system_name(backend, plan.sqlite_synchronous)
    n = plan.compact_n
    compact, reload_, extractive, kept = [], [], [], 0
    loop = asyncio.new_event_loop()
    try:
        for _ in range(plan.compact_runs):
            with workdir() as where:
                b = make_backend(backend, where, plan.sqlite_synchronous)
                store = SessionStore(b)
                session = store.new_session("You are a benchmark.")
                for i in range(n):
                    session.add_message(astrid_message(i))
                store.save(session)
                cut = choose_cut(session.messages, KEEP_RECENT)
                t0 = time.perf_counter_ns()
                ExtractiveSummarizer().summarize_sync(session.messages[:cut])
                extractive.append((time.perf_counter_ns() - t0) / 1e6)
                cm = ContextManager(keep_recent=KEEP_RECENT, summarizer=FixedSummarizer())
                t0 = time.perf_counter_ns()
                result = loop.run_until_complete(cm.summarize(session, store=store))
                compact.append((time.perf_counter_ns() - t0) / 1e6)
                assert result.messages_evicted > 0
                sid = session.id
                t0 = time.perf_counter_ns()
                loaded = store.load(sid)
                reload_.append((time.perf_counter_ns() - t0) / 1000)
                assert loaded is not None
                kept = len(loaded.messages)
                history = len(store.history(sid))
                store.close()
    finally:
        loop.close()
    ext = sorted(extractive)[len(extractive) // 2]
    return [
        summarize(
            "compact",
            system,
            n,
            "ms",
            compact,
            sample=f"ContextManager(keep_recent={KEEP_RECENT}).summarize(session, store=store)"
            f" of {n}, fixed 2 KB summary",
            note=f"both saves included; history keeps {history} messages; the "
            f"extractive summarizer itself adds {ext:.0f} ms",
            extra={"extractive_summarizer_ms": ext, "history_messages": history},
        ),
        summarize(
            "load_after_compact",
            system,
            n,
            "us",
            reload_,
            sample="store.load(id) after compaction",
            note=f"{kept} messages loaded",
        ),
    ]


# -- 8: concurrency --------------------------------------------------------------------------


def _writer(
    backend: str,
    where: str,
    sid: str,
    proc: int,
    count: int,
    barrier: Any,
    out: Any,
    synchronous: str,
) -> None:
    from harness import ensure_paths

    ensure_paths()
    from astrid.store import SessionStore

    store = SessionStore(make_backend(backend, Path(where), synchronous))
    errors, first = 0, ""
    barrier.wait()
    start = time.monotonic()
    for k in range(count):
        try:
            store.append_messages(sid, [astrid_from_spec(marked_spec(proc, k))])
        except Exception as exc:
            errors += 1
            first = first or f"{type(exc).__name__}: {exc}"
    end = time.monotonic()
    store.close()
    out.put({"proc": proc, "errors": errors, "first_error": first, "start": start, "end": end})


def check_marks(bodies: list[str], procs: int, count: int) -> dict[str, int]:
    """Lost, duplicated and out-of-order messages among tagged message JSON texts."""
    pattern = re.compile(MARK_RE)
    seen: dict[tuple[int, int], int] = {}
    last: dict[int, int] = {}
    reordered = 0
    for body in bodies:
        m = pattern.search(body)
        if m is None:
            continue
        p, k = int(m.group(1)), int(m.group(2))
        seen[(p, k)] = seen.get((p, k), 0) + 1
        if k < last.get(p, -1):
            reordered += 1
        last[p] = k
    expected = {(p, k) for p in range(procs) for k in range(count)}
    lost = len(expected - seen.keys())
    dup = sum(c - 1 for c in seen.values() if c > 1)
    return {"lost": lost, "duplicated": dup, "reordered": reordered, "stored": sum(seen.values())}


def run_writers(
    target: Callable[..., None], make_args: Callable[[int, Any, Any], tuple[Any, ...]], procs: int
) -> tuple[list[dict[str, Any]], float]:
    """Start ``procs`` spawned processes released together; their reports and the wall time."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    workers = [ctx.Process(target=target, args=make_args(p, barrier, out)) for p in range(procs)]
    for w in workers:
        w.start()
    import queue

    reports: list[dict[str, Any]] = []
    while len(reports) < procs:
        try:
            reports.append(out.get(timeout=1.0))
        except queue.Empty:
            if not any(w.is_alive() for w in workers) and out.empty():
                break
    for w in workers:
        w.join()
    if len(reports) < procs:
        codes = [w.exitcode for w in workers]
        raise RuntimeError(f"{procs - len(reports)} writer process(es) died (exit codes {codes})")
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return reports, wall


def concurrency_rows(backend: str, plan: Plan) -> list[Row]:
    system = system_name(backend, plan.sqlite_synchronous)
    if backend == "memory":
        why = "the memory backend lives in one process"
        return [
            na_row("concurrent_one_session", system, None, why),
            na_row("concurrent_distinct", system, None, why),
        ]
    from astrid.store import SessionStore

    count = min(plan.per_proc, plan.per_proc_max.get(backend, plan.per_proc))
    rows: list[Row] = []
    for mode in ("one_session", "distinct"):
        throughputs, totals = [], {"errors": 0, "lost": 0, "duplicated": 0, "reordered": 0}
        first_error = ""
        for _ in range(plan.concurrency_runs):
            with workdir() as where:
                store = SessionStore(make_backend(backend, where, plan.sqlite_synchronous))
                sids = []
                for _p in range(1 if mode == "one_session" else plan.procs):
                    s = store.new_session("bench")
                    store.save(s)
                    sids.append(s.id.bare)
                store.close()
                reports, wall = run_writers(
                    _writer,
                    lambda p, barrier, out: (
                        backend,
                        str(where),
                        sids[0 if mode == "one_session" else p],
                        p,
                        count,
                        barrier,
                        out,
                        plan.sqlite_synchronous,
                    ),
                    plan.procs,
                )
                store = SessionStore(make_backend(backend, where, plan.sqlite_synchronous))
                bodies = []
                for sid in sids:
                    loaded = store.load(sid)
                    assert loaded is not None
                    bodies += [json.dumps(m.to_json()) for m in loaded.messages]
                store.close()
            marks = check_marks(bodies, plan.procs, count)
            errors = sum(r["errors"] for r in reports)
            first_error = first_error or next(
                (r["first_error"] for r in reports if r["first_error"]), ""
            )
            totals["errors"] += errors
            for key in ("lost", "duplicated", "reordered"):
                totals[key] += marks[key]
            throughputs.append(plan.procs * count / wall)
        note = (
            f"errors {totals['errors']}, lost {totals['lost']}, duplicated "
            f"{totals['duplicated']}, reordered {totals['reordered']} (over "
            f"{plan.concurrency_runs} run(s) of {plan.procs}x{count})"
        )
        if count < plan.per_proc:
            note += f"; capped at {count}/process (O(N) per append)"
        if first_error:
            note += f"; first error: {first_error[:120]}"
        rows.append(
            summarize(
                f"concurrent_{mode}",
                system,
                plan.procs * count,
                "msg/s",
                throughputs,
                sample=f"{plan.procs} processes x {count} append_messages calls, msgs/wall second",
                note=note,
                extra=dict(totals, per_process=count, procs=plan.procs),
            )
        )
    return rows


# -- everything ------------------------------------------------------------------------------


KEEP_RECENT = 20
SECURITY_VARIANTS = ("bounded", "single_use", "growing", CONTROL)
OPS = ("create", "append", "floor", "security", "load", "list", "compact", "concurrency")


def run_backend(
    backend: str,
    plan: Plan,
    ops: tuple[str, ...] = OPS,
    log: Callable[[str], None] = lambda s: None,
) -> list[Row]:
    rows: list[Row] = []

    def stage(name: str, fn: Callable[[], list[Row]]) -> None:
        if name not in ops:
            return
        t0 = time.perf_counter()
        log(f"  {backend}: {name} ...")
        rows.extend(fn())
        log(f"  {backend}: {name} done in {time.perf_counter() - t0:.1f} s")

    stage("create", lambda: [create_row(backend, plan)])
    stage("append", lambda: append_rows(backend, plan, None, disk=True))
    stage("floor", lambda: floor_rows(backend, plan))
    stage("security", lambda: security_rows(backend, plan))
    stage("load", lambda: load_rows(backend, plan))
    stage("list", lambda: [list_row(backend, plan)])
    stage("compact", lambda: compact_rows(backend, plan))
    stage("concurrency", lambda: concurrency_rows(backend, plan))
    return rows


def with_sync(plan: Plan, synchronous: str) -> Plan:
    return replace(plan, sqlite_synchronous=synchronous)
