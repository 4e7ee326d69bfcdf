"""MCP tools under astrid's security, through ``AgentRuntime`` and the scripted provider: policy
blocks, approvals (ask, deny, always; persisted in SQLite and honoured after reopening the
store), capability tokens for ``mcp://server:tool``, the approval modes, and path arguments
outside the workspace. The servers are real (the notes server over stdio)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from astrid.default_plugins.capability_stores import SqliteCapabilityBackend
from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.runtime import AgentRuntime, RuntimeConfig
from astrid.security.actions import McpToolCall, Permission
from astrid.security.approvals import (
    ApprovalResponse,
    Approve,
    ApproveAlways,
    ApproveSession,
    Deny,
)
from astrid.security.capabilities import (
    AuditEntryId,
    CapabilityStore,
    ResourcePattern,
    TokenBuilder,
)
from astrid.security.crypto import KeyPair, load_or_create_keypair
from astrid.security.deferred import ApprovalRequest
from astrid.security.policy import SecurityPolicy
from astrid.session import AgentSession
from astrid.store import SessionStore
from mcp_testing import stdio_notes

from astrid_mcp import McpOptions
from astrid_mcp.toolset import McpToolset

BOUND_S = 90.0


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


def call(name: str, **arguments: Any) -> list[dict[str, Any]]:
    return [{"tool_call": {"id": f"c-{name}", "name": name, "arguments": arguments}}]


def answer(text: str) -> list[dict[str, Any]]:
    return [{"text": text}]


def results(session: AgentSession) -> list[tuple[bool, str]]:
    """(is_error, content) of every tool result of the session, in order."""
    found = []
    for message in session.messages:
        result = message.tool_result_content()
        if result is not None:
            found.append((result.is_error, result.content))
    return found


Body = Callable[[AgentRuntime, McpToolset], Awaitable[Any]]


def with_runtime(
    servers: dict[str, dict[str, Any]],
    script: list[list[dict[str, Any]]],
    workspace: Path,
    body: Body,
    *,
    handler: Handler | None = None,
    policy: SecurityPolicy | None = None,
    store: SessionStore | None = None,
    keypair: KeyPair | None = None,
) -> Any:
    """A runtime on the scripted provider offering the opened toolset's tools; the toolset
    is always closed again (bounded)."""

    async def main() -> Any:
        toolset = McpToolset(McpOptions.model_validate({"servers": servers}), workspace)
        async with asyncio.timeout(BOUND_S):
            try:
                tools = await toolset.open()
                runtime = AgentRuntime(
                    ScriptedProvider(script),
                    store=store,
                    config=RuntimeConfig(workspace=workspace),
                    tools=tools,
                    policy=policy,
                    keypair=keypair,
                    approval_handler=handler,
                )
                return await body(runtime, toolset)
            finally:
                await toolset.aclose()

    return asyncio.run(main())


async def one_turn(runtime: AgentRuntime, prompt: str = "go") -> AgentSession:
    session = runtime.create_session()
    await runtime.run_turn(session, prompt)
    return session


def test_ask_is_the_default_and_asks_for_every_call(workspace: Path) -> None:
    handler = Handler(Approve())
    script = [call("notes__add", text="milk"), call("notes__add", text="eggs"), answer("ok")]

    async def body(runtime: AgentRuntime, _: McpToolset) -> None:
        session = await one_turn(runtime)
        assert results(session) == [(False, "1 notes"), (False, "2 notes")]

    with_runtime({"notes": stdio_notes()}, script, workspace, body, handler=handler)
    assert [r.action for r in handler.requests] == [McpToolCall(server="notes", tool="add")] * 2


def test_a_denied_call_never_reaches_the_server(workspace: Path) -> None:
    handler = Handler(Deny(reason="not today"))
    script = [call("notes__add", text="milk"), call("notes__list_notes"), answer("ok")]

    async def body(runtime: AgentRuntime, toolset: McpToolset) -> None:
        session = await one_turn(runtime)
        (denied, text), (listed_error, _) = results(session)
        assert denied and "Tool notes__add was not run" in text and "not today" in text
        assert listed_error  # list_notes is asked about and denied too

    with_runtime({"notes": stdio_notes()}, script, workspace, body, handler=handler)
    assert len(handler.requests) == 2

    trusted = [call("notes__list_notes"), answer("ok")]

    async def check(runtime: AgentRuntime, _: McpToolset) -> None:
        session = await one_turn(runtime)
        assert results(session) == [(False, "(no notes)")]

    # A fresh server (a trusted one) shows nothing was ever added.
    with_runtime({"notes": stdio_notes(approval="trusted")}, trusted, workspace, check)


def test_a_policy_block_is_final_even_for_a_trusted_server(workspace: Path) -> None:
    handler = Handler(Approve())
    policy = SecurityPolicy(blocked_tools={"notes:add"})
    script = [call("notes__add", text="milk"), call("notes__list_notes"), answer("ok")]

    async def body(runtime: AgentRuntime, _: McpToolset) -> None:
        session = await one_turn(runtime)
        (blocked, text), listed = results(session)
        assert blocked and "blocked by policy" in text and "notes:add" in text
        assert listed == (False, "(no notes)")

    with_runtime({"notes": stdio_notes(approval="trusted")}, script, workspace, body,
                 handler=handler, policy=policy)
    assert handler.requests == []


def test_trusted_skips_only_the_forced_approval(workspace: Path) -> None:
    handler = Handler(Deny(reason="asked"))
    script = [call("notes__add", text="milk"), answer("ok")]

    async def runs(runtime: AgentRuntime, _: McpToolset) -> None:
        assert results(await one_turn(runtime)) == [(False, "1 notes")]

    with_runtime({"notes": stdio_notes(approval="trusted")}, script, workspace, runs,
                 handler=handler)
    assert handler.requests == []

    # The policy's approval_required_tools still asks for a trusted server.
    async def asked(runtime: AgentRuntime, _: McpToolset) -> None:
        (error, text), = results(await one_turn(runtime))
        assert error and "asked" in text

    with_runtime({"notes": stdio_notes(approval="trusted")}, script, workspace, asked,
                 handler=handler, policy=SecurityPolicy(approval_required_tools={"notes"}))
    assert len(handler.requests) == 1


def test_policy_mode_never_asks_and_runs_only_what_a_grant_covers(
    workspace: Path, tmp_path: Path
) -> None:
    handler = Handler(Approve())
    keypair = KeyPair.generate()
    script = [call("notes__add", text="milk"), call("notes__list_notes"), answer("ok")]

    async def body(runtime: AgentRuntime, _: McpToolset) -> None:
        session = runtime.create_session()
        token = (
            TokenBuilder(ResourcePattern.exact("mcp://notes:add"))
            .permission(Permission.INVOKE)
            .build(keypair.key_id, AuditEntryId.new(), keypair)
        )
        session.capabilities.add(token)
        await runtime.run_turn(session, "go")
        (added_error, added), (listed_error, listed) = results(session)
        assert (added_error, added) == (False, "1 notes")
        assert listed_error and "no one is asked" in listed

    with_runtime({"notes": stdio_notes(approval="policy")}, script, workspace, body,
                 handler=handler, keypair=keypair)
    assert handler.requests == []


def test_a_capability_token_for_the_tool_authorizes_it_without_asking(workspace: Path) -> None:
    handler = Handler(Deny(reason="asked"))
    keypair = KeyPair.generate()
    script = [call("notes__add", text="milk"), call("notes__list_notes"), answer("ok")]

    async def body(runtime: AgentRuntime, _: McpToolset) -> None:
        session = runtime.create_session()
        session.capabilities.add(
            TokenBuilder(ResourcePattern.exact("mcp://notes:add"))
            .permission(Permission.INVOKE)
            .build(keypair.key_id, AuditEntryId.new(), keypair)
        )
        await runtime.run_turn(session, "go")
        (added_error, added), (listed_error, listed) = results(session)
        assert (added_error, added) == (False, "1 notes")
        assert listed_error and "asked" in listed  # the token names add only

    with_runtime({"notes": stdio_notes()}, script, workspace, body, handler=handler,
                 keypair=keypair)
    assert [r.action.tool for r in handler.requests] == ["list_notes"]  # type: ignore[union-attr]


def test_a_token_from_an_untrusted_key_authorizes_nothing(workspace: Path) -> None:
    handler = Handler(Deny(reason="asked"))
    stranger = KeyPair.generate()
    script = [call("notes__add", text="milk"), answer("ok")]

    async def body(runtime: AgentRuntime, _: McpToolset) -> None:
        session = runtime.create_session()
        session.capabilities.add(
            TokenBuilder(ResourcePattern.exact("mcp://notes:add"))
            .permission(Permission.INVOKE)
            .build(stranger.key_id, AuditEntryId.new(), stranger)
        )
        await runtime.run_turn(session, "go")
        (error, text), = results(session)
        assert error and "asked" in text

    with_runtime({"notes": stdio_notes()}, script, workspace, body, handler=handler)
    assert len(handler.requests) == 1


def sqlite_store(root: Path) -> SessionStore:
    return SessionStore(
        SqliteBackend(root / "astrid.db"),
        capabilities=CapabilityStore(SqliteCapabilityBackend(root / "capabilities.db")),
    )


@pytest.mark.parametrize("decision", [ApproveAlways(), ApproveSession()],
                         ids=["always", "session"])
def test_an_always_or_session_approval_is_stored_and_honoured_after_reopening(
    workspace: Path, tmp_path: Path, decision: Any
) -> None:
    key_path = tmp_path / "keys" / "runtime.key"
    first = Handler(decision)
    script = [call("notes__add", text="milk"), answer("ok")]
    session_ids: list[Any] = []

    async def approve(runtime: AgentRuntime, _: McpToolset) -> None:
        session = await one_turn(runtime)
        assert results(session) == [(False, "1 notes")]
        session_ids.append(session.id)

    store = sqlite_store(tmp_path)
    with_runtime({"notes": stdio_notes()}, script, workspace, approve, handler=first,
                 store=store, keypair=load_or_create_keypair(key_path))
    store.close()
    assert len(first.requests) == 1

    # A new process's view: the store reopened from the files, the key from its file.
    second = Handler(Deny(reason="asked again"))
    again = [call("notes__add", text="eggs"), call("notes__list_notes"), answer("ok")]

    async def honoured(runtime: AgentRuntime, _: McpToolset) -> None:
        assert runtime.store is not None
        session = await runtime.store.aload(session_ids[0])
        assert session is not None
        await runtime.run_turn(session, "again")
        added, (listed_error, listed) = results(session)[1:]
        assert added == (False, "1 notes")  # a fresh server process, the grant held
        assert listed_error and "asked again" in listed  # the grant is for add only

    reopened = sqlite_store(tmp_path)
    try:
        with_runtime({"notes": stdio_notes()}, again, workspace, honoured, handler=second,
                     store=reopened, keypair=load_or_create_keypair(key_path))
    finally:
        reopened.close()
    assert [r.action.tool for r in second.requests] == ["list_notes"]  # type: ignore[union-attr]


def test_a_path_argument_outside_the_workspace_is_escalated_or_refused(
    workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret outside\n", encoding="utf-8")
    handler = Handler(Approve())
    script = [
        call("notes__read_text", file_path="hello.txt"),
        call("notes__read_text", file_path=str(outside)),
        call("notes__count_files", repo_dir=str(tmp_path)),
        answer("ok"),
    ]

    async def body(runtime: AgentRuntime, _: McpToolset) -> None:
        session = await one_turn(runtime)
        inside, escaped, refused = results(session)
        assert inside == (False, "hello from the workspace\n")  # relative: under the workspace
        assert escaped == (False, "secret outside\n")  # asked as a workspace escape, approved
        assert refused[0] and "outside the workspace" in refused[1]

    with_runtime({"notes": stdio_notes(approval="trusted")}, script, workspace, body,
                 handler=handler)
    # The escape was asked about as a file read of exactly that path; the read inside was not.
    actions = [r.action for r in handler.requests]
    assert [type(a).__name__ for a in actions] == ["FileRead"]
    assert actions[0].path == str(outside.resolve())  # type: ignore[union-attr]


def test_a_denied_escape_does_not_run_the_tool(workspace: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret outside\n", encoding="utf-8")
    handler = Handler(Deny(reason="stay inside"))
    script = [call("notes__read_text", file_path=str(outside)), answer("ok")]

    async def body(runtime: AgentRuntime, _: McpToolset) -> None:
        (error, text), = results(await one_turn(runtime))
        assert error and "outside workspace" in text and "secret" not in text

    with_runtime({"notes": stdio_notes(approval="trusted")}, script, workspace, body,
                 handler=handler)
