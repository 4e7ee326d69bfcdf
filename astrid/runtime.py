"""``AgentRuntime``: the async turn loop (LLM, tools, approvals, budget, sub-agents).

A port of the original ``runtime`` module (spec §6.3 to §6.7) with these deliberate fixes:

* the loop has an iteration cap (``max_iterations``) and raises ``MaxIterationsExceeded``;
* budgets are enforced: before each LLM call an estimate (the session's tokens as input plus
  ``estimated_output_tokens``, priced per model) is reserved on the session and workspace
  budgets and later settled with the real usage, or released when no usage came;
* tool-call arguments are buffered per call id; malformed JSON is an error result naming the
  parse error (the original silently used ``{}``);
* text that comes with tool calls is kept, as an assistant text message before the tool calls;
* every tool call gets a result message, even when the turn fails half-way;
* the interceptor and the workspace boundary use the session's workspace when it has one;
* outside-workspace paths are approved through the interceptor and the approval manager (the
  original asked the frontend directly), ``~`` is expanded and relative paths are resolved
  against the working directory before the boundary check;
* one save per top-level turn, in ``finally`` (also when the turn fails), through
  ``store.asave``: the backend's I/O runs in a worker thread, never on the event loop (so do
  the deferred queue's writes and a persistent capability store's reads and writes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

import pluggy
from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import tracing
from .context import ContextManager, SummarizationResult, cut_utf8
from .errors import (
    AstridError,
    BudgetExceeded,
    LLMError,
    MaxIterationsExceeded,
    PluginError,
    SerializationError,
)
from .jsonutil import json_problem, storable_text
from .ledger import KIND_SUBAGENT_TURN, KIND_SUMMARIZER, KIND_TURN, LedgerRow, new_row_id, usd
from .llm import (
    CallSettings,
    Completion,
    Done,
    LLMProvider,
    LLMProviderV2,
    Stop,
    StopReason,
    StreamError,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolDefinition,
    Usage,
    complete_request,
    stream_request,
)
from .messages import Message, ToolCall, ToolCallResult
from .money import money
from .offload import read_in_thread, write_in_thread
from .plugins import Implementation, PluginContext, collect, get_plugin_manager, registry
from .security.actions import (
    ExecuteCommand,
    FileDelete,
    FileRead,
    FileWriteOutsideSandbox,
    McpToolCall,
    RiskLevel,
    SensitiveAction,
)
from .security.approvals import ApprovalDecision, ApprovalHandler, ApprovalResponse
from .security.audit import record as record_audit
from .security.budget import BudgetValidator, BudgetWarning, DualReservation
from .security.capabilities import Revocation
from .security.escape import (
    ESCAPE_CONTEXT,
    EscapeDecision,
    EscapeOperation,
    EscapeRequest,
    PathCheck,
    WorkspaceBoundary,
    WorkspaceConfig,
    resolve_path,
)
from .security.interceptor import (
    ApprovalDeferred,
    ApprovalDenied,
    AuditLog,
    CapabilityCreated,
    InterceptProof,
    PolicyBlocked,
    SecurityInterceptor,
    SessionApproval,
    describe_spend,
)
from .security.policy import SecurityPolicy
from .session import AgentSession
from .store import SessionStore, workspace_key
from .subagents import SubAgentExecutor, SubAgentId, SubAgentPool
from .tokens import RunningEstimate
from .tools import Tool, ToolContext, ToolError, Toolset, enabled_tool_names, tool_definition

if TYPE_CHECKING:
    from uuid import UUID

    from .security.crypto import KeyPair

__all__ = [
    "DEFAULT_INPUT_PER_MILLION",
    "DEFAULT_OUTPUT_PER_MILLION",
    "MAX_TOOL_OUTPUT_BYTES",
    "PATH_ARGUMENT_KEYS",
    "AgentRuntime",
    "LLMError",
    "MaxIterationsExceeded",
    "ModelPricing",
    "RuntimeConfig",
    "ToolCallRecord",
    "TurnResult",
    "classify_tool_call",
    "extract_paths_from_args",
    "infer_operation",
    "risk_level_for",
    "tokens_to_usd",
    "truncate_output",
]

logger = logging.getLogger(__name__)

DEFAULT_INPUT_PER_MILLION = 3.0
"""The original's hard-coded input price: $3 per million tokens."""

DEFAULT_OUTPUT_PER_MILLION = 15.0
"""The original's hard-coded output price: $15 per million tokens."""

MAX_TOOL_OUTPUT_BYTES = 30_000
"""Tool output longer than this (UTF-8 bytes) is cut, with a notice."""

ESTIMATE_OFF_LOOP = 256
"""A request with more messages than this to estimate (a long session's first) is counted in
a worker thread: 20 000 messages take tens of milliseconds, a thread hop about 0.1 ms."""

PATH_ARGUMENT_KEYS: frozenset[str] = frozenset(
    {
        "path",
        "file",
        "file_path",
        "filepath",
        "filename",
        "directory",
        "dir",
        "target",
        "source",
        "destination",
        "src",
        "dst",
        "input",
        "output",
        "uri",
        "url",
        "cwd",
        "working_directory",
    }
)
"""Top-level argument keys (lower-cased) whose string values may be paths."""


# -- errors ---------------------------------------------------------------------------------


# -- configuration --------------------------------------------------------------------------


class ModelPricing(BaseModel):
    """Prices of one model in USD per million tokens.

    Cache reads and writes are part of the input tokens (astrid's ``Usage`` contract) and are
    charged at their own rate instead of the input rate; reasoning tokens are part of the
    output tokens, charged at ``reasoning_per_million`` if given, else at the output rate. A
    cache rate left out is the input rate.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_per_million: float = Field(default=DEFAULT_INPUT_PER_MILLION, ge=0, allow_inf_nan=False)
    output_per_million: float = Field(
        default=DEFAULT_OUTPUT_PER_MILLION, ge=0, allow_inf_nan=False
    )
    cache_read_per_million: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    cache_write_per_million: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    reasoning_per_million: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """The USD cost of the given token counts (negative counts count as 0)."""
        return self.usage_cost(Usage(input_tokens, output_tokens))

    def usage_cost(self, usage: Usage) -> float:
        """The USD cost of ``usage``, each kind of token at its rate (negative counts as 0)."""
        read = max(0, usage.cache_read_tokens)
        write = max(0, usage.cache_write_tokens)
        plain_in = max(0, usage.input_tokens - read - write)
        reasoning = min(max(0, usage.reasoning_tokens), max(0, usage.output_tokens))
        plain_out = max(0, usage.output_tokens) - reasoning

        def rate(value: float | None, fallback: float) -> float:
            return fallback if value is None else value

        return (
            plain_in * self.input_per_million
            + read * rate(self.cache_read_per_million, self.input_per_million)
            + write * rate(self.cache_write_per_million, self.input_per_million)
            + plain_out * self.output_per_million
            + reasoning * rate(self.reasoning_per_million, self.output_per_million)
        ) / 1_000_000


def tokens_to_usd(input_tokens: int, output_tokens: int) -> float:
    """The original's cost: $3 per million input and $15 per million output tokens."""
    return ModelPricing().cost(input_tokens, output_tokens)


def builtin_price(model: str, usage: Usage) -> float | None:
    """The USD cost of ``usage`` on ``model`` from ``genai-prices`` (the ``astrid[prices]``
    extra, offline data); None when the package is not installed or does not know the model."""
    try:
        import genai_prices
    except ImportError:
        return None
    try:
        calc = genai_prices.calc_price(
            genai_prices.Usage(
                input_tokens=max(0, usage.input_tokens),
                output_tokens=max(0, usage.output_tokens),
                cache_read_tokens=max(0, usage.cache_read_tokens),
                cache_write_tokens=max(0, usage.cache_write_tokens),
            ),
            model,
        )
    except LookupError:
        return None
    except Exception:
        logger.debug("genai-prices could not price model %r", model, exc_info=True)
        return None
    return float(calc.total_price)


PriceSource = Literal["pricing", "genai-prices", "default"]
"""Where a price came from: ``[pricing]``, the built-in source, or ``[pricing.default]``."""


def _default_workspace() -> WorkspaceConfig:
    try:
        return WorkspaceConfig.new(os.getcwd())
    except OSError:
        return WorkspaceConfig.new(".")


class RuntimeConfig(BaseModel):
    """Settings of an ``AgentRuntime`` (the original's ``RuntimeConfig`` plus our additions)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_context_tokens: int = Field(default=100_000, ge=0)
    summarization_threshold: float = Field(default=0.85, allow_inf_nan=False)
    keep_recent_count: int = Field(default=10, ge=0)
    auto_summarize: bool = True
    system_prompt: str = ""
    max_iterations: int = Field(default=25, ge=1)
    max_concurrent_subagents: int = Field(default=4, ge=0)
    max_subagent_depth: int = Field(default=3, ge=0)
    default_subagent_timeout: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    workspace: WorkspaceConfig = Field(default_factory=_default_workspace)
    pricing: dict[str, ModelPricing] = Field(default_factory=dict)
    default_pricing: ModelPricing = Field(default_factory=ModelPricing)
    builtin_prices: bool = True
    estimated_output_tokens: int = Field(default=1024, ge=0)
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_tool_output_bytes: int = Field(default=MAX_TOOL_OUTPUT_BYTES, ge=1)

    @field_validator("workspace", mode="before")
    @classmethod
    def _workspace_from_path(cls, value: Any) -> Any:
        if isinstance(value, str | os.PathLike):
            return WorkspaceConfig.new(value)
        return value

    def pricing_for(self, model: str) -> ModelPricing:
        """The ``[pricing]`` prices of ``model`` (the default prices for an unlisted model)."""
        return self.pricing.get(model, self.default_pricing)

    def price(self, model: str, usage: Usage) -> tuple[float, PriceSource]:
        """The USD cost of ``usage`` on ``model`` and where the price came from: the model's
        ``pricing`` entry, else the built-in source (if ``builtin_prices``), else the default."""
        listed = self.pricing.get(model)
        if listed is not None:
            return listed.usage_cost(usage), "pricing"
        if self.builtin_prices:
            known = builtin_price(model, usage)
            if known is not None:
                return known, "genai-prices"
        return self.default_pricing.usage_cost(usage), "default"

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """The USD cost of ``input_tokens`` and ``output_tokens`` on ``model``."""
        return self.price(model, Usage(input_tokens, output_tokens))[0]


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call of a turn and the result the model received."""

    call: ToolCall
    result: ToolCallResult


@dataclass
class TurnResult:
    """What one turn produced: the final text, the tool calls, usage, cost and warnings."""

    text: str = ""
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage(0, 0))
    cost_usd: float = 0.0
    warnings: list[BudgetWarning] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    """What the host should know about the calls: a ``max_tokens`` or content-filter stop,
    usage the provider did not report (charged the reservation), a model priced by default."""
    iterations: int = 0
    summarization: SummarizationResult | None = None


# -- helpers (the original's, with tests) ---------------------------------------------------


def _path_value(value: str) -> str | None:
    if value.startswith("file://"):
        return value[len("file://") :]
    if "://" in value:
        return None
    if value.startswith(("/", "~/", "./", "../")):
        return value
    return None


def extract_paths_from_args(args: Any) -> list[str]:
    """Path-looking top-level string values of path-like keys (the original's rule).

    A value counts if it starts with ``file://`` (stripped) or, without ``://``, with ``/``,
    ``~/``, ``./`` or ``../``.
    """
    if not isinstance(args, Mapping):
        return []
    paths: list[str] = []
    for key, value in args.items():
        if not isinstance(key, str) or key.lower() not in PATH_ARGUMENT_KEYS:
            continue
        if isinstance(value, str):
            path = _path_value(value)
            if path is not None:
                paths.append(path)
    return paths


_OPERATION_RULES: tuple[tuple[tuple[str, ...], EscapeOperation], ...] = (
    (("read", "get", "cat"), EscapeOperation.READ),
    (("write", "set", "put", "edit", "update"), EscapeOperation.WRITE),
    (("create", "mkdir", "touch", "new"), EscapeOperation.CREATE),
    (("delete", "remove", "rm"), EscapeOperation.DELETE),
    (("exec", "run", "launch"), EscapeOperation.EXECUTE),
    (("list", "ls", "dir"), EscapeOperation.LIST),
)


def infer_operation(tool_name: str) -> EscapeOperation:
    """The operation a tool performs, by lower-cased substring (first match; default Read)."""
    name = tool_name.lower()
    for needles, operation in _OPERATION_RULES:
        if any(needle in name for needle in needles):
            return operation
    return EscapeOperation.READ


def risk_level_for(operation: EscapeOperation) -> RiskLevel:
    """Read and list are Medium, write and create High, delete and execute Critical."""
    if operation in (EscapeOperation.READ, EscapeOperation.LIST):
        return RiskLevel.MEDIUM
    if operation in (EscapeOperation.WRITE, EscapeOperation.CREATE):
        return RiskLevel.HIGH
    return RiskLevel.CRITICAL


def _first_string(args: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    for key in keys:
        value = args.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def classify_tool_call(
    name: str, args: Mapping[str, Any], resolve: Callable[[str], str] | None = None
) -> SensitiveAction:
    """The original's built-in rules (§6.6): bash, file writes, file reads, else a tool call.

    ``resolve`` maps a ``path``/``file_path`` argument to the absolute path the action names.
    """
    if name == "bash":
        return ExecuteCommand(command=_first_string(args, ("command",)) or "bash")
    if name in ("write_file", "edit_file"):
        path = _first_string(args, ("file_path", "path"))
        return FileWriteOutsideSandbox(
            path=resolve(path) if path and resolve else (path or "unknown")
        )
    if name in ("read_file", "glob", "grep", "list_directory"):
        path = _first_string(args, ("file_path", "path"))
        if path is not None:
            return FileRead(path=resolve(path) if resolve else path)
        pattern = _first_string(args, ("pattern",))
        return FileRead(path=pattern if pattern is not None else (resolve(".") if resolve else "."))
    return McpToolCall(server="builtin", tool=name)


def truncate_output(text: str, limit: int = MAX_TOOL_OUTPUT_BYTES) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes (whole characters) plus a notice, if longer."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= limit:
        return text
    return (
        cut_utf8(text, limit)
        + f"\n\n[output truncated: {size} bytes in total, showing the first {limit}]"
    )


def _escape_action(operation: EscapeOperation, path: str) -> SensitiveAction:
    if operation in (EscapeOperation.READ, EscapeOperation.LIST):
        return FileRead(path=path)
    if operation is EscapeOperation.DELETE:
        return FileDelete(path=path)
    return FileWriteOutsideSandbox(path=path)


def _action_path(action: SensitiveAction) -> str | None:
    if isinstance(action, FileRead | FileWriteOutsideSandbox | FileDelete):
        return action.path
    return None


# -- the runtime ----------------------------------------------------------------------------


@dataclass
class _Response:
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    parse_errors: dict[str, str] = field(default_factory=dict)


@dataclass
class _Turn:
    session: AgentSession
    ctx: ToolContext
    interceptor: SecurityInterceptor
    boundary: WorkspaceBoundary
    result: TurnResult = field(default_factory=TurnResult)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    on_text: Callable[[str], None] | None = None
    on_tool_call: Callable[[ToolCall], None] | None = None
    kind: str = KIND_TURN
    """The ledger kind of the turn's model calls (a sub-agent's turn: ``subagent_turn``)."""


_DEFAULT_PRICED: set[str] = set()
"""Models this process already warned about being priced by ``[pricing.default]``."""


def _add_usage(total: Usage | None, more: Usage) -> Usage:
    """Two usage reports of one response added up (negative counts count as 0)."""
    base = total if total is not None else Usage(0, 0)
    return Usage(
        base.input_tokens + max(0, more.input_tokens),
        base.output_tokens + max(0, more.output_tokens),
        base.cache_read_tokens + max(0, more.cache_read_tokens),
        base.cache_write_tokens + max(0, more.cache_write_tokens),
        base.reasoning_tokens + max(0, more.reasoning_tokens),
    )


class _MeteredProvider:
    """The provider as a summarizer sees it: a version-2 provider whose ``complete_simple``
    is reserved on and charged to the turn's session and workspace budgets."""

    provider_api = 2

    def __init__(self, runtime: AgentRuntime, turn: _Turn) -> None:
        self._runtime = runtime
        self._turn = turn
        self.name: str = getattr(runtime.provider, "name", type(runtime.provider).__name__)
        self.model: str = turn.session.model or runtime.provider.model

    def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Refused: a summarizer's calls are metered through ``complete_simple`` only."""
        raise PluginError(
            f"LLM provider {self.name!r}: a summarizer may call complete_simple only "
            "(its calls are charged to the session's budget)"
        )

    async def complete_simple(
        self, prompt: str, *, settings: CallSettings | None = None
    ) -> Completion:
        """The provider's completion of ``prompt``, charged to the session."""
        return await self._runtime._complete_for(self._turn, prompt, settings)


TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""The tool names every provider accepts (OpenAI's and Anthropic's rule); a toolset's tools must
match it."""


def _checked_tool(
    impl: Implementation, context: PluginContext, options: Mapping[str, Any] | None = None
) -> Tool:
    tool = impl.create(dict(options) if options is not None else None, context)
    if not isinstance(tool, Tool):
        raise PluginError(
            f"tool {impl.name!r} (plugin {impl.plugin or '?'}) is not a Tool: it needs name, "
            "description, input_schema and an async run(arguments, ctx)"
        )
    return tool


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


class _ApprovalMode(TypedDict):
    require_approval: bool
    ask_human: bool


def _approval_mode(tool: Tool) -> _ApprovalMode:
    """The interceptor options of a tool's optional ``approval`` attribute (astrid-mcp's
    per-server mode): ``"ask"`` needs an approval even where the policy allows the action,
    ``"policy"`` needs one and never asks a human (only an existing token or allowance),
    ``"trusted"`` or none leaves the policy's decision as it is; an unknown value asks."""
    mode = getattr(tool, "approval", None)
    return {"require_approval": mode not in (None, "trusted"), "ask_human": mode != "policy"}


def _not_run(name: str, exc: AstridError) -> str:
    """What the model is told when the security checks stopped a call: it did not run, and why."""
    if isinstance(exc, ApprovalDeferred):
        why = (
            f"it needs an approval nobody has given yet; {exc}: pending a later decision, "
            "so do not assume it ran"
        )
    elif isinstance(exc, ApprovalDenied | PolicyBlocked | BudgetExceeded):
        why = _error_text(exc)
    else:
        why = f"the approval failed: {_error_text(exc)}"
    return f"Tool {name} was not run: {why}"


class AgentRuntime:
    """Runs agent turns: the LLM loop, tool dispatch through security checks, budgets, saves.

    One runtime may serve many sessions; run one turn at a time per session. The runtime owns
    one sub-agent pool shared by every turn.
    """

    def __init__(
        self,
        provider: LLMProvider | LLMProviderV2,
        *,
        store: SessionStore | None = None,
        config: RuntimeConfig | None = None,
        tools: Iterable[Tool] | None = None,
        policy: SecurityPolicy | None = None,
        keypair: KeyPair | None = None,
        context_manager: ContextManager | None = None,
        approval_handler: ApprovalHandler | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
        audit: AuditLog | None = None,
        enabled_tools: Iterable[str] | None = None,
        tool_options: Mapping[str, Mapping[str, Any]] | None = None,
        toolsets: Iterable[Toolset] | None = None,
    ) -> None:
        self.provider = provider
        self.store = store
        self.config = config if config is not None else RuntimeConfig()
        self.config_path: Path | None = None
        """The configuration file ``open_runtime`` built this runtime from, absolute (None: the
        defaults, or a runtime built by hand)."""
        self.plugin_manager = plugin_manager if plugin_manager is not None else (
            get_plugin_manager()
        )
        self.tools: dict[str, Tool] = {}
        self._tool_sources: dict[str, str] = {}
        if tools is not None:
            offered = [(tool, "the host (tools=)") for tool in tools]
        else:
            offered = self._registered_tools(plugin_manager, enabled_tools, tool_options or {})
        for tool, source in offered:
            if tool.name in self.tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self.tools[tool.name] = tool
            self._tool_sources[tool.name] = source
        self._toolsets: list[Toolset] = []
        for toolset in toolsets or ():
            if not isinstance(toolset, Toolset):
                raise PluginError(
                    f"{toolset!r} is not a Toolset: it needs name, async open() and async aclose()"
                )
            self._toolsets.append(toolset)
        self._open_toolsets: list[Toolset] = []
        self._toolsets_opened = not self._toolsets
        self.policy = policy if policy is not None else SecurityPolicy.default()
        if keypair is None:
            from .security.crypto import KeyPair

            keypair = KeyPair.generate()
        self.keypair = keypair
        self.context_manager = context_manager if context_manager is not None else (
            ContextManager(
                self.config.max_context_tokens,
                threshold=self.config.summarization_threshold,
                keep_recent=self.config.keep_recent_count,
            )
        )
        self.approval_handler = approval_handler
        self.audit = audit if audit is not None else AuditLog()
        self.pool = SubAgentPool(
            self.config.max_concurrent_subagents, self.config.max_subagent_depth
        )
        self._boundaries: dict[str, WorkspaceBoundary] = {}
        # per session: the request estimate counts only the messages added since the last call
        self._estimates: weakref.WeakKeyDictionary[AgentSession, RunningEstimate] = (
            weakref.WeakKeyDictionary()
        )
        if self.config.builtin_prices:
            # genai-prices loads its data (~80 ms) on first use: here, not on the event loop
            builtin_price(str(getattr(provider, "model", "")), Usage(0, 0))

    def close(self) -> None:
        """Cancel running sub-agents and close the store (the runtime is done).

        Outside an event loop, a provider's ``aclose`` is awaited too; inside one, use
        ``aclose`` (or ``async with``). With toolsets open it refuses (``PluginError``) and
        closes nothing: they live on the event loop that opened them, so use ``aclose``."""
        if self._open_toolsets:
            names = ", ".join(repr(t.name) for t in self._open_toolsets)
            raise PluginError(
                f"the runtime has open toolsets ({names}): close it with await runtime.aclose() "
                "(or async with)"
            )
        self.pool.cancel_all()
        if self.store is not None:
            self.store.close()
        closer = getattr(self.provider, "aclose", None)
        if closer is not None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                try:
                    asyncio.run(closer())
                except Exception:
                    logger.warning("closing LLM provider %r failed",
                                   getattr(self.provider, "name", "?"), exc_info=True)
            else:
                logger.debug("close() inside an event loop leaves the provider open; "
                             "use await runtime.aclose()")

    async def aclose(self) -> None:
        """``close`` from async code: closes the open toolsets (last opened first), then the
        store, and awaits the provider's ``aclose`` if it has one."""
        self.pool.cancel_all()
        try:
            await self._close_toolsets()
        finally:
            if self.store is not None:
                self.store.close()
            closer = getattr(self.provider, "aclose", None)
            if closer is not None:
                await closer()

    async def open(self) -> None:
        """Open the toolsets (once, in order) and offer their tools; ``async with`` calls it.

        A toolset whose ``open`` fails is a ``PluginError`` naming it; every toolset opened so
        far, the failing one included, is closed again first.
        """
        if self._toolsets_opened:
            return
        try:
            for toolset in self._toolsets:
                self._open_toolsets.append(toolset)  # closed again even if open() fails
                try:
                    tools = await toolset.open()
                except Exception as exc:
                    raise PluginError(
                        f"toolset {toolset.name!r} failed to open: {_error_text(exc)}"
                    ) from exc
                self._add_toolset_tools(toolset, tools)
        except BaseException:
            await self._close_toolsets()
            raise
        self._toolsets_opened = True

    def _add_toolset_tools(self, toolset: Toolset, tools: Iterable[Tool]) -> None:
        source = f"toolset {toolset.name!r}"
        for tool in tools:
            if not isinstance(tool, Tool):
                raise PluginError(
                    f"{source} returned {tool!r}, which is not a Tool: it needs name, "
                    "description, input_schema and an async run(arguments, ctx)"
                )
            if not isinstance(tool.name, str) or not TOOL_NAME.fullmatch(tool.name):
                raise PluginError(
                    f"{source} returned a tool named {tool.name!r}; tool names must be 1 to 64 "
                    "letters, digits, '_' or '-' (providers refuse others, ':' included)"
                )
            if tool.name in self.tools:
                raise PluginError(
                    f"tool {tool.name!r} of {source} clashes with the tool {tool.name!r} of "
                    f"{self._tool_sources.get(tool.name, 'the runtime')}: tool names must be "
                    "unique"
                )
            self.tools[tool.name] = tool
            self._tool_sources[tool.name] = source

    async def _close_toolsets(self) -> None:
        """Close every open toolset (last opened first) and withdraw its tools; a failing
        ``aclose`` is logged and the others still close, a cancellation after all of them."""
        cancelled: asyncio.CancelledError | None = None
        while self._open_toolsets:
            toolset = self._open_toolsets.pop()
            source = f"toolset {toolset.name!r}"
            for name in [n for n, s in self._tool_sources.items() if s == source]:
                del self.tools[name], self._tool_sources[name]
            try:
                await toolset.aclose()
            except asyncio.CancelledError as exc:
                cancelled = exc
            except Exception:
                logger.warning("closing toolset %r failed", toolset.name, exc_info=True)
        if cancelled is not None:
            raise cancelled

    def __enter__(self) -> AgentRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> AgentRuntime:
        try:
            await self.open()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- setup ------------------------------------------------------------------------------

    @staticmethod
    def _registered_tools(
        plugin_manager: pluggy.PluginManager | None,
        enabled: Iterable[str] | None,
        options: Mapping[str, Mapping[str, Any]],
    ) -> list[tuple[Tool, str]]:
        """The enabled registered tools (default: the built-ins installed) and their plugins."""
        from .config import astrid_home

        context = PluginContext(home=astrid_home())
        impls = registry("tool") if plugin_manager is None else collect(plugin_manager, "tool")
        names = enabled_tool_names(enabled, impls)
        impls.require(names)  # a name two plugins claim, or one a failed plugin may provide
        for name in [*names, *options]:
            if name not in impls:
                known = ", ".join(sorted(impls)) or "none installed"
                raise PluginError(f"unknown tool {name!r}; known tools: {known}")
        return [
            (_checked_tool(impl, context, options.get(name)), f"plugin {impl.plugin!r}")
            for name in names
            for impl in [impls[name]]
        ]

    def add_tool(self, tool: Tool) -> None:
        """Offer one more tool to the model (a host tool next to the registered ones)."""
        if tool.name in self.tools:
            raise ValueError(f"the runtime already has a tool named {tool.name!r}")
        self.tools[tool.name] = tool
        self._tool_sources[tool.name] = "the host (add_tool)"

    def tool_definitions(self) -> list[ToolDefinition]:
        """The definitions the provider is given, in registration order."""
        return [tool_definition(tool) for tool in self.tools.values()]

    def create_session(self, system_prompt: str | None = None) -> AgentSession:
        """A new session (through the store when there is one) with the provider's model."""
        prompt = self.config.system_prompt if system_prompt is None else system_prompt
        session = self.store.new_session(prompt) if self.store is not None else AgentSession(prompt)
        return session.with_model(self.provider.model)

    def workspace_root(self, session: AgentSession) -> Path:
        """The session's workspace, or the configured root (absolute)."""
        root = session.workspace_path if session.workspace_path is not None else (
            Path(self.config.workspace.root)
        )
        return Path(os.path.abspath(root))

    def boundary_for(self, root: Path) -> WorkspaceBoundary:
        """The workspace boundary of ``root`` (the configured rules, that root)."""
        key = str(root)
        boundary = self._boundaries.get(key)
        if boundary is None:
            config = self.config.workspace.model_copy(update={"root": key})
            boundary = WorkspaceBoundary(config)
            self._boundaries[key] = boundary
            if boundary.is_never_allowed(key):
                logger.warning(
                    "workspace %s lies under a never-allowed path ([workspace] never_allow): "
                    "every file access of a tool in it will be refused as a protected path",
                    key,
                )
        return boundary

    def _prepare(self, session: AgentSession) -> None:
        if self.approval_handler is not None:
            session.approval_manager.register_handler(self.approval_handler)

    def resolve_deferred(
        self,
        session: AgentSession,
        resolution_id: UUID,
        response: ApprovalResponse | ApprovalDecision,
    ) -> InterceptProof:
        """Resolve one of the session's deferred approvals and create the grant it names.

        The allowance (session, or workspace rooted at the session's workspace) or the "always"
        capability is made with this runtime's key, so the same action then runs without being
        deferred again. Raises ``ApprovalDenied`` for a denial or a response to another request.
        """
        proof = self._interceptor_for(session).resolve_deferred(resolution_id, response)
        session.record_approvals()
        return proof

    async def aresolve_deferred(
        self,
        session: AgentSession,
        resolution_id: UUID,
        response: ApprovalResponse | ApprovalDecision,
    ) -> InterceptProof:
        """``resolve_deferred`` for a host on an event loop: taking the item off a persistent
        queue and storing the capability it grants run in a worker thread (a cancellation
        waits for them), so the loop never waits on the store."""
        interceptor = self._interceptor_for(session)
        proof = await write_in_thread(interceptor.resolve_deferred, resolution_id, response)
        session.record_approvals()
        return proof

    def revoke_capability(
        self, session: AgentSession, token_id: UUID, *, reason: str | None = None
    ) -> Revocation:
        """Revoke a capability token everywhere, record the revocation in the audit log and,
        with a store, save the session's state so the entry is stored now (the session's
        messages stay pending). An unknown or already revoked id is revoked (again) and
        recorded all the same; the returned ``Revocation`` says which it was."""
        revocation = session.capabilities.revoke_token(token_id)
        self._record_revocation(session, revocation, reason)
        if self.store is not None:
            self.store.save_state(session)
        return revocation

    async def arevoke_capability(
        self, session: AgentSession, token_id: UUID, *, reason: str | None = None
    ) -> Revocation:
        """``revoke_capability`` for a host on an event loop: the capability store's write
        and the save run in a worker thread."""
        revocation = await session.capabilities.arevoke_token(token_id)
        self._record_revocation(session, revocation, reason)
        if self.store is not None:
            await self.store.asave_state(session)
        return revocation

    def _record_revocation(
        self, session: AgentSession, revocation: Revocation, reason: str | None
    ) -> None:
        token = revocation.token
        if token is not None:
            perms = ", ".join(str(p) for p in token.permissions)
            target = f"{token.resource.as_str()} ({perms})"
        elif revocation.already_revoked:
            target = "(already revoked)"
        else:
            target = "(unknown to this store: its id is revoked all the same)"
        record_audit(
            session, self.keypair, actor="user", action_type="capability_token",
            action=f"revoke token:{revocation.token_id} {target}", decision="revoked",
            reason=reason,
        )

    def _interceptor_for(self, session: AgentSession) -> SecurityInterceptor:
        return SecurityInterceptor(
            session,
            self.policy,
            self.keypair,
            workspace_root=self.workspace_root(session),
            audit=self.audit,
        )

    def _new_turn(self, session: AgentSession, parent_subagent_id: SubAgentId | None) -> _Turn:
        if not self._toolsets_opened:
            names = ", ".join(repr(t.name) for t in self._toolsets)
            raise PluginError(
                f"the runtime's toolsets ({names}) are not open: enter it with "
                "async with open_runtime(...) (or await runtime.open()) before running turns"
            )
        root = self.workspace_root(session)
        spawner = SubAgentExecutor(
            self.pool,
            session,
            self._run_child,
            parent_subagent_id=parent_subagent_id,
            default_timeout=self.config.default_subagent_timeout,
            store=self.store,
        )
        ctx = ToolContext(
            session=session, workspace_root=root, cwd=root, store=self.store, spawner=spawner
        )
        interceptor = SecurityInterceptor(
            session, self.policy, self.keypair, workspace_root=root, audit=self.audit
        )
        return _Turn(session, ctx, interceptor, self.boundary_for(root))

    # -- turns ------------------------------------------------------------------------------

    async def run_turn(
        self,
        session: AgentSession,
        user_input: str,
        *,
        on_text: Callable[[str], None] | None = None,
        on_tool_call: Callable[[ToolCall], None] | None = None,
    ) -> TurnResult:
        """One top-level turn: add the input, summarize if needed, loop, save once (always).

        ``on_text`` gets each piece of the model's text as it streams in, ``on_tool_call`` each
        call the model asks for before it runs (both optional; for a terminal showing the turn).
        """
        self._prepare(session)
        turn = self._new_turn(session, None)
        turn.on_text, turn.on_tool_call = on_text, on_tool_call
        failed = True
        with tracing.turn_span(session.id.bare):
            try:
                session.add_message(Message.user(user_input))
                if self.config.auto_summarize and self.context_manager.needs_summarization(
                    session
                ):
                    metered = cast(LLMProvider, _MeteredProvider(self, turn))
                    turn.result.summarization = await self.context_manager.summarize(
                        session, provider=metered, store=self.store
                    )
                await self._run_loop(turn)
                failed = False
                return self._finish(turn)
            finally:
                session.record_approvals()
                await self._save(session, quiet=failed)

    async def compact(self, session: AgentSession) -> TurnResult:
        """Summarize the session's older messages now, whatever its size (``/compact``).

        The summarizer's model calls are metered on the session and workspace budgets like a
        turn's, the originals stay in the store's history, and the session is saved. The
        result carries the ``summarization`` (all zero when there was nothing to compact),
        the cost and any notices.
        """
        self._prepare(session)
        turn = self._new_turn(session, None)
        failed = True
        try:
            metered = cast(LLMProvider, _MeteredProvider(self, turn))
            turn.result.summarization = await self.context_manager.summarize(
                session, provider=metered, store=self.store
            )
            failed = False
            return self._finish(turn)
        finally:
            await self._save(session, quiet=failed)

    async def run_subagent_turn(
        self, session: AgentSession, prompt: str, subagent_id: SubAgentId
    ) -> TurnResult:
        """A sub-agent's turn: no summarization and no save (the executor saves the child)."""
        self._prepare(session)
        turn = self._new_turn(session, subagent_id)
        turn.kind = KIND_SUBAGENT_TURN
        parent = session.parent_id.bare if session.parent_id is not None else None
        with tracing.turn_span(
            session.id.bare, agent_id=str(subagent_id), parent_session_id=parent
        ):
            try:
                session.add_message(Message.user(prompt))
                await self._run_loop(turn)
                return self._finish(turn)
            finally:
                session.record_approvals()

    async def _run_child(self, session: AgentSession, prompt: str, subagent_id: SubAgentId) -> None:
        await self.run_subagent_turn(session, prompt, subagent_id)

    def _finish(self, turn: _Turn) -> TurnResult:
        turn.result.usage = Usage(
            turn.input_tokens,
            turn.output_tokens,
            turn.cache_read_tokens,
            turn.cache_write_tokens,
            turn.reasoning_tokens,
        )
        return turn.result

    async def _save(self, session: AgentSession, *, quiet: bool) -> None:
        """Save the turn off the event loop; if a message cannot be stored, still store the
        state (the spend)."""
        if self.store is None:
            return
        try:
            try:
                await self.store.asave(session)
            except SerializationError:
                # Content the host put in the session (the runtime's own is made storable):
                # the spend and counters are stored anyway, the error still propagates.
                try:
                    await self.store.asave_state(session)
                except Exception:
                    logger.warning("could not save the state of session %s either",
                                   session.id.bare, exc_info=True)
                raise
        except Exception:
            if not quiet:
                raise
            logger.warning("could not save session %s after a failed turn", session.id.bare,
                           exc_info=True)

    # -- the loop ---------------------------------------------------------------------------

    async def _run_loop(self, turn: _Turn) -> None:
        session = turn.session
        definitions = self.tool_definitions()
        for iteration in range(1, self.config.max_iterations + 1):
            turn.result.iterations = iteration
            response = await self._call_llm(turn, definitions)
            if response.calls:
                if response.text.strip():
                    session.add_message(Message.assistant(response.text))
                session.add_message(Message.assistant_with_tools(response.calls))
                if turn.on_tool_call is not None:
                    for call in response.calls:
                        turn.on_tool_call(call)
                await self._execute_calls(turn, response)
                continue
            turn.result.text = response.text
            if response.text:
                session.add_message(Message.assistant(response.text))
            return
        raise MaxIterationsExceeded(self.config.max_iterations)

    def _system_prompt(self, session: AgentSession) -> str:
        prompt = session.system_prompt
        if session.plugin_context:
            return f"{session.plugin_context}\n\n{prompt}"
        return prompt

    def _settings(self, session: AgentSession) -> CallSettings:
        """What each request asks for: the model the runtime prices and the configured limits."""
        return CallSettings(
            model=session.model or self.provider.model,
            max_output_tokens=self.config.max_output_tokens,
            temperature=self.config.temperature,
        )

    def _expected_output_tokens(self) -> int:
        """The output a reservation counts: ``max_output_tokens`` (a bound the call cannot
        exceed) when configured, else ``estimated_output_tokens``."""
        if self.config.max_output_tokens is not None:
            return self.config.max_output_tokens
        return self.config.estimated_output_tokens

    @staticmethod
    def request_tokens(
        session: AgentSession,
        messages: Sequence[Message],
        definitions: Sequence[ToolDefinition],
        system_prompt: str,
        running: RunningEstimate | None = None,
    ) -> int:
        """The input tokens of one request by the session's estimator: every message sent,
        the system prompt and the tool definitions' JSON (``running``: the messages' part
        counted incrementally, the same total)."""
        estimator = session.token_estimator
        if running is not None:
            total = running.total(estimator, messages)
        else:
            total = sum(max(0, estimator.estimate(m)) for m in messages)
        if system_prompt:
            total += max(0, estimator.estimate(Message.system(system_prompt)))
        if definitions:
            schema = json.dumps(
                [
                    {"name": d.name, "description": d.description, "input_schema": d.input_schema}
                    for d in definitions
                ],
                ensure_ascii=False,
                separators=(",", ":"),
                default=str,
            )
            total += max(0, estimator.estimate(Message.system(schema)))
        return total

    def _price(self, turn: _Turn, model: str, usage: Usage) -> float:
        """The cost of ``usage`` on ``model``; the first time in this process that a model is
        priced by ``[pricing.default]``, it is logged (INFO) and added to the turn's notices."""
        cost, source = self.config.price(model, usage)
        if source == "default" and model not in _DEFAULT_PRICED:
            _DEFAULT_PRICED.add(model)
            prices = self.config.default_pricing
            text = (
                f"model {model!r} has no [pricing] entry and no built-in price; priced by "
                f"[pricing.default] (${prices.input_per_million:g} input, "
                f"${prices.output_per_million:g} output per million tokens)"
            )
            logger.info("%s", text)
            turn.result.notices.append(text)
        return cost

    def _reserve(
        self,
        turn: _Turn,
        validator: BudgetValidator,
        model: str,
        input_tokens: int,
        what: str = "the next LLM call",
    ) -> DualReservation:
        """Reserve the estimated cost of one call (``input_tokens`` plus the expected output)
        on the session and workspace budgets; ``BudgetExceeded`` says what did not fit."""
        session = turn.session
        output_tokens = self._expected_output_tokens()
        estimate = self._price(turn, model, Usage(input_tokens, output_tokens))
        try:
            reservation = validator.reserve(estimate)
        except BudgetExceeded as exc:
            tracing.refusal_event(exc)
            text = (
                f"budget exceeded: {what} to {model!r} needs an estimated "
                f"{money(estimate)} ({input_tokens} input + {output_tokens} output tokens); "
                f"{describe_spend(session)}"
            )
            record_audit(session, self.keypair, actor="runtime", action_type="budget_reservation",
                         action=f"model call {model}", decision="refused", reason=text)
            raise BudgetExceeded(f"{text} [{exc}]") from exc
        record_audit(
            session, self.keypair, actor="runtime", action_type="budget_reservation",
            action=f"model call {model}", decision="reserved",
            reason=f"reserved {money(estimate)} for {what} ({input_tokens} input + "
            f"{output_tokens} output tokens); {describe_spend(session)}",
        )
        if reservation.warning is not None:
            tracing.security_event("budget.warning")
            turn.result.warnings.append(reservation.warning)
        return reservation

    def _settle(
        self,
        turn: _Turn,
        validator: BudgetValidator,
        reservation: DualReservation,
        model: str,
        usage: Usage | None,
        kind: str | None = None,
    ) -> None:
        """Charge one answered call: its usage at the model's prices, or, when the provider
        reported none, the whole reservation (never $0), with a warning on the turn; record
        its spend-ledger row in the session's change set (``kind``: the turn's by default)."""
        if usage is None:
            cost = reservation.amount
            label = getattr(self.provider, "name", type(self.provider).__name__)
            turn.result.notices.append(
                f"usage not reported by {label}; charged the reservation ({money(cost)})"
            )
        else:
            usage = _add_usage(None, usage)  # negative counts count as 0
            cost = self._price(turn, model, usage)
            turn.input_tokens += usage.input_tokens
            turn.output_tokens += usage.output_tokens
            turn.cache_read_tokens += usage.cache_read_tokens
            turn.cache_write_tokens += usage.cache_write_tokens
            turn.reasoning_tokens += usage.reasoning_tokens
        validator.settle(reservation, cost)
        turn.result.cost_usd += cost
        self._record_call(turn, reservation, model, usage, cost, kind or turn.kind)
        record_audit(
            turn.session,
            self.keypair,
            actor="runtime",
            action_type="budget_settlement",
            action=f"model call {model}",
            decision="settled",
            reason=f"reserved {reservation.amount!r} USD, charged {cost!r} USD",
        )
        if usage is None:
            tracing.model_usage(None, None, cost)
        else:
            tracing.model_usage(usage.input_tokens, usage.output_tokens, cost,
                                cache_read_tokens=usage.cache_read_tokens,
                                reasoning_tokens=usage.reasoning_tokens)

    def _record_call(
        self,
        turn: _Turn,
        reservation: DualReservation,
        model: str,
        usage: Usage | None,
        cost: float,
        kind: str,
    ) -> None:
        """The settled call's ledger row, saved with the session's next save."""
        session = turn.session
        counted = usage if usage is not None else Usage(0, 0)
        session.changes.ledger.append(
            LedgerRow(
                id=new_row_id(),
                session_id=session.id.bare,
                parent_session_id=session.parent_id.bare if session.parent_id else None,
                workspace=workspace_key(session.workspace_path)
                if session.workspace_path is not None
                else None,
                workspace_charged=reservation.workspace is not None,
                model=model,
                provider=getattr(self.provider, "name", type(self.provider).__name__),
                kind=kind,
                input_tokens=counted.input_tokens,
                output_tokens=counted.output_tokens,
                cache_read_tokens=counted.cache_read_tokens,
                cache_write_tokens=counted.cache_write_tokens,
                reasoning_tokens=counted.reasoning_tokens,
                usage_reported=usage is not None,
                reserved_usd=usd(reservation.amount),
                cost_usd=usd(cost),
            )
        )

    async def _complete_for(
        self, turn: _Turn, prompt: str, settings: CallSettings | None = None
    ) -> Completion:
        """One ``complete_simple`` call on the session's budgets (the summarizer's calls):
        reserved before, refused with ``BudgetExceeded`` if it does not fit, charged after."""
        session = turn.session
        base = self._settings(session)
        if settings is not None:  # the caller's choices, the runtime's where it left None
            settings = replace(
                settings,
                model=settings.model or base.model,
                max_output_tokens=settings.max_output_tokens or base.max_output_tokens,
                temperature=base.temperature if settings.temperature is None
                else settings.temperature,
            )
        else:
            settings = base
        validator = BudgetValidator(session.budget_tracker, session.workspace_budget_tracker)
        tokens = self.request_tokens(session, [Message.user(prompt)], (), "")
        label = getattr(self.provider, "name", type(self.provider).__name__)
        with tracing.model_span(settings.model, label, purpose="summarization"):
            reservation = self._reserve(
                turn, validator, settings.model, tokens, "the summarization"
            )
            try:
                completion = await complete_request(self.provider, prompt, settings)
            except BaseException:
                validator.release(reservation)
                raise
            self._settle(
                turn, validator, reservation, settings.model, completion.usage, KIND_SUMMARIZER
            )
            return completion

    async def _call_llm(self, turn: _Turn, definitions: Sequence[ToolDefinition]) -> _Response:
        """One model call in its ``chat <model>`` span."""
        model = self._settings(turn.session).model
        label = getattr(self.provider, "name", type(self.provider).__name__)
        with tracing.model_span(model, label):
            return await self._stream_llm(turn, definitions)

    async def _stream_llm(self, turn: _Turn, definitions: Sequence[ToolDefinition]) -> _Response:
        session = turn.session
        settings = self._settings(session)
        model = settings.model
        messages = list(session.messages)
        system_prompt = self._system_prompt(session)
        validator = BudgetValidator(session.budget_tracker, session.workspace_budget_tracker)
        running = self._estimates.setdefault(session, RunningEstimate())
        if running.backlog(session.token_estimator, messages) > ESTIMATE_OFF_LOOP:
            # A long session's first request: counted in a worker thread, into a new estimate
            # that replaces the old one only when complete (a cancelled count leaves no trace).
            counted = RunningEstimate()
            await read_in_thread(counted.total, session.token_estimator, messages)
            self._estimates[session] = running = counted
        reservation = self._reserve(
            turn, validator, model,
            self.request_tokens(session, messages, definitions, system_prompt, running),
        )
        usage: Usage | None = None
        answered = False
        received = False  # the model produced output before the stream failed: it was billed
        stop: Stop | None = None
        response = _Response()
        text: list[str] = []
        names: dict[str, str] = {}
        buffers: dict[str, list[str]] = {}
        order: list[str] = []
        last_id: str | None = None
        stream: AsyncIterator[Any] | None = None
        try:
            try:
                stream = stream_request(self.provider, messages, definitions, system_prompt,
                                        settings)
                async for event in stream:
                    if isinstance(event, (TextDelta, ToolCallStart, ToolCallDelta)):
                        received = True
                    if isinstance(event, TextDelta):
                        text.append(event.text)
                        if turn.on_text is not None:
                            turn.on_text(event.text)
                    elif isinstance(event, ToolCallStart):
                        if event.id not in names:
                            order.append(event.id)
                        names[event.id] = event.name
                        buffers[event.id] = []
                        last_id = event.id
                    elif isinstance(event, ToolCallDelta):
                        key = event.id if event.id in buffers else last_id
                        if key is not None:
                            buffers[key].append(event.args_delta)
                    elif isinstance(event, ToolCallEnd):
                        continue
                    elif isinstance(event, Usage):
                        usage = _add_usage(usage, event)
                    elif isinstance(event, Stop):
                        stop = event
                    elif isinstance(event, StreamError):
                        raise LLMError(f"LLM stream error: {event.message}")
                    elif isinstance(event, Done):
                        break
                answered = True
            except (AstridError, asyncio.CancelledError):
                raise
            except Exception as exc:
                label = getattr(self.provider, "name", type(self.provider).__name__)
                raise LLMError(f"LLM provider {label!r} failed: {_error_text(exc)}") from exc
            finally:
                closer = getattr(stream, "aclose", None)
                if closer is not None:
                    try:
                        await closer()
                    except Exception:
                        logger.debug("closing the provider stream failed", exc_info=True)
        finally:
            if answered or received or usage is not None:
                # A stream cut after output arrived was billed by the provider: without usage
                # it is charged the reservation, so a dropped stream is never a free call.
                self._settle(turn, validator, reservation, model, usage)
            else:
                validator.release(reservation)  # failed before any output: nothing to charge
        if stop is not None:
            tracing.model_finish([stop.reason.value])
        truncated = stop is not None and stop.reason is StopReason.MAX_TOKENS
        if truncated:
            turn.result.notices.append(
                f"the response of {model!r} stopped at the output token limit (max_tokens)"
            )
        elif stop is not None and stop.reason is StopReason.CONTENT_FILTER:
            turn.result.notices.append(
                f"the response of {model!r} was stopped by the provider's content filter"
            )
        # What the provider sent is made storable here, where it enters: a lone surrogate in
        # text, a call id or a tool name becomes U+FFFD; arguments no store can keep are refused.
        response.text = storable_text("".join(text))
        for raw_id in order:
            raw = "".join(buffers.get(raw_id, []))
            call_id = storable_text(raw_id)
            arguments: Any = {}
            if raw.strip():
                try:
                    arguments = json.loads(raw)
                except (ValueError, RecursionError) as exc:
                    response.parse_errors[call_id] = (
                        "the response was cut at the output token limit (max_tokens) before "
                        f"these arguments were complete, so the tool was not run: {raw[:200]!r}"
                        if truncated
                        else f"invalid JSON ({_error_text(exc)}) in {raw[:200]!r}"
                    )
                    arguments = {}
                else:
                    problem = json_problem(arguments)
                    if not isinstance(arguments, dict):
                        response.parse_errors[call_id] = (
                            f"arguments must be a JSON object, got {type(arguments).__name__}"
                        )
                        arguments = {}
                    elif problem is not None:
                        response.parse_errors[call_id] = (
                            f"the arguments were refused and the tool was not run: they hold "
                            f"a value that cannot be stored ({problem}); send strings without "
                            "lone surrogates and only finite numbers within 64-bit integers"
                        )
                        arguments = {}
            response.calls.append(
                ToolCall(id=call_id, name=storable_text(names[raw_id]), arguments=arguments)
            )
        return response

    # -- tools ------------------------------------------------------------------------------

    async def _execute_calls(self, turn: _Turn, response: _Response) -> None:
        session = turn.session
        done = 0
        try:
            for call in response.calls:
                with tracing.tool_span(call.name, call.id):
                    result = await self._execute_tool_call(
                        turn, call, response.parse_errors.get(call.id)
                    )
                    tracing.tool_result(result.is_error)
                content = storable_text(result.content)  # a tool's output, as it enters
                if content is not result.content:
                    result = result.model_copy(update={"content": content})
                session.add_message(Message.tool_result(result))
                turn.result.tool_calls.append(ToolCallRecord(call, result))
                done += 1
        except BaseException as exc:
            reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else _error_text(exc)
            for call in response.calls[done:]:
                result = ToolCallResult.error(
                    call.id,
                    storable_text(f"Tool call not executed: the turn was aborted ({reason})"),
                )
                session.add_message(Message.tool_result(result))
                turn.result.tool_calls.append(ToolCallRecord(call, result))
            raise

    def _classify(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> SensitiveAction:
        custom = getattr(tool, "classify", None)
        if callable(custom):
            action: SensitiveAction | None = custom(args, ctx)
            if action is not None:
                return action
        return classify_tool_call(tool.name, args, lambda p: resolve_path(ctx.resolve_path(p)))

    def _boundary_paths(self, args: dict[str, Any], ctx: ToolContext) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for key, value in args.items():
            if not isinstance(key, str) or key.lower() not in PATH_ARGUMENT_KEYS:
                continue
            if not isinstance(value, str) or not value.strip():
                continue
            path = _path_value(value)
            if path is None:
                if "://" in value:
                    continue
                path = value
            found.append((value, resolve_path(ctx.resolve_path(path))))
        return found

    async def _check_boundary(
        self, turn: _Turn, tool: Tool, args: dict[str, Any], action: SensitiveAction
    ) -> tuple[str | None, list[tuple[str, EscapeOperation]]]:
        """An error text if a path is refused; paths left to the action's own approval."""
        session = turn.session
        boundary = turn.boundary
        operation = infer_operation(tool.name)
        covered: list[tuple[str, EscapeOperation]] = []
        for raw, path in self._boundary_paths(args, turn.ctx):
            remembered = session.escape_handler.remembered_decision(
                path, boundary.config.never_allowed
            )
            if remembered is not None:
                if not boundary.is_in_workspace(path):
                    self._audit_escape(session, operation, path, "allowed", remembered,
                                       "an escape approved earlier and remembered")
                continue
            check = boundary.check(path)
            if check.is_allowed():
                rule = boundary.escape_rule(path)
                if rule is not None:
                    self._audit_escape(session, operation, path, "allowed", check, rule)
                continue
            if check is PathCheck.NEVER_ALLOWED:
                tracing.security_event("escape.denied", operation=str(operation))
                self._audit_escape(session, operation, path, "denied", None,
                                   "never allowed" if boundary.is_never_allowed(path)
                                   else "outside the workspace (escape policy: deny)")
                if boundary.is_never_allowed(path):
                    return f"Access to {raw} is blocked — this is a protected system path", []
                return f"Access to {raw} denied — outside workspace (escape policy: deny)", []
            if _action_path(action) == path:
                covered.append((path, operation))
                continue
            escape = _escape_action(operation, path)
            context = (
                f"{ESCAPE_CONTEXT}tool {tool.name} wants to {operation} {path} "
                "outside the workspace"
            )
            try:
                passed = await turn.interceptor.intercept(escape, context, audit_type="escape")
            except AstridError as exc:
                tracing.refusal_event(exc, escape=True, operation=str(operation))
                return f"{_not_run(tool.name, exc)} (access to {raw}: outside workspace)", []
            tracing.security_event("escape.allowed", operation=str(operation),
                                   proof=type(passed.proof).__name__)
            self._close_reservation(turn, passed.reservation, passed.budget_warning)
            self._remember_escape(session, path, operation, passed.proof)
        return None, covered

    def _audit_escape(
        self,
        session: AgentSession,
        operation: EscapeOperation,
        path: str,
        decision: str,
        proof: object,
        reason: str,
    ) -> None:
        """Record a decision about a path outside the workspace the runtime made itself."""
        record_audit(session, self.keypair, actor="runtime", action_type="escape",
                     action=_escape_action(operation, path).summary(), decision=decision,
                     proof=proof, reason=reason)

    @staticmethod
    def _remember_escape(
        session: AgentSession, path: str, operation: EscapeOperation, proof: InterceptProof
    ) -> None:
        if isinstance(proof, SessionApproval):
            decision = EscapeDecision.ALLOW_SESSION
        elif isinstance(proof, CapabilityCreated):
            decision = EscapeDecision.ALLOW_ALWAYS
        else:
            return
        request = EscapeRequest.new(path, operation, "approved through the approval manager")
        session.escape_handler.process_decision(request, decision)

    def _close_reservation(
        self, turn: _Turn, reservation: DualReservation | None, warning: BudgetWarning | None
    ) -> None:
        if warning is not None:
            tracing.security_event("budget.warning")
            turn.result.warnings.append(warning)
        if reservation is not None:
            turn.interceptor.release(reservation)

    async def _execute_tool_call(
        self, turn: _Turn, call: ToolCall, parse_error: str | None
    ) -> ToolCallResult:
        name = call.name
        if parse_error is not None:
            return ToolCallResult.error(
                call.id, f"Invalid arguments for tool {name}: {parse_error}"
            )
        tool = self.tools.get(name)
        if tool is None:
            available = ", ".join(sorted(self.tools)) or "none"
            return ToolCallResult.error(
                call.id, f"Unknown tool: {name} (available tools: {available})"
            )
        args: dict[str, Any] = dict(call.arguments) if isinstance(call.arguments, dict) else {}
        ctx = turn.ctx
        session = turn.session
        try:
            action = self._classify(tool, args, ctx)
        except Exception as exc:
            return ToolCallResult.error(
                call.id, f"Cannot classify the call to {name}: {_error_text(exc)}"
            )

        refused, covered = await self._check_boundary(turn, tool, args, action)
        if refused is not None:
            return ToolCallResult.error(call.id, refused)

        try:
            reason = self.plugin_manager.hook.pre_tool_call(
                session=session, tool_name=name, arguments=args
            )
        except Exception as exc:
            logger.warning("pre_tool_call hook failed for %s", name, exc_info=True)
            return ToolCallResult.error(
                call.id, f"Tool call blocked: a pre_tool_call hook failed: {_error_text(exc)}"
            )
        if reason:
            return ToolCallResult.error(call.id, f"Tool call blocked: {reason}")

        try:
            source = self._tool_sources.get(name, "")
            context = getattr(tool, "approval_context", None) or (
                f"Tool {name} ({source})" if source.startswith("toolset ") else (
                    f"Built-in tool: {name}"
                )
            )
            passed = await turn.interceptor.intercept(action, context, **_approval_mode(tool))
        except AstridError as exc:
            tracing.refusal_event(exc, action_type=str(action.action_type))
            refused = "deferred" if isinstance(exc, ApprovalDeferred) else "denied"
            for path, operation in covered:
                self._audit_escape(session, operation, path, refused, None,
                                   f"the call's own {action.action_type} action was refused: "
                                   f"{_error_text(exc)}")
            return ToolCallResult.error(call.id, _not_run(name, exc))
        tracing.allowed_event(passed.proof, str(action.action_type))
        self._close_reservation(turn, passed.reservation, passed.budget_warning)
        for path, operation in covered:
            self._audit_escape(session, operation, path, "allowed", passed.proof,
                               f"approved with the call's own {action.action_type} action")
            self._remember_escape(session, path, operation, passed.proof)

        try:
            output = await tool.run(args, ctx)
            content = output if isinstance(output, str) else str(output)
            is_error = False
        except asyncio.CancelledError:
            raise
        except ToolError as exc:
            content = _error_text(exc)
            is_error = True
        except Exception as exc:
            content = f"Tool {name} failed: {type(exc).__name__}: {exc}"
            is_error = True
        content = truncate_output(content, self.config.max_tool_output_bytes)

        try:
            self.plugin_manager.hook.post_tool_call(
                session=session, tool_name=name, arguments=args, result=content, is_error=is_error
            )
        except Exception:
            logger.warning("post_tool_call hook failed for %s", name, exc_info=True)
        if is_error:
            return ToolCallResult.error(call.id, content)
        return ToolCallResult.success(call.id, content)

    def __repr__(self) -> str:
        return (
            f"AgentRuntime(provider={getattr(self.provider, 'name', '?')!r}, "
            f"tools={sorted(self.tools)}, store={self.store is not None}, pool={self.pool!r})"
        )


def pricing_settings(config: Any) -> dict[str, Any]:
    """The ``RuntimeConfig`` pricing fields of an ``AstridConfig``: ``[pricing."<model>"]``
    entries, ``[pricing.default]`` and ``[runtime] builtin_prices``."""
    entries = config.pricing
    default = entries.get("default")
    return {
        "pricing": {
            model: ModelPricing(**entry.model_dump())
            for model, entry in entries.items()
            if model != "default"
        },
        "default_pricing": ModelPricing(**default.model_dump()) if default else ModelPricing(),
        "builtin_prices": config.runtime.builtin_prices,
    }


def default_priced_note(config: Any) -> str | None:
    """A sentence saying that the model ``[llm.options]`` names is priced by
    ``[pricing.default]`` (neither listed nor known to the built-in source), else None."""
    model = config.llm.options.get("model")
    if not isinstance(model, str) or not model:
        return None
    prices = RuntimeConfig(workspace=".", **pricing_settings(config))
    if prices.price(model, Usage(0, 0))[1] != "default":
        return None
    rates = prices.default_pricing
    return (
        f"model {model!r} (key 'llm.options.model') has no [pricing] entry and no built-in "
        f"price; it is priced by [pricing.default] (${rates.input_per_million:g} input, "
        f"${rates.output_per_million:g} output per million tokens)"
    )


def open_runtime(
    config: Any = None,
    *,
    approval_handler: ApprovalHandler | None = None,
    tools: Iterable[Tool] | None = None,
    policy: SecurityPolicy | None = None,
) -> AgentRuntime:
    """An ``AgentRuntime`` built from configuration (a ``LoadedConfig``, a path, or discovery).

    The store, LLM provider, summarizer, limits, pricing, tools (``[tools]``; host ``tools``
    replace the registered ones) and toolsets are the ones the config names; the toolsets open
    when the runtime is entered (``async with open_runtime(...) as runtime``). The file used is
    ``runtime.config_path`` and is logged at INFO (``astrid.runtime``). The
    runtime's signing key lives at ``<home>/keys/runtime.key`` (created 0600 on first use), so
    capability tokens it minted stay trusted after a restart.
    """
    from .config import LoadedConfig, load_config, resolve_home_path
    from .plugins import get_implementation
    from .store import open_store

    loaded = config if isinstance(config, LoadedConfig) else load_config(config)
    cfg = loaded.config
    context = PluginContext(home=loaded.home)
    where = loaded.where
    provider = get_implementation(
        "llm_provider", cfg.llm.provider, where=f"{where}: key 'llm.provider'"
    ).create(cfg.llm.options, context)
    summarizer = get_implementation(
        "summarizer", cfg.summarizer.name, where=f"{where}: key 'summarizer.name'"
    ).create(cfg.summarizer.options, context)
    toolsets = [
        get_implementation("toolset", name, where=f"{where}: key {name!r}").create(
            cfg.toolset_tables.get(name, {}), context
        )
        for name in cfg.toolsets_to_open()
    ]
    rt = cfg.runtime
    runtime_config = RuntimeConfig(
        max_context_tokens=rt.max_context_tokens,
        summarization_threshold=rt.summarization_threshold,
        keep_recent_count=rt.keep_recent_count,
        auto_summarize=rt.auto_summarize,
        system_prompt=rt.system_prompt,
        max_iterations=rt.max_iterations,
        max_concurrent_subagents=rt.max_concurrent_subagents,
        max_subagent_depth=rt.max_subagent_depth,
        default_subagent_timeout=rt.default_subagent_timeout,
        estimated_output_tokens=rt.estimated_output_tokens,
        max_output_tokens=rt.max_output_tokens,
        temperature=rt.temperature,
        workspace=(
            resolve_home_path(rt.workspace_root, loaded.home) if rt.workspace_root else os.getcwd()
        ),
        **pricing_settings(cfg),
    )
    context_manager = ContextManager(
        rt.max_context_tokens,
        threshold=rt.summarization_threshold,
        keep_recent=rt.keep_recent_count,
        summarizer=summarizer,
    )
    from .security.crypto import load_or_create_keypair

    runtime = AgentRuntime(
        provider,
        keypair=load_or_create_keypair(loaded.home / "keys" / "runtime.key"),
        store=open_store(loaded),
        config=runtime_config,
        tools=tools,
        policy=policy,
        context_manager=context_manager,
        approval_handler=approval_handler,
        enabled_tools=cfg.tools.enabled,
        tool_options=cfg.tools.options,
        toolsets=toolsets,
    )
    runtime.config_path = loaded.source.absolute() if loaded.source is not None else None
    if runtime.config_path is None:
        logger.info("open_runtime: no configuration file; the defaults (home %s)", loaded.home)
    else:  # found by discovery too (./astrid.toml): say which file a host picked up
        logger.info("open_runtime: configuration %s (home %s)", runtime.config_path, loaded.home)
    return runtime
