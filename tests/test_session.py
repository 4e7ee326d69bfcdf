"""AgentSession: the original's session tests, then each deliberate fix."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid import (
    AgentSession,
    ContentEstimator,
    Message,
    OriginalEstimator,
    SessionDocument,
    ToolCall,
)
from astrid.errors import SerializationError
from astrid.messages import ToolCallResult
from astrid.security.actions import FileRead, McpToolCall
from astrid.security.allowances import Allowance, ExactTool, FilePattern, pattern_for_action
from astrid.security.approvals import ApprovalResponse, Approve
from astrid.security.budget import WorkspaceBudgetTracker
from astrid.security.escape import EscapeDecision, EscapeOperation, EscapeRequest, EscapeState
from astrid.security.kv import MemoryKvStore, ScopedKvStore
from astrid.session import MessageList

# -- the original's tests (spec §7, session.rs) ---------------------------------------------


def test_session_creation() -> None:
    session = AgentSession.new(bytes(8), "You are helpful")
    assert session.messages == []
    assert session.system_prompt == "You are helpful"


def test_add_message() -> None:
    session = AgentSession.new(bytes(8), "p")
    session.add_message(Message.user("Hello"))
    session.add_message(Message.assistant("Hi!"))
    assert len(session.messages) == 2
    assert session.token_count > 0


def test_add_message_with_the_original_estimator_counts_as_the_original() -> None:
    session = AgentSession("p", token_estimator=OriginalEstimator())
    session.add_message(Message.user("Hello"))
    session.add_message(Message.assistant("Hi!"))
    assert session.token_count == 1
    session.add_message(Message.assistant_with_tools([ToolCall(id="1", name="x")]))
    assert session.token_count == 101


def test_serialization_roundtrip() -> None:
    session = AgentSession.new(bytes(8), "Test prompt")
    session.add_message(Message.user("Hello"))
    restored = AgentSession.from_document(session.to_document())
    assert restored.system_prompt == "Test prompt"
    assert len(restored.messages) == 1


def test_budget_snapshot_roundtrip() -> None:
    session = AgentSession.new(bytes(8), "p")
    session.budget_tracker.record_cost(42.5)
    restored = AgentSession.from_document(session.to_document())
    assert restored.budget_tracker.spent() == 42.5


def test_workspace_path_roundtrip() -> None:
    session = AgentSession.new(bytes(8), "p").with_workspace("/home/user/project")
    restored = AgentSession.from_document(session.to_document())
    assert restored.workspace_path == Path("/home/user/project")


def test_with_shared_stores() -> None:
    parent = AgentSession.new(bytes(8), "parent")
    parent.budget_tracker.record_cost(10.0)
    child = AgentSession.with_shared_stores(
        "00000000-0000-4000-8000-000000000001",
        bytes(8),
        "child",
        parent.allowance_store,
        parent.capabilities,
        parent.budget_tracker,
    )
    assert child.budget_tracker.spent() == 10.0
    child.budget_tracker.record_cost(5.0)
    assert parent.budget_tracker.spent() == 15.0
    assert child.budget_tracker is parent.budget_tracker
    assert child.allowance_store is parent.allowance_store
    assert child.capabilities is parent.capabilities
    assert child.messages == []
    assert child.approval_manager is not parent.approval_manager
    assert child.is_subagent and not parent.is_subagent
    assert child.workspace_budget_tracker is None and child.workspace_path is None


def test_backwards_compatible_deserialization() -> None:
    text = json.dumps(
        {
            "id": "00000000-0000-0000-0000-000000000001",
            "user_id": "0101010101010101",
            "messages": [],
            "system_prompt": "Test",
            "created_at": "2025-01-01T00:00:00Z",
            "token_count": 0,
            "metadata": {
                "title": None,
                "tags": [],
                "turn_count": 0,
                "tool_call_count": 0,
                "approval_count": 0,
                "custom": {},
            },
        }
    )
    session = AgentSession.from_document(SessionDocument.from_json_text(text))
    assert session.system_prompt == "Test"
    assert session.workspace_path is None
    assert session.budget_tracker.spent() == 0.0
    assert session.user_id == bytes([1] * 8)


# -- the rest of the original's API ---------------------------------------------------------


def test_last_messages_and_clear() -> None:
    session = AgentSession("p")
    for i in range(5):
        session.add_message(Message.user(f"m{i}"))
    assert [m.text() for m in session.last_messages(2)] == ["m3", "m4"]
    assert len(session.last_messages(99)) == 5
    assert session.last_messages(0) == []
    session.metadata.title = "kept"
    session.clear_messages()
    assert session.messages == [] and session.token_count == 0
    assert session.metadata.title == "kept"


def test_is_near_limit_is_strict() -> None:
    session = AgentSession("p")
    session.token_count = 850
    assert not session.is_near_limit(1000, 0.85)
    session.token_count = 851
    assert session.is_near_limit(1000, 0.85)


def test_duration_grows() -> None:
    session = AgentSession("p")
    assert session.duration().total_seconds() >= 0


def test_builders_and_workspace_budget() -> None:
    tracker = WorkspaceBudgetTracker(50.0, 80)
    session = AgentSession("p").with_model("m").with_workspace_budget(tracker)
    assert session.model == "m" and session.workspace_budget_tracker is tracker
    from astrid.security.capabilities import CapabilityStore

    store = CapabilityStore()
    assert session.with_capability_store(store).capabilities is store


def test_import_export_workspace_allowances() -> None:
    session = AgentSession("p")
    ws = Allowance.create(
        ExactTool(server="fs", tool="read"), session_only=False, workspace_root=Path("/ws")
    )
    sess_only = Allowance.create(ExactTool(server="fs", tool="write"), session_only=True)
    session.import_workspace_allowances([ws, sess_only])
    exported = session.export_workspace_allowances()
    assert [a.id for a in exported] == [ws.id]


def test_persistent_deferred_queue_keeps_the_handler() -> None:
    import asyncio

    class Handler:
        async def request_approval(self, request: object) -> ApprovalResponse | None:
            return None

        def is_available(self) -> bool:
            return True

    kv = MemoryKvStore()
    session = AgentSession("p")
    handler = Handler()
    session.approval_manager.register_handler(handler)
    session.with_persistent_deferred_queue(ScopedKvStore(kv, f"deferred:{session.id.bare}"))
    assert session.approval_manager.handler is handler
    outcome = asyncio.run(
        session.approval_manager.check_approval(FileRead(path="/x"), "ctx", None)
    )
    assert outcome.is_deferred()
    assert kv.list_keys(f"deferred:{session.id.bare}")  # the deferral was persisted


# -- our fixes ------------------------------------------------------------------------------


def test_bad_id_is_an_error_naming_the_source_not_a_random_id() -> None:
    doc = AgentSession("p").to_document().to_data()
    doc["id"] = "not-a-uuid"
    with pytest.raises(SerializationError) as info:
        SessionDocument.from_data(doc, source="/tmp/x.json")
    assert "/tmp/x.json" in str(info.value) and "id" in str(info.value)


def test_unknown_messages_and_fields_survive_a_round_trip() -> None:
    session = AgentSession("p")
    data = session.to_document().to_data()
    data["messages"] = [
        {"role": "user", "content": "hi"},
        {"role": "critic", "content": "unknown role"},
        {"role": "assistant", "content": {"weird": True}},
    ]
    data["future_key"] = {"nested": [1, 2]}
    data["metadata"]["new_counter"] = 3
    restored = AgentSession.from_document(SessionDocument.from_data(data))
    assert len(restored.messages) == 3
    out = restored.to_document().to_data()
    assert out["messages"] == data["messages"]
    assert out["future_key"] == {"nested": [1, 2]}
    assert out["metadata"]["new_counter"] == 3


def test_turn_and_tool_call_counts_are_maintained() -> None:
    session = AgentSession("p")
    session.add_message(Message.user("one"))
    session.add_message(
        Message.assistant_with_tools([ToolCall(id="a", name="x"), ToolCall(id="b", name="y")])
    )
    session.add_message(Message.tool_result(ToolCallResult.success("a", "ok")))
    session.add_message(Message.user("two"))
    assert session.metadata.turn_count == 2
    assert session.metadata.tool_call_count == 2


def test_approval_count_is_maintained() -> None:
    import asyncio

    class Yes:
        async def request_approval(self, request: object) -> ApprovalResponse:
            return ApprovalResponse.new(request.id, Approve())  # type: ignore[attr-defined]

        def is_available(self) -> bool:
            return True

    session = AgentSession("p")
    session.approval_manager.register_handler(Yes())
    for _ in range(3):
        outcome = asyncio.run(
            session.approval_manager.check_approval(FileRead(path="/a"), "", None)
        )
        assert outcome.is_allowed()
    doc = session.to_document()
    assert doc.metadata.approval_count == 3
    restored = AgentSession.from_document(doc)
    assert restored.metadata.approval_count == 3
    assert restored.to_document().metadata.approval_count == 3


def test_content_estimator_counts_tool_results_by_size() -> None:
    session = AgentSession("p")
    big = "x" * 30_000
    session.add_message(Message.tool_result(ToolCallResult.success("c", big)))
    assert session.token_count >= 7_500  # the original counted this as 100


def test_child_end_session_keeps_parent_session_allowances() -> None:
    parent = AgentSession("p")
    child = parent.child("c")
    parent_grant = Allowance.create(ExactTool(server="fs", tool="read"), session_only=True)
    child_grant = Allowance.create(ExactTool(server="fs", tool="write"), session_only=True)
    parent.allowance_store.add_allowance(parent_grant)
    child.add_session_allowance(child_grant)
    child.end_session()
    ids = {a.id for a in parent.allowance_store.all()}
    assert parent_grant.id in ids and child_grant.id not in ids
    parent.end_session()
    assert parent.allowance_store.count() == 0


def test_allowance_granted_through_a_child_is_owned_by_the_child() -> None:
    import asyncio

    from astrid.security.approvals import ApproveWithAllowance

    grant = Allowance.create(ExactTool(server="s", tool="t"), session_only=True)

    class Grant:
        async def request_approval(self, request: object) -> ApprovalResponse:
            return ApprovalResponse.new(
                request.id, ApproveWithAllowance(allowance=grant)  # type: ignore[attr-defined]
            )

        def is_available(self) -> bool:
            return True

    parent = AgentSession("p")
    child = parent.child("c")
    child.approval_manager.register_handler(Grant())
    outcome = asyncio.run(
        child.approval_manager.check_approval(McpToolCall(server="s", tool="t"), "", None)
    )
    assert outcome.is_allowed()
    assert parent.allowance_store.count() == 1  # shared store: the parent sees it
    child.end_session()
    assert parent.allowance_store.count() == 0  # the child's own grant is gone with it


def test_child_shares_workspace_budget_and_links_parent() -> None:
    tracker = WorkspaceBudgetTracker(10.0, 80)
    parent = AgentSession("p").with_workspace("/ws").with_workspace_budget(tracker)
    child = parent.child("c")
    assert child.workspace_budget_tracker is tracker
    assert child.parent_id == parent.id
    restored = AgentSession.from_document(child.to_document())
    assert restored.parent_id == parent.id
    assert "parent_id" not in parent.to_document().to_data()


def test_restored_escape_paths_never_override_never_allowed(tmp_path: Path) -> None:
    ok = tmp_path / "outside"
    ok.mkdir()
    session = AgentSession("p")
    data = session.to_document().to_data()
    data["escape_state"] = EscapeState(remembered_paths=["/etc", str(ok)]).model_dump(mode="json")
    restored = AgentSession.from_document(SessionDocument.from_data(data))
    state = restored.escape_handler.export_state()
    assert str(ok.resolve()) in state.remembered_paths
    assert not any(p == "/etc" or p.startswith("/etc/") for p in state.remembered_paths)


def test_escape_session_paths_are_not_persisted(tmp_path: Path) -> None:
    session = AgentSession("p")
    request = EscapeRequest.new(str(tmp_path), EscapeOperation.READ, "test")
    session.escape_handler.process_decision(request, EscapeDecision.ALLOW_SESSION)
    assert session.escape_handler.is_allowed(str(tmp_path))
    restored = AgentSession.from_document(session.to_document())
    assert not restored.escape_handler.is_allowed(str(tmp_path))


def test_approved_concrete_path_is_not_a_wildcard() -> None:
    pattern = pattern_for_action(FileRead(path="/tmp/*"))
    assert isinstance(pattern, FilePattern)
    assert pattern.matches(FileRead(path="/tmp/*"), None)
    assert not pattern.matches(FileRead(path="/tmp/secret"), None)


def test_session_allowances_round_trip_in_the_document() -> None:
    session = AgentSession("p")
    grant = Allowance.create(ExactTool(server="fs", tool="read"), session_only=True)
    session.add_session_allowance(grant)
    restored = AgentSession.from_document(session.to_document())
    assert [a.id for a in restored.allowance_store.export_session_allowances()] == [grant.id]


def test_git_capture_runs_only_when_given() -> None:
    from astrid import GitState

    calls: list[Path] = []

    def capture(path: Path) -> GitState:
        calls.append(path)
        return GitState(branch="main", commit="abc")

    session = AgentSession("p").with_workspace("/ws")
    assert session.to_document().git_state is None
    assert session.to_document(git_capture=capture).git_state == GitState(
        branch="main", commit="abc"
    )
    assert calls == [Path("/ws")]
    # the last captured state is kept and written back
    assert AgentSession.from_document(session.to_document()).git_state == GitState(
        branch="main", commit="abc"
    )


def test_recount_tokens_uses_the_current_estimator() -> None:
    session = AgentSession("p", token_estimator=OriginalEstimator())
    session.add_message(Message.user("12345678"))
    session.add_message(Message.assistant_with_tools([ToolCall(id="1", name="x")]))
    assert session.token_count == 102
    session.with_token_estimator(ContentEstimator())
    recounted = session.recount_tokens()
    assert recounted == session.token_count
    assert recounted != 102 and recounted > 0


# -- the message list records every edit (issue 14 item 8) -----------------------------------


def _saved_list(n: int) -> MessageList:
    return MessageList(Message.user(f"m{i}") for i in range(n))


def test_appends_are_not_recorded_as_changes() -> None:
    messages = _saved_list(3)
    messages.append(Message.user("a"))
    messages.extend([Message.user("b")])
    messages += [Message.user("c")]
    messages *= 1
    assert messages.changes.rewritten_from is None


@pytest.mark.parametrize(
    ("edit", "low"),
    [
        (lambda m: m.__setitem__(1, Message.user("x")), 1),
        (lambda m: m.__setitem__(-1, Message.user("x")), 3),
        (lambda m: m.__setitem__(slice(2, None), []), 2),
        (lambda m: m.__setitem__(slice(None, None, -2), [Message.user("x")] * 2), 0),
        (lambda m: m.__delitem__(-2), 2),
        (lambda m: m.insert(-1, Message.user("x")), 3),
        (lambda m: m.insert(100, Message.user("x")), 4),
        (lambda m: m.pop(), 3),
        (lambda m: m.pop(1), 1),
        (lambda m: m.remove(Message.user("m2")), 2),
        (lambda m: m.clear(), 0),
        (lambda m: m.sort(key=lambda x: x.text() or ""), 0),
        (lambda m: m.reverse(), 0),
        (lambda m: m.__imul__(0), 0),
    ],
)
def test_every_other_edit_records_the_lowest_index_changed(
    edit: Callable[[MessageList], object], low: int
) -> None:
    messages = _saved_list(4)
    edit(messages)
    assert messages.changes.rewritten_from == low
    messages.append(Message.user("later"))
    assert messages.changes.rewritten_from == low


def test_a_failed_edit_is_not_recorded() -> None:
    messages = _saved_list(2)
    with pytest.raises(IndexError):
        messages.pop(5)
    with pytest.raises(ValueError):
        messages.remove(Message.user("absent"))
    assert messages.changes.rewritten_from is None


def test_the_change_set_keeps_what_a_write_carries_until_it_is_recorded() -> None:
    messages = _saved_list(4)
    changes = messages.changes
    messages[2] = Message.user("x")
    changes.begin_write()  # a store writes what was recorded so far
    assert changes.rewritten_from == 2  # still pending until the write is recorded
    messages[3] = Message.user("y")
    changes.begin_write()  # the first write failed: this one carries its change too
    assert changes.rewritten_from == 2
    messages[3] = Message.user("z")  # an edit while the write runs
    changes.stored(object(), 1, 4, 0, None, messages=True)
    assert changes.rewritten_from == 3  # only what changed after the write began


def test_assigning_a_list_keeps_the_record_of_the_messages_it_shares() -> None:
    session = AgentSession("p")
    for i in range(3):
        session.add_message(Message.user(f"m{i}"))
    changes = session.changes
    old = session.messages
    session.messages = [*old, Message.user("more")]
    assert isinstance(session.messages, MessageList) and session.messages is not old
    assert session.messages.changes is changes and changes.rewritten_from is None
    old.pop()  # the old list is detached: its edits are not the session's
    assert changes.rewritten_from is None
    session.messages = [session.messages[0], Message.user("x"), *session.messages[2:]]
    assert changes.rewritten_from == 1
    own = MessageList([Message.user("own")])
    session.messages = own  # a list of no session is kept, and records here from now on
    assert session.messages is own and own.changes is changes
    assert changes.rewritten_from == 0
    other = AgentSession("q")
    other.messages = own  # a list of another session is copied
    assert other.messages is not own and session.messages is own
    session.clear_messages()
    assert session.messages == [] and changes.rewritten_from == 0


def test_a_copy_of_the_list_has_a_change_set_of_its_own() -> None:
    session = AgentSession("p")
    session.add_message(Message.user("m"))
    messages = session.messages
    for clone in (copy.copy(messages), copy.deepcopy(messages)):
        assert isinstance(clone, MessageList) and clone == messages
        assert clone.changes is not session.changes
        clone[0] = Message.user("x")
        assert session.changes.rewritten_from is None
    assert type(messages[:]) is list and type(messages.copy()) is list
