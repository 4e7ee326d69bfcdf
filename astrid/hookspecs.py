"""Every astrid hook, grouped by subsystem. A plugin implements them with ``@astrid.hookimpl``.

Registry hooks receive a ``register`` callback (the llm convention, typed by ``Register``):
call it once per implementation with the name the TOML config uses, a factory, and a pydantic
model of options. Hooks are synchronous; the objects factories return may have async methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .plugins import PluginContext
    from .session import AgentSession

hookspec = pluggy.HookspecMarker("astrid")
hookimpl = pluggy.HookimplMarker("astrid")

PLUGIN_API = 1
"""The version of the plugin API (these hooks, ``Register``, ``PluginContext``, the protocols
factories return). Raised only when a hook or an argument is removed or changes meaning, after
a release in which the old form still works and warns (docs/plugin-authors.md, "Plugin API")."""


class Register(Protocol):
    """The ``register`` callback a registry hook receives.

    ``name``: what the configuration selects; ``factory(options, context)``: builds the object
    from the validated ``options_model`` instance and a ``PluginContext``; ``options_model``: a
    pydantic model (default: no options); ``description``: one line for ``astrid plugins``.
    ``options=`` is the deprecated spelling of ``options_model=`` (a ``DeprecationWarning``).
    """

    def __call__(
        self,
        name: str,
        factory: Callable[[Any, PluginContext], object],
        options_model: type[BaseModel] = ...,
        description: str = "",
        *,
        options: type[BaseModel] | None = None,
    ) -> None: ...


# -- storage --------------------------------------------------------------------------------


@hookspec
def register_storage_backends(register: Register) -> None:
    """Register session storage backends.

    ``register(name, factory, options_model=Model, description="")``; ``factory(options,
    context)`` returns an object satisfying ``astrid.store.StorageBackend``.
    """


@hookspec
def register_capability_stores(register: Register) -> None:
    """Register capability-token stores.

    ``factory(options, context)`` returns an ``astrid.security.capabilities.CapabilityBackend``
    (persistent tokens, revocations and used single-use ids).
    """


# -- context --------------------------------------------------------------------------------


@hookspec
def register_token_estimators(register: Register) -> None:
    """Register token estimators.

    ``factory(options, context)`` returns an ``astrid.tokens.TokenEstimator``.
    """


# -- workspace ------------------------------------------------------------------------------


@hookspec
def register_git_capture(register: Register) -> None:
    """Register ways of reading a workspace's git state.

    ``factory(options, context)`` returns a callable ``(Path) -> GitState | None``.
    """


# -- context --------------------------------------------------------------------------------


@hookspec
def register_summarizers(register: Register) -> None:
    """Register summarizers used by the context manager to compact old turns.

    ``factory(options, context)`` returns an ``astrid.context.Summarizer`` (an object with
    ``async summarize(messages, *, provider=None) -> str``).
    """


# -- the turn loop --------------------------------------------------------------------------


@hookspec
def register_llm_providers(register: Register) -> None:
    """Register LLM providers.

    ``factory(options, context)`` returns an ``astrid.llm.LLMProvider`` (``stream`` yields
    ``astrid.llm`` stream events: text deltas, tool calls, usage, done, error).
    """


@hookspec
def register_tools(register: Register) -> None:
    """Register tools the agent may call.

    ``factory(options, context)`` returns an ``astrid.tools.Tool`` (name, description, JSON
    schema of its arguments, ``async run(arguments, ctx) -> str``).
    """


@hookspec
def register_toolsets(register: Register) -> None:
    """Register toolsets: sources of tools known only after an async connect (MCP servers).

    ``register(name, factory, options_model=Model, description="")``; ``factory(options,
    context)`` returns an ``astrid.tools.Toolset`` (``name``, ``async open() -> list[Tool]``,
    ``async aclose()``). A toolset named X takes its options from the top-level TOML table
    ``[X]``; the runtime opens it once when entered (``async with``) and closes it on exit.
    """


@hookspec(firstresult=True)
def pre_tool_call(
    session: AgentSession, tool_name: str, arguments: dict[str, Any]
) -> str | None:
    """Called before a tool runs; return a reason (a non-empty string) to block the call.

    The first plugin that returns a reason wins; the model receives it as an error result.
    """


@hookspec
def post_tool_call(
    session: AgentSession, tool_name: str, arguments: dict[str, Any], result: str, is_error: bool
) -> None:
    """Called after a tool ran (or failed, with ``is_error`` True). Informational."""
