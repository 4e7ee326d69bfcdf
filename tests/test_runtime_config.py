"""``open_runtime``: the runtime built from TOML (provider, summarizer, limits, pricing)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from astrid.errors import ConfigError
from astrid.runtime import MaxIterationsExceeded, open_runtime

CONFIG = """
[storage]
backend = "sqlite"

[llm]
provider = "scripted"

[llm.options]
model = "priced-model"
script = [
  [{text = "hello there"}, {usage = {input_tokens = 1000000, output_tokens = 1000000}}],
  [{tool_call = {id = "c1", name = "list_directory", arguments = {path = "."}}}],
  [{tool_call = {id = "c2", name = "list_directory", arguments = {path = "."}}}],
]

[runtime]
max_iterations = 2
workspace_root = "{workspace}"

[pricing."priced-model"]
input_per_million = 1.5
output_per_million = 2.5
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "astrid.toml"
    path.write_text(CONFIG.replace("{workspace}", str(tmp_path)))
    return path


def test_runtime_uses_configured_provider_pricing_and_store(config_file: Path) -> None:
    runtime = open_runtime(config_file)
    assert runtime.config.max_iterations == 2
    assert runtime.config.pricing_for("priced-model").input_per_million == 1.5
    assert runtime.context_manager.summarizer.name == "extractive"
    session = runtime.store.new_session("p") if runtime.store else None
    assert session is not None
    result = asyncio.run(runtime.run_turn(session, "hi"))
    assert result.text == "hello there"
    assert result.cost_usd == pytest.approx(4.0)  # 1M in at $1.5 + 1M out at $2.5
    assert session.budget_tracker.spent() == pytest.approx(4.0)
    loaded = runtime.store.load(session.id)
    assert loaded is not None and len(loaded.messages) == 2
    # the configured iteration cap stops a model that keeps calling tools
    with pytest.raises(MaxIterationsExceeded, match="max_iterations = 2"):
        asyncio.run(runtime.run_turn(session, "loop"))
    with runtime:
        pass
    from astrid.errors import StorageError

    with pytest.raises(StorageError, match="closed"):
        runtime.store.load(session.id)


def test_unknown_provider_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path))
    path = tmp_path / "c.toml"
    path.write_text('[llm]\nprovider = "gpt-nine"\n')
    with pytest.raises(ConfigError, match=r"'llm.provider'.*valid choices: ([a-z-]+, )*scripted\b"):
        open_runtime(path)


def test_runtime_key_survives_a_restart(config_file: Path, tmp_path: Path) -> None:
    first = open_runtime(config_file)
    key_file = tmp_path / "home" / "keys" / "runtime.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.parent.stat().st_mode & 0o777 == 0o700
    second = open_runtime(config_file)
    assert first.keypair.public_key_bytes == second.keypair.public_key_bytes
    first.close()
    second.close()


def test_a_damaged_runtime_key_is_an_error_not_replaced(
    config_file: Path, tmp_path: Path
) -> None:
    from astrid.errors import AstridError

    key_file = tmp_path / "home" / "keys" / "runtime.key"
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(b"short")
    with pytest.raises(AstridError, match="32 bytes, found 5"):
        open_runtime(config_file)
    assert key_file.read_bytes() == b"short"
