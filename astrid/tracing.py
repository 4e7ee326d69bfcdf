"""OpenTelemetry spans for agent turns, model calls and tool executions (GenAI conventions).

Tracing is optional: astrid never imports ``opentelemetry`` itself unless the host has (a host
that configures a ``TracerProvider`` has imported ``opentelemetry.trace``) or has handed astrid a
provider with :func:`set_tracer_provider`. Otherwise every function here is a dictionary lookup
and a shared no-op context manager. Spans carry names, ids, counts and costs, never prompt,
message, tool-argument, tool-output or error-message text (they may hold private content).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

__all__ = [
    "allowed_event",
    "model_finish",
    "model_span",
    "model_usage",
    "refusal_event",
    "security_event",
    "set_tracer_provider",
    "tool_result",
    "tool_span",
    "turn_span",
]

_NOOP: AbstractContextManager[Any] = nullcontext()
_provider: Any = None
"""The provider :func:`set_tracer_provider` gave, else ``None`` (the global one is used)."""
_tracer: Any = None
_tracer_for: Any = None
"""The provider ``_tracer`` came from (``False`` for the global one)."""


def set_tracer_provider(provider: Any) -> None:
    """Use ``provider`` (an OpenTelemetry ``TracerProvider``) for astrid's spans instead of the
    global one; ``None`` goes back to the global provider. For hosts and tests that cannot set
    the global provider (OpenTelemetry lets it be set once per process)."""
    global _provider
    _provider = provider


def _active_tracer() -> Any:
    """The tracer, or ``None`` when nobody in the process uses OpenTelemetry (nothing imported)."""
    global _tracer, _tracer_for
    provider = _provider
    if provider is None and "opentelemetry.trace" not in sys.modules:
        return None
    key = provider if provider is not None else False
    if _tracer is None or _tracer_for is not key:
        from opentelemetry import trace

        from ._version import __version__

        source = provider if provider is not None else trace
        _tracer = source.get_tracer("astrid", __version__)
        _tracer_for = key
    return _tracer


@contextmanager
def _span(tracer: Any, name: str, kind: str, attributes: dict[str, Any]) -> Iterator[Any]:
    """A current span: an exception leaving it sets status ERROR and ``error.type`` (the type
    only: a message may quote private content)."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    with tracer.start_as_current_span(
        name,
        kind=getattr(SpanKind, kind),
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            kind_name = type(exc).__qualname__
            span.set_attribute("error.type", kind_name)
            span.set_status(Status(StatusCode.ERROR, kind_name))
            raise


def turn_span(
    session_id: str,
    *,
    agent_name: str | None = None,
    agent_id: str | None = None,
    parent_session_id: str | None = None,
) -> AbstractContextManager[Any]:
    """The ``invoke_agent`` span of one turn (``gen_ai.conversation.id`` is the session id)."""
    tracer = _active_tracer()
    if tracer is None:
        return _NOOP
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.conversation.id": session_id,
    }
    if agent_name:
        attributes["gen_ai.agent.name"] = agent_name
    if agent_id:
        attributes["gen_ai.agent.id"] = agent_id
    if parent_session_id:
        attributes["astrid.parent_session.id"] = parent_session_id
    return _span(tracer, f"invoke_agent {agent_name or 'astrid'}", "INTERNAL", attributes)


def model_span(
    model: str, provider: str, *, purpose: str | None = None
) -> AbstractContextManager[Any]:
    """The ``chat <model>`` span of one LLM call (``purpose``: e.g. ``summarization``)."""
    tracer = _active_tracer()
    if tracer is None:
        return _NOOP
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.provider.name": provider,
    }
    if purpose:
        attributes["astrid.purpose"] = purpose
    return _span(tracer, f"chat {model}", "CLIENT", attributes)


def model_usage(
    input_tokens: int | None,
    output_tokens: int | None,
    cost_usd: float,
    *,
    cache_read_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> None:
    """Record a settled call's usage (``None``: not reported) and cost on the current span."""
    span = _current()
    if span is None:
        return
    if input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    if output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if cache_read_tokens:
        span.set_attribute("gen_ai.usage.cache_read.input_tokens", cache_read_tokens)
    if reasoning_tokens:
        span.set_attribute("astrid.usage.reasoning_tokens", reasoning_tokens)
    span.set_attribute("astrid.usage.reported", input_tokens is not None)
    span.set_attribute("astrid.cost_usd", cost_usd)


def model_finish(reasons: Sequence[str]) -> None:
    """Record the response's finish reasons (the ``Stop`` event's) on the current span."""
    span = _current()
    if span is not None:
        span.set_attribute("gen_ai.response.finish_reasons", list(reasons))


def tool_span(name: str, call_id: str) -> AbstractContextManager[Any]:
    """The ``execute_tool <name>`` span of one tool call, checks included."""
    tracer = _active_tracer()
    if tracer is None:
        return _NOOP
    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": "function",
    }
    return _span(tracer, f"execute_tool {name}", "INTERNAL", attributes)


def tool_result(is_error: bool) -> None:
    """Mark the current tool span failed when the call's result is an error (not raised)."""
    if not is_error:
        return
    span = _current()
    if span is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", "tool_error")
        span.set_status(Status(StatusCode.ERROR, "tool_error"))


def security_event(name: str, **attributes: str | int | float | bool) -> None:
    """A span event ``astrid.<name>`` (e.g. ``approval.granted``) on the current span."""
    span = _current()
    if span is not None:
        span.add_event(f"astrid.{name}", {f"astrid.{k}": v for k, v in attributes.items()})


def refusal_event(exc: BaseException, **attributes: str | int | float | bool) -> None:
    """The event for a check that stopped an action, named after the refusing error."""
    if _active_tracer() is None:
        return
    from .errors import ApprovalDeferred, ApprovalDenied, BudgetExceeded, PolicyBlocked

    if isinstance(exc, PolicyBlocked):
        name = "policy.blocked"
    elif isinstance(exc, ApprovalDeferred):
        name = "approval.deferred"
    elif isinstance(exc, ApprovalDenied):
        name = "approval.denied"
    elif isinstance(exc, BudgetExceeded):
        name = "budget.refused"
    else:
        name = "approval.failed"
    security_event(name, error_type=type(exc).__qualname__, **attributes)


def _current() -> Any:
    """The current recording span, or ``None``."""
    if _active_tracer() is None:
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    return span if span.is_recording() else None


def allowed_event(proof: object, action_type: str) -> None:
    """The event for an action the checks let through, named after what allowed it."""
    if _active_tracer() is None:
        return
    kind = type(proof).__name__
    if kind == "PolicyAllowed":
        name = "policy.allowed"
    elif kind == "Capability":
        name = "capability.used"
    else:
        name = "approval.granted"
    security_event(name, action_type=action_type, proof=kind)
