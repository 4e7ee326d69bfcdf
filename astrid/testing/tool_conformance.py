"""Conformance kits for tools and token estimators: subclass ``ToolConformance`` or
``TokenEstimatorConformance`` as ``Test<Name>`` in a test module.

They check what the runtime and the providers rely on: the protocol's members, a name both
OpenAI and Anthropic accept, a JSON-schema object the providers can send, text results from
``run`` with real arguments in a real workspace, a security classification that is a
``SensitiveAction``; and for an estimator, a non-negative, deterministic count for every kind of
message. See docs/plugin-authors.md ("Testing a tool or an estimator").
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

try:
    import pytest
except ImportError as exc:  # pragma: no cover - only without pytest installed
    raise ImportError("astrid.testing needs pytest: pip install pytest") from exc

from ..messages import Message
from ..plugins import missing_members
from ..security.actions import SENSITIVE_ACTION_ADAPTER
from ..session import AgentSession
from ..tokens import TokenEstimator
from ..tools import Tool, ToolContext, tool_definition
from .conformance import HOSTILE_TEXTS, sample_messages

PROVIDER_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""The tool names both OpenAI and Anthropic accept (no ``:``, no ``.``, at most 64)."""


class ToolConformance:
    """The tool contract as pytest tests.

    Provide ``make_tool(workspace)`` (a fresh tool; ``workspace`` is an empty directory the
    calls run in) and ``valid_arguments``: argument objects ``run`` must accept. List
    ``invalid_arguments`` that ``run`` must refuse by raising (the runtime turns the exception
    into an error result the model sees). ``prepare(workspace)`` may create files first.
    """

    valid_arguments: ClassVar[Sequence[dict[str, Any]]] = ()
    invalid_arguments: ClassVar[Sequence[dict[str, Any]]] = ()
    run_timeout_s: ClassVar[float] = 30.0

    def make_tool(self, workspace: Path) -> Tool:
        """A fresh tool whose calls run in ``workspace``."""
        raise NotImplementedError(f"{type(self).__name__} must define make_tool(workspace)")

    def prepare(self, workspace: Path) -> None:
        """Create what ``valid_arguments`` need in ``workspace`` (nothing by default)."""

    @pytest.fixture
    def workspace(self, tmp_path: Path) -> Path:
        """An empty workspace directory, prepared by ``prepare``."""
        path = (tmp_path / "workspace").resolve()
        path.mkdir()
        self.prepare(path)
        return path

    @pytest.fixture
    def tool(self, workspace: Path) -> Tool:
        """The tool under test."""
        return self.make_tool(workspace)

    def _context(self, workspace: Path) -> ToolContext:
        return ToolContext(session=AgentSession("tool conformance"), workspace_root=workspace)

    def _run(self, tool: Tool, arguments: dict[str, Any], workspace: Path) -> Any:
        async def call() -> Any:
            return await asyncio.wait_for(
                tool.run(arguments, self._context(workspace)), self.run_timeout_s
            )

        return asyncio.run(call())

    def test_the_tool_has_every_member_of_the_protocol(self, tool: Tool) -> None:
        assert missing_members(tool, Tool) == [], f"{type(tool).__name__} is not a Tool"
        assert isinstance(tool, Tool)
        assert inspect.iscoroutinefunction(tool.run), "run must be an async def"

    def test_the_name_is_one_every_provider_accepts(self, tool: Tool) -> None:
        assert isinstance(tool.name, str)
        assert PROVIDER_TOOL_NAME.fullmatch(tool.name), (
            f"tool name {tool.name!r} does not match ^[A-Za-z0-9_-]{{1,64}}$ (OpenAI and "
            "Anthropic refuse it)"
        )

    def test_the_description_is_non_empty_text(self, tool: Tool) -> None:
        assert isinstance(tool.description, str) and tool.description.strip(), (
            "the model chooses tools by their description: give one"
        )

    def test_the_input_schema_is_a_json_schema_object(self, tool: Tool) -> None:
        schema = tool.input_schema
        assert isinstance(schema, dict), f"input_schema is a {type(schema).__name__}, not a dict"
        try:
            plain = json.loads(json.dumps(schema, allow_nan=False))
        except (TypeError, ValueError) as exc:
            pytest.fail(f"input_schema must be plain JSON: {exc}")
        assert plain == schema, "input_schema must be plain JSON (tuples, non-string keys?)"
        assert schema.get("type") == "object", "providers need a schema of type 'object'"
        properties = schema.get("properties", {})
        assert isinstance(properties, dict), "'properties' must be an object"
        for name, prop in properties.items():
            assert isinstance(prop, dict), f"property {name!r}: its schema must be an object"
        required = schema.get("required", [])
        assert isinstance(required, list), "'required' must be a list"
        unknown = [name for name in required if name not in properties]
        assert unknown == [], f"'required' names properties the schema lacks: {unknown}"

    def test_the_definition_providers_receive_matches_the_tool(self, tool: Tool) -> None:
        definition = tool_definition(tool)
        assert (definition.name, definition.description) == (tool.name, tool.description)
        assert definition.input_schema == tool.input_schema

    def test_valid_arguments_run_and_return_text(self, tool: Tool, workspace: Path) -> None:
        if not self.valid_arguments:
            pytest.fail(f"{type(self).__name__}: list some valid_arguments to run the tool with")
        properties = tool.input_schema.get("properties", {})
        for arguments in self.valid_arguments:
            missing = [n for n in tool.input_schema.get("required", []) if n not in arguments]
            assert missing == [], f"valid_arguments {arguments} lack required {missing}"
            unknown = [n for n in arguments if properties and n not in properties]
            assert unknown == [], f"valid_arguments {arguments}: {unknown} not in the schema"
            result = self._run(tool, dict(arguments), workspace)
            assert isinstance(result, str), (
                f"run({arguments}) returned a {type(result).__name__}, not text"
            )

    def test_invalid_arguments_raise(self, tool: Tool, workspace: Path) -> None:
        if not self.invalid_arguments:
            pytest.skip(f"{type(self).__name__}: no invalid_arguments listed")
        for arguments in self.invalid_arguments:
            with pytest.raises(Exception):  # noqa: B017 - any exception becomes an error result
                self._run(tool, dict(arguments), workspace)

    def test_hostile_text_arguments_do_not_crash_the_classifier(
        self, tool: Tool, workspace: Path
    ) -> None:
        """``classify`` (when the tool has one) returns a ``SensitiveAction`` or None, for the
        valid arguments and for string arguments full of quotes, NUL and emoji."""
        classify = getattr(tool, "classify", None)
        if classify is None:
            pytest.skip("the tool has no classify: its calls are checked as a plain tool call")
        strings = [n for n, p in tool.input_schema.get("properties", {}).items()
                   if p.get("type") == "string"]
        odd = [{**self.valid_arguments[0], **dict.fromkeys(strings, text)}
               for text in HOSTILE_TEXTS] if self.valid_arguments else []
        for arguments in [*self.valid_arguments, *odd]:
            try:
                action = classify(dict(arguments), self._context(workspace))
            except Exception as exc:  # refusing odd arguments is fine; crashing on valid is not
                assert arguments not in self.valid_arguments, f"classify({arguments}): {exc!r}"
                continue
            if action is not None:
                SENSITIVE_ACTION_ADAPTER.validate_python(action)


class TokenEstimatorConformance:
    """The token-estimator contract as pytest tests; provide ``make_estimator()``."""

    def make_estimator(self) -> TokenEstimator:
        """A fresh estimator."""
        raise NotImplementedError(f"{type(self).__name__} must define make_estimator()")

    @pytest.fixture
    def estimator(self) -> TokenEstimator:
        """The estimator under test."""
        return self.make_estimator()

    def test_the_estimator_has_every_member_of_the_protocol(
        self, estimator: TokenEstimator
    ) -> None:
        assert missing_members(estimator, TokenEstimator) == []
        assert isinstance(estimator.name, str) and estimator.name

    def test_every_kind_of_message_gets_a_non_negative_int(
        self, estimator: TokenEstimator
    ) -> None:
        for message in [*sample_messages(), Message.user(""), *map(Message.user, HOSTILE_TEXTS)]:
            count = estimator.estimate(message)
            assert type(count) is int, f"estimate({message!r}) is a {type(count).__name__}"
            assert count >= 0, f"estimate({message!r}) = {count}"

    def test_estimates_are_deterministic(self, estimator: TokenEstimator) -> None:
        for message in sample_messages():
            assert estimator.estimate(message) == estimator.estimate(message)
        fresh = self.make_estimator()
        assert [fresh.estimate(m) for m in sample_messages()] == [
            estimator.estimate(m) for m in sample_messages()
        ]

    def test_more_text_is_never_fewer_tokens(self, estimator: TokenEstimator) -> None:
        counts = [estimator.estimate(Message.user("word " * n)) for n in (1, 10, 100, 1000)]
        assert counts == sorted(counts), f"estimates of growing texts: {counts}"
        assert counts[-1] > counts[0], f"1000 words estimated like one: {counts}"
