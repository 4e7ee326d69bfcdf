"""The tool and token-estimator kits: the built-ins pass them, and each check fails on a tool or
estimator with the matching defect (its message names it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from astrid import Message
from astrid.plugins import PluginContext, registry
from astrid.security.actions import FileRead
from astrid.testing import TokenEstimatorConformance, ToolConformance
from astrid.tokens import TokenEstimator
from astrid.tools import FunctionTool, Tool, ToolContext


def _builtin(name: str, home: Path) -> Tool:
    tool: Tool = registry("tool")[name].create(None, PluginContext(home=home))
    return tool


class TestReadFile(ToolConformance):
    valid_arguments = ({"path": "notes.txt"},)
    invalid_arguments = ({"path": "missing.txt"}, {})

    def prepare(self, workspace: Path) -> None:
        (workspace / "notes.txt").write_text("hello\n")

    def make_tool(self, workspace: Path) -> Tool:
        return _builtin("read_file", workspace)


class TestWriteFile(ToolConformance):
    valid_arguments = ({"path": "out/new.txt", "content": "x"},)
    invalid_arguments = ({"path": "a.txt"},)

    def make_tool(self, workspace: Path) -> Tool:
        return _builtin("write_file", workspace)


def _classified(workspace: Path, action: Any) -> Tool:
    return FunctionTool(
        "peek", "Peek at a file.", {"type": "object", "properties": {"path": {"type": "string"}},
                                    "required": ["path"]},
        lambda arguments, ctx: f"peeked at {arguments['path']}",
        classify=lambda arguments, ctx: action(str(arguments["path"])),
    )


class TestClassifiedTool(ToolConformance):
    valid_arguments = ({"path": "a.txt"},)

    def make_tool(self, workspace: Path) -> Tool:
        return _classified(workspace, lambda path: FileRead(path=path))


def test_a_classifier_returning_something_else_fails(tmp_path: Path) -> None:
    kit = TestClassifiedTool()
    tool = _classified(tmp_path, lambda path: {"type": "file_read"})
    with pytest.raises(ValidationError):
        kit.test_hostile_text_arguments_do_not_crash_the_classifier(tool, tmp_path)


class TestContentEstimator(TokenEstimatorConformance):
    def make_estimator(self) -> TokenEstimator:
        estimator: TokenEstimator = registry("token_estimator")["content"].create(
            None, PluginContext(home=Path("/"))
        )
        return estimator


class TestOriginalEstimator(TestContentEstimator):
    def make_estimator(self) -> TokenEstimator:
        estimator: TokenEstimator = registry("token_estimator")["original"].create(
            None, PluginContext(home=Path("/"))
        )
        return estimator


# -- defects ---------------------------------------------------------------------------------


class _Echo:
    name = "echo"
    description = "Echo the text back."
    input_schema: dict[str, Any] = {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    }

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        return str(arguments["text"])


class _Kit(ToolConformance):
    valid_arguments = ({"text": "hi"},)

    def __init__(self, tool: Any) -> None:
        self._tool = tool

    def make_tool(self, workspace: Path) -> Tool:
        made: Tool = self._tool
        return made


def _defect(**changes: Any) -> Any:
    tool = _Echo()
    for key, value in changes.items():
        setattr(tool, key, value)
    return tool


def test_the_echo_tool_passes(tmp_path: Path) -> None:
    kit = _Kit(_Echo())
    tool = kit.make_tool(tmp_path)
    kit.test_the_tool_has_every_member_of_the_protocol(tool)
    kit.test_the_name_is_one_every_provider_accepts(tool)
    kit.test_the_input_schema_is_a_json_schema_object(tool)
    kit.test_valid_arguments_run_and_return_text(tool, tmp_path)


@pytest.mark.parametrize(
    ("check", "defect", "message"),
    [
        ("test_the_name_is_one_every_provider_accepts", {"name": "fs:echo"},
         r"tool name 'fs:echo' does not match"),
        ("test_the_description_is_non_empty_text", {"description": " "},
         "give one"),
        ("test_the_input_schema_is_a_json_schema_object", {"input_schema": {"type": "string"}},
         "type 'object'"),
        ("test_the_input_schema_is_a_json_schema_object",
         {"input_schema": {"type": "object", "properties": {}, "required": ["text"]}},
         r"'required' names properties the schema lacks: \['text'\]"),
        ("test_the_input_schema_is_a_json_schema_object",
         {"input_schema": {"type": "object", "properties": {"p": {"default": Path("/")}}}},
         "plain JSON"),
    ],
)
def test_each_tool_check_fails_on_its_defect(
    tmp_path: Path, check: str, defect: dict[str, Any], message: str
) -> None:
    kit = _Kit(_defect(**defect))
    with pytest.raises((AssertionError, pytest.fail.Exception), match=message):
        getattr(kit, check)(kit.make_tool(tmp_path))


class _SyncRun(_Echo):
    def run(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        return "not awaited"


class _NumberResult(_Echo):
    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        return 42


class _Nameless:
    description = "no name"
    input_schema: dict[str, Any] = {"type": "object"}

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        return ""


def test_run_must_be_async_and_return_text(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="run must be an async def"):
        _Kit(_SyncRun()).test_the_tool_has_every_member_of_the_protocol(_SyncRun())
    with pytest.raises(AssertionError, match=r"_Nameless is not a Tool"):
        _Kit(_Nameless()).test_the_tool_has_every_member_of_the_protocol(_Nameless())  # type: ignore[arg-type]
    kit = _Kit(_NumberResult())
    with pytest.raises(AssertionError, match=r"returned a int, not text"):
        kit.test_valid_arguments_run_and_return_text(kit.make_tool(tmp_path), tmp_path)


class _Estimates:
    name = "bad"

    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    def estimate(self, message: Message) -> Any:
        self.calls += 1
        return self.value(self.calls, message)


class _EstimatorKit(TokenEstimatorConformance):
    def __init__(self, value: Any) -> None:
        self.value = value

    def make_estimator(self) -> TokenEstimator:
        return _Estimates(self.value)


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        ("test_every_kind_of_message_gets_a_non_negative_int", lambda n, m: -1, r"= -1"),
        ("test_every_kind_of_message_gets_a_non_negative_int", lambda n, m: 1.5, "is a float"),
        ("test_estimates_are_deterministic", lambda n, m: n, "assert"),
        ("test_more_text_is_never_fewer_tokens", lambda n, m: 1000 - len(m.text() or ""),
         "estimates of growing texts"),
        ("test_more_text_is_never_fewer_tokens", lambda n, m: 3, "1000 words estimated like one"),
    ],
)
def test_each_estimator_check_fails_on_its_defect(check: str, value: Any, message: str) -> None:
    kit = _EstimatorKit(value)
    with pytest.raises(AssertionError, match=message):
        getattr(kit, check)(kit.make_estimator())
