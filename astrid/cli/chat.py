"""``astrid chat``: an interactive session in the terminal with the configured provider."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..config import LoadedConfig
from ._common import (
    EXIT_USAGE,
    CliApprover,
    ask_at_terminal,
    compact,
    echo_turn,
    error,
    load,
    money,
    one_line,
    open_session,
)

if TYPE_CHECKING:
    import asyncio

    from ..messages import ToolCall
    from ..runtime import AgentRuntime
    from ..security.approvals import ApprovalDecision
    from ..security.deferred import ApprovalRequest
    from ..session import AgentSession

PROMPT = "you> "

HELP = """\
  Type a message and press Enter; the answer streams in as it arrives.
  /help     this list
  /cost     the session's and the workspace's spend and limits
  /session  the session id, message count and model
  /compact  summarize older messages now
  Ctrl-C cancels the running turn; Ctrl-D leaves."""


def _limit(value: float | None) -> str:
    return "no limit" if value is None else money(value)


class _Chat:
    """One chat on one session: reads lines, runs turns, shows them as they stream."""

    def __init__(self, runtime: AgentRuntime, session: AgentSession) -> None:
        self.runtime = runtime
        self.session = session
        self.turn: asyncio.Task[object] | None = None
        self.asking = False  # an approval prompt is reading the terminal
        self.line_open = False  # streamed text left the cursor mid-line

    async def decide(self, request: ApprovalRequest) -> tuple[ApprovalDecision, str]:
        """Ask the terminal (run's prompt); Ctrl-C waits while it reads the answer."""
        self.end_line()
        self.asking = True
        try:
            return await ask_at_terminal(request)
        finally:
            self.asking = False

    def say(self, text: str) -> None:
        self.end_line()
        click.echo(text)

    def end_line(self) -> None:
        if self.line_open:
            click.echo()
            self.line_open = False

    def show_text(self, piece: str) -> None:
        click.echo(piece, nl=False)
        sys.stdout.flush()
        self.line_open = not piece.endswith("\n")

    def show_call(self, call: ToolCall) -> None:
        self.say(f"  [call] {call.name} {compact(call.arguments)}")

    def interrupt(self) -> None:
        """Ctrl-C: cancel the running turn (not while an approval prompt reads the terminal)."""
        if self.asking:
            click.echo("\n  (answer the approval first; n denies)", err=True)
        elif self.turn is not None and not self.turn.done():
            self.turn.cancel()
        else:
            click.echo(f"\n  (Ctrl-D leaves)\n{PROMPT}", nl=False)

    def spend(self) -> tuple[float, float, float | None, float | None]:
        """Session spend and limit, workspace spend and limit (None: no workspace limit)."""
        tracker = self.session.budget_tracker
        workspace = self.session.workspace_budget_tracker
        return (
            tracker.spent(),
            tracker.config().session_max_usd,
            workspace.spent() if workspace is not None else None,
            workspace.max_usd() if workspace is not None else None,
        )

    async def run_turn(self, text: str) -> None:
        """One turn as a task Ctrl-C can cancel; an error is one line and the chat goes on."""
        import asyncio

        store = self.runtime.store
        assert store is not None  # open_runtime always opens the configured store
        self.turn = asyncio.create_task(
            self.runtime.run_turn(
                self.session, text, on_text=self.show_text, on_tool_call=self.show_call
            )
        )
        try:
            await asyncio.wait([self.turn])
        finally:
            await store.asave_workspace_of(self.session)
        self.end_line()
        if self.turn.cancelled():
            click.echo("\n  [cancelled] the turn was stopped; the session is "
                       "saved as it stood")
            return
        exc = self.turn.exception()
        if exc is not None:
            error(one_line(exc))
            return
        from ..runtime import TurnResult

        result = self.turn.result()
        assert isinstance(result, TurnResult)
        echo_turn(result, self.say, streamed=True)
        session_spent, session_max, _, _ = self.spend()
        click.echo(f"  [spend] {money(result.cost_usd)} this turn, {money(session_spent)} of "
                   f"{money(session_max)} this session")

    async def command(self, text: str) -> None:
        """A /command."""
        name = text.split()[0].lower()
        if name == "/help":
            click.echo(HELP)
        elif name == "/cost":
            session_spent, session_max, workspace_spent, workspace_max = self.spend()
            per_action = self.session.budget_tracker.config().per_action_max_usd
            click.echo(f"  session    {money(session_spent)} of {money(session_max)} "
                       f"(at most {money(per_action)} a call)")
            if workspace_spent is None:
                click.echo("  workspace  not tracked")
            else:
                click.echo(f"  workspace  {money(workspace_spent)} of {_limit(workspace_max)}")
        elif name == "/session":
            provider = self.runtime.provider
            label = getattr(provider, "name", type(provider).__name__)
            click.echo(f"  session    {self.session.id.bare}")
            click.echo(f"  messages   {len(self.session.messages)}")
            click.echo(f"  model      {self.session.model or provider.model} ({label})")
        elif name == "/compact":
            try:
                result = await self.runtime.compact(self.session)
            except Exception as exc:
                error(one_line(exc))
                return
            done = result.summarization
            if done is None or done.messages_evicted == 0:
                click.echo("  nothing to compact: the recent messages are all kept")
            else:
                click.echo(f"  [compact] {done.messages_evicted} older messages summarized "
                           f"({done.tokens_freed} tokens freed), {money(result.cost_usd)}; the "
                           "originals stay in the session's history")
        else:
            click.echo(f"  unknown command {name}; /help lists them")


async def _chat(loaded: LoadedConfig, session_ref: str | None) -> None:
    """Open the runtime and the session, then read and answer lines until end of input."""
    import asyncio
    import signal

    from ..runtime import open_runtime

    chat: _Chat | None = None

    async def decide(request: ApprovalRequest) -> tuple[ApprovalDecision, str]:
        assert chat is not None
        return await chat.decide(request)

    def say(text: str) -> None:
        click.echo(text) if chat is None else chat.say(text)

    async with open_runtime(loaded, approval_handler=CliApprover(decide, say)) as runtime:
        session = await open_session(runtime, session_ref)
        chat = _Chat(runtime, session)
        click.echo(f"session {session.id.bare} ({len(session.messages)} messages); "
                   "/help for commands, Ctrl-D leaves")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, chat.interrupt)
        try:
            while True:
                try:
                    line = (await asyncio.to_thread(input, PROMPT)).strip()
                except EOFError:
                    click.echo()
                    return
                if line.startswith("/"):
                    await chat.command(line)
                elif line:
                    await chat.run_turn(line)
        finally:
            loop.remove_signal_handler(signal.SIGINT)


@click.command("chat")
@click.option("--session", "session_ref", metavar="ID", help="Continue a stored session "
              "(a unique id prefix of 6+ hex digits is enough); default: a new session.")
@click.pass_context
def chat(ctx: click.Context, session_ref: str | None) -> None:
    """Talk with the configured model in the terminal (Ctrl-C cancels a turn, Ctrl-D leaves)."""
    import asyncio

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        error("astrid chat needs a terminal; without one use astrid run PROMPT "
              "(or astrid run - to read it from standard input)")
        ctx.exit(EXIT_USAGE)
    asyncio.run(_chat(load(ctx), session_ref))
