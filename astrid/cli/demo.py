"""``astrid demo``: a scripted agent session (tool call, approval, sub-agent, summary), shown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..security.escape import NeverAllowed, WorkspaceConfig
from ..store import open_store
from ..transfer import all_summaries
from ._common import CliApprover, echo_json, echo_turn, json_option, load
from .sessions import print_session, session_view

DEMO_NOTES = "buy milk, eggs and bread\ncall the plumber on Tuesday\n"
DEMO_PROMPTS = (
    "What is in notes.txt?",
    "Ask a helper to plan my errands.",
    "Thanks!",
)


def _usage(tokens_in: int, tokens_out: int) -> dict[str, Any]:
    return {"usage": {"input_tokens": tokens_in, "output_tokens": tokens_out}}


DEMO_SCRIPT: list[list[dict[str, Any]]] = [
    # Turn 1: the model reads a file (the approval handler approves it for the session).
    [
        {"text": "Let me read the notes."},
        {"tool_call": {"id": "call_1", "name": "read_file", "arguments": {"path": "notes.txt"}}},
        _usage(120, 30),
    ],
    [
        {"text": "The notes say: buy milk, eggs and bread, and call the plumber on Tuesday."},
        _usage(200, 25),
    ],
    # Turn 2: the model delegates to a sub-agent through the `task` tool.
    [
        {
            "tool_call": {
                "id": "call_2",
                "name": "task",
                "arguments": {
                    "description": "plan errands",
                    "prompt": "Plan the errands: buy milk, eggs and bread; call the plumber.",
                },
            }
        },
        _usage(260, 40),
    ],
    [{"text": "Monday: groceries. Tuesday: call the plumber."}, _usage(80, 20)],
    [
        {"text": "A helper planned it: groceries on Monday, the plumber on Tuesday."},
        _usage(320, 25),
    ],
    # Turn 3: the context is over its (small) limit, so older turns are summarized first.
    [{"text": "You're welcome!"}, _usage(150, 5)],
]
"""The model's side of the demo, replayed by the ``scripted`` provider."""


async def _approve_for_session(_request: Any) -> tuple[Any, str]:
    """The demo's decision: approve for the session (a real host would ask its user here)."""
    from ..security.approvals import ApproveSession

    return ApproveSession(), "approved for this session"


def _demo_workspace(root: Path) -> tuple[WorkspaceConfig, list[str]]:
    """The demo's workspace, without the never-allowed entries that contain it (and those).

    Run as root, the home (``/root/.astrid``) lies under the default ``/root`` entry, which
    would block every file the demo reads; a host's own workspace keeps the full list.
    """
    config = WorkspaceConfig(root=str(root))
    lifted = [entry for entry in config.never_allowed if NeverAllowed([entry]).covers(root)]
    kept = [entry for entry in config.never_allowed if entry not in lifted]
    return config.model_copy(update={"never_allowed": kept}), lifted


@click.command("demo")
@click.option(
    "--workspace",
    metavar="DIR",
    help="The demo's workspace directory (default <home>/demo-workspace).",
)
@json_option
@click.pass_context
def demo(ctx: click.Context, workspace: str | None, as_json: bool) -> None:
    """Run a scripted agent session (tool call, approval, sub-agent, summary) and show it."""
    import asyncio

    from ..default_plugins.scripted_provider import ScriptedProvider
    from ..runtime import AgentRuntime, RuntimeConfig

    loaded = load(ctx)
    root = Path(workspace) if workspace else loaded.home / "demo-workspace"
    say: Callable[[str], None] = (lambda _text: None) if as_json else click.echo
    with open_store(loaded) as store:
        # After the store: it creates the astrid home private (0700); mkdir would not.
        root.mkdir(parents=True, exist_ok=True)
        (root / "notes.txt").write_text(DEMO_NOTES, encoding="utf-8")
        workspace_config, lifted = _demo_workspace(root)
        runtime = AgentRuntime(
            ScriptedProvider(DEMO_SCRIPT),
            store=store,
            config=RuntimeConfig(
                workspace=workspace_config, max_context_tokens=160, keep_recent_count=2
            ),
            approval_handler=CliApprover(_approve_for_session, say),
        )
        session = runtime.create_session("You are a helpful assistant.")
        store.attach_workspace(session, root)
        say(
            "astrid demo: the model is scripted (the offline `scripted` provider replays a "
            "fixed conversation; no network, no API key); the tools, approvals, budget and "
            "store are real."
        )
        say(f"demo session {session.id.bare} ({store.backend_name} store, workspace {root})")
        for entry in lifted:
            say(
                f"  [note] the demo workspace is under {entry}, a never-allowed directory (as "
                "root's home is); the demo lifts that entry for this run only"
            )
        for prompt in DEMO_PROMPTS:
            say(f"> {prompt}")
            result = asyncio.run(runtime.run_turn(session, prompt))
            echo_turn(result, say)
        store.save_workspace_of(session)
        children = [
            row.id for row in all_summaries(store) if row.parent_id == session.id.bare
        ]
        view = session_view(store, session.id.bare, last=50)
    if as_json:
        echo_json({"session": view, "children": children})
        return
    for child in children:
        click.echo(f"  [sub-agent] session {child}: astrid sessions show {child}")
    click.echo("")
    print_session(view)
