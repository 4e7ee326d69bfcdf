"""Every astrid hook, grouped by subsystem. A plugin implements them with ``@astrid.hookimpl``.

Registry hooks receive a ``register`` callback (the llm convention): call it once per
implementation with the name the TOML config uses, a factory, and a pydantic model of options.
Hooks are synchronous; the objects factories return may have async methods.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("astrid")
hookimpl = pluggy.HookimplMarker("astrid")


# -- storage --------------------------------------------------------------------------------


@hookspec
def register_storage_backends(register: Any) -> None:
    """Register session storage backends.

    ``register(name, factory, options=Model, description="")``; ``factory(options, context)``
    returns an object satisfying ``astrid.store.StorageBackend``.
    """


@hookspec
def register_capability_stores(register: Any) -> None:
    """Register capability-token stores.

    ``factory(options, context)`` returns an ``astrid.security.capabilities.CapabilityBackend``
    (persistent tokens, revocations and used single-use ids).
    """


# -- context --------------------------------------------------------------------------------


@hookspec
def register_token_estimators(register: Any) -> None:
    """Register token estimators.

    ``factory(options, context)`` returns an ``astrid.tokens.TokenEstimator``.
    """


# -- workspace ------------------------------------------------------------------------------


@hookspec
def register_git_capture(register: Any) -> None:
    """Register ways of reading a workspace's git state.

    ``factory(options, context)`` returns a callable ``(Path) -> GitState | None``.
    """


# -- context --------------------------------------------------------------------------------


@hookspec
def register_summarizers(register: Any) -> None:
    """Register summarizers used by the context manager to compact old turns.

    ``factory(options, context)`` returns an ``astrid.context.Summarizer`` (an object with
    ``async summarize(messages, *, provider=None) -> str``).
    """


# -- the turn loop --------------------------------------------------------------------------


@hookspec
def register_llm_providers(register: Any) -> None:
    """Register LLM providers.

    ``factory(options, context)`` returns an ``astrid.llm.LLMProvider`` (``stream`` yields
    ``astrid.llm`` stream events: text deltas, tool calls, usage, done, error).
    """


@hookspec
def register_tools(register: Any) -> None:
    """Register tools the agent may call.

    ``factory(options, context)`` returns an ``astrid.tools.Tool`` (name, description, JSON
    schema of its arguments, ``async run(arguments, ctx) -> str``).
    """


@hookspec
def register_toolsets(register: Any) -> None:
    """Register toolsets: sources of tools known only after an async connect (MCP servers).

    ``register(name, factory, options=Model, description="")``; ``factory(options, context)``
    returns an ``astrid.tools.Toolset`` (``name``, ``async open() -> list[Tool]``,
    ``async aclose()``). A toolset named X takes its options from the top-level TOML table
    ``[X]``; the runtime opens it once when entered (``async with``) and closes it on exit.
    """


@hookspec(firstresult=True)
def pre_tool_call(session: Any, tool_name: str, arguments: Any) -> str | None:
    """Called before a tool runs; return a reason (a non-empty string) to block the call.

    The first plugin that returns a reason wins; the model receives it as an error result.
    """


@hookspec
def post_tool_call(
    session: Any, tool_name: str, arguments: Any, result: str, is_error: bool
) -> None:
    """Called after a tool ran (or failed, with ``is_error`` True). Informational."""
