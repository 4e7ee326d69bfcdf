"""The ``scripted`` provider: streaming shape, script files, exhaustion, registration."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from astrid import hookimpl
from astrid.default_plugins.scripted_provider import (
    ScriptedProvider,
    ScriptedProviderError,
    ScriptedProviderOptions,
    load_script,
)
from astrid.errors import ConfigError
from astrid.llm import (
    Done,
    LLMProvider,
    StreamError,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from astrid.plugins import (
    PluginContext,
    get_implementation,
    load_plugins,
    register_plugin,
    registry,
    unregister_plugin,
)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    load_plugins()
    yield
    load_plugins()


def _events(provider: ScriptedProvider) -> list[StreamEvent]:
    async def collect() -> list[StreamEvent]:
        return [event async for event in provider.stream([], [], "")]

    return asyncio.run(collect())


def test_is_an_llm_provider() -> None:
    provider = ScriptedProvider([])
    assert isinstance(provider, LLMProvider)
    assert provider.name == "scripted"
    assert provider.model == "scripted-1"


def test_text_is_streamed_in_several_deltas_and_ends_with_done() -> None:
    text = "Hello there, this is a longer answer."
    events = _events(ScriptedProvider([[{"text": text}]]))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1
    assert "".join(d.text for d in deltas) == text
    assert isinstance(events[-1], Done)


def test_tool_call_is_start_deltas_end() -> None:
    args = {"path": "./some/long/file/name.txt", "count": 3}
    events = _events(
        ScriptedProvider([[{"tool_call": {"id": "c1", "name": "read_file", "arguments": args}}]])
    )
    assert events[0] == ToolCallStart("c1", "read_file")
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(deltas) > 1 and all(d.id == "c1" for d in deltas)
    assert json.loads("".join(d.args_delta for d in deltas)) == args
    assert events[-2] == ToolCallEnd("c1")
    assert isinstance(events[-1], Done)


def test_string_arguments_are_sent_verbatim() -> None:
    events = _events(
        ScriptedProvider([[{"tool_call": {"id": "c", "name": "x", "arguments": "{bad json"}}]])
    )
    raw = "".join(e.args_delta for e in events if isinstance(e, ToolCallDelta))
    assert raw == "{bad json"


def test_parallel_tool_calls_interleave_deltas() -> None:
    calls = [
        {"id": "a", "name": "t", "arguments": {"value": "a" * 30}},
        {"id": "b", "name": "t", "arguments": {"value": "b" * 30}},
    ]
    events = _events(ScriptedProvider([[{"parallel_tool_calls": calls}]]))
    ids = [e.id for e in events if isinstance(e, ToolCallDelta)]
    assert ids[:4] == ["a", "b", "a", "b"]
    for call in calls:
        raw = "".join(
            e.args_delta for e in events if isinstance(e, ToolCallDelta) and e.id == call["id"]
        )
        assert json.loads(raw) == call["arguments"]


def test_usage_and_error() -> None:
    events = _events(
        ScriptedProvider(
            [[{"usage": {"input_tokens": 5, "output_tokens": 7}}, {"error": "boom"}, {"text": "x"}]]
        )
    )
    assert events == [Usage(5, 7), StreamError("boom")]


def test_each_stream_consumes_one_turn_then_exhaustion_is_an_error_event() -> None:
    provider = ScriptedProvider([[{"text": "one"}], [{"text": "two"}]])
    assert provider.turns_left == 2
    first = "".join(e.text for e in _events(provider) if isinstance(e, TextDelta))
    second = "".join(e.text for e in _events(provider) if isinstance(e, TextDelta))
    assert (first, second) == ("one", "two")
    assert provider.turns_used == 2
    events = _events(provider)
    assert len(events) == 1 and isinstance(events[0], StreamError)
    assert "exhausted" in events[0].message
    assert len(provider.requests) == 3


def test_complete_simple_consumes_a_turn_of_text() -> None:
    provider = ScriptedProvider([[{"text": "sum"}, {"text": "mary"}], [{"error": "nope"}]])
    assert asyncio.run(provider.complete_simple("prompt")) == "summary"
    assert provider.prompts == ["prompt"]
    with pytest.raises(ScriptedProviderError, match="nope"):
        asyncio.run(provider.complete_simple("again"))
    with pytest.raises(ScriptedProviderError, match="exhausted"):
        asyncio.run(provider.complete_simple("more"))


def test_sleep_step_waits() -> None:
    provider = ScriptedProvider([[{"sleep": 5}, {"text": "late"}]])

    async def first_event() -> None:
        stream = provider.stream([], [], "")
        await asyncio.wait_for(stream.__anext__(), 0.05)

    with pytest.raises(TimeoutError):
        asyncio.run(first_event())


@pytest.mark.parametrize(
    "script, message",
    [
        ("not a list", "list of turns"),
        (["not a list"], "turn 0 must be a list"),
        ([[{"text": "a", "error": "b"}]], "exactly one key"),
        ([[{"bogus": 1}]], "exactly one key"),
        ([[{"usage": {"input_tokens": -1, "output_tokens": 0}}]], "turn 0, step 0"),
        ([[{"tool_call": {"id": "x"}}]], "turn 0, step 0"),
    ],
)
def test_malformed_scripts_are_rejected(script: Any, message: str) -> None:
    with pytest.raises(ScriptedProviderError, match=message):
        ScriptedProvider(script)


def test_script_files_json_and_toml(tmp_path: Path) -> None:
    as_json = tmp_path / "script.json"
    as_json.write_text(json.dumps([[{"text": "from json"}]]))
    as_toml = tmp_path / "script.toml"
    as_toml.write_text(
        'turns = [[{text = "from toml"}], [{usage = {input_tokens = 1, output_tokens = 2}}]]\n'
    )
    assert load_script(as_json) == [[{"text": "from json"}]]
    assert len(load_script(as_toml)) == 2
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"turns": [[{"text": "x"}]]}))
    assert load_script(wrapped) == [[{"text": "x"}]]
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ScriptedProviderError, match=r"bad\.json"):
        load_script(bad)
    with pytest.raises(ScriptedProviderError, match="cannot read"):
        load_script(tmp_path / "missing.json")


def test_options_need_one_source() -> None:
    with pytest.raises(ValueError, match="either"):
        ScriptedProviderOptions(script=[], script_file=Path("x.json"))
    with pytest.raises(ValueError):
        ScriptedProviderOptions.model_validate({"scrpit": []})


def test_registered_as_scripted(tmp_path: Path) -> None:
    impl = registry("llm_provider")["scripted"]
    assert impl.plugin == "astrid.default_plugins.scripted_provider"
    context = PluginContext(home=tmp_path)
    provider = impl.create({"script": [[{"text": "hi"}]], "model": "m-1"}, context)
    assert isinstance(provider, ScriptedProvider)
    assert provider.model == "m-1" and provider.turns_left == 1
    script_file = tmp_path / "s.json"
    script_file.write_text(json.dumps([[{"text": "a"}], [{"text": "b"}]]))
    from_file = impl.create({"script_file": str(script_file)}, context)
    assert from_file.turns_left == 2
    with pytest.raises(ConfigError, match="turn 0"):
        impl.create({"script": [[{"nope": 1}]]}, context)


class ConstantProviderPlugin:
    """A third-party plugin registering a provider next to ``scripted``."""

    @hookimpl
    def register_llm_providers(self, register: Any) -> None:
        register(
            "constant",
            lambda options, context: ScriptedProvider([[{"text": "always this"}]] * 3,
                                                      model="constant-1"),
            description="Answers the same thing three times.",
        )


def test_a_plugin_can_register_another_provider(tmp_path: Path) -> None:
    register_plugin(ConstantProviderPlugin(), name="constant-provider")
    try:
        assert {"scripted", "constant"} <= set(registry("llm_provider"))
        provider = get_implementation("llm_provider", "constant").create(
            None, PluginContext(home=tmp_path)
        )
        assert isinstance(provider, LLMProvider) and provider.model == "constant-1"
    finally:
        unregister_plugin("constant-provider")
    assert "constant" not in registry("llm_provider")
