"""astrid-anthropic: an ``anthropic`` LLM provider for astrid (the Messages API, streamed).

Installed, it is found through the entry point ``anthropic`` in the group ``astrid``. Select it::

    [llm]
    provider = "anthropic"

    [llm.options]
    model = "claude-sonnet-4-5"
    api_key_env = "ANTHROPIC_API_KEY"
    max_output_tokens = 4096

The key is read from ``api_key_env`` (or ``api_key_file``) when the provider is created and is
held only by the provider and its SDK client. The ``anthropic`` SDK is imported on the first
request. See ``docs/anthropic.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astrid import hookimpl
from astrid.config import PathOption
from astrid.errors import AuthenticationFailed
from astrid.plugins import PluginContext, version_attribute
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

if TYPE_CHECKING:
    from .provider import AnthropicProvider

    __version__: str
else:  # from the package metadata, on first access
    __getattr__ = version_attribute(__name__, "astrid-anthropic")

DEFAULT_MODEL = "claude-sonnet-4-5"
DEFAULT_MAX_OUTPUT_TOKENS = 4096
"""The API requires ``max_tokens``; 4096 fits every current model and a long tool-call turn."""

_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "proxy-authorization"})


class AnthropicOptions(BaseModel):
    """Options of the ``anthropic`` provider.

    ``model`` is the default model (a session's own model wins). ``base_url`` another server
    speaking the Messages API (default ``https://api.anthropic.com``; the SDK's
    ``ANTHROPIC_BASE_URL`` is not consulted). The key comes from the environment variable
    ``api_key_env`` or, when ``api_key_file`` is set, from that file (a relative path is under
    astrid's home). ``timeout_s`` bounds each HTTP request, ``max_retries`` how often the SDK
    retries a 408/409/429/5xx or a connection error. ``max_output_tokens`` is sent as
    ``max_tokens`` (required by the API) when a call does not set its own. ``temperature`` is
    sent only when set. ``extra_headers`` are added to every request (not credentials: the key
    has its own options). ``thinking_budget_tokens`` turns extended thinking on.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default=DEFAULT_MODEL, min_length=1)
    base_url: str | None = Field(default=None, min_length=1)
    api_key_env: str = Field(default="ANTHROPIC_API_KEY", min_length=1)
    api_key_file: PathOption | None = None
    timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    max_retries: int = Field(default=2, ge=0, le=20)
    max_output_tokens: int = Field(default=DEFAULT_MAX_OUTPUT_TOKENS, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    extra_headers: dict[str, str] = Field(default_factory=dict)
    thinking_budget_tokens: int | None = Field(default=None, ge=1024)

    @field_validator("extra_headers")
    @classmethod
    def _no_credentials(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.strip().lower() in _CREDENTIAL_HEADERS:
                raise ValueError(
                    f"header {name!r} carries a credential; give the key through api_key_env "
                    "or api_key_file, which are never shown"
                )
        return value

    @model_validator(mode="after")
    def _thinking_fits(self) -> AnthropicOptions:
        budget = self.thinking_budget_tokens
        if budget is not None and budget >= self.max_output_tokens:
            raise ValueError(
                f"thinking_budget_tokens ({budget}) must be below max_output_tokens "
                f"({self.max_output_tokens}): the API counts thinking within max_tokens"
            )
        return self


def read_api_key(options: AnthropicOptions, home: Path) -> SecretStr:
    """The key named by the options: ``api_key_file`` if set, else ``api_key_env``.

    A missing, unreadable or empty key is one ``AuthenticationFailed`` line naming the variable
    or the file (never its content).
    """
    if options.api_key_file is not None:
        path = Path(options.api_key_file).expanduser()
        if not path.is_absolute():
            path = home / path
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(
                exc
            ).__name__
            raise AuthenticationFailed(
                f"anthropic: cannot read the API key file {path} (api_key_file): {reason}",
                provider="anthropic", status=None,
            ) from None
        key = text.strip()
        if not key:
            raise AuthenticationFailed(
                f"anthropic: the API key file {path} (api_key_file) is empty",
                provider="anthropic", status=None,
            )
        return SecretStr(key)
    value = os.environ.get(options.api_key_env)
    if value is None or not value.strip():
        state = "is not set" if value is None else "is empty"
        raise AuthenticationFailed(
            f"anthropic: no API key: the environment variable {options.api_key_env} "
            f"(api_key_env) {state}",
            provider="anthropic", status=None,
        )
    return SecretStr(value.strip())


def create_provider(options: AnthropicOptions, context: PluginContext) -> AnthropicProvider:
    """The provider the options describe; the key is read now (no network)."""
    from .provider import AnthropicProvider

    return AnthropicProvider(
        model=options.model,
        api_key=read_api_key(options, Path(context.home)),
        base_url=options.base_url,
        timeout_s=options.timeout_s,
        max_retries=options.max_retries,
        max_output_tokens=options.max_output_tokens,
        temperature=options.temperature,
        extra_headers=options.extra_headers,
        thinking_budget_tokens=options.thinking_budget_tokens,
    )


@hookimpl
def register_llm_providers(register: Any) -> None:
    """Register the ``anthropic`` provider."""
    register(
        "anthropic",
        create_provider,
        AnthropicOptions,
        "Anthropic's Messages API (streamed) through the official anthropic SDK.",
    )


__all__ = ["AnthropicOptions", "__version__", "create_provider", "read_api_key"]
