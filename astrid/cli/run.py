"""``astrid run PROMPT``: one turn with the configured provider, tools, policy and budgets."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click

from ..config import LoadedConfig
from ._common import (
    EXIT_USAGE,
    CliApprover,
    ask_at_terminal,
    echo_json,
    echo_turn,
    error,
    json_option,
    load,
    open_session,
    turn_data,
)

if TYPE_CHECKING:
    from ..runtime import TurnResult
    from ..security.approvals import ApprovalDecision
    from ..security.deferred import ApprovalRequest

APPROVE_MODES = ("deny", "ask", "policy")

_Decide = Callable[["ApprovalRequest"], Awaitable[tuple["ApprovalDecision", str]]]


def _refuse(mode: str) -> _Decide:
    """A decision that denies every request reaching a human (``deny`` and ``policy``)."""

    async def refuse(_request: ApprovalRequest) -> tuple[ApprovalDecision, str]:
        from ..security.approvals import Deny

        return Deny(reason=f"astrid run --approve {mode}: no one to ask"), (
            f"denied (--approve {mode})"
        )

    return refuse


async def _run_turn(
    loaded: LoadedConfig, prompt: str, session_ref: str | None, mode: str,
    say: Callable[[str], None],
) -> tuple[str, TurnResult]:
    """Open the runtime, load or create the session, run one turn, save its workspace state."""
    from ..runtime import open_runtime

    decide: _Decide = ask_at_terminal if mode == "ask" else _refuse(mode)
    async with open_runtime(loaded, approval_handler=CliApprover(decide, say)) as runtime:
        session = await open_session(runtime, session_ref)
        say(f"session {session.id.bare}")
        try:
            result = await runtime.run_turn(session, prompt)
        finally:
            assert runtime.store is not None  # open_runtime always opens the configured store
            await runtime.store.asave_workspace_of(session)
        return session.id.bare, result


@click.command("run")
@click.argument("prompt")
@click.option("--session", "session_ref", metavar="ID", help="Continue a stored session "
              "(a unique id prefix of 6+ hex digits is enough); default: a new session.")
@click.option(
    "--approve",
    type=click.Choice(APPROVE_MODES),
    help="Approvals: deny (default without a terminal), ask (default on a terminal), or policy "
    "(only what the policy and stored allowances allow).",
)
@json_option
@click.pass_context
def run(
    ctx: click.Context, prompt: str, session_ref: str | None, approve: str | None, as_json: bool
) -> None:
    """Run one turn of PROMPT ('-' reads it from standard input) with the configured model."""
    import asyncio

    interactive = sys.stdin.isatty()
    if prompt == "-":
        prompt = sys.stdin.read().strip()
        interactive = False  # stdin carried the prompt: nobody can answer on it
    if not prompt.strip():
        error("the prompt is empty")
        ctx.exit(EXIT_USAGE)
    mode = approve or ("ask" if interactive else "deny")
    if mode == "ask" and not interactive:
        error("--approve ask needs a terminal on standard input; use --approve deny or policy")
        ctx.exit(EXIT_USAGE)
    say: Callable[[str], None] = (lambda _text: None) if as_json else click.echo
    session_id, result = asyncio.run(_run_turn(load(ctx), prompt, session_ref, mode, say))
    if as_json:
        echo_json({"session_id": session_id, "approve": mode, **turn_data(result)})
        return
    echo_turn(result, say)
