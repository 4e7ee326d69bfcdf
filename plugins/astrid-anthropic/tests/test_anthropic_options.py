"""Options and the key: validated strictly, read at creation (no network), never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from anthropic_testkit import TEST_KEY
from astrid.errors import AuthenticationFailed
from astrid.plugins import PluginContext, get_implementation
from pydantic import ValidationError

from astrid_anthropic import DEFAULT_MAX_OUTPUT_TOKENS, AnthropicOptions


def create(home: Path, **options: object) -> object:
    impl = get_implementation("llm_provider", "anthropic")
    return impl.create(dict(options), PluginContext(home=home))


def test_registered_through_the_entry_point_with_its_options_model() -> None:
    impl = get_implementation("llm_provider", "anthropic")
    assert impl.options is AnthropicOptions
    assert AnthropicOptions().max_output_tokens == DEFAULT_MAX_OUTPUT_TOKENS
    assert AnthropicOptions().api_key_env == "ANTHROPIC_API_KEY"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"modle": "x"}, "modle"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"temperature": 3}, "temperature"),
        ({"api_key_file": ""}, "api_key_file"),
        ({"extra_headers": {"X-Api-Key": "k"}}, "credential"),
        ({"extra_headers": {"authorization": "Bearer k"}}, "credential"),
        ({"thinking_budget_tokens": 4096, "max_output_tokens": 4096}, "below max_output_tokens"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        AnthropicOptions.model_validate(options)


def test_missing_key_is_one_line_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MY_ANTHROPIC_KEY", raising=False)
    with pytest.raises(AuthenticationFailed) as info:
        create(tmp_path, api_key_env="MY_ANTHROPIC_KEY")
    message = str(info.value)
    assert "\n" not in message
    assert "MY_ANTHROPIC_KEY" in message and "not set" in message
    monkeypatch.setenv("MY_ANTHROPIC_KEY", "  ")
    with pytest.raises(AuthenticationFailed, match=r"MY_ANTHROPIC_KEY.*empty"):
        create(tmp_path, api_key_env="MY_ANTHROPIC_KEY")


def test_key_from_the_environment_at_creation_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    # a port nothing listens on: creating the provider must not connect
    provider = create(tmp_path, base_url="http://127.0.0.1:9", model="claude-x")
    assert getattr(provider, "model", None) == "claude-x"
    assert TEST_KEY not in repr(provider)
    assert TEST_KEY not in repr(vars(provider))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "changed-later")
    assert provider._api_key.get_secret_value() == TEST_KEY  # type: ignore[attr-defined]


def test_key_file_relative_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "anthropic").write_text(TEST_KEY + "\n")
    provider = create(home, api_key_file="keys/anthropic")
    assert provider._api_key.get_secret_value() == TEST_KEY  # type: ignore[attr-defined]
    with pytest.raises(AuthenticationFailed, match=r"cannot read the API key file .*missing"):
        create(home, api_key_file="missing")
    (home / "empty").write_text("\n")
    with pytest.raises(AuthenticationFailed, match="is empty") as info:
        create(home, api_key_file=str(home / "empty"))
    assert "\n" not in str(info.value)
