"""``AstridBudgetHooks``: ``RunHooks`` that guard an Agents SDK run with astrid's budgets.

Before every model call (``on_llm_start``) the stored session budget, and the workspace budget
when one is given, are read from the store; an exhausted one raises ``BudgetExceeded`` and the
SDK aborts the run before the request goes out. After every model response (``on_llm_end``) its
usage is priced the way astrid's runtime prices a turn (``RuntimeConfig.price``: ``[pricing]``,
genai-prices, the default prices) and charged to both budgets in the store, with a spend-ledger
row. The spend is read back from the store each time, so it holds across restarts, processes and
sub-agents: pass the same hooks to ``Runner.run`` (handoffs use them) and to ``Agent.as_tool``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.agent import Agent
from agents.items import ModelResponse, TResponseInputItem
from agents.lifecycle import RunHooks
from agents.run_context import RunContextWrapper
from astrid.errors import BudgetExceeded, ConcurrencyError
from astrid.ledger import KIND_SUBAGENT_TURN, KIND_TURN, LedgerRow, new_row_id, usd
from astrid.llm import Usage
from astrid.money import money
from astrid.offload import read_in_thread
from astrid.runtime import RuntimeConfig
from astrid.security.budget import Exceeded
from astrid.session import AgentSession
from astrid.store import workspace_key

from .session import AstridSession

__all__ = ["AstridBudgetHooks", "model_name"]

PROVIDER = "openai-agents"
"""The ``provider`` of the spend-ledger rows these hooks write."""


def model_name(agent: Agent[Any]) -> str:
    """The model an agent calls: its name, or the ``model`` of a ``Model`` object."""
    model = agent.model
    if isinstance(model, str):
        return model
    name = getattr(model, "model", None)
    return name if isinstance(name, str) else "unknown"


class AstridBudgetHooks(RunHooks[Any]):
    """Refuse a model call once the stored session (or workspace) budget is spent; charge
    each response's usage to it.

    ``session``: the ``AstridSession`` whose astrid session carries the budget (its limits are
    the store's ``budget`` when the session is created). ``workspace``: charge that workspace's
    shared budget too (``workspace_max_usd`` defaults to the store's). ``pricing``: astrid's
    prices (default ``RuntimeConfig()``). ``estimate_usd``: also refuse a call that this much
    would take over a budget (0: refuse only once a budget is spent).
    """

    def __init__(
        self,
        session: AstridSession,
        *,
        workspace: str | Path | None = None,
        workspace_max_usd: float | None = None,
        pricing: RuntimeConfig | None = None,
        estimate_usd: float = 0.0,
    ) -> None:
        self.session = session
        self.store = session.store
        self.workspace = workspace_key(workspace) if workspace is not None else None
        self.workspace_max_usd = workspace_max_usd
        self.pricing = pricing if pricing is not None else RuntimeConfig()
        self.estimate_usd = estimate_usd
        self._first_agent: str | None = None

    async def _stored(self) -> AgentSession:
        """The stored session's state (no messages), with its workspace budget attached."""
        session = await self.session.astrid_session(tail=0)
        if self.workspace is not None:
            await self.store.aattach_workspace(
                session, self.workspace, max_usd=self.workspace_max_usd
            )
        return session

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        """Raise ``BudgetExceeded`` (naming the session, agent and budget) instead of a call."""
        if self._first_agent is None:
            self._first_agent = agent.name
        session = await self._stored()
        refused: list[str] = []
        tracker = session.budget_tracker
        estimate = self.estimate_usd
        if tracker.remaining() <= 0 or isinstance(tracker.check_budget(estimate), Exceeded):
            limit = tracker.config().session_max_usd
            refused.append(f"session budget: {money(tracker.spent())} spent of {money(limit)}")
        workspace = session.workspace_budget_tracker
        left = workspace.remaining() if workspace is not None else None
        if workspace is not None and (
            (left is not None and left <= 0)
            or isinstance(workspace.check_budget(estimate), Exceeded)
        ):
            refused.append(
                f"workspace budget of {self.workspace}: {money(workspace.spent())} spent of "
                f"{money(workspace.max_usd())}"
            )
        if refused:
            more = f" (estimate {money(estimate)})" if estimate else ""
            raise BudgetExceeded(
                f"astrid session {self.session.astrid_id} (Agents SDK session "
                f"{self.session.session_id!r}): the model call of agent {agent.name!r} is "
                f"refused{more}: {'; '.join(refused)}"
            )

    async def on_llm_end(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        response: ModelResponse,
    ) -> None:
        """Charge the response's usage to the stored budgets (retried on a concurrent save)."""
        reported = response.usage
        usage = Usage(
            input_tokens=reported.input_tokens,
            output_tokens=reported.output_tokens,
            cache_read_tokens=reported.input_tokens_details.cached_tokens or 0,
            reasoning_tokens=reported.output_tokens_details.reasoning_tokens or 0,
        )
        model = model_name(agent)
        cost, _source = await read_in_thread(self.pricing.price, model, usage)
        kind = KIND_TURN if agent.name == self._first_agent else KIND_SUBAGENT_TURN
        while True:
            session = await self._stored()
            session.budget_tracker.record_cost(cost)
            workspace = session.workspace_budget_tracker
            if workspace is not None:
                workspace.record_cost(cost)
            session.changes.ledger.append(
                LedgerRow(
                    id=new_row_id(),
                    session_id=session.id.bare,
                    parent_session_id=None,
                    workspace=self.workspace,
                    workspace_charged=workspace is not None,
                    model=model,
                    provider=PROVIDER,
                    kind=kind,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=0,
                    reasoning_tokens=usage.reasoning_tokens,
                    usage_reported=True,
                    reserved_usd=usd(0),
                    cost_usd=usd(cost),
                )
            )
            try:
                await self.store.asave_state(session)
            except ConcurrencyError:
                if workspace is not None:
                    workspace.refund_cost(cost)
                continue
            if workspace is not None:
                await self.store.asave_workspace_of(session)
            return
