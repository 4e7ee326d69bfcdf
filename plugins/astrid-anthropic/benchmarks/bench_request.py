"""Per-request overhead of the anthropic provider at 10, 120 and 500 messages.

Against the loopback fake Anthropic server (``astrid.testing.fake_llm``), each request sends the
conversation plus one new user message (as a real turn does) and reads the streamed reply. Three
ways to send it are compared:

* ``sdk``: what a provider written the usual way does: the messages as dicts, through
  ``client.messages.create(stream=True, ...)``, so the SDK prepares (walks and copies) and
  serializes the whole request on every call;
* ``no cache``: this provider with ``wire_cache=False``: the body built by the provider on every
  request and sent as bytes;
* ``cache``: this provider as shipped: each message encoded once, a request joins the bytes.

Printed per size: the median wall time of a whole request (ms) and of building the request
alone (ms: the SDK's preparation and serialization for ``sdk``, ``request_body`` otherwise).

    .venv/bin/python plugins/astrid-anthropic/benchmarks/bench_request.py [--requests 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

from anthropic import AsyncAnthropic
from astrid.llm import CallSettings, ToolDefinition
from astrid.messages import Message, ToolCall, ToolCallResult
from pydantic import SecretStr

from astrid_anthropic.provider import AnthropicProvider

SIZES = (10, 120, 500)
SERVER = """
import sys
from astrid.testing.fake_llm import FakeAnthropicServer, text_reply
with FakeAnthropicServer(api_key=None, validate=False) as server:
    server.script(*[text_reply("ok") for _ in range(int(sys.argv[1]))])
    print(server.base_url, flush=True)
    sys.stdin.read()
"""
"""The fake server runs in its own process, so that its JSON parsing of each request does not
compete with the client for this process's interpreter lock."""
SETTINGS = CallSettings(model="claude-bench")
TOOLS = [
    ToolDefinition(f"tool_{n}", f"Tool number {n}: does one thing well.", {
        "type": "object",
        "properties": {"path": {"type": "string", "description": "A path."},
                       "limit": {"type": "integer", "description": "At most this many."}},
        "required": ["path"],
    })
    for n in range(8)
]


def conversation(size: int) -> list[Message]:
    """``size`` messages of a tool-using session: question, call, result, answer, ..."""
    out: list[Message] = []
    n = 0
    while len(out) < size:
        call_id = f"toolu_{n:04d}"
        out.append(Message.user(f"Question {n}: what is in file {n}? " + "context " * 40))
        out.append(Message.assistant_with_tools(
            [ToolCall(id=call_id, name="tool_1", arguments={"path": f"f{n}.txt", "limit": 10})]
        ))
        out.append(Message.tool_result(ToolCallResult.success(call_id, "line of output\n" * 30)))
        out.append(Message.assistant(f"File {n} holds thirty lines of output. " * 5))
        n += 1
    return out[:size]


def sdk_params(messages: list[Message]) -> list[dict[str, Any]]:
    """The messages as a typical provider hands them to the SDK (one dict per message)."""
    params: list[dict[str, Any]] = []
    for m in messages:
        calls = m.tool_calls()
        result = m.tool_result_content()
        if result is not None:
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": result.call_id,
                                     "content": result.content}
            params.append({"role": "user", "content": [block]})
        elif calls is not None:
            params.append({"role": "assistant", "content": [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in calls
            ]})
        else:
            params.append({"role": m.role.value if hasattr(m.role, "value") else m.role,
                           "content": [{"type": "text", "text": m.text() or ""}]})
    return params


async def time_sdk(client: AsyncAnthropic, base: list[Message], requests: int) -> float:
    times: list[float] = []
    for i in range(requests):
        messages = [*base, Message.user(f"next {i}")]
        start = time.perf_counter()
        stream = await client.messages.create(
            model="claude-bench", max_tokens=1024, stream=True, system="Be brief.",
            messages=sdk_params(messages),  # type: ignore[arg-type]
            tools=[{"name": t.name, "description": t.description,
                    "input_schema": t.input_schema} for t in TOOLS],  # type: ignore[misc]
        )
        async for event in stream:
            if event.type == "message_stop":  # as the provider does: not waiting for EOF
                break
        await stream.close()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def time_provider(provider: AnthropicProvider, base: list[Message], requests: int) -> float:
    times: list[float] = []
    for i in range(requests):
        messages = [*base, Message.user(f"next {i}")]
        start = time.perf_counter()
        async for _ in provider.stream(messages, TOOLS, "Be brief.", settings=SETTINGS):
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def build_sdk(client: AsyncAnthropic, base: list[Message], requests: int) -> float:
    """The SDK's own per-request work on the body: prepare (walk and copy) and serialize."""
    from anthropic._utils._json import openapi_dumps
    from anthropic._utils._prepare import prepare_request_data

    times: list[float] = []
    for i in range(requests):
        messages = [*base, Message.user(f"next {i}")]
        start = time.perf_counter()
        body = {"model": "claude-bench", "max_tokens": 1024, "stream": True,
                "system": "Be brief.", "messages": sdk_params(messages),
                "tools": [{"name": t.name, "description": t.description,
                           "input_schema": t.input_schema} for t in TOOLS]}
        openapi_dumps(prepare_request_data(body, location="body"))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def build_provider(provider: AnthropicProvider, base: list[Message], requests: int) -> float:
    times: list[float] = []
    for i in range(requests):
        messages = [*base, Message.user(f"next {i}")]
        start = time.perf_counter()
        provider.request_body(messages, TOOLS, "Be brief.", SETTINGS)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def main(requests: int) -> None:
    count = requests * len(SIZES) * 3 + 10
    with subprocess.Popen(
        [sys.executable, "-c", SERVER, str(count)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as server:
        assert server.stdout is not None and server.stdin is not None
        base_url = server.stdout.readline().strip()
        try:
            await measure(base_url, requests)
        finally:
            server.stdin.close()
            server.wait(10)


async def measure(base_url: str, requests: int) -> None:
    client = AsyncAnthropic(api_key="bench", base_url=base_url, max_retries=0)

    def provider(cache: bool) -> AnthropicProvider:
        return AnthropicProvider(model="claude-bench", api_key=SecretStr("bench"),
                                 base_url=base_url, max_retries=0, wire_cache=cache)

    print(f"median of {requests} requests; ms per request (ms building the body)")
    print(f"{'messages':>9} {'sdk':>16} {'no cache':>16} {'cache':>16}")
    for size in SIZES:
        base = conversation(size)
        cached, uncached = provider(True), provider(False)
        build_provider(cached, base, 2)  # first sight: every message encoded once
        row = [
            (await time_sdk(client, base, requests), build_sdk(client, base, requests)),
            (await time_provider(uncached, base, requests),
             build_provider(uncached, base, requests)),
            (await time_provider(cached, base, requests),
             build_provider(cached, base, requests)),
        ]
        cells = " ".join(f"{total:8.2f} ({build:5.2f})" for total, build in row)
        print(f"{size:>9} {cells}")
        await cached.aclose()
        await uncached.aclose()
    await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    asyncio.run(main(parser.parse_args().requests))
