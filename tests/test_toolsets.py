"""Toolsets: tool sources known only after an async connect (the ``register_toolsets`` hook).

Real parts: this module is a plugin registered through the process-wide plugin manager; its
toolsets start a real server subprocess in ``open()`` (a line protocol over stdin/stdout that
appends each note to a file) and stop it in ``aclose()``, so "closed" is checked by the
process being gone. TOML files, the SQLite store under a temporary ``ASTRID_HOME``, the scripted
provider, ``astrid run`` through click's runner.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tomllib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict

from astrid.cli import cli
from astrid.config import dump_config, load_config, parse_config
from astrid.errors import ConfigError, PluginError
from astrid.hookspecs import hookimpl
from astrid.plugins import PluginContext, register_plugin, registry, unregister_plugin
from astrid.runtime import AgentRuntime, open_runtime
from astrid.security.actions import McpToolCall
from astrid.security.approvals import ApprovalResponse, ApproveWorkspace, Deny
from astrid.security.deferred import ApprovalRequest
from astrid.tools import Tool, ToolContext, ToolError, Toolset

SERVER = r"""
import sys, time
for line in sys.stdin:
    text = line.rstrip("\n")
    if text == "hang":
        time.sleep(3600)
    with open(sys.argv[1], "a", encoding="utf-8") as notes:
        notes.write(text + "\n")
    print("noted: " + text, flush=True)
"""


class NotesOptions(BaseModel):
    """Options of the test toolsets (``[notes]`` / ``[jot]`` in the TOML)."""

    model_config = ConfigDict(extra="forbid")
    notes_file: str = "notes.log"
    names: list[str] | None = None  # the tool names offered (default: ["<toolset>__add"])
    fail_open: bool = False  # open() starts the server, then raises
    hang_open: bool = False  # open() starts the server, then waits forever
    fail_close: bool = False  # aclose() stops the server, then raises


class AddTool:
    """Sends one note to the server; classified as an MCP tool call of the toolset."""

    description = "Add a note."
    approval = "ask"  # every call needs a grant or a human, though the policy allows MCP calls
    input_schema: dict[str, Any] = {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]
    }

    def __init__(self, toolset: NotesToolset, name: str) -> None:
        self.toolset = toolset
        self.name = name

    def classify(self, arguments: dict[str, Any], ctx: ToolContext) -> McpToolCall:
        return McpToolCall(server=self.toolset.name, tool=self.name.rpartition("__")[2])

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        process = self.toolset.process
        if process is None or process.stdin is None or process.stdout is None:
            raise ToolError("the notes server is not running")
        process.stdin.write(f"{arguments['text']}\n".encode())
        await process.stdin.drain()
        return (await process.stdout.readline()).decode().strip()


class NotesToolset:
    """A toolset whose tools exist once ``open`` started its server process."""

    def __init__(self, name: str, options: NotesOptions, context: PluginContext) -> None:
        self.name = name
        self.options = options
        self.notes = context.home / options.notes_file
        self.process: asyncio.subprocess.Process | None = None
        self.opened = 0
        self.closed = 0
        self.pids: list[int] = []

    async def open(self) -> list[Tool]:
        self.opened += 1
        self.notes.parent.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SERVER, str(self.notes),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        self.pids.append(self.process.pid)
        if self.options.fail_open:
            raise ConnectionError(f"server {self.name} refused the handshake")
        if self.options.hang_open:
            await asyncio.Event().wait()
        return [AddTool(self, n) for n in self.options.names or [f"{self.name}__add"]]

    async def aclose(self) -> None:
        self.closed += 1
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self.options.fail_close:
            raise OSError(f"server {self.name} did not say goodbye")


CREATED: list[NotesToolset] = []


def _factory(name: str, options: NotesOptions, context: PluginContext) -> NotesToolset:
    toolset = NotesToolset(name, options, context)
    CREATED.append(toolset)
    return toolset


@hookimpl
def register_toolsets(register: Any) -> None:
    """This module's plugin hook: two toolsets, ``notes`` and ``jot``."""
    for name in ("notes", "jot"):
        register(name, partial(_factory, name), NotesOptions, f"Test toolset {name}")


@pytest.fixture(autouse=True)
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    CREATED.clear()
    register_plugin(sys.modules[__name__], name="notes-toolsets")
    try:
        yield
    finally:
        unregister_plugin("notes-toolsets")
        for toolset in CREATED:  # never leave a server behind, whatever the test did
            if toolset.process is not None and toolset.process.returncode is None:
                toolset.process.kill()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    return ws


def config_file(tmp_path: Path, workspace: Path, script: list[Any], **tables: Any) -> Path:
    """An astrid.toml on the scripted provider playing ``script``, plus ``tables``."""
    data: dict[str, Any] = {
        "llm": {"provider": "scripted", "options": {"script": script}},
        "runtime": {"workspace_root": str(workspace)},
        **tables,
    }
    path = tmp_path / "astrid.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def add_call(text: str, name: str = "notes__add") -> list[dict[str, Any]]:
    return [{"tool_call": {"id": "c1", "name": name, "arguments": {"text": text}}}]


def answer(text: str) -> list[dict[str, Any]]:
    return [{"text": text}]


class Handler:
    """Answers every approval request with one decision and keeps the requests."""

    def __init__(self, decision: Any) -> None:
        self.decision = decision
        self.requests: list[ApprovalRequest] = []

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse:
        self.requests.append(request)
        return ApprovalResponse.new(request.id, self.decision)

    def is_available(self) -> bool:
        return True


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def notes_of(tmp_path: Path) -> list[str]:
    path = tmp_path / "home" / "notes.log"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


# -- the hook and the protocol ------------------------------------------------------------------


def test_the_plugin_registers_toolsets_whose_factory_returns_a_toolset(tmp_path: Path) -> None:
    impl = registry("toolset")["notes"]
    assert (impl.plugin, impl.options, impl.description) == (
        "notes-toolsets", NotesOptions, "Test toolset notes"
    )
    toolset = impl.create({"notes_file": "n.log"}, PluginContext(home=tmp_path))
    assert isinstance(toolset, Toolset) and toolset.notes == tmp_path / "n.log"
    assert not isinstance(object(), Toolset)


# -- open once, close on every exit -------------------------------------------------------------


def test_a_toolset_opens_once_its_tools_reach_the_model_and_it_closes_on_exit(
    tmp_path: Path, workspace: Path
) -> None:
    config = config_file(
        tmp_path, workspace, [add_call("buy milk"), answer("Noted.")], notes={}
    )
    handler = Handler(ApproveWorkspace())

    async def scenario() -> AgentRuntime:
        async with open_runtime(config, approval_handler=handler) as runtime:
            await runtime.open()  # a second open does nothing
            [toolset] = CREATED
            assert toolset.opened == 1 and toolset.closed == 0
            assert toolset.process is not None and toolset.process.returncode is None
            session = runtime.create_session()
            result = await runtime.run_turn(session, "note: buy milk")
            [record] = result.tool_calls
            assert not record.result.is_error and record.result.content == "noted: buy milk"
            offered = [d.name for d in runtime.provider.requests[0][1]]  # type: ignore[attr-defined]
            assert offered == ["read_file", "write_file", "list_directory", "task", "notes__add"]
        return runtime

    runtime = asyncio.run(scenario())
    [toolset] = CREATED
    assert toolset.opened == 1 and toolset.closed == 1 and gone(toolset.pids[0])
    assert "notes__add" not in runtime.tools  # a closed toolset's tools are withdrawn
    assert notes_of(tmp_path) == ["buy milk"]
    # the approval went through the runtime's flow, as MCP tool calls, naming the toolset
    [request] = handler.requests
    assert request.action == McpToolCall(server="notes", tool="add")
    assert request.context == "Tool notes__add (toolset 'notes')"


def test_an_exception_in_the_block_closes_the_toolsets(tmp_path: Path, workspace: Path) -> None:
    config = config_file(tmp_path, workspace, [], notes={}, tools={"toolsets": ["jot"]})

    async def scenario() -> None:
        async with open_runtime(config):
            assert [t.name for t in CREATED] == ["notes", "jot"]
            assert all(t.opened == 1 for t in CREATED)
            raise RuntimeError("the host failed")

    with pytest.raises(RuntimeError, match="the host failed"):
        asyncio.run(scenario())
    assert [(t.opened, t.closed) for t in CREATED] == [(1, 1), (1, 1)]
    assert all(gone(t.pids[0]) for t in CREATED)


def test_a_failing_aclose_is_logged_and_the_other_toolsets_still_close(
    tmp_path: Path, workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_file(tmp_path, workspace, [], jot={}, notes={"fail_close": True})

    async def scenario() -> None:
        async with open_runtime(config):
            pass

    asyncio.run(scenario())  # the failure does not escape the exit
    assert [(t.name, t.closed) for t in CREATED] == [("jot", 1), ("notes", 1)]
    assert all(gone(t.pids[0]) for t in CREATED)
    [record] = [r for r in caplog.records if "closing toolset" in r.getMessage()]
    assert record.getMessage() == "closing toolset 'notes' failed"
    assert "did not say goodbye" in str(record.exc_info[1] if record.exc_info else "")


def test_cancelling_a_turn_inside_a_toolset_call_closes_the_toolsets(
    tmp_path: Path, workspace: Path
) -> None:
    config = config_file(
        tmp_path, workspace, [add_call("hang"), answer("never")], notes={}
    )

    handler = Handler(ApproveWorkspace())

    async def host() -> None:
        async with open_runtime(config, approval_handler=handler) as rt:
            await rt.run_turn(rt.create_session(), "hang the server")

    async def scenario() -> None:
        task = asyncio.create_task(host())
        while not handler.requests:  # approved: the call goes to the server, which hangs
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    [toolset] = CREATED
    assert (toolset.opened, toolset.closed) == (1, 1) and gone(toolset.pids[0])


def test_cancelled_while_opening_the_toolset_is_closed_too(
    tmp_path: Path, workspace: Path
) -> None:
    config = config_file(tmp_path, workspace, [], notes={"hang_open": True})

    async def scenario() -> None:
        runtime = open_runtime(config)
        task = asyncio.create_task(runtime.__aenter__())
        while not CREATED or not CREATED[0].pids:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    [toolset] = CREATED
    assert (toolset.opened, toolset.closed) == (1, 1) and gone(toolset.pids[0])


def test_a_toolset_that_fails_to_open_is_a_clear_error_and_everything_is_closed(
    tmp_path: Path, workspace: Path
) -> None:
    config = config_file(tmp_path, workspace, [], jot={}, notes={"fail_open": True})

    async def scenario() -> None:
        async with open_runtime(config):
            pytest.fail("the runtime must not be entered")

    with pytest.raises(PluginError) as caught:
        asyncio.run(scenario())
    assert str(caught.value) == (
        "toolset 'notes' failed to open: server notes refused the handshake"
    )
    jot, notes = CREATED
    assert [(t.name, t.opened, t.closed) for t in CREATED] == [
        ("jot", 1, 1), ("notes", 1, 1)
    ]
    assert gone(jot.pids[0]) and gone(notes.pids[0])


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            {"notes": {"names": ["read_file"]}},
            "tool 'read_file' of toolset 'notes' clashes with the tool 'read_file' of plugin "
            "'astrid.default_plugins.builtin_tools': tool names must be unique",
        ),
        (
            {"notes": {"names": ["x__add"]}, "jot": {"names": ["x__add"]}},
            "tool 'x__add' of toolset 'jot' clashes with the tool 'x__add' of toolset 'notes'",
        ),
        (
            {"notes": {"names": ["notes:add"]}},
            "toolset 'notes' returned a tool named 'notes:add'; tool names must be 1 to 64",
        ),
    ],
)
def test_a_tool_name_clash_or_a_name_providers_refuse_is_an_error_naming_both_sources(
    tmp_path: Path, workspace: Path, tables: dict[str, Any], message: str
) -> None:
    config = config_file(tmp_path, workspace, [], **tables)

    async def scenario() -> None:
        async with open_runtime(config):
            pytest.fail("the runtime must not be entered")

    with pytest.raises(PluginError, match="^" + message.replace("(", r"\(")) as caught:
        asyncio.run(scenario())
    assert str(caught.value).startswith(message)
    assert all(t.closed == 1 and gone(t.pids[0]) for t in CREATED)


# -- a runtime that was not entered ---------------------------------------------------------------


def test_turns_need_the_toolsets_open_and_sync_close_refuses_while_they_are(
    tmp_path: Path, workspace: Path
) -> None:
    config = config_file(tmp_path, workspace, [answer("hi")], notes={})

    async def scenario() -> None:
        runtime = open_runtime(config)
        session = runtime.create_session()
        with pytest.raises(PluginError, match=r"toolsets \('notes'\) are not open: enter it"):
            await runtime.run_turn(session, "hello")
        assert session.messages == []  # refused before anything was added
        await runtime.open()
        with pytest.raises(PluginError, match=r"open toolsets \('notes'\).*await runtime.aclose"):
            runtime.close()
        assert CREATED[0].closed == 0  # close() closed nothing
        result = await runtime.run_turn(session, "hello")
        assert result.text == "hi"
        await runtime.aclose()
        runtime.close()  # nothing open any more: the sync close works again

    asyncio.run(scenario())
    assert CREATED[0].closed == 1 and gone(CREATED[0].pids[0])


# -- configuration ------------------------------------------------------------------------------


def test_toolset_tables_are_validated_by_the_toolset_options_model(
    tmp_path: Path, workspace: Path
) -> None:
    def error(**tables: Any) -> str:
        with pytest.raises(ConfigError) as caught:
            load_config(config_file(tmp_path, workspace, [], **tables))
        return str(caught.value)

    where = str(tmp_path / "astrid.toml")
    assert error(notes={"names": "add"}) == (
        f"{where}: key 'notes.names': Input should be a valid list (options of toolset 'notes')"
    )
    assert error(notes={"colour": "red"}).startswith(
        f"{where}: unknown key 'notes.colour'; valid keys: fail_close, fail_open, hang_open, "
        "names, notes_file"
    )
    assert error(notes={"notes_file": True}) == (
        f"{where}: key 'notes.notes_file': expected a number or a string, not a boolean "
        "(options of toolset 'notes')"
    )
    assert error(notes="yes") == (
        f"{where}: key 'notes': must be a table (options of toolset 'notes')"
    )
    unknown = error(nosuch={"a": 1})
    assert unknown.startswith(f"{where}: unknown key 'nosuch'; valid keys: ")
    assert "jot" in unknown and "notes" in unknown and "storage" in unknown
    known = ", ".join(sorted(registry("toolset")))  # jot, notes and any installed plugin's
    assert "jot, " in known and error(tools={"toolsets": ["nope"]}) == (
        f"{where}: key 'tools.toolsets': unknown toolset 'nope'; known toolsets: {known}"
    )
    loaded = load_config(config_file(tmp_path, workspace, [], notes={"notes_file": "a.log"},
                                     tools={"toolsets": ["jot", "notes"]}))
    assert loaded.config.toolsets_to_open() == ["notes", "jot"]
    assert loaded.config.toolset_tables == {"notes": {"notes_file": "a.log"}}


def test_dump_config_writes_a_toolset_table_back_at_the_top_level(
    tmp_path: Path, workspace: Path
) -> None:
    loaded = load_config(config_file(tmp_path, workspace, [], notes={"notes_file": "a.log"}))
    text = dump_config(loaded.config)
    assert '[notes]\nnotes_file = "a.log"' in text
    again = parse_config(tomllib.loads(text))
    assert again.toolset_tables == {"notes": {"notes_file": "a.log"}} and again == loaded.config


def test_config_show_and_plugins_say_which_toolsets_are_on(
    tmp_path: Path, workspace: Path
) -> None:
    config = config_file(tmp_path, workspace, [], notes={"notes_file": "a.log"})
    runner = CliRunner()
    shown = runner.invoke(cli, ["--config", str(config), "config", "show"])
    assert shown.exit_code == 0, shown.output
    assert "toolsets opened: notes (their tools are known once open)" in shown.stdout
    rows = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines() if line}
    assert rows["notes.notes_file"] == ['"a.log"', str(config)]
    assert rows["notes.fail_open"] == ["false", "default"]
    data = json.loads(runner.invoke(cli, ["--config", str(config), "config", "show",
                                          "--json"]).stdout)
    assert data["config"]["tools"]["toolsets"] == ["notes"]
    assert data["config"]["notes"]["notes_file"] == "a.log"

    listed = json.loads(
        runner.invoke(cli, ["--config", str(config), "plugins", "--json"]).stdout
    )
    on = {i["name"]: i["on"] for i in listed["implementations"]["toolset"]}
    assert on["notes"] is True and on["jot"] is False
    text = runner.invoke(cli, ["--config", str(config), "plugins"]).stdout
    [notes_row] = [line for line in text.splitlines() if line.startswith("toolset ")
                   and " notes " in line]
    assert notes_row.split()[:4] == ["toolset", "notes", "on", "notes-toolsets"]


# -- astrid run -----------------------------------------------------------------------------------


def test_astrid_run_calls_a_toolset_tool_denied_then_allowed_by_the_stored_allowance(
    tmp_path: Path, workspace: Path
) -> None:
    runner = CliRunner()

    def astrid_run(mode: str, text: str) -> dict[str, Any]:
        config = config_file(tmp_path, workspace, [add_call(text), answer("Done.")], notes={})
        result = runner.invoke(cli, ["--config", str(config), "run", "--approve", mode,
                                     "--json", f"note {text}"])
        assert result.exit_code == 0, result.output
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    # --approve deny: the call needs an approval, nobody may give it: not run
    [call] = astrid_run("deny", "first")["tool_calls"]
    assert call["is_error"] and "Tool notes__add was not run" in call["result"]
    assert "--approve deny" in call["result"]
    # --approve policy, nothing stored: still refused, the server never saw the note
    [call] = astrid_run("policy", "second")["tool_calls"]
    assert call["is_error"] and "--approve policy" in call["result"]
    assert notes_of(tmp_path) == []
    assert all(t.closed == 1 and gone(t.pids[0]) for t in CREATED)

    # a host approves notes__add for this workspace (stored in the SQLite store) ...
    config = config_file(tmp_path, workspace, [add_call("third"), answer("Done.")], notes={})

    async def approve_for_the_workspace() -> None:
        async with open_runtime(config, approval_handler=Handler(ApproveWorkspace())) as rt:
            assert rt.store is not None
            session = rt.create_session()
            await rt.store.aattach_workspace(session, workspace)
            await rt.run_turn(session, "note third")
            await rt.store.asave_workspace_of(session)

    asyncio.run(approve_for_the_workspace())
    # ... so astrid run --approve policy runs it without asking anyone
    [call] = astrid_run("policy", "fourth")["tool_calls"]
    assert not call["is_error"] and call["result"] == "noted: fourth"
    assert notes_of(tmp_path) == ["third", "fourth"]
    assert len(CREATED) == 4 and all(t.closed == 1 and gone(t.pids[0]) for t in CREATED)


def test_a_denied_toolset_call_is_not_run_in_open_runtime(tmp_path: Path, workspace: Path) -> None:
    config = config_file(tmp_path, workspace, [add_call("secret"), answer("OK.")], notes={})

    async def scenario() -> str:
        async with open_runtime(config, approval_handler=Handler(Deny(reason="no notes"))) as rt:
            result = await rt.run_turn(rt.create_session(), "note secret")
            return result.tool_calls[0].result.content

    assert "no notes" in asyncio.run(scenario())
    assert notes_of(tmp_path) == []
