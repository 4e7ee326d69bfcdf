"""OpenTelemetry spans of a turn (GenAI conventions), through the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from astrid import tracing
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.errors import BudgetExceeded, LLMError
from astrid.llm import CallSettings, Done, Stop, StopReason, TextDelta, Usage
from astrid.runtime import AgentRuntime, RuntimeConfig
from astrid.security.approvals import ApprovalResponse, ApproveSession, Deny
from astrid.security.budget import BudgetConfig
from astrid.security.deferred import ApprovalRequest
from astrid.store import SessionStore

REPO = Path(__file__).resolve().parents[1]


class Handler:
    """Answers every approval request with one decision."""

    def __init__(self, decision: Any) -> None:
        self.decision = decision

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        return ApprovalResponse.new(request.id, self.decision)

    def is_available(self) -> bool:
        return True


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """astrid's spans go to a fresh in-memory exporter (the global provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("remember the milk\n")
    return ws


def read_call(call_id: str) -> dict[str, Any]:
    return {"tool_call": {"id": call_id, "name": "read_file", "arguments": {"path": "notes.txt"}}}


def usage(i: int, o: int) -> dict[str, Any]:
    return {"usage": {"input_tokens": i, "output_tokens": o}}


def runtime_for(
    provider: Any, workspace: Path, handler: Handler | None, store: SessionStore | None = None
) -> AgentRuntime:
    return AgentRuntime(
        provider,
        store=store if store is not None else SessionStore(MemoryBackend()),
        config=RuntimeConfig(workspace=workspace),
        approval_handler=handler,
    )


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {})[key]


def events(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


def test_turn_with_a_tool_call_makes_agent_chat_and_tool_spans(
    spans: InMemorySpanExporter, workspace: Path
) -> None:
    script = [[read_call("c1"), usage(20, 5)], [{"text": "It says milk."}, usage(30, 4)]]
    runtime = runtime_for(ScriptedProvider(script), workspace, Handler(ApproveSession()))
    session = runtime.create_session()
    result = asyncio.run(runtime.run_turn(session, "what does notes.txt say?"))
    assert result.text == "It says milk."

    found = by_name(spans)
    assert sorted(found) == ["chat scripted-1", "execute_tool read_file", "invoke_agent astrid"]
    [agent] = found["invoke_agent astrid"]
    [tool] = found["execute_tool read_file"]
    chats = found["chat scripted-1"]
    assert len(chats) == 2
    assert parent_of(agent) is None
    assert all(parent_of(s) == span_id(agent) for s in [*chats, tool])
    assert agent.attributes is not None and dict(agent.attributes) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.conversation.id": session.id.bare,
    }
    first, second = sorted(chats, key=lambda s: s.start_time or 0)
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["gen_ai.operation.name"] == "chat"
    assert first.attributes["gen_ai.request.model"] == "scripted-1"
    assert first.attributes["gen_ai.provider.name"] == "scripted"
    assert first.attributes["gen_ai.usage.input_tokens"] == 20
    assert first.attributes["gen_ai.usage.output_tokens"] == 5
    assert second.attributes["gen_ai.usage.input_tokens"] == 30
    costs: list[float] = [attr(s, "astrid.cost_usd") for s in (first, second)]
    assert sum(costs) == pytest.approx(result.cost_usd) and all(c > 0 for c in costs)
    assert tool.attributes is not None
    assert tool.attributes["gen_ai.tool.name"] == "read_file"
    assert tool.attributes["gen_ai.tool.call.id"] == "c1"
    assert tool.status.status_code is StatusCode.UNSET
    assert events(tool) == ["astrid.approval.requested", "astrid.approval.granted"]
    # privacy: no prompt, answer or tool output in any span
    for span in spans.get_finished_spans():
        carried = [dict(span.attributes or {}), *(dict(e.attributes or {}) for e in span.events)]
        text = repr(carried)
        assert "milk" not in text and "notes.txt" not in text


def test_a_subagent_nests_under_the_tool_span_that_spawned_it(
    spans: InMemorySpanExporter, workspace: Path
) -> None:
    script = [
        [
            {"tool_call": {"id": "t1", "name": "task",
                           "arguments": {"description": "count", "prompt": "count to 3"}}},
            usage(1, 1),
        ],
        [{"text": "1, 2, 3"}, usage(10, 10)],
        [{"text": "The sub-agent counted to 3."}, usage(1, 1)],
    ]
    runtime = runtime_for(ScriptedProvider(script), workspace, Handler(ApproveSession()))
    session = runtime.create_session()
    asyncio.run(runtime.run_turn(session, "delegate"))

    agents = by_name(spans)["invoke_agent astrid"]
    [task] = by_name(spans)["execute_tool task"]
    [parent] = [a for a in agents if parent_of(a) is None]
    [child] = [a for a in agents if a is not parent]
    assert parent_of(task) == span_id(parent)
    assert parent_of(child) == span_id(task)  # across the sub-agent's own asyncio task
    assert child.attributes is not None
    assert child.attributes["gen_ai.conversation.id"] != session.id.bare
    assert child.attributes["astrid.parent_session.id"] == session.id.bare
    assert "gen_ai.agent.id" in child.attributes
    child_chats = [s for s in by_name(spans)["chat scripted-1"] if parent_of(s) == span_id(child)]
    assert len(child_chats) == 1
    assert child_chats[0].attributes is not None
    assert child_chats[0].attributes["gen_ai.usage.input_tokens"] == 10


def test_an_approval_denial_is_an_event_and_a_failed_tool_span(
    spans: InMemorySpanExporter, workspace: Path
) -> None:
    script = [[read_call("c1"), usage(1, 1)], [{"text": "Could not read it."}, usage(1, 1)]]
    runtime = runtime_for(ScriptedProvider(script), workspace, Handler(Deny(reason="no")))
    asyncio.run(runtime.run_turn(runtime.create_session(), "read it"))
    [tool] = by_name(spans)["execute_tool read_file"]
    assert events(tool) == ["astrid.approval.requested", "astrid.approval.denied"]
    denied = tool.events[1].attributes
    assert denied is not None and denied["astrid.error_type"] == "ApprovalDenied"
    assert denied["astrid.action_type"]
    assert tool.status.status_code is StatusCode.ERROR
    assert tool.attributes is not None and tool.attributes["error.type"] == "tool_error"


def test_a_budget_refusal_is_an_event_and_errors_the_spans(
    spans: InMemorySpanExporter, workspace: Path
) -> None:
    store = SessionStore(
        MemoryBackend(), budget=BudgetConfig(session_max_usd=0.000001, per_action_max_usd=1.0)
    )
    runtime = runtime_for(ScriptedProvider([[{"text": "never"}]]), workspace, None, store)
    with pytest.raises(BudgetExceeded):
        asyncio.run(runtime.run_turn(runtime.create_session(), "hello"))
    found = by_name(spans)
    [chat] = found["chat scripted-1"]
    [agent] = found["invoke_agent astrid"]
    assert events(chat) == ["astrid.budget.refused"]
    for span in (chat, agent):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None and span.attributes["error.type"] == "BudgetExceeded"


def test_a_failed_model_call_sets_the_error_status(
    spans: InMemorySpanExporter, workspace: Path
) -> None:
    runtime = runtime_for(ScriptedProvider([[{"error": "upstream broke"}]]), workspace, None)
    with pytest.raises(LLMError):
        asyncio.run(runtime.run_turn(runtime.create_session(), "hello"))
    [chat] = by_name(spans)["chat scripted-1"]
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.attributes is not None and chat.attributes["error.type"] == "LLMError"
    assert "upstream broke" not in (chat.status.description or "")  # the type, not the text


class StoppingProvider:
    """A version-2 provider whose one answer ends with a ``Stop`` event."""

    provider_api = 2
    name = "stopper"
    model = "stop-model"

    async def stream(
        self, messages: Sequence[Any], tools: Sequence[Any], system_prompt: str, *,
        settings: CallSettings,
    ) -> AsyncIterator[Any]:
        yield TextDelta("cut")
        yield Usage(3, 2)
        yield Stop(StopReason.MAX_TOKENS, "length")
        yield Done()

    async def complete_simple(self, prompt: str, *, settings: CallSettings) -> Any:
        raise NotImplementedError


def test_finish_reasons_come_from_the_stop_event(
    spans: InMemorySpanExporter, workspace: Path
) -> None:
    runtime = runtime_for(StoppingProvider(), workspace, None)
    asyncio.run(runtime.run_turn(runtime.create_session(), "hello"))
    [chat] = by_name(spans)["chat stop-model"]
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("max_tokens",)
    assert chat.attributes["gen_ai.provider.name"] == "stopper"


_CHILD = """
import asyncio, sys
{block}
import astrid
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.runtime import AgentRuntime, RuntimeConfig
from astrid.store import SessionStore

script = [
    [{{"tool_call": {{"id": "c1", "name": "list_directory", "arguments": {{"path": "."}}}}}}],
    [{{"text": "listed"}}],
]
runtime = AgentRuntime(
    ScriptedProvider(script), store=SessionStore(MemoryBackend()),
    config=RuntimeConfig(workspace=sys.argv[1]),
)
result = asyncio.run(runtime.run_turn(runtime.create_session(), "list"))
print(result.text, len(result.tool_calls))
print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
"""

_BLOCK = """
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ImportError("opentelemetry is not installed here")
        return None
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.parametrize("blocked", [True, False], ids=["not-importable", "installed-unused"])
def test_a_turn_without_opentelemetry_imports_nothing(workspace: Path, blocked: bool) -> None:
    """No opentelemetry (or a host that does not use it): the turn runs, nothing is imported."""
    code = _CHILD.format(block=textwrap.dedent(_BLOCK) if blocked else "")
    out = subprocess.run(
        [sys.executable, "-c", code, str(workspace)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["listed 1", "[]"], out.stdout + out.stderr


def test_escape_decisions_are_events_on_the_tool_span(
    spans: InMemorySpanExporter, workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("elsewhere\n")
    script = [
        [
            {"tool_call": {"id": "c1", "name": "read_file", "arguments": {"path": str(outside)}}},
            {"tool_call": {"id": "c2", "name": "read_file",
                           "arguments": {"path": "/etc/shadow"}}},
        ],
        [{"text": "done"}],
    ]
    runtime = runtime_for(ScriptedProvider(script), workspace, Handler(ApproveSession()))
    asyncio.run(runtime.run_turn(runtime.create_session(), "read both"))
    tools = {attr(s, "gen_ai.tool.call.id"): s for s in by_name(spans)["execute_tool read_file"]}
    # outside the workspace, the read's own approval covers the path; a protected path is refused
    assert events(tools["c1"]) == ["astrid.approval.requested", "astrid.approval.granted"]
    assert events(tools["c2"]) == ["astrid.escape.denied"]
    denied = tools["c2"].events[0].attributes
    assert denied is not None and denied["astrid.operation"] == "read"
    assert tools["c2"].status.status_code is StatusCode.ERROR
