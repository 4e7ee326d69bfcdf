"""Quickstart: a session, a few messages, a recorded cost, a child session, the document.

Run with ``make run`` (or ``python examples/quickstart.py``). It needs no network and no key.
"""

from __future__ import annotations

from astrid import AgentSession, Message, ToolCall, ToolCallResult


def main() -> None:
    session = AgentSession("You are a careful coding assistant.").with_model("scripted-1")
    session.add_message(Message.user("What does a.txt say?"))
    session.add_message(
        Message.assistant_with_tools(
            [ToolCall(id="call_1", name="read_file", arguments={"path": "a.txt"})]
        )
    )
    session.add_message(Message.tool_result(ToolCallResult.success("call_1", "hello")))
    session.add_message(Message.assistant("It says hello."))
    session.budget_tracker.record_cost(0.0123)

    child = session.child("You summarise files.")
    child.add_message(Message.user("Summarise a.txt"))
    child.budget_tracker.record_cost(0.002)  # the same tracker object as the parent's

    print(f"session {session.id.bare}: {len(session.messages)} messages, "
          f"{session.token_count} tokens, ${session.budget_tracker.spent():.4f} spent")
    print(f"child   {child.id.bare}: parent {child.parent_id.bare if child.parent_id else None}")
    print(session.to_document().to_json_text())


if __name__ == "__main__":
    main()
