"""The API key is never printed, logged, stored in a session or shown by ``config show``.

A host runs turns through ``open_runtime`` (a tool call, an answer, then errors whose bodies
echo the key back, as some servers do); every log record at DEBUG (astrid's, the openai SDK's,
httpx2's and httpcore2's), the SQLite store's files, the errors, the reprs and the output of the
``astrid`` command are then searched for the key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from astrid.errors import AuthenticationFailed, ProviderError
from astrid.runtime import open_runtime
from astrid.testing.fake_llm import (
    ErrorReply,
    FakeOpenAIServer,
    ReceivedRequest,
    ToolCallSpec,
    text_reply,
    tool_call_reply,
)

KEY_ENV = "ASTRID_TEST_OPENAI_KEY"
LOGGERS = ("", "astrid", "astrid_openai", "openai", "httpx2", "httpcore2", "httpx", "httpcore")

CONFIG = """
[llm]
provider = "openai"

[llm.options]
model = "fake-model"
base_url = "{base_url}"
{key_line}
max_retries = 1
extra_headers = {{ "X-Title" = "astrid tests" }}

[runtime]
workspace_root = "{workspace}"
"""


def _echo_key(status: int) -> Callable[[ReceivedRequest], ErrorReply]:
    """An error reply whose message repeats the Authorization header it received."""

    def reply(request: ReceivedRequest) -> ErrorReply:
        sent = request.headers.get("authorization", "")
        return ErrorReply(status, f"Incorrect API key provided: {sent}", code="invalid_api_key")

    return reply


def _files_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_the_key_never_leaks_through_a_host_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    server: FakeOpenAIServer,
    api_key: str,
) -> None:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    home = tmp_path / "home"
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "a.txt").write_text("alpha\n")
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.setenv(KEY_ENV, api_key)
    config = tmp_path / "astrid.toml"
    config.write_text(
        CONFIG.format(
            base_url=server.base_url, key_line=f'api_key_env = "{KEY_ENV}"', workspace=workspace
        )
    )
    server.script(
        tool_call_reply(ToolCallSpec("call_1", '{"path": "."}', name="list_directory")),
        text_reply("done"),
        _echo_key(401),
        _echo_key(400),
        _echo_key(500),
        _echo_key(500),
    )
    runtime = open_runtime(config)
    assert runtime.store is not None
    session = runtime.store.new_session("sys")
    assert asyncio.run(runtime.run_turn(session, "list it")).text == "done"
    errors: list[ProviderError] = []
    for prompt in ("again", "and again", "once more"):
        with pytest.raises(ProviderError) as info:
            asyncio.run(runtime.run_turn(session, prompt))
        errors.append(info.value)
    assert isinstance(errors[0], AuthenticationFailed)
    assert errors[2].retried and errors[2].status == 500
    assert server.pending == 0
    # the server did get the key, so a leak would be visible below
    assert all(r.headers["authorization"] == f"Bearer {api_key}" for r in server.requests)
    runtime.store.save(session)
    shown = [repr(runtime), repr(runtime.provider), repr(session)]
    shown += [f"{e!s} {e!r} {e.args!r}" for e in errors]
    runtime.close()

    logged = caplog.text + "".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    assert caplog.records  # the SDK and httpx2 did log at DEBUG
    assert any(r.name.startswith(("openai", "httpx2", "httpcore2")) for r in caplog.records)
    assert api_key not in logged
    assert all(api_key not in text for text in shown)
    assert "Incorrect API key provided: Bearer ***" in str(errors[0])
    stored = _files_under(home)
    assert stored  # the SQLite store is there
    assert api_key.encode() not in stored


@pytest.mark.parametrize("source", ["env", "file"])
def test_the_cli_never_shows_the_key(tmp_path: Path, api_key: str, source: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASTRID_", "OPENAI_"))}
    if source == "env":
        env[KEY_ENV] = api_key
        key_line = f'api_key_env = "{KEY_ENV}"'
    else:
        (home / "openai.key").write_text(api_key + "\n")
        (home / "openai.key").chmod(0o600)
        key_line = 'api_key_file = "openai.key"'
    config = tmp_path / "astrid.toml"
    config.write_text(
        CONFIG.format(base_url="http://127.0.0.1:9/v1", key_line=key_line, workspace=tmp_path)
    )
    env.update({"ASTRID_HOME": str(home), "ASTRID_CONFIG": str(config)})
    outputs: list[str] = []
    for args in (
        ["config", "show"],
        ["config", "show", "--json"],
        ["config", "validate"],
        ["plugins"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "astrid.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    assert "llm.options.model" in outputs[0] and "openai" in outputs[3]
    assert all(api_key not in out for out in outputs)
