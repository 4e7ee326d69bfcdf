"""Per-request overhead of the ``openai`` provider as the conversation grows (10/120/500 messages).

Each request goes to the loopback fake Chat Completions server (``astrid.testing.fake_llm``)
and streams a two-word answer, so what grows with the conversation is the client's work on the
request body. Three ways of sending the same body are timed:

* ``sdk``: messages and tools handed to ``chat.completions.create(messages=..., tools=...)``,
  which runs them through the SDK's recursive type transform on every call;
* ``no cache``: the provider's path (the body built by the provider and handed to the SDK as
  bytes) with the wire cache off, so every message is converted and encoded on each request;
* ``cache``: the provider as shipped: each message converted and encoded once, then reused.

Run: ``.venv/bin/python plugins/astrid-openai/benchmarks/bench_request.py [--requests N]``.
Figures are medians per request, in milliseconds: the wall time, and the CPU time of the
event loop's thread (the client's own work, without the server threads and the network wait),
with their growth from 10 to 500 messages; docs/openai.md quotes a run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from astrid.llm import CallSettings, ToolDefinition
from astrid.messages import Message, ToolCall, ToolCallResult
from astrid.testing.fake_llm import FakeOpenAIServer, text_reply
from pydantic import SecretStr

from astrid_openai import OpenAIOptions
from astrid_openai.provider import OpenAIProvider
from astrid_openai.wire import message_to_wire, tool_to_wire

SIZES = (10, 120, 500)
MODES = ("sdk", "no cache", "cache")
KEY = "bench-placeholder"  # the loopback server checks it; not a vendor key


def conversation(size: int) -> list[Message]:
    """A coding-agent-like history: question, tool call, a 1 KB tool result, answer, ..."""
    out: list[Message] = []
    n = 0
    while len(out) < size:
        out.append(Message.user(f"Question {n}: what does module {n} do? " + "context " * 20))
        out.append(
            Message.assistant_with_tools(
                [ToolCall(id=f"call_{n}", name="read_file", arguments={"path": f"src/m{n}.py"})]
            )
        )
        out.append(Message.tool_result(ToolCallResult.success(f"call_{n}", "def f(): ...\n" * 80)))
        out.append(Message.assistant(f"Module {n} defines f. " + "explanation " * 30))
        n += 1
    out = out[:size]
    if out[-1].tool_calls():  # end on an answered call, as a real history does
        out.pop()
    return out


TOOLS = [
    ToolDefinition(
        f"tool_{i}",
        f"Tool number {i}: does one thing well. " * 3,
        {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "A path in the workspace."},
                "limit": {"type": "integer", "minimum": 1},
                "flags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["path"],
        },
    )
    for i in range(8)
]


async def one_request(provider: OpenAIProvider, mode: str, messages: list[Message]) -> None:
    settings = CallSettings(model="fake-model")
    if mode == "sdk":
        wire = [{"role": "system", "content": "You are a coding agent."}]
        wire += [w for w in map(message_to_wire, messages) if w is not None]
        create: Any = provider.client().chat.completions.create
        stream = await create(
            model=settings.model,
            messages=wire,
            tools=[tool_to_wire(tool) for tool in TOOLS],
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            async for _ in stream:
                pass
        return
    async for _ in provider.stream(messages, TOOLS, "You are a coding agent.", settings=settings):
        pass


async def measure(
    server: FakeOpenAIServer, mode: str, size: int, requests: int
) -> tuple[float, float]:
    """Median wall time and median client CPU time (this thread's) of one request, in ms."""
    provider = OpenAIProvider(
        OpenAIOptions(model="fake-model", base_url=server.base_url, max_retries=0),
        api_key=SecretStr(KEY),
        cache_wire=mode != "no cache",
    )
    messages = conversation(size)
    walls: list[float] = []
    cpus: list[float] = []
    try:
        for i in range(requests + 3):
            server.script(text_reply("two words"))
            start, start_cpu = time.perf_counter(), time.thread_time()
            await one_request(provider, mode, messages)
            if i >= 3:  # the first requests open the connection and fill the cache
                walls.append(time.perf_counter() - start)
                cpus.append(time.thread_time() - start_cpu)
    finally:
        await provider.aclose()
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="timed requests per cell")
    args = parser.parse_args()
    results: dict[tuple[str, int], tuple[float, float]] = {}
    # validate=False: the fake server does not check each body, so its own cost stays flat
    with FakeOpenAIServer(api_key=KEY, validate=False) as server:
        for size in SIZES:
            for mode in MODES:
                results[mode, size] = asyncio.run(measure(server, mode, size, args.requests))
    for title, which in (("wall time", 0), ("client CPU (the event loop's thread)", 1)):
        print(f"median ms per request, {title}; loopback fake server, two-word streamed answer")
        print(f"{'messages':>8} " + " ".join(f"{mode:>10}" for mode in MODES))
        for size in SIZES:
            row = " ".join(f"{results[mode, size][which]:>10.2f}" for mode in MODES)
            print(f"{size:>8} {row}")
        growth = ", ".join(
            f"{mode} +{results[mode, SIZES[-1]][which] - results[mode, SIZES[0]][which]:.2f}"
            for mode in MODES
        )
        print(f"growth 10 -> {SIZES[-1]} messages (ms): {growth}\n")

if __name__ == "__main__":
    main()
