"""The runtime's own cost per turn (issue 17): astrid next to the OpenAI Agents SDK, Pydantic AI
and LangGraph, each running the same two-step turn against one loopback OpenAI-compatible server.

A turn: the user asks, the model calls the ``lookup_order`` tool (a plain function returning a
short text), the tool runs, the model answers; the conversation is persisted to SQLite after
every turn. The server (``astrid.testing.fake_llm.FakeOpenAIServer``, in this process, real
sockets) answers at once; its own time per request is subtracted from the turn's wall time, so
the figure is what the library itself costs per turn. The server's time is its handler thread's
CPU time (``Exchange.server_cpu_s``): client and server share the GIL, and a streaming client
works while the server is still writing, so the server's wall time would also hide the client's
own work. One sample = one turn;
the session grows by five astrid messages a turn (user, the assistant's text, its tool call, the
tool result, the answer), to 1 000 messages at 200 turns.

Runs inside ``benchmarks/.peers-venv`` (``make bench-peers``)::

    benchmarks/.peers-venv/bin/python benchmarks/peers_turn.py [--quick] [--turns N] [--json]
                                                               [--out FILE] [--peers a,b,...]

``peers.py`` runs it as its ``turn`` operation. Each row is one entry of ``TURN_PEERS`` (a name,
the imports it needs, and a ``setup`` returning the function that runs one turn); a peer that
cannot be imported or fails is reported and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ensure_paths

ensure_paths()

from harness import ROOT, Row, emit_payload, machine, summarize, value_row

from astrid.testing.fake_llm import FakeOpenAIServer, Tokens, ToolCallSpec, text_reply
from astrid.testing.fake_llm import tool_call_reply as call_reply

MODEL = "fake-model"
API_KEY = "bench-placeholder"  # the loopback server checks it; not a vendor key
KEY_ENV = "ASTRID_BENCH_OPENAI_KEY"
INSTRUCTIONS = "You are a support agent. Look orders up with the lookup_order tool."
TOOL_NAME = "lookup_order"
TOOL_DESCRIPTION = "Look an order up by its id; returns its status."
TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"order_id": {"type": "string", "description": "The order id, e.g. A-0001"}},
    "required": ["order_id"],
    "additionalProperties": False,
}
USAGE = Tokens(1200, 60)
FIRST, LAST = 10, 10  # the flatness window: turns 1-10 against the last 10
SETTLE_S = 0.05
"""With ``--interleave``, the pause before each turn, so one system's work after its turn (a
collection, a thread finishing) does not run in the next system's timed turn."""


# -- the workload: the same text on every side ---------------------------------------------------


def order_id(turn: int) -> str:
    return f"A-{turn:04d}"


def prompt(turn: int) -> str:
    """~190 B of user text, unique per turn."""
    return (
        f"Turn {turn}: where is my order {order_id(turn)}? I ordered it last week and the "
        "tracking page has not changed since Monday. Can you check it for me, please?"
    )


def lookup(oid: str) -> str:
    """The tool's result: ~170 B."""
    return (
        f"order {oid}: shipped on Tuesday from the Leeds warehouse, 3 items, carrier "
        "ParcelNet, tracking PN-88231, expected delivery Friday before 18:00"
    )


def answer(turn: int) -> str:
    """The model's final text: ~330 B, unique per turn."""
    return (
        f"Your order {order_id(turn)} left our Leeds warehouse on Tuesday with ParcelNet "
        "(tracking PN-88231). It holds 3 items and is expected on Friday before 18:00. The "
        "tracking page often lags a day behind the carrier's own scans, so the missing update "
        "since Monday is not a sign of a problem. If it has not arrived by Saturday, tell me and "
        "I will open a claim with the carrier."
    )


def script_turn(server: FakeOpenAIServer, turn: int) -> None:
    """The two replies of one turn: a tool call (after a short text), then the answer."""
    args = json.dumps({"order_id": order_id(turn)})
    server.script(
        call_reply(
            ToolCallSpec(f"call_{turn:04d}", args, name=TOOL_NAME),
            text="Let me look that order up.",
            usage=USAGE,
        ),
        text_reply(answer(turn), pieces=4, usage=USAGE),
    )


# -- the peers: one entry each -------------------------------------------------------------------

TurnFn = Callable[[int], "Awaitable[None] | None"]


@dataclass(frozen=True)
class TurnPeer:
    """One row: ``setup(server, where, stack)`` returns the function that runs (and persists)
    turn i (what it opens it closes through ``stack``);
    ``imports`` is what a program using it imports (timed in a fresh interpreter); ``setting``
    says how it is driven and persisted."""

    key: str
    system: str
    imports: str
    setting: str
    setup: Callable[[FakeOpenAIServer, Path, AsyncExitStack], Awaitable[TurnFn]]


ASTRID_CONFIG = """
[storage]
backend = "sqlite"

[storage.options]
synchronous = "{synchronous}"

[llm]
provider = "openai"

[llm.options]
model = "{model}"
base_url = "{base_url}"
api_key_env = "{key_env}"
max_retries = 0

[budget]
session_max_usd = 100000.0

[runtime]
workspace_root = "{workspace}"
system_prompt = "{instructions}"
estimated_output_tokens = 500

[pricing."{model}"]
input_per_million = 1.0
output_per_million = 4.0
"""


async def astrid_setup(
    server: FakeOpenAIServer, where: Path, stack: AsyncExitStack, synchronous: str = "NORMAL"
) -> TurnFn:
    """``open_runtime`` from a TOML file: the ``openai`` provider (astrid-openai) on the fake
    server, the sqlite store, budgets and prices; the tool's calls go through policy and the
    approval handler (approved for the session on the first turn, then by that allowance)."""
    from astrid.runtime import open_runtime
    from astrid.security.approvals import ApprovalResponse, ApproveSession
    from astrid.tools import FunctionTool

    class Approve:
        async def request_approval(self, request: Any) -> ApprovalResponse:
            return ApprovalResponse.new(request.id, ApproveSession())

        def is_available(self) -> bool:
            return True

    workspace = where / "workspace"
    workspace.mkdir()
    os.environ["ASTRID_HOME"] = str(where / "home")
    os.environ.pop("ASTRID_CONFIG", None)
    os.environ[KEY_ENV] = API_KEY
    config = where / "astrid.toml"
    config.write_text(
        ASTRID_CONFIG.format(
            model=MODEL,
            base_url=server.base_url,
            key_env=KEY_ENV,
            workspace=workspace,
            instructions=INSTRUCTIONS,
            synchronous=synchronous,
        )
    )
    tool = FunctionTool(
        TOOL_NAME, TOOL_DESCRIPTION, TOOL_SCHEMA, lambda args, ctx: lookup(args["order_id"])
    )
    runtime = open_runtime(config, approval_handler=Approve(), tools=[tool])
    stack.push_async_callback(runtime.aclose)
    assert runtime.store is not None
    session = runtime.store.new_session(INSTRUCTIONS)

    async def turn(i: int) -> None:
        result = await runtime.run_turn(session, prompt(i))
        if result.text != answer(i) or len(result.tool_calls) != 1:
            raise RuntimeError(f"astrid: unexpected turn {i}: {result.text[:80]!r}")
        if result.tool_calls[0].result.is_error:
            raise RuntimeError(f"astrid: the tool failed: {result.tool_calls[0].result.content}")

    return turn


async def astrid_full_setup(
    server: FakeOpenAIServer, where: Path, stack: AsyncExitStack
) -> TurnFn:
    """astrid with ``synchronous = "FULL"``: an fsync per save, the peers' durability."""
    return await astrid_setup(server, where, stack, "FULL")


async def openai_agents_setup(
    server: FakeOpenAIServer, where: Path, stack: AsyncExitStack
) -> TurnFn:
    """``Runner.run`` with ``OpenAIChatCompletionsModel`` on the fake server and a file-backed
    ``SQLiteSession``; the SDK's tracing is disabled (it would export to OpenAI)."""
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        Runner,
        SQLiteSession,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)

    @function_tool
    def lookup_order(order_id: str) -> str:
        """Look an order up by its id; returns its status."""
        return lookup(order_id)

    client = AsyncOpenAI(base_url=server.base_url, api_key=API_KEY)
    stack.push_async_callback(client.close)
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    agent = Agent(name="support", instructions=INSTRUCTIONS, model=model, tools=[lookup_order])
    session = SQLiteSession("bench", str(where / "openai.db"))

    async def turn(i: int) -> None:
        result = await Runner.run(agent, prompt(i), session=session)
        if result.final_output != answer(i):
            raise RuntimeError(f"openai-agents: unexpected turn {i}: {result.final_output!r}")

    return turn


async def pydantic_ai_setup(
    server: FakeOpenAIServer, where: Path, stack: AsyncExitStack
) -> TurnFn:
    """``Agent.run`` with ``OpenAIChatModel`` on the fake server; the history is kept in memory
    and each turn's new messages are appended to SQLite (Pydantic AI has no store of its own:
    its documented ``new_messages()`` + ``ModelMessagesTypeAdapter`` pattern, one row per message)."""
    from openai import AsyncOpenAI
    from pydantic_ai import Agent, ModelMessagesTypeAdapter
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    client = AsyncOpenAI(base_url=server.base_url, api_key=API_KEY)
    stack.push_async_callback(client.close)
    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client))
    agent = Agent(model, instructions=INSTRUCTIONS)

    @agent.tool_plain
    def lookup_order(order_id: str) -> str:
        """Look an order up by its id; returns its status."""
        return lookup(order_id)

    conn = sqlite3.connect(where / "pydantic-ai.db")
    stack.callback(conn.close)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, session TEXT NOT NULL, body TEXT NOT NULL)"
    )
    history: list[Any] = []

    async def turn(i: int) -> None:
        result = await agent.run(prompt(i), message_history=history)
        if result.output != answer(i):
            raise RuntimeError(f"pydantic-ai: unexpected turn {i}: {result.output!r}")
        new = result.new_messages()
        rows = [
            ("bench", ModelMessagesTypeAdapter.dump_json([m]).decode()) for m in new
        ]
        with conn:
            conn.executemany("INSERT INTO messages (session, body) VALUES (?, ?)", rows)
        history.extend(new)

    return turn


async def langgraph_setup(
    server: FakeOpenAIServer, where: Path, stack: AsyncExitStack
) -> TurnFn:
    """A ReAct agent (``create_react_agent``) with ``ChatOpenAI`` on the fake server and a
    ``SqliteSaver`` checkpointer (a checkpoint per graph step); ``invoke`` is synchronous."""
    import warnings

    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.checkpoint.sqlite import SqliteSaver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_react_agent's move to langchain.agents
        from langgraph.prebuilt import create_react_agent

    @tool
    def lookup_order(order_id: str) -> str:
        """Look an order up by its id; returns its status."""
        return lookup(order_id)

    llm = ChatOpenAI(model=MODEL, base_url=server.base_url, api_key=API_KEY, max_retries=0)
    conn = sqlite3.connect(where / "langgraph.db", check_same_thread=False)
    stack.callback(conn.close)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = create_react_agent(
            llm, [lookup_order], prompt=INSTRUCTIONS, checkpointer=SqliteSaver(conn)
        )
    config: Any = {"configurable": {"thread_id": "bench"}}

    def turn(i: int) -> None:
        state = graph.invoke({"messages": [("user", prompt(i))]}, config)
        text = state["messages"][-1].content
        if text != answer(i):
            raise RuntimeError(f"langgraph: unexpected turn {i}: {text!r}")

    return turn


ASTRID = "astrid"
ASTRID_FULL = "astrid (FULL)"
TURN_PEERS: list[TurnPeer] = [
    TurnPeer(
        "astrid",
        ASTRID,
        "import astrid.runtime, astrid.store, astrid.default_plugins.sqlite_storage, "
        "astrid_openai.provider",
        "open_runtime: astrid-openai provider (streamed), sqlite store (WAL, synchronous=NORMAL), "
        "policy + approvals + budgets on every call",
        astrid_setup,
    ),
    TurnPeer(
        "astrid-full",
        ASTRID_FULL,
        "import astrid.runtime, astrid.store, astrid.default_plugins.sqlite_storage, "
        "astrid_openai.provider",
        "the same with [storage.options] synchronous = \"FULL\": an fsync per save, the "
        "peers' durability",
        astrid_full_setup,
    ),
    TurnPeer(
        "openai",
        "openai-agents",
        "import agents",
        "Runner.run, OpenAIChatCompletionsModel (not streamed), SQLiteSession on a file "
        "(WAL, synchronous=FULL), tracing disabled",
        openai_agents_setup,
    ),
    TurnPeer(
        "pydantic-ai",
        "pydantic-ai",
        "import pydantic_ai, pydantic_ai.models.openai, pydantic_ai.providers.openai, sqlite3",
        "Agent.run, OpenAIChatModel (not streamed), history in memory, new messages appended "
        "to SQLite (WAL, synchronous=FULL)",
        pydantic_ai_setup,
    ),
    TurnPeer(
        "langgraph",
        "langgraph",
        "import langgraph.prebuilt, langgraph.checkpoint.sqlite, langchain_openai",
        "create_react_agent + ChatOpenAI (not streamed), SqliteSaver (WAL, synchronous=FULL), "
        "invoke (sync)",
        langgraph_setup,
    ),
]


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class TurnSamples:
    """Per turn, in ms: the wall time, the server's CPU time and its wall time in it, and the
    process's CPU time (client and server threads)."""

    wall_ms: list[float]
    server_ms: list[float]
    server_wall_ms: list[float]
    cpu_ms: list[float]

    @property
    def overhead_ms(self) -> list[float]:
        return [w - s for w, s in zip(self.wall_ms, self.server_ms, strict=True)]

    def add(self, sample: dict[str, float]) -> None:
        self.wall_ms.append(sample["wall"])
        self.cpu_ms.append(sample["cpu"])
        self.server_ms.append(sample["server"])
        self.server_wall_ms.append(sample["server_wall"])

    @property
    def client_cpu_ms(self) -> list[float]:
        """The library's own CPU time per turn: less sensitive to a loaded machine than wall."""
        return [c - s for c, s in zip(self.cpu_ms, self.server_ms, strict=True)]


async def run_turns(
    peer: TurnPeer,
    turns: int,
    where: Path,
    go_on: Callable[[], bool] = lambda: True,
    report: Callable[[dict[str, float]], None] = lambda sample: None,
    ready: Callable[[], None] = lambda: None,
) -> TurnSamples:
    """Set ``peer`` up against a fresh fake server (then ``ready()``) and time ``turns`` turns
    one by one (each after ``go_on()`` says so; each sample also handed to ``report``)."""
    samples = TurnSamples([], [], [], [])
    with FakeOpenAIServer() as server:
        async with AsyncExitStack() as stack:
            run = await peer.setup(server, where, stack)
            ready()
            for i in range(1, turns + 1):
                if not go_on():
                    break
                script_turn(server, i)
                seen = len(server.exchanges)
                started, started_cpu = time.perf_counter(), time.process_time()
                result = run(i)
                if inspect.isawaitable(result):
                    await result
                wall = time.perf_counter() - started
                server.wait_idle()
                cpu = time.process_time() - started_cpu
                exchanges = server.exchanges[seen:]
                if len(exchanges) != 2 or server.pending:
                    raise RuntimeError(
                        f"{peer.system}: turn {i} made {len(exchanges)} requests (2 expected)"
                    )
                bad = [e for e in exchanges if e.outcome != "complete"]
                if bad:
                    raise RuntimeError(f"{peer.system}: turn {i}: a request ended {bad[0].outcome}")
                sample = {
                    "wall": wall * 1000,
                    "cpu": cpu * 1000,
                    "server": sum(e.server_cpu_s for e in exchanges) * 1000,
                    "server_wall": sum(e.server_s for e in exchanges) * 1000,
                }
                samples.add(sample)
                report(sample)
    return samples


def turn_rows(system: str, samples: TurnSamples, turns: int, setting: str) -> list[Row]:
    over = samples.overhead_ms
    first, last = over[:FIRST], over[-LAST:]
    flat = statistics.median(last) / statistics.median(first)
    note = (
        f"wall {statistics.median(samples.wall_ms):.2f} ms, server CPU "
        f"{statistics.median(samples.server_ms):.2f} ms (its wall "
        f"{statistics.median(samples.server_wall_ms):.2f} ms) (medians); {setting}"
    )
    extra = {
        "overhead_ms": over,
        "wall_ms": samples.wall_ms,
        "server_cpu_ms": samples.server_ms,
        "server_wall_ms": samples.server_wall_ms,
        "client_cpu_ms": samples.client_cpu_ms,
    }
    sample = "one turn (tool call + answer, persisted): wall time minus the server's time"
    return [
        summarize("turn_overhead", system, turns, "ms", over, sample=sample, note=note,
                  extra=extra),
        summarize(f"turn_overhead_first{FIRST}", system, turns, "ms", first, sample=sample),
        summarize(f"turn_overhead_last{LAST}", system, turns, "ms", last, sample=sample),
        value_row("turn_flatness", system, turns, "x", flat,
                  sample=f"median of the last {LAST} turns / median of the first {FIRST}"),
        summarize("turn_cpu", system, turns, "ms", samples.client_cpu_ms,
                  sample="one turn: the process's CPU time minus the server thread's"),
    ]


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)")


def _importtime_us(code: str) -> int:
    """Sum of the top-level cumulative times ``python -X importtime -c code`` reports."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=ROOT,  # not a directory that may hold a stray package of the same name
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    total = 0
    for line in proc.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m and m.group(3) == " ":  # level 0: one space after the bar
            total += int(m.group(2))
    return total


@functools.cache
def _startup_us(runs: int) -> float:
    """The interpreter's own start-up imports (``-c pass``), median of ``runs``, once a run."""
    return statistics.median(_importtime_us("pass") for _ in range(runs))


def import_row(peer: TurnPeer, runs: int = 5) -> Row:
    """The import time of what the row uses: ``-X importtime`` in a fresh interpreter, minus the
    interpreter's own start-up imports, median of ``runs``."""
    base = _startup_us(runs)
    samples = [(_importtime_us(peer.imports) - base) / 1000 for _ in range(runs)]
    return summarize("import", peer.system, None, "ms", samples,
                     sample="python -X importtime -c '<imports>' minus -c 'pass'",
                     note=peer.imports)


def worker(peer: TurnPeer, turns: int) -> None:
    """One peer in this process (``--worker``): prints ``ready`` once set up, then runs a turn
    for each line read from stdin and prints its sample as a JSON line."""

    def go_on() -> bool:
        return sys.stdin.readline() != ""

    def report(sample: dict[str, float]) -> None:
        print(json.dumps(sample), flush=True)

    def ready() -> None:
        print("ready", flush=True)

    with tempfile.TemporaryDirectory(prefix=f"astrid-turn-{peer.key}-") as tmp:
        asyncio.run(run_turns(peer, turns, Path(tmp), go_on, report, ready))


@dataclass
class _Worker:
    """A peer's worker process, its stderr file and its samples so far."""

    peer: TurnPeer
    proc: subprocess.Popen[str]
    errors: Any
    samples: TurnSamples

    def ask(self) -> str:
        """Have it run one turn (or say ``ready``); the line it answers, "" if it died."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.stdin.closed:
            return ""
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return ""
        return self.proc.stdout.readline()

    def failure(self) -> str:
        self.proc.kill()
        self.proc.wait()
        self.errors.seek(0)
        return str(self.errors.read()).strip()


def run_peers(
    peers: list[TurnPeer],
    turns: int,
    log: Callable[[str], None],
    problems: dict[str, str],
    interleave: bool = False,
) -> list[Row]:
    """Every system's import time, then its turns, each system in its own fresh interpreter
    (no other library in its heap), one system after the other, its turns back to back. With
    ``interleave``, turn i of every system runs before turn i + 1 (all see the same machine
    load, but each turn starts in a process that sat idle while the others ran: on this machine
    that doubles astrid's CPU time per turn, cold caches, so it is not the default). A peer
    that fails is reported in ``problems`` and dropped."""
    rows: list[Row] = []
    with ExitStack() as stack:
        workers: list[_Worker] = []
        for peer in peers:
            try:
                rows.append(import_row(peer))
            except Exception as exc:
                detail = getattr(exc, "stderr", "") or ""
                problems[peer.system] = f"cannot import: {type(exc).__name__}: {detail.strip()[-300:]}"
                log(f"  turn: {peer.system}: {problems[peer.system]}")
                continue
            errors = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen(
                [sys.executable, __file__, "--worker", peer.key, "--turns", str(turns)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
            stack.callback(proc.kill)  # a no-op once it has exited
            w = _Worker(peer, proc, errors, TurnSamples([], [], [], []))
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":  # set up (imports, server, store)
                problems[peer.system] = f"failed to start: {w.failure()[-500:]}"
                log(f"  turn: {peer.system}: {problems[peer.system]}")
                continue
            workers.append(w)
        t0 = time.perf_counter()
        order = (
            [(i, w) for i in range(1, turns + 1) for w in workers]
            if interleave
            else [(i, w) for w in workers for i in range(1, turns + 1)]
        )
        failed: set[str] = set()
        for i, w in order:
            if w.peer.system in failed:
                continue
            if interleave:
                time.sleep(SETTLE_S)  # whatever the previous system does after its turn
            line = w.ask()
            if not line:
                problems[w.peer.system] = f"failed at turn {i}: {w.failure()[-500:]}"
                log(f"  turn: {w.peer.system}: {problems[w.peer.system]}")
                failed.add(w.peer.system)
                continue
            w.samples.add(json.loads(line))
            if i % 50 == 0:
                log(f"  turn: {w.peer.system} {i}/{turns} at {time.perf_counter() - t0:.0f} s")
        workers = [w for w in workers if w.peer.system not in failed]
        for w in workers:
            assert w.proc.stdin is not None
            w.proc.stdin.close()
            if w.proc.wait(timeout=60) != 0:
                problems[w.peer.system] = f"failed at the end: {w.failure()[-500:]}"
                continue
            rows.extend(turn_rows(w.peer.system, w.samples, turns, w.peer.setting))
    return rows


def targets_of(rows: list[Row]) -> list[Any]:
    """Issue 17's targets on astrid (the default durability) and, for the equal-durability
    comparison, on astrid (FULL); against the peers, not against each other."""
    from targets import turn_targets

    peers = [p.system for p in TURN_PEERS if p.system not in (ASTRID, ASTRID_FULL)]
    out = turn_targets(rows, ASTRID, peers)
    if _pick(rows, "turn_overhead", ASTRID_FULL) is not None:
        out += turn_targets(rows, ASTRID_FULL, peers)
    return out


def _pick(rows: list[Row], op: str, system: str) -> Row | None:
    return next((r for r in rows if r.op == op and r.system == system), None)


def turn_table(rows: list[Row]) -> str:
    """The per-turn table: one line per system, astrid's overhead as a ratio to each peer."""
    systems = [p.system for p in TURN_PEERS if _pick(rows, "import", p.system) is not None]
    ours = _pick(rows, "turn_overhead", ASTRID)
    head = (
        f"{'system':<16}{'turns':>6}{'median ms':>11}{'p90 ms':>9}{'turns 1-10':>12}"
        f"{'last 10':>9}{'last/first':>11}{'astrid/x':>10}{'CPU ms':>8}{'import ms':>11}"
    )
    lines = [head, "-" * len(head)]
    for s in systems:
        r = _pick(rows, "turn_overhead", s)
        imp = _pick(rows, "import", s)
        imp_text = f"{imp.median:.0f}" if imp is not None and imp.median is not None else "-"
        if r is None or r.median is None:
            lines.append(f"{s:<16}{'failed':>6}{'':>70}{imp_text:>11}")
            continue
        first = _pick(rows, f"turn_overhead_first{FIRST}", s)
        last = _pick(rows, f"turn_overhead_last{LAST}", s)
        flat = _pick(rows, "turn_flatness", s)
        cpu = _pick(rows, "turn_cpu", s)
        ratio = (
            f"{ours.median / r.median:.3f}"
            if ours is not None and ours.median is not None and s not in (ASTRID, ASTRID_FULL)
            else ""
        )
        lines.append(
            f"{s:<16}{r.n or 0:>6}{r.median:>11.2f}{r.p90 or 0:>9.2f}"
            f"{first.median if first and first.median is not None else 0:>12.2f}"
            f"{last.median if last and last.median is not None else 0:>9.2f}"
            f"{flat.median if flat and flat.median is not None else 0:>11.2f}"
            f"{ratio:>10}{cpu.median if cpu and cpu.median is not None else 0:>8.2f}"
            f"{imp_text:>11}"
        )
    return "\n".join(lines)


def profile_turns(peer: TurnPeer, turns: int, mode: str) -> None:
    """A call profile of ``peer``'s turns (set-up and the first turn excluded)."""

    async def go(where: Path) -> None:
        with FakeOpenAIServer() as server:
            async with AsyncExitStack() as stack:
                run = await peer.setup(server, where, stack)
                for i in range(1, turns + 1):
                    script_turn(server, i)
                    if i == 2:
                        profiler_start()
                    result = run(i)
                    if inspect.isawaitable(result):
                        await result
                profiler_stop()

    if mode == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002, async_mode="disabled")
        profiler_start, profiler_stop = profiler.start, profiler.stop
    else:
        import cProfile

        cprof = cProfile.Profile()
        profiler_start, profiler_stop = cprof.enable, cprof.disable
    with tempfile.TemporaryDirectory(prefix="astrid-turn-profile-") as tmp:
        asyncio.run(go(Path(tmp)))
    if mode == "pyinstrument":
        print(profiler.output_text(unicode=False, color=False, show_all=bool(os.environ.get("PROFILE_ALL"))))
    else:
        import pstats

        pstats.Stats(cprof).sort_stats("cumulative").print_stats(40)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 turns instead of 200")
    parser.add_argument("--turns", type=int, help="turns per peer (default 200, --quick 50)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--peers", default=",".join(p.key for p in TURN_PEERS))
    parser.add_argument(
        "--interleave", action="store_true", help="turn i of every system before turn i + 1"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one peer's turns, rows as JSON
    parser.add_argument(
        "--profile",
        choices=("pyinstrument", "cprofile"),
        help="profile the turns of the first peer named in --peers (no table)",
    )
    args = parser.parse_args(argv)
    turns = args.turns or (50 if args.quick else 200)
    if turns < FIRST + LAST:
        parser.error(f"--turns must be at least {FIRST + LAST}")
    wanted = {k.strip() for k in args.peers.split(",") if k.strip()}
    unknown = wanted - {p.key for p in TURN_PEERS}
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


    if args.worker:
        peer = next(p for p in TURN_PEERS if p.key == args.worker)
        worker(peer, turns)
        return 0
    if args.profile:
        peer = next(p for p in TURN_PEERS if p.key in wanted)
        profile_turns(peer, turns, args.profile)
        return 0

    started = time.perf_counter()
    problems: dict[str, str] = {}
    rows = run_peers(
        [p for p in TURN_PEERS if p.key in wanted], turns, log, problems, args.interleave
    )
    verdicts = targets_of(rows)
    payload = {
        "mode": "quick" if args.quick else "full",
        "turns": turns,
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "problems": problems,
        "rows": rows,
        "targets": [{"name": t.name, "ok": t.ok, "detail": t.detail} for t in verdicts],
    }
    if emit_payload(payload, args.out, args.json):
        return 0
    print_turns(rows, problems, verdicts)
    return 0


def print_turns(rows: list[Row], problems: dict[str, str], verdicts: list[Any]) -> None:
    """The per-turn table, the problems, each row's setting and the targets, on stdout."""
    print("per-turn overhead (ms): wall time of a turn minus the fake server's time in it")
    for s, p in problems.items():
        print(f"  PROBLEM {s}: {p}")
    print(turn_table(rows))
    for r in rows:
        if r.op == "turn_overhead":
            print(f"  {r.system}: {r.note}")
    print("targets (issue 17):")
    for t in verdicts:
        print(t.line())


if __name__ == "__main__":
    raise SystemExit(main())
