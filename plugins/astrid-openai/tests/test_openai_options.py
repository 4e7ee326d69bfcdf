"""Options of the ``openai`` provider and how the key is found (at creation, no network)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest
from astrid.errors import AuthenticationFailed
from astrid.plugins import PluginContext, get_implementation
from pydantic import SecretStr, ValidationError

from astrid_openai import OpenAIOptions, create_provider, read_api_key
from astrid_openai.provider import OpenAIProvider


def _context(home: Path) -> PluginContext:
    return PluginContext(home=home)


def test_registered_under_openai_with_its_options_model() -> None:
    impl = get_implementation("llm_provider", "openai")
    assert impl.options is OpenAIOptions


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({}, "model"),
        ({"model": "m", "colour": "red"}, "colour"),
        ({"model": "m", "base_url": "ftp://x"}, "base_url"),
        ({"model": "m", "timeout_s": 0}, "timeout_s"),
        ({"model": "m", "max_retries": -1}, "max_retries"),
        ({"model": "m", "temperature": 3}, "temperature"),
        ({"model": "m", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "api_key_file": ""}, "api_key_file"),
        ({"model": "m", "extra_headers": {"Authorization": "Bearer x"}}, "extra_headers"),
    ],
)
def test_bad_options_are_refused_naming_the_key(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        OpenAIOptions.model_validate(options)
    assert field in str(info.value)


def test_a_missing_key_names_the_variable_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MY_OPENAI_KEY", raising=False)
    options = OpenAIOptions(model="m", api_key_env="MY_OPENAI_KEY")
    with pytest.raises(AuthenticationFailed) as info:
        create_provider(options, _context(tmp_path))
    message = str(info.value)
    assert "MY_OPENAI_KEY" in message and "\n" not in message
    assert info.value.provider == "openai" and info.value.status is None


def test_an_empty_key_variable_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "  ")
    with pytest.raises(AuthenticationFailed, match=r"OPENAI_API_KEY.*is empty"):
        read_api_key(OpenAIOptions(model="m"), tmp_path)


def test_the_key_comes_from_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env\n")
    assert read_api_key(OpenAIOptions(model="m"), tmp_path).get_secret_value() == "sk-from-env"


def test_a_relative_key_file_is_under_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-not-used")
    home = tmp_path / "home"
    (home / "secrets").mkdir(parents=True)
    (home / "secrets" / "openai.key").write_text("sk-from-file\n")
    monkeypatch.chdir(tmp_path)  # not the working directory
    options = OpenAIOptions(model="m", api_key_file="secrets/openai.key")
    assert read_api_key(options, home).get_secret_value() == "sk-from-file"
    absolute = OpenAIOptions(model="m", api_key_file=str(home / "secrets" / "openai.key"))
    assert read_api_key(absolute, tmp_path / "elsewhere").get_secret_value() == "sk-from-file"


def test_an_unreadable_or_empty_key_file_names_the_file(tmp_path: Path) -> None:
    options = OpenAIOptions(model="m", api_key_file="missing.key")
    with pytest.raises(AuthenticationFailed, match=r"missing\.key.*api_key_file"):
        read_api_key(options, tmp_path)
    (tmp_path / "empty.key").write_text("\n")
    with pytest.raises(AuthenticationFailed, match=r"empty\.key.*is empty"):
        read_api_key(OpenAIOptions(model="m", api_key_file="empty.key"), tmp_path)


def test_creation_opens_no_connection_and_keeps_the_key_out_of_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-created")
    # an address nothing listens on: creating must not try it
    provider = create_provider(
        OpenAIOptions(model="m", base_url="http://127.0.0.1:9/v1"), _context(tmp_path)
    )
    assert provider.model == "m" and provider.provider_api == 2
    assert "sk-created" not in repr(provider)


def test_timeout_s_bounds_reads_and_connecting_gets_at_most_ten_seconds(tmp_path: Path) -> None:
    async def timeouts(timeout_s: float) -> tuple[object, object]:
        provider = OpenAIProvider(
            OpenAIOptions(model="m", timeout_s=timeout_s), api_key=SecretStr("sk-x")
        )
        timeout = provider.client().timeout
        await provider.aclose()
        assert isinstance(timeout, openai.Timeout)
        return timeout.read, timeout.connect

    assert asyncio.run(timeouts(600)) == (600, 10.0)
    assert asyncio.run(timeouts(3)) == (3, 3)
